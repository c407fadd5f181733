"""Fixtures for the trainer tests: small CSV splits and a fake-gcs-server bucket (`tiny_bert` is tests/conftest.py's)."""

from __future__ import annotations

import uuid

import pytest

from trainer_testkit import make_sentences, write_csv


@pytest.fixture(scope="session")
def splits(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("data")
    return {
        "train": write_csv(d / "train.csv", make_sentences(180, 1)),
        "validation": write_csv(d / "validation.csv", make_sentences(45, 2)),
        "test": write_csv(d / "test.csv", make_sentences(60, 3)),
    }


@pytest.fixture()
def gcs_inputs(gcs_emulator, splits, tiny_bert):
    """A fresh fake-gcs-server bucket holding the splits (data/) and the tiny checkpoint (pretrained/).
    Returns (bucket, the trainer's gs:// input arguments)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    name = f"trainer-{uuid.uuid4().hex[:8]}"
    gcs_emulator.create_bucket(name)
    bucket = storage.Client(project="test", credentials=AnonymousCredentials()).bucket(name)
    for split, path in splits.items():
        bucket.blob(f"data/{split}.csv").upload_from_filename(str(path))
    for f in ("config.json", "model.safetensors", "vocab.txt"):
        bucket.blob(f"pretrained/{f}").upload_from_filename(str(tiny_bert / f))
    gs = f"gs://{name}"
    return bucket, ["--train-data", f"{gs}/data/train.csv", "--validation-data", f"{gs}/data/validation.csv",
                    "--test-data", f"{gs}/data/test.csv", "--pretrained", f"{gs}/pretrained"]
