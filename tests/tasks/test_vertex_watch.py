"""tasks/vertex.py against the Vertex emulator through the real REST client: idempotent submit, the watch."""

from __future__ import annotations

import uuid

import pytest
from google.cloud import storage

from tasks import vertex
from tasks.config import PollConfig, parse_config
from tests.emulators.emujob_sdist import build_sdist


@pytest.fixture
def sleeper_job(gcs_emulator, gcs_bucket, vertex_emulator):
    """A CustomJob (spec as finsent builds it) whose package sleeps 3 s instead of training."""
    storage.Client(project="t").bucket(gcs_bucket).blob("pkg/emujob-0.1.0.tar.gz").upload_from_string(build_sdist())
    cfg = parse_config(
        {"project": "finsent-test", "bucket": gcs_bucket, "vertex_endpoint": vertex_emulator.endpoint,
         "anonymous_credentials": True, "machine_type": "n1-standard-4"}
    )  # fmt: skip
    job = vertex.build_custom_job(
        cfg, "lstm", package_uri=f"gs://{gcs_bucket}/pkg/emujob-0.1.0.tar.gz", data_uri=f"gs://{gcs_bucket}/d",
        output_uri=f"gs://{gcs_bucket}/out", run_key=uuid.uuid4().hex,
    )  # fmt: skip
    pool = job["job_spec"]["worker_pool_specs"][0]["python_package_spec"]
    pool |= {"python_module": "emujob.sleep", "args": ["3"]}
    return cfg, job


def test_submit_twice_creates_one_job_and_the_watch_reports_progress(sleeper_job, vertex_admin):
    cfg, spec = sleeper_job
    client = vertex.job_client(cfg)
    first = vertex.submit_job(client, vertex.parent_of(cfg), spec)
    again = vertex.submit_job(client, vertex.parent_of(cfg), spec)  # e.g. a retried task or a rerun after a crash
    assert again.name == first.name
    assert len(vertex_admin.requests("create")) == 1

    updates: list[tuple[str, float]] = []
    done = vertex.wait_for_job(
        client, first.name, PollConfig(initial_seconds=0.2, fast_phase_max_seconds=0.5), timeout_seconds=60,
        on_update=lambda job, elapsed: updates.append((vertex.JobState(job.state).name, elapsed)),
        heartbeat_seconds=1.0,
    )  # fmt: skip
    assert vertex.JobState(done.state).name == "JOB_STATE_SUCCEEDED"
    states = [state for state, _ in updates]
    assert states[-1] == "JOB_STATE_SUCCEEDED"
    assert states.count("JOB_STATE_RUNNING") >= 2, f"no heartbeat while RUNNING: {updates}"
