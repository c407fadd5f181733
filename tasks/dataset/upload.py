"""A prepared data set -> its content-addressed folder in the bucket (the layout's `data/<fingerprint>/`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tasks import gcs
from tasks.dataset.manifest import MANIFEST, PreparedDataset

if TYPE_CHECKING:
    from google.cloud.storage import Client as StorageClient

    from tasks.layout import BucketLayout


def upload_dataset(storage: StorageClient, layout: BucketLayout, prepared: PreparedDataset) -> tuple[str, int]:
    """Upload the split files, then the manifest; a folder that already has its manifest is complete.

    Returns:
        (folder URI without trailing slash, bytes uploaded). 0 bytes when the manifest was already there.
    """
    folder = layout.dataset_dir(prepared.fingerprint)
    if gcs.exists(storage, layout.dataset_file(prepared.fingerprint, MANIFEST)):
        return folder, 0
    uploaded = 0
    for path in prepared.files:  # splits first, manifest last
        if gcs.upload_if_absent(storage, path, layout.dataset_file(prepared.fingerprint, path.name)):
            uploaded += path.stat().st_size
    return folder, uploaded
