"""Helpers for the trainer tests (a uniquely named module: several test folders have a conftest.py).

The checkpoint and sentence builders live in emulators/, since bench/ uses them too.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TRAINER_SRC = REPO / "trainer" / "src"
# The repo's pytest config puts both on sys.path; a subprocess that imports this file (the TF-image venv) may not.
for _path in (str(REPO), str(TRAINER_SRC)):
    if _path not in sys.path:
        sys.path.insert(0, _path)
os.environ.setdefault("KERAS_BACKEND", "jax")

from emulators.bert_checkpoint import build_tiny_bert_checkpoint  # noqa: E402,F401  (tests import it from here)
from emulators.sample_data import LABELS, make_sentences  # noqa: E402,F401


def write_csv(path: Path, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def trainer_cmd(*args: str, python: str = None) -> list:
    return [python or sys.executable, "-m", "trainer.task", *args]


def run_trainer(*args: str, timeout: int = 300, extra_env: dict = None,
                python: str = None) -> subprocess.CompletedProcess:
    """Run `python -m trainer.task ARGS` in a fresh process (the way Vertex runs it): this checkout's
    trainer/src, or with `python` (another environment's interpreter) the trainer package installed there."""
    env = dict(os.environ)
    if python is None:
        env["PYTHONPATH"] = os.pathsep.join([str(TRAINER_SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    else:
        env.pop("PYTHONPATH", None)
    env.setdefault("KERAS_BACKEND", "jax")
    env.setdefault("WANDB_MODE", "disabled")
    env.pop("WANDB_API_KEY", None)
    env.update(extra_env or {})
    return subprocess.run(trainer_cmd(*args, python=python), capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=str(REPO))


# The BiLSTM with no checkpoint: a WordPiece vocab trained on the training split, embeddings learned from scratch
# (its defaults are the BERT checkpoint's frozen word-piece vectors, which the tests would download).
LSTM_FROM_SCRATCH = ("--pretrained", "none", "--lstm-embeddings", "learned")


def base_args(splits: dict, out: Path, model: str, *extra: str) -> list:
    return ["--model", model, "--train-data", str(splits["train"]), "--validation-data", str(splits["validation"]),
            "--test-data", str(splits["test"]), "--output-dir", str(out), "--batch-size", "16",
            "--max-seq-len", "64", *extra]


METRIC_KEYS = {"accuracy", "macro_f1", "per_class", "confusion_matrix"}


def check_metrics_shape(m: dict, model: str, n_test: int, backend: str = "jax") -> None:
    """metrics.json has the contract's keys and self-consistent figures (a CPU run, batch size 16)."""
    import pytest

    assert set(m) == {"model", "labels", "test", "validation", "train", "environment", "hyperparameters"}
    assert m["model"] == model and m["labels"] == list(LABELS)
    for split in ("test", "validation"):
        assert set(m[split]) == METRIC_KEYS
        assert set(m[split]["per_class"]) == set(LABELS)
        for v in m[split]["per_class"].values():
            assert set(v) == {"precision", "recall", "f1", "support"}
        cm = np.asarray(m[split]["confusion_matrix"])
        assert cm.shape == (3, 3)
    cm = np.asarray(m["test"]["confusion_matrix"])
    assert cm.sum() == n_test
    assert [m["test"]["per_class"][k]["support"] for k in LABELS] == cm.sum(axis=1).tolist()
    assert m["test"]["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert set(m["train"]) == {"epochs_run", "seconds", "samples_per_second", "resumed_from_epoch", "history"}
    assert [e["epoch"] for e in m["train"]["history"]] == list(range(1, m["train"]["epochs_run"] + 1))
    assert m["train"]["samples_per_second"] > 0
    assert m["environment"]["backend"] == backend and m["environment"]["device"] == "cpu"
    assert {"keras", "keras_hub"} <= set(m["environment"]["versions"])
    assert m["hyperparameters"]["batch_size"] == 16


def reload_and_score(out, test_csv) -> float:
    """Load the export the way a consumer would (keras + tokenizers only) and score the test split.
    Needs no pytest and no trainer package: tests also run it inside other environments."""
    import keras
    import keras_hub  # noqa: F401  registers BertBackbone for deserialisation
    from tokenizers import BertWordPieceTokenizer

    out = Path(out)
    prep = json.loads((out / "preprocessing.json").read_text())
    labels = json.loads((out / "labels.json").read_text())["labels"]
    model = keras.saving.load_model(str(out / "model.keras"))
    tok = BertWordPieceTokenizer(str(out / "vocab.txt"), lowercase=prep["lowercase"])
    tok.enable_truncation(prep["max_seq_len"])
    with open(test_csv, encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    ids = np.zeros((len(rows), prep["max_seq_len"]), "int32")
    for i, e in enumerate(tok.encode_batch([r["text"] for r in rows])):
        ids[i, :len(e.ids)] = e.ids
    x = {"token_ids": ids}
    if "padding_mask" in prep["inputs"]:
        x.update(segment_ids=np.zeros_like(ids), padding_mask=(ids != 0).astype("int32"))
    logits = model.predict(x, batch_size=32, verbose=0)
    assert logits.shape == (len(rows), 3)
    pred = [labels[i] for i in logits.argmax(-1)]
    return float(np.mean([p == r["label"] for p, r in zip(pred, rows)]))
