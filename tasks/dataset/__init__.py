"""Data set preparation, one module per stage, and its Prefect task.

    sources    https:// / gs:// / local bytes, URI redaction, the raw cache
    decoding   HTML refusal, zip member, character encoding
    parsing    PhraseBank lines or CSV columns, label map, dedupe, validation
    splitting  stratified seeded split, or the source's own split column
    manifest   fingerprint, the folder written manifest-last, `load_prepared`
    prepare    `prepare_dataset`: the stages in order
    upload     the folder to the bucket, manifest last

Everything but `fetch_dataset` below is plain Python, testable without Prefect.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.config import DataConfig
from tasks.dataset.manifest import MANIFEST, PreparedDataset, fingerprint_splits, load_prepared
from tasks.dataset.prepare import prepare_dataset
from tasks.dataset.sources import DataUnavailableError, redact_uri
from tasks.dataset.splitting import SPLITS
from tasks.dataset.upload import upload_dataset
from tasks.transient import retry_if_transient

if TYPE_CHECKING:
    from google.cloud.storage import Client as StorageClient

__all__ = [
    "MANIFEST",
    "SPLITS",
    "DataUnavailableError",
    "PreparedDataset",
    "fetch_dataset",
    "fingerprint_splits",
    "load_prepared",
    "prepare_dataset",
    "redact_uri",
    "upload_dataset",
]


@task(name="fetch-dataset", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def fetch_dataset(cfg: DataConfig, work_dir: Path, storage: StorageClient | None = None) -> PreparedDataset:
    """Prepare the data set (retried only while the source is unreachable; bad data fails the same way again).

    `storage` is the flow run's client, for a gs:// source; NO_CACHE because a client cannot be hashed.
    """
    prepared = prepare_dataset(cfg, Path(work_dir), storage=storage)
    rows = prepared.manifest["rows"]
    get_run_logger().info(
        "Data set %s from %s: %d rows kept (%d duplicates, %d conflicting dropped), train/validation/test %d/%d/%d",
        prepared.fingerprint[:12],
        prepared.manifest["source"]["uri"],
        rows["rows_kept"],
        rows["duplicates_dropped"],
        rows["conflicting_duplicates_dropped"],
        *(prepared.manifest["counts"][s]["total"] for s in SPLITS),
    )
    return prepared
