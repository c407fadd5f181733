"""Fixtures for the trainer tests: a tiny HF-format BERT checkpoint and small CSV splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer_testkit import build_tiny_bert_checkpoint, make_sentences, write_csv


@pytest.fixture(scope="session")
def splits(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("data")
    return {
        "train": write_csv(d / "train.csv", make_sentences(180, 1)),
        "validation": write_csv(d / "validation.csv", make_sentences(45, 2)),
        "test": write_csv(d / "test.csv", make_sentences(60, 3)),
    }


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return build_tiny_bert_checkpoint(tmp_path_factory.mktemp("tiny_bert"))
