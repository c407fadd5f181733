"""Local paths and gs:// URIs behind one small API. The only trainer module that imports google.cloud.storage.

gs:// access honours STORAGE_EMULATOR_HOST (fake-gcs-server); with it set, anonymous credentials are used.
`parse_gs_uri` and `atomic_write_bytes` are the tree's one gs:// parser and one atomic local write: the trainer
is the leaf package (it imports nothing else of finsent), so the flow's tasks and the emulators import them here.
"""

from __future__ import annotations

import logging
import os
from typing import List, Optional, Tuple

from trainer.errors import StorageError

log = logging.getLogger(__name__)
_CLIENT = None


def is_gcs(uri: str) -> bool:
    return uri.startswith("gs://")


def parse_gs_uri(uri: str) -> Tuple[str, str]:
    """'gs://bucket/a/b' -> ('bucket', 'a/b'); the name is empty for 'gs://bucket'. StorageError otherwise."""
    if not is_gcs(uri):
        raise StorageError(f"{uri!r} is not a gs:// URI: write gs://BUCKET/PATH")
    bucket, _, name = uri[len("gs://"):].partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} has no bucket: write gs://BUCKET/PATH")
    return bucket, name


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write a local file so that readers see the old content or all of the new, never a part (temp + rename)."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _client():
    global _CLIENT
    if _CLIENT is None:
        from google.cloud import storage  # lazy: slow import, only needed for gs://

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            _CLIENT = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "emulator"),
                                     credentials=AnonymousCredentials())
        else:
            _CLIENT = storage.Client()
    return _CLIENT


def _gcs_call(what: str, uri: str, fn):
    try:
        return fn()
    except StorageError:
        raise
    except Exception as exc:  # google.api_core / auth / network errors all become one line
        raise StorageError(f"cannot {what} {uri}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc


def read_bytes(uri: str) -> bytes:
    """Whole content of a local file or gs:// object."""
    if is_gcs(uri):
        bucket, name = parse_gs_uri(uri)

        def _get():
            blob = _client().bucket(bucket).blob(name)
            return blob.download_as_bytes()

        return _gcs_call("read", uri, _get)
    try:
        with open(uri, "rb") as f:
            return f.read()
    except OSError as exc:
        raise StorageError(f"cannot read {uri}: {exc.strerror or exc}") from exc


def list_files(uri: str) -> List[str]:
    """Relative names of the files directly or recursively under a directory URI."""
    if is_gcs(uri):
        bucket, prefix = parse_gs_uri(uri.rstrip("/") + "/")

        def _list():
            return [b.name[len(prefix):] for b in _client().list_blobs(bucket, prefix=prefix)
                    if not b.name.endswith("/")]

        return _gcs_call("list", uri, _list)
    out = []
    for root, _dirs, files in os.walk(uri):
        for f in files:
            out.append(os.path.relpath(os.path.join(root, f), uri))
    return sorted(out)


def download_dir(uri: str, local_dir: str, names: Optional[List[str]] = None) -> List[str]:
    """Copy the files under gs:// `uri` (optionally only `names`) into `local_dir`. Returns the names copied."""
    bucket, prefix = parse_gs_uri(uri.rstrip("/") + "/")
    wanted = list_files(uri) if names is None else names
    got = []
    for rel in wanted:
        dest = os.path.join(local_dir, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)

        def _dl(rel=rel, dest=dest):
            blob = _client().bucket(bucket).blob(prefix + rel)
            if names is not None and not blob.exists():
                return False
            blob.download_to_filename(dest)
            return True

        if _gcs_call("download", uri.rstrip("/") + "/" + rel, _dl):
            got.append(rel)
    return got


def upload_file(local_path: str, uri: str) -> None:
    """Copy one local file to a gs:// or local destination (local: atomic rename)."""
    if is_gcs(uri):
        bucket, name = parse_gs_uri(uri)
        _gcs_call("write", uri, lambda: _client().bucket(bucket).blob(name).upload_from_filename(local_path))
        return
    try:
        with open(local_path, "rb") as f:
            atomic_write_bytes(uri, f.read())
    except OSError as exc:
        raise StorageError(f"cannot write {uri}: {exc.strerror or exc}") from exc


def delete(uri: str) -> None:
    """Best-effort removal of one file/object."""
    try:
        if is_gcs(uri):
            bucket, name = parse_gs_uri(uri)
            _client().bucket(bucket).blob(name).delete()
        elif os.path.exists(uri):
            os.remove(uri)
    except Exception as exc:  # cleanup only: never fail a run over it
        log.warning("could not delete %s: %s", uri, exc)


def join(base: str, *parts: str) -> str:
    if is_gcs(base):
        return "/".join([base.rstrip("/")] + [p.strip("/") for p in parts])
    return os.path.join(base, *parts)
