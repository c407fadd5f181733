"""Flow tests run the real flow on a real Prefect server (prefect_test_harness), fake-gcs-server and the Vertex
emulator, whose jobs install the trainer sdist the flow built and train for real (tiny models, few sentences)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emulators.sample_data import KAGGLE_CSV, write_phrasebank_sample


@pytest.fixture(scope="session")
def sentiment_csv(tmp_path_factory) -> Path:
    """600 real Financial PhraseBank sentences, 200 per class, as `text,label`."""
    if not KAGGLE_CSV.exists():
        pytest.skip(f"{KAGGLE_CSV} is not there (the data set is read from ../shared, never committed)")
    return write_phrasebank_sample(tmp_path_factory.mktemp("flow-data") / "sample.csv", per_class=200)


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
            "lstm": {"epochs": 1, "batch_size": 32, "max_seq_len": 32, "learning_rate": 0.003,
                     "pretrained": None, "lstm_embeddings": "learned"},  # no checkpoint: the BiLSTM from scratch
        },
        "data": {"uri": str(sentiment_csv)},
        "poll": {"initial_seconds": 0.2, "fast_phase_max_seconds": 1.0, "max_seconds": 2.0},
    }
