"""Reliability suite: faults injected into the real Vertex emulator and fake-gcs-server, real Prefect server,
real (tiny) trainings. Every test asserts the end state AND the side effects counted by the emulator."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import pytest

from emulators.sample_data import KAGGLE_CSV, write_phrasebank_sample

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory) -> Path:
    """150 real Financial PhraseBank sentences (50 per class) as `text,label`."""
    if not KAGGLE_CSV.exists():
        pytest.skip(f"{KAGGLE_CSV} is not there (the data set is read from ../shared, never committed)")
    return write_phrasebank_sample(tmp_path_factory.mktemp("rel-data") / "small.csv", per_class=50)


def lstm_config(endpoint: str, bucket: str, data_uri: str, *, epochs: int = 1, **overrides) -> dict:
    """A cheap PipelineConfig dict: one LSTM, short sequences, fast polls, on the emulators."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    return {
        "project": "finsent-test",
        "region": "us-central1",
        "bucket": bucket,
        "vertex_endpoint": endpoint,
        "anonymous_credentials": True,
        "models": ["lstm"],
        "params": {"lstm": {"epochs": epochs, "batch_size": 32, "max_seq_len": 16, "learning_rate": 0.003,
                            "pretrained": None, "lstm_embeddings": "learned",  # no checkpoint: from scratch
                            "patience": 100}},
        "data": {"uri": data_uri},
        "poll": {"initial_seconds": 0.2, "fast_phase_max_seconds": 0.5, "max_seconds": 1.0},
    } | overrides


@pytest.fixture
def rel_config(vertex_emulator, gcs_bucket, small_csv) -> dict:
    return lstm_config(vertex_emulator.endpoint, gcs_bucket, str(small_csv))


@pytest.fixture(scope="session")
def staged(gcs_emulator, vertex_emulator, small_csv, tmp_path_factory) -> dict:
    """Data and trainer sdist uploaded once to a session bucket, for task-level `JobRunner.run` tests."""
    from flows.train import TRAINER_DIR
    from tasks import gcs
    from tasks.config import parse_config
    from tasks.dataset import fetch_dataset
    from tasks.inputs import upload_inputs
    from tasks.layout import BucketLayout
    from tasks.packaging import package_trainer

    bucket = f"rel-{uuid.uuid4().hex[:10]}"
    gcs_emulator.create_bucket(bucket)
    cfg = parse_config(lstm_config(vertex_emulator.endpoint, bucket, str(small_csv)))
    work = tmp_path_factory.mktemp("staged")
    from prefect.logging import disable_run_logger

    with disable_run_logger():
        prepared = fetch_dataset.fn(cfg.data, work)
        package = package_trainer.fn(TRAINER_DIR, work)
        uploads = upload_inputs.fn(gcs.storage_client(cfg), BucketLayout.of(cfg), prepared, package)
    return {"bucket": bucket, "package_uri": uploads.package_uri, "data_uri": uploads.data_uri,
            "package_path": package.path}


def run_jobs(admin, run_key: str) -> list[dict]:
    """The emulator's jobs of one training run, found by the run label as the runner finds them."""
    from tasks.run_identity import run_labels

    ((label, value),) = run_labels(run_key).items()
    return [j for j in admin.jobs() if j.get("labels", {}).get(label) == value]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def subprocess_env(api_url: str, **extra: str) -> dict:
    env = dict(os.environ)
    env.update({"PREFECT_API_URL": api_url, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'trainer' / 'src'}",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "WANDB_MODE": "offline",
                "KERAS_BACKEND": "jax", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


PYTHON = sys.executable
