"""HF-format BERT checkpoints with random weights: the offline stand-in for the Hugging Face hub.

Nothing here downloads a model, so tests and benchmarks build the checkpoints they load (config.json,
model.safetensors, vocab.txt, as `BertBackbone.from_preset` reads them). Needs only numpy, safetensors and
tokenizers, so it also runs on a GPU box without Keras (bench/make_bert_checkpoint.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from emulators.sample_data import make_sentences


def build_tiny_bert_checkpoint(out: Path, hidden: int = 32, layers: int = 2, heads: int = 2,
                               intermediate: int = 64, max_pos: int = 128, vocab_file=None) -> Path:
    """HF BertModel-format checkpoint with random weights: config.json, model.safetensors, vocab.txt.

    vocab_file: an existing WordPiece vocab.txt to copy (its line count sets vocab_size); default: a 400-token
    vocab trained on `make_sentences`. With BERT-base sizes (768/12/12/3072/512) this makes a random-init
    BERT-base (bench/make_bert_checkpoint.py)."""
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
