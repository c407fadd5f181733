"""Where a data set's raw bytes come from: an https:// URL, a gs:// object or a local path, and the raw cache.

A source that cannot be reached right now raises `DataUnavailableError` (worth a retry); one that answers but is
wrong (404, missing object, a directory) raises `DataError`. URIs are redacted before they reach logs or manifests.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from typing import TYPE_CHECKING

import httpx

from tasks import gcs
from tasks.errors import DataError, FinsentError
from tasks.transient import TransientError, is_transient
from trainer.storage import atomic_write_bytes

if TYPE_CHECKING:
    from google.cloud.storage import Client as StorageClient

HTTP_TIMEOUT = httpx.Timeout(60.0, connect=10.0)


class DataUnavailableError(DataError, TransientError):
    """The source could not be reached right now (connection, timeout, 5xx, 429): worth a retry."""


def redact_uri(uri: str) -> str:
    """Drop user info and query string (signed URLs, tokens) so a URI can go into logs and the manifest."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    return uri


def _fetch_http(uri: str) -> bytes:
    shown = redact_uri(uri)
    # The transport retries connection failures itself; the task retries DataUnavailableError on top.
    transport = httpx.HTTPTransport(retries=2)
    try:
        with httpx.Client(transport=transport, timeout=HTTP_TIMEOUT, follow_redirects=True) as client:
            response = client.get(uri, headers={"User-Agent": "finsent"})
    except httpx.TimeoutException as exc:
        raise DataUnavailableError(f"timed out downloading {shown} ({type(exc).__name__}): retry later or check the network") from None
    except httpx.TransportError as exc:
        raise DataUnavailableError(
            f"cannot reach {shown} ({type(exc).__name__}: {exc}): check the URL and the network, or set data.uri / FINSENT_DATA_URI to a local copy"
        ) from None
    status = response.status_code
    if status == 429 or status >= 500:
        raise DataUnavailableError(f"{shown} answered HTTP {status} {response.reason_phrase}: the server is busy or down, retry later")
    if status >= 400:
        raise DataError(
            f"{shown} answered HTTP {status} {response.reason_phrase}: check the URL, or set data.uri / FINSENT_DATA_URI to a local copy"
        )
    return response.content


def _fetch_gs(uri: str, storage: StorageClient | None) -> bytes:
    if storage is None:
        raise ValueError(f"reading {uri} needs a storage client: pass storage= (the flow passes its own)")
    try:
        return gcs.download_bytes(storage, uri)
    except gcs.ObjectNotFoundError:
        raise DataError(f"{uri} does not exist: check data.uri / FINSENT_DATA_URI") from None
    except FinsentError as exc:
        raise DataError(f"cannot read {uri}: {exc}") from None
    except Exception as exc:
        if is_transient(exc):  # network / 5xx from GCS after the client's own retries
            raise DataUnavailableError(f"cannot read {uri} ({type(exc).__name__}: {exc}): retry later") from None
        raise


def _fetch_local(uri: str) -> bytes:
    path = Path(uri.removeprefix("file://")).expanduser()
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"data file {path} {what}: check data.uri / FINSENT_DATA_URI")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror}") from None


def fetch_bytes(uri: str, *, storage: StorageClient | None = None) -> bytes:
    """Raw bytes of an https:// (or http://) URL, a gs:// object (read with `storage`) or a local path."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch_http(uri)
    if scheme == "gs":
        return _fetch_gs(uri, storage)
    if scheme in ("", "file") or len(scheme) == 1:  # one letter: a Windows drive
        return _fetch_local(uri)
    raise DataError(f"unsupported data URI scheme {scheme!r} in {redact_uri(uri)}: use https://, gs:// or a local path")


def cache_raw(raw: bytes, cache_dir: Path) -> str:
    """Keep the raw bytes under cache/<sha256>: what a run read can always be found again by its hash."""
    digest = hashlib.sha256(raw).hexdigest()
    target = cache_dir / digest
    if not target.exists():
        atomic_write_bytes(target, raw)
    return digest
