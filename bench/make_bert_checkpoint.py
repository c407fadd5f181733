"""Write a random-init, HF-format BERT checkpoint (config.json, model.safetensors, vocab.txt) for timing runs.

Uses emulators/bert_checkpoint.py's `build_tiny_bert_checkpoint` with BERT-base sizes (or a tiny config
for CPU dry runs) and an existing 30,522-token uncased vocab. Needs only numpy, safetensors and tokenizers, so
it runs on the GPU box without keras.

    python3 bench/make_bert_checkpoint.py OUT_DIR --vocab .gpudata/vocab.txt            # BERT-base (110M)
    python3 bench/make_bert_checkpoint.py OUT_DIR --vocab .gpudata/vocab.txt --tiny     # hidden 64, 2 layers
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emulators.bert_checkpoint import build_tiny_bert_checkpoint  # noqa: E402

BERT_BASE = dict(hidden=768, layers=12, heads=12, intermediate=3072, max_pos=512)
TINY = dict(hidden=64, layers=2, heads=2, intermediate=128, max_pos=512)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--vocab", type=Path, required=True, help="WordPiece vocab.txt to copy (sets vocab_size)")
    p.add_argument("--tiny", action="store_true", help="hidden 64, 2 layers (CPU dry runs)")
    args = p.parse_args()
    t0 = time.time()
    sizes = TINY if args.tiny else BERT_BASE
    out = build_tiny_bert_checkpoint(args.out, vocab_file=args.vocab, **sizes)
    config = json.loads((out / "config.json").read_text())
    mb = (out / "model.safetensors").stat().st_size / 2**20
    print(json.dumps({"checkpoint": str(out), "config": "tiny" if args.tiny else "bert-base",
                      "vocab_size": config["vocab_size"], **sizes, "safetensors_mib": round(mb, 1),
                      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
