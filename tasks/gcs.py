"""Google Cloud Storage: the only module that imports `google.cloud.storage`.

Inputs go to content-addressed paths, so an unchanged input is never uploaded twice:

    {base_uri}/data/{fingerprint}/{train,validation,test}.csv + manifest.json (last)
    {base_uri}/packages/{sha256[:16]}/{sdist filename}

Writes use `if_generation_match=0` ("create only"): two concurrent runs cannot overwrite each other, and a 412
means the object is already there. Transient errors (5xx, 429, connection resets) propagate as the client's own
exceptions so the Prefect tasks can retry them; everything else becomes a `StorageError`/`ConfigError` line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as gexc
from google.cloud import storage

from tasks.credentials import application_default_credentials, gcp_credentials
from tasks.errors import ConfigError, FinsentError, StorageError

if TYPE_CHECKING:
    from tasks.config import PipelineConfig
    from tasks.dataset import PreparedDataset
    from tasks.packaging import TrainerPackage

__all__ = [
    "GenerationMismatchError",
    "ObjectNotFoundError",
    "UploadedInputs",
    "check_bucket",
    "download_bytes",
    "exists",
    "parse_gs_uri",
    "read_json",
    "read_json_versioned",
    "storage_client",
    "storage_client_from_env",
    "upload_dataset",
    "upload_if_absent",
    "upload_inputs",
    "upload_package",
    "write_json",
]



class ObjectNotFoundError(StorageError):
    """The object does not exist."""


class GenerationMismatchError(StorageError):
    """A conditional write lost: the object changed (or appeared) since it was read."""




# --- clients ----------------------------------------------------------------------------------------------------
def _anonymous_client(project: str | None) -> storage.Client:
    from google.auth.credentials import AnonymousCredentials

    # google-cloud-storage reads STORAGE_EMULATOR_HOST itself and sends plain HTTP there.
    return storage.Client(project=project or "emulator", credentials=AnonymousCredentials())


def storage_client(cfg: PipelineConfig) -> storage.Client:
    """Client for `cfg`: anonymous against the emulator, else the credentials of `tasks/credentials.py`.

    Raises:
        ConfigError: the credentials block does not exist, or no credentials are found.
    """
    if os.environ.get("STORAGE_EMULATOR_HOST") or cfg.anonymous_credentials:
        return _anonymous_client(cfg.project)
    return storage.Client(project=cfg.project, credentials=gcp_credentials(cfg))


def storage_client_from_env(project: str | None = None) -> storage.Client:
    """Client without a PipelineConfig: the emulator when STORAGE_EMULATOR_HOST is set, else ADC."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return _anonymous_client(project)
    return storage.Client(project=project, credentials=application_default_credentials())


# --- names ------------------------------------------------------------------------------------------------------
def parse_gs_uri(uri: str) -> tuple[str, str]:
    """'gs://bucket/a/b' -> ('bucket', 'a/b'); the name may be empty for 'gs://bucket'."""
    if not uri.startswith("gs://"):
        raise ConfigError(f"{uri!r} is not a gs:// URI: write gs://BUCKET/PATH")
    bucket, _, name = uri[len("gs://") :].partition("/")
    if not bucket:
        raise ConfigError(f"{uri!r} has no bucket: write gs://BUCKET/PATH")
    return bucket, name


def _blob(client: storage.Client, uri: str) -> storage.Blob:
    bucket, name = parse_gs_uri(uri)
    if not name:
        raise ConfigError(f"{uri!r} names a bucket, not an object")
    return client.bucket(bucket).blob(name)


def _storage_error(exc: gexc.GoogleAPICallError, uri: str, action: str) -> FinsentError:
    if isinstance(exc, gexc.Forbidden):
        return StorageError(
            f"permission denied to {action} {uri}: grant the service account roles/storage.objectAdmin on the bucket"
        )
    if isinstance(exc, gexc.NotFound):
        bucket, _ = parse_gs_uri(uri)
        return ConfigError(f"bucket gs://{bucket} does not exist (or is not visible to these credentials) while trying to {action} {uri}")
    return StorageError(f"cannot {action} {uri}: {exc.code} {exc.message}")


_TRANSIENT = (gexc.ServerError, gexc.TooManyRequests)


# --- basic operations -------------------------------------------------------------------------------------------
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
    try:
        return _blob(client, uri).exists()
    except _TRANSIENT:
        raise
    except gexc.GoogleAPICallError as exc:
        raise _storage_error(exc, uri, "check") from None


def download_bytes(client: storage.Client, uri: str) -> bytes:
    """The object's bytes; ObjectNotFoundError when absent."""
    try:
        return _blob(client, uri).download_as_bytes()
    except gexc.NotFound:
        raise ObjectNotFoundError(f"{uri} does not exist") from None
    except _TRANSIENT:
        raise
    except gexc.GoogleAPICallError as exc:
        raise _storage_error(exc, uri, "read") from None


def read_json_versioned(client: storage.Client, uri: str) -> tuple[dict | None, int]:
    """(document, generation); (None, 0) when absent. Pass the generation to `write_json` for compare-and-swap."""
    blob = _blob(client, uri)
    try:
        data = blob.download_as_bytes()
    except gexc.NotFound:
        return None, 0
    except _TRANSIENT:
        raise
    except gexc.GoogleAPICallError as exc:
        raise _storage_error(exc, uri, "read") from None
    try:
        return json.loads(data), int(blob.generation or 0)
    except ValueError:
        raise StorageError(f"{uri} is not valid JSON: delete or fix it") from None




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
    try:
        blob.upload_from_string(body, content_type="application/json", if_generation_match=if_generation_match)
    except gexc.PreconditionFailed:
        raise GenerationMismatchError(
            f"{uri} changed while being updated (expected generation {if_generation_match}): read it again and retry"
        ) from None
    except _TRANSIENT:
        raise
    except gexc.GoogleAPICallError as exc:
        raise _storage_error(exc, uri, "write") from None
    return int(blob.generation or 0)


def upload_if_absent(client: storage.Client, local: Path, uri: str) -> bool:
    """Upload `local` to `uri` unless an object of that name exists; True when this call uploaded it.

    Names are content-addressed, so an existing object already holds these bytes. `if_generation_match=0` makes
    two concurrent writers safe: the second gets 412, which means "already there".
    """
    blob = _blob(client, uri)
    try:
        if blob.exists():
            return False
        # Small files go as one multipart request, where fake-gcs-server and GCS both honour the precondition.
        blob.upload_from_filename(str(local), if_generation_match=0)
    except gexc.PreconditionFailed:
        return False
    except _TRANSIENT:
        raise
    except gexc.GoogleAPICallError as exc:
        raise _storage_error(exc, uri, "upload") from None
    return True


# --- content-addressed inputs -----------------------------------------------------------------------------------
def dataset_uri(base_uri: str, fingerprint: str) -> str:
    return f"{base_uri.rstrip('/')}/data/{fingerprint}"


def package_uri(base_uri: str, sha256: str, filename: str) -> str:
    return f"{base_uri.rstrip('/')}/packages/{sha256[:16]}/{filename}"


def upload_dataset(client: storage.Client, prepared: PreparedDataset, base_uri: str) -> tuple[str, int]:
    """Upload the split files, then the manifest, to `{base_uri}/data/{fingerprint}`.

    Returns:
        (folder URI without trailing slash, bytes uploaded). 0 bytes when the manifest was already there.
    """
    folder = dataset_uri(base_uri, prepared.fingerprint)
    files = prepared.files  # splits first, manifest last: a folder with a manifest is complete
    manifest = files[-1]
    if exists(client, f"{folder}/{manifest.name}"):
        return folder, 0
    uploaded = 0
    for path in files:
        if upload_if_absent(client, path, f"{folder}/{path.name}"):
            uploaded += path.stat().st_size
    return folder, uploaded


def upload_package(client: storage.Client, package: TrainerPackage, base_uri: str) -> tuple[str, int]:
    """Upload the sdist to `{base_uri}/packages/{sha256[:16]}/{filename}`; returns (object URI, bytes uploaded)."""
    uri = package_uri(base_uri, package.sha256, package.filename)
    uploaded = upload_if_absent(client, package.path, uri)
    return uri, package.path.stat().st_size if uploaded else 0


# --- Prefect tasks ----------------------------------------------------------------------------------------------
from prefect import get_run_logger, task  # noqa: E402  (the functions above need no Prefect)
from prefect.cache_policies import NO_CACHE  # noqa: E402


def _retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry network trouble and 5xx/429; never a named finsent error (missing bucket, permission, bad URI)."""
    try:
        state.result()
    except FinsentError:
        return False
    except Exception:
        return True
    return False


@dataclass(frozen=True)
class UploadedInputs:
    """Where the run's inputs live in the bucket, and what this run had to upload."""

    data_uri: str
    package_uri: str
    data_bytes_uploaded: int
    package_bytes_uploaded: int

    @property
    def bytes_uploaded(self) -> int:
        return self.data_bytes_uploaded + self.package_bytes_uploaded

    def split_uri(self, split: str) -> str:
        return f"{self.data_uri}/{split}.csv"


@task(name="upload-inputs", retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=_retry_transient, cache_policy=NO_CACHE)
def upload_inputs(cfg: PipelineConfig, prepared: PreparedDataset, package: TrainerPackage) -> UploadedInputs:
    """Upload data set and trainer sdist to their content-addressed paths; unchanged inputs upload 0 bytes."""
    client = storage_client(cfg)
    data_uri, data_bytes = upload_dataset(client, prepared, cfg.base_uri)
    pkg_uri, pkg_bytes = upload_package(client, package, cfg.base_uri)
    get_run_logger().info(
        "Uploaded %d bytes (unchanged inputs are skipped): data %s, package %s", data_bytes + pkg_bytes, data_uri, pkg_uri
    )
    return UploadedInputs(data_uri, pkg_uri, data_bytes, pkg_bytes)
