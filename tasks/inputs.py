"""A run's inputs: their identity (`inputs_key`), their upload to the bucket, and the marker of a finished training.

The data set and the trainer sdist each know how they are uploaded (tasks/dataset/upload.py,
tasks/packaging.py); this module is the step that uploads both, and the skip logic: `trained/<inputs key>.json` is
written after a run on those inputs finished, so an unchanged rerun trains nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks import gcs
from tasks.config import PipelineConfig
from tasks.dataset import PreparedDataset, upload_dataset
from tasks.image import IMAGE_NAME, image_tag
from tasks.packaging import TrainerPackage, upload_package
from tasks.transient import retry_if_transient

if TYPE_CHECKING:
    from google.cloud.storage import Client as StorageClient

    from tasks.layout import BucketLayout


def inputs_key(cfg: PipelineConfig, data_fingerprint: str, trainer_sha256: str) -> str:
    """What decides a model: the data, the trainer code and the training settings. Same key, same model."""
    training = {
        "models": list(cfg.models),
        "params": {m: cfg.params[m].model_dump() for m in cfg.models},
        # finsent's own image by its tag (the same image in any project or region), another image by its URI
        "machine": [cfg.machine_type, cfg.accelerator_type, cfg.accelerator_count,
                    cfg.container_image_uri or f"{IMAGE_NAME}:{image_tag()}"],
    }
    if cfg.sweep is not None:  # absent without one, so the keys of runs without a sweep stay what they were
        training["sweep"] = cfg.sweep.model_dump(exclude={"parallel"})  # how many at once changes no model
    blob = json.dumps([data_fingerprint, trainer_sha256, training], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


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


# The tasks below take the flow run's storage client: NO_CACHE, because a client cannot be hashed into a cache key.
_STORAGE_RETRIES = {"retries": 3, "retry_delay_seconds": [2, 10, 30], "retry_condition_fn": retry_if_transient}


@task(name="upload-inputs", cache_policy=NO_CACHE, **_STORAGE_RETRIES)
def upload_inputs(
    storage: StorageClient, layout: BucketLayout, prepared: PreparedDataset, package: TrainerPackage
) -> UploadedInputs:
    """Upload data set and trainer sdist to their content-addressed paths; unchanged inputs upload 0 bytes."""
    data_uri, data_bytes = upload_dataset(storage, layout, prepared)
    package_uri, package_bytes = upload_package(storage, layout, package)
    get_run_logger().info(
        "Uploaded %d bytes (unchanged inputs are skipped): data %s, package %s",
        data_bytes + package_bytes, data_uri, package_uri,
    )  # fmt: skip
    return UploadedInputs(data_uri, package_uri, data_bytes, package_bytes)


@task(name="find-trained", cache_policy=NO_CACHE, **_STORAGE_RETRIES)
def find_trained(storage: StorageClient, layout: BucketLayout, key: str) -> dict | None:
    """The marker of an earlier finished run on these inputs ({run_key, metrics}), or None."""
    return gcs.read_json(storage, layout.trained_marker(key))


@task(name="mark-trained", cache_policy=NO_CACHE, **_STORAGE_RETRIES)
def mark_trained(storage: StorageClient, layout: BucketLayout, key: str, *, run_key: str, metrics: list[dict]) -> None:
    """Record that `run_key` trained these inputs: the next unchanged run skips."""
    gcs.write_json(storage, layout.trained_marker(key), {"run_key": run_key, "metrics": metrics})
