"""Fixtures for the emulator tests: the training sdist in fake GCS and real aiplatform clients."""

from __future__ import annotations

import uuid

import pytest

from emujob_sdist import build_sdist
from emulator_testkit import gcs_client, image_spec, make_client


@pytest.fixture(scope="session")
def job_bucket(gcs_emulator):
    name = "emulator-tests"
    gcs_emulator.create_bucket(name)
    return name


@pytest.fixture(scope="session")
def package_uri(gcs_emulator, job_bucket):
    """gs:// URI of the `emujob` sdist uploaded to fake GCS."""
    blob = gcs_client().bucket(job_bucket).blob("packages/emujob-0.1.0.tar.gz")
    blob.upload_from_string(build_sdist(), content_type="application/gzip")
    return f"gs://{job_bucket}/packages/emujob-0.1.0.tar.gz"


@pytest.fixture(scope="session")
def job_client(vertex_emulator):
    """The real REST JobServiceClient pointed at the session emulator."""
    return make_client(vertex_emulator.endpoint)


@pytest.fixture
def make_job(package_uri, job_bucket):
    """Build a CustomJob dict for module `module` of the emujob package, with a unique label and output dir."""

    def _make(module: str = "write", args: list[str] | None = None, *, display_name: str | None = None,
              restart_on_worker_restart: bool = False, machine_spec: dict | None = None, **extra) -> dict:
        run = uuid.uuid4().hex[:12]
        job = {
            "display_name": display_name or f"emu-{module}-{run}",
            "labels": {"run": run},
            "job_spec": {
                "worker_pool_specs": [{
                    "machine_spec": machine_spec or {"machine_type": "n1-standard-4"},
                    "replica_count": 1,
                    "container_spec": image_spec(package_uri, f"emujob.{module}", args, {"GREETING": "hello"}),
                }],
                "base_output_directory": {"output_uri_prefix": f"gs://{job_bucket}/runs/{run}"},
                "scheduling": {"restart_job_on_worker_restart": restart_on_worker_restart},
            },
        }
        job.update(extra)
        return job

    return _make
