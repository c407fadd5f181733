"""Flow tests run the real flow on a real Prefect server (prefect_test_harness), fake-gcs-server and the Vertex
emulator, whose jobs install the trainer sdist the flow built and train for real (tiny models, few sentences)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
KAGGLE_CSV = SHARED_DATA / "financial_news_kaggle" / "all-data.csv"


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory) -> Path:
    """600 real Financial PhraseBank sentences (the Kaggle CSV), 200 per class, as `text,label`."""
    if not KAGGLE_CSV.exists():
        pytest.skip(f"{KAGGLE_CSV} is not there (the data set is read from ../shared, never committed)")
    per_class: dict[str, list[str]] = {"negative": [], "neutral": [], "positive": []}
    with open(KAGGLE_CSV, encoding="latin-1", newline="") as f:
        for label, text in csv.reader(f):
            if len(per_class[label]) < 200:
                per_class[label].append(text)
    out = tmp_path_factory.mktemp("flow-data") / "sample.csv"
    with open(out, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for label, texts in per_class.items():
            writer.writerows((text, label) for text in texts)
    return out


@pytest.fixture
def flow_config(vertex_emulator, gcs_bucket, sentiment_csv, tiny_bert):
    """A PipelineConfig dict for the emulators: both models, one short epoch each."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    return {
        "project": "finsent-test",
        "region": "us-central1",
        "bucket": gcs_bucket,
        "vertex_endpoint": vertex_emulator.endpoint,
        "anonymous_credentials": True,
        "models": ["bert", "lstm"],
        "params": {
            "bert": {"pretrained": str(tiny_bert), "epochs": 1, "batch_size": 32, "max_seq_len": 32},
            "lstm": {"epochs": 1, "batch_size": 32, "max_seq_len": 32, "learning_rate": 0.003},
        },
        "data": {"uri": str(sentiment_csv)},
        "poll": {"initial_seconds": 0.2, "fast_phase_max_seconds": 1.0, "max_seconds": 2.0},
    }
