"""Helpers for the trainer tests (a uniquely named module: several test folders have a conftest.py)."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TRAINER_SRC = REPO / "trainer" / "src"
if str(TRAINER_SRC) not in sys.path:  # the repo's pytest config adds it too; keep tests runnable without it
    sys.path.insert(0, str(TRAINER_SRC))
os.environ.setdefault("KERAS_BACKEND", "jax")

LABELS = ("negative", "neutral", "positive")
# Words that carry the label, so a tiny model can learn the task in an epoch or two.
_CUES = {
    "negative": ["loss", "fell", "decline", "weak", "cut", "drop", "lower", "down"],
    "neutral": ["reported", "announced", "located", "said", "held", "based", "meeting", "office"],
    "positive": ["profit", "rose", "growth", "strong", "record", "gain", "higher", "up"],
}
_FILLER = ["the", "company", "quarter", "sales", "in", "of", "its", "share", "net", "operating", "finland",
           "group", "year", "million", "euro", "period", "market", "bank"]


def make_sentences(n: int, seed: int):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        words = rng.sample(_FILLER, rng.randint(3, 12)) + rng.sample(_CUES[label], 2)
        # A few long sentences so more than one padded length (bucket) is used.
        if i % 17 == 0:
            words += rng.choices(_FILLER, k=40)
        rng.shuffle(words)
        rows.append((" ".join(words).capitalize() + ".", label))
    return rows


def write_csv(path: Path, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def build_tiny_bert_checkpoint(out: Path, hidden: int = 32, layers: int = 2, heads: int = 2,
                               intermediate: int = 64, max_pos: int = 128, vocab_file=None) -> Path:
    """HF BertModel-format checkpoint with random weights: config.json, model.safetensors, vocab.txt.

    vocab_file: an existing WordPiece vocab.txt to copy (its line count sets vocab_size); default: a 400-token
    vocab trained on `make_sentences`. With BERT-base sizes (768/12/12/3072/512) this makes a random-init
    BERT-base (bench/make_bert_checkpoint.py)."""
    import shutil

    from safetensors.numpy import save_file
    from tokenizers import BertWordPieceTokenizer

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if vocab_file is not None:
        shutil.copyfile(vocab_file, out / "vocab.txt")
        with open(out / "vocab.txt", encoding="utf-8") as f:
            vocab_size = sum(1 for _ in f)
    else:
        tok = BertWordPieceTokenizer(lowercase=True)
        texts = [t for t, _ in make_sentences(300, 7)]
        tok.train_from_iterator(texts, vocab_size=400, min_frequency=1,
                                special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False)
        tok.save_model(str(out))
        vocab_size = tok.get_vocab_size()
    config = {
        "architectures": ["BertModel"], "model_type": "bert", "vocab_size": vocab_size, "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": intermediate,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": max_pos, "type_vocab_size": 2, "initializer_range": 0.02,
        "layer_norm_eps": 1e-12, "pad_token_id": 0,
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    rng = np.random.default_rng(0)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    t = {
        "embeddings.word_embeddings.weight": w(vocab_size, hidden),
        "embeddings.position_embeddings.weight": w(max_pos, hidden),
        "embeddings.token_type_embeddings.weight": w(2, hidden),
        "embeddings.LayerNorm.weight": np.ones(hidden, np.float32),
        "embeddings.LayerNorm.bias": np.zeros(hidden, np.float32),
        "pooler.dense.weight": w(hidden, hidden),
        "pooler.dense.bias": np.zeros(hidden, np.float32),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            t[p + f"attention.self.{name}.weight"] = w(hidden, hidden)
            t[p + f"attention.self.{name}.bias"] = np.zeros(hidden, np.float32)
        t[p + "attention.output.dense.weight"] = w(hidden, hidden)
        t[p + "attention.output.dense.bias"] = np.zeros(hidden, np.float32)
        t[p + "attention.output.LayerNorm.weight"] = np.ones(hidden, np.float32)
        t[p + "attention.output.LayerNorm.bias"] = np.zeros(hidden, np.float32)
        t[p + "intermediate.dense.weight"] = w(intermediate, hidden)
        t[p + "intermediate.dense.bias"] = np.zeros(intermediate, np.float32)
        t[p + "output.dense.weight"] = w(hidden, intermediate)
        t[p + "output.dense.bias"] = np.zeros(hidden, np.float32)
        t[p + "output.LayerNorm.weight"] = np.ones(hidden, np.float32)
        t[p + "output.LayerNorm.bias"] = np.zeros(hidden, np.float32)
    save_file(t, str(out / "model.safetensors"))
    return out


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
    assert set(m["train"]) == {"epochs_run", "seconds", "samples_per_second", "resumed_from_epoch"}
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
