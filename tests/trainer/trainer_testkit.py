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


def trainer_cmd(*args: str) -> list:
    return [sys.executable, "-m", "trainer.task", *args]


def run_trainer(*args: str, timeout: int = 300, extra_env: dict = None) -> subprocess.CompletedProcess:
    """Run `python -m trainer.task ARGS` in a fresh process (the way Vertex runs it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TRAINER_SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("KERAS_BACKEND", "jax")
    env.setdefault("WANDB_MODE", "disabled")
    env.pop("WANDB_API_KEY", None)
    env.update(extra_env or {})
    return subprocess.run(trainer_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=str(REPO))


def base_args(splits: dict, out: Path, model: str, *extra: str) -> list:
    return ["--model", model, "--train-data", str(splits["train"]), "--validation-data", str(splits["validation"]),
            "--test-data", str(splits["test"]), "--output-dir", str(out), "--batch-size", "16",
            "--max-seq-len", "64", *extra]
