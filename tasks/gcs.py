"""Google Cloud Storage: the only module that imports `google.cloud.storage`; a thin wrapper that knows no domain type.

Conditional writes: `if_generation_match=0` is "create only" (a 412 means the object is already there), and a
generation read with `read_json_versioned` replaces only that version (compare-and-swap). Transient errors (5xx,
429; see tasks/transient.py) propagate as the client's own exceptions so the calling Prefect task can retry them;
every other API error becomes a one-line `StorageError`/`ConfigError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from google.api_core import exceptions as gexc
from google.cloud import storage

from tasks.config import PipelineConfig
from tasks.credentials import gcp_credentials
from tasks.errors import ConfigError, FinsentError, StorageError
from tasks.transient import TRANSIENT_API_ERRORS
from trainer import errors as trainer_errors
from trainer.storage import parse_gs_uri as _parse_gs_uri

__all__ = [
    "GenerationMismatchError",
    "ObjectNotFoundError",
    "check_bucket",
    "download_bytes",
    "download_if_changed",
    "exists",
    "read_json",
    "read_json_versioned",
    "storage_client",
    "upload_if_absent",
    "write_bytes",
    "write_json",
]


class ObjectNotFoundError(StorageError):
    """The object does not exist."""


class GenerationMismatchError(StorageError):
    """A conditional write lost: the object changed (or appeared) since it was read."""


# --- client -----------------------------------------------------------------------------------------------------
def storage_client(cfg: PipelineConfig) -> storage.Client:
    """Client for `cfg`: anonymous against the emulator, else the credentials of `tasks/credentials.py`.

    Raises:
        ConfigError: the credentials block does not exist, or no credentials are found.
    """
    if os.environ.get("STORAGE_EMULATOR_HOST") or cfg.anonymous_credentials:
        from google.auth.credentials import AnonymousCredentials

        # google-cloud-storage reads STORAGE_EMULATOR_HOST itself and sends plain HTTP there.
        return storage.Client(project=cfg.project or "emulator", credentials=AnonymousCredentials())
    return storage.Client(project=cfg.project, credentials=gcp_credentials(cfg))


# --- names and errors -------------------------------------------------------------------------------------------
def _bucket_and_name(uri: str) -> tuple[str, str]:
    try:
        return _parse_gs_uri(uri)
    except trainer_errors.StorageError as exc:  # a malformed URI is a setting to fix, not a storage failure
        raise ConfigError(str(exc)) from None


def _blob(client: storage.Client, uri: str) -> storage.Blob:
    bucket, name = _bucket_and_name(uri)
    if not name:
        raise ConfigError(f"{uri!r} names a bucket, not an object")
    return client.bucket(bucket).blob(name)


def _storage_error(exc: gexc.GoogleAPICallError, uri: str, action: str) -> FinsentError:
    if isinstance(exc, gexc.Forbidden):
        return StorageError(
            f"permission denied to {action} {uri}: grant the service account roles/storage.objectAdmin on the bucket"
        )
    if isinstance(exc, gexc.NotFound):
        bucket, _ = _bucket_and_name(uri)
        return ConfigError(f"bucket gs://{bucket} does not exist (or is not visible to these credentials) while trying to {action} {uri}")
    return StorageError(f"cannot {action} {uri}: {exc.code} {exc.message}")


@contextmanager
def _api_errors(uri: str, action: str) -> Iterator[None]:
    """Transient API errors pass through for the task to retry; any other becomes a one-line finsent error."""
    try:
        yield
    except TRANSIENT_API_ERRORS:
        raise
    except gexc.GoogleAPICallError as exc:
        raise _storage_error(exc, uri, action) from None


# --- operations -------------------------------------------------------------------------------------------------
def check_bucket(client: storage.Client, bucket: str, *, region: str = "REGION") -> None:
    """Raise ConfigError when `bucket` does not exist or these credentials cannot see it."""
    try:
        client.get_bucket(bucket)
    except (gexc.NotFound, gexc.Forbidden):
        raise ConfigError(
            f"bucket gs://{bucket} does not exist (or is not visible to these credentials): "
            f"create it with `gcloud storage buckets create gs://{bucket} --location {region}`"
        ) from None


def exists(client: storage.Client, uri: str) -> bool:
    with _api_errors(uri, "check"):
        return _blob(client, uri).exists()


def download_bytes(client: storage.Client, uri: str) -> bytes:
    """The object's bytes; ObjectNotFoundError when absent."""
    with _api_errors(uri, "read"):
        try:
            return _blob(client, uri).download_as_bytes()
        except gexc.NotFound:
            raise ObjectNotFoundError(f"{uri} does not exist") from None


def read_json_versioned(client: storage.Client, uri: str) -> tuple[dict | None, int]:
    """(document, generation); (None, 0) when absent. Pass the generation to `write_json` for compare-and-swap."""
    blob = _blob(client, uri)
    with _api_errors(uri, "read"):
        try:
            data = blob.download_as_bytes()
        except gexc.NotFound:
            return None, 0
    try:
        return json.loads(data), int(blob.generation or 0)
    except ValueError:
        raise StorageError(f"{uri} is not valid JSON: delete or fix it") from None


def download_if_changed(client: storage.Client, uri: str, generation: int = 0) -> tuple[bytes | None, int]:
    """(bytes, generation) of the object when its generation is not `generation`; (None, generation) when it is
    unchanged, (None, 0) when absent. One request: GCS answers a GET with ifGenerationNotMatch equal to the live
    generation with 304 Not Modified and no body (https://cloud.google.com/storage/docs/request-preconditions); where
    a server ignores the condition (fake-gcs-server), the equal generation of the 200 says the same."""
    blob = _blob(client, uri)
    with _api_errors(uri, "read"):
        try:
            data = blob.download_as_bytes(if_generation_not_match=generation or None)
        except gexc.NotModified:
            return None, generation
        except gexc.NotFound:
            return None, 0
    new = int(blob.generation or 0)
    return (None, generation) if generation and new == generation else (data, new)


def write_bytes(client: storage.Client, uri: str, data: bytes, *, content_type: str) -> None:
    """Write `data` as one object (a reader sees the old object or all of the new one)."""
    with _api_errors(uri, "write"):
        _blob(client, uri).upload_from_string(data, content_type=content_type)


def read_json(client: storage.Client, uri: str) -> dict | None:
    """The JSON document at `uri`, or None when absent."""
    return read_json_versioned(client, uri)[0]


def write_json(client: storage.Client, uri: str, data: Any, *, if_generation_match: int | None = None) -> int:
    """Write `data` as JSON; returns the new generation.

    `if_generation_match=0` creates only; a generation from `read_json_versioned` replaces only that version.

    Raises:
        GenerationMismatchError: the object changed since it was read (someone else wrote first).
    """
    blob = _blob(client, uri)
    body = json.dumps(data, indent=2, sort_keys=True) + "\n"
    with _api_errors(uri, "write"):
        try:
            blob.upload_from_string(body, content_type="application/json", if_generation_match=if_generation_match)
        except gexc.PreconditionFailed:
            raise GenerationMismatchError(
                f"{uri} changed while being updated (expected generation {if_generation_match}): read it again and retry"
            ) from None
    return int(blob.generation or 0)


def upload_if_absent(client: storage.Client, local: Path, uri: str) -> bool:
    """Upload `local` to `uri` unless an object of that name exists; True when this call uploaded it.

    For content-addressed names, where an existing object already holds these bytes. `if_generation_match=0`
    makes two concurrent writers safe: the second gets 412, which means "already there".
    """
    blob = _blob(client, uri)
    with _api_errors(uri, "upload"):
        if blob.exists():
            return False
        try:
            # Small files go as one multipart request, where fake-gcs-server and GCS both honour the precondition.
            blob.upload_from_filename(str(local), if_generation_match=0)
        except gexc.PreconditionFailed:
            return False
    return True
