"""Command line -> `TrainConfig` (typed, validated before any I/O)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import List, Optional, Sequence, Tuple

from trainer.errors import ConfigError

ERROR_PREFIX = "finsent-trainer: error: "
DEFAULT_PRETRAINED = "hf://google-bert/bert-base-uncased"
PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
# Per-model learning-rate defaults (BERT fine-tuning vs. a from-scratch BiLSTM).
DEFAULT_LR = {"bert": 3e-5, "lstm": 2e-3}
DEFAULT_DROPOUT = {"bert": 0.1, "lstm": 0.5}
LSTM_EMBEDDINGS = ("learned", "pretrained", "frozen")
CLASS_WEIGHTS = ("balanced", "sqrt", "none")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of one training run."""

    model: str
    train_data: str
    validation_data: str
    test_data: str
    output_dir: str
    checkpoint_dir: Optional[str]
    tensorboard_dir: Optional[str]
    pretrained: Optional[str]
    epochs: int
    batch_size: int
    learning_rate: float
    max_seq_len: int
    seed: int
    patience: int
    precision: str
    warmup_ratio: float
    weight_decay: float
    dropout: float
    pooling: str
    lstm_vocab_size: int
    lstm_embedding_dim: int
    lstm_units: int
    lstm_pooling: str
    lstm_embeddings: str
    class_weights: str
    buckets: Optional[Tuple[int, ...]]  # None: chosen from the training data (trainer.data.bucket_lengths)
    wandb_project: Optional[str]
    wandb_run_name: Optional[str]
    wandb_tags: List[str]
    stop_after_epochs: Optional[int] = None

    def hyperparameters(self) -> dict:
        """The settings that shape the model and the optimisation (for metrics.json and wandb)."""
        keys = [
            "epochs", "batch_size", "learning_rate", "max_seq_len", "seed", "patience", "precision",
            "warmup_ratio", "weight_decay", "dropout", "pretrained", "class_weights", "buckets",
        ]
        if self.model == "bert":
            keys += ["pooling"]
        if self.model == "lstm":
            keys += ["lstm_vocab_size", "lstm_embedding_dim", "lstm_units", "lstm_pooling", "lstm_embeddings"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(self, k)) for k in keys)}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line with the trainer's prefix (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{ERROR_PREFIX}{message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m trainer.task",
        description="Train a financial-sentiment classifier (BERT via keras-hub, or a BiLSTM) on CSV splits "
        "with header `text,label` and labels negative|neutral|positive. Writes model.keras, vocab.txt, "
        "labels.json and (last) metrics.json to --output-dir.",
    )
    p.add_argument("--model", choices=("bert", "lstm"), required=True,
                   help="bert: keras-hub BertBackbone + classification head; lstm: BiLSTM over WordPiece ids.")
    p.add_argument("--train-data", required=True, help="URI (gs:// or local path) of the training CSV.")
    p.add_argument("--validation-data", required=True,
                   help="URI of the validation CSV (early stopping on its macro-F1).")
    p.add_argument("--test-data", required=True, help="URI of the test CSV (reported in metrics.json).")
    p.add_argument("--output-dir", default=os.environ.get("AIP_MODEL_DIR"),
                   help="Where the model and metrics.json go (gs:// or local). Default: $AIP_MODEL_DIR.")
    p.add_argument("--checkpoint-dir", default=os.environ.get("AIP_CHECKPOINT_DIR"),
                   help="Per-epoch checkpoints (gs:// or local). A run restarted with the same directory "
                   "resumes after the last finished epoch. Default: $AIP_CHECKPOINT_DIR (none: no checkpoints).")
    p.add_argument("--tensorboard-dir", default=os.environ.get("AIP_TENSORBOARD_LOG_DIR"),
                   help="TensorBoard logs (TensorFlow backend only; ignored otherwise). "
                   "Default: $AIP_TENSORBOARD_LOG_DIR.")
    p.add_argument("--pretrained", default=None,
                   help="HF-format BERT checkpoint (config.json, model.safetensors, vocab.txt): a local dir, a "
                   f"gs:// dir, or a Hugging Face hub id (hf://org/name or org/name). bert default: "
                   f"{DEFAULT_PRETRAINED}. lstm: if given, its vocab.txt is used; otherwise a WordPiece vocab "
                   "is trained on the training split.")
    p.add_argument("--epochs", type=int, default=4, help="Maximum number of epochs. (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="Batch size (fixed for every padded length). (default: %(default)s)")
    p.add_argument("--learning-rate", type=float, default=None,
                   help=f"Peak learning rate. Default: {DEFAULT_LR['bert']} (bert), {DEFAULT_LR['lstm']} (lstm).")
    p.add_argument("--max-seq-len", type=int, default=128,
                   help="Truncate to this many WordPiece tokens; batches are padded to one of a few fixed "
                   "lengths up to this (see --buckets). (default: %(default)s)")
    p.add_argument("--buckets", default="auto",
                   help="Comma-separated padded lengths, e.g. 64 (plus --max-seq-len, always a bucket). XLA "
                   "compiles the train and predict steps once per length, so fewer buckets mean less compile "
                   "time and more padded compute (on a GPU, where a PhraseBank-sized epoch takes seconds, "
                   "compile time dominates). auto = 32,64,96,... below --max-seq-len, "
                   "leaving out any that would hold < 5%% of the training sentences (they go to the next "
                   "longer one). (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="Random seed (weights init, shuffling, dropout). (default: %(default)s)")
    p.add_argument("--patience", type=int, default=2,
                   help="Early stopping: epochs without a validation macro-F1 gain before stopping; "
                   "best weights are restored. (default: %(default)s)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: mixed_bfloat16 on bf16-capable GPUs, mixed_float16 on older GPUs, float32 on CPU. (default: %(default)s)")
    p.add_argument("--warmup-ratio", type=float, default=0.1,
                   help="Fraction of training steps of linear learning-rate warm-up (then cosine decay to 0). (default: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (not on biases/norms). (default: %(default)s)")
    p.add_argument("--dropout", type=float, default=None,
                   help=f"Dropout before the classification layer (lstm: also on the embeddings). Default: "
                   f"{DEFAULT_DROPOUT['bert']} (bert), {DEFAULT_DROPOUT['lstm']} (lstm).")
    p.add_argument("--pooling", choices=("cls", "mean"), default="cls",
                   help="bert: sentence vector for the classifier: the pre-trained [CLS] pooler, or the masked "
                   "mean of the token vectors (better for sentence-embedding checkpoints such as all-MiniLM). (default: %(default)s)")
    p.add_argument("--lstm-vocab-size", type=int, default=4000,
                   help="lstm without --pretrained: size of the WordPiece vocab trained on the training split. (default: %(default)s)")
    p.add_argument("--lstm-embedding-dim", type=int, default=64, help="lstm: embedding size. (default: %(default)s)")
    p.add_argument("--lstm-units", type=int, default=64, help="lstm: units per LSTM direction. (default: %(default)s)")
    p.add_argument("--lstm-pooling", choices=("mean", "mean_max"), default="mean_max",
                   help="lstm: masked mean of the BiLSTM outputs, or mean and max concatenated. (default: %(default)s)")
    p.add_argument("--lstm-embeddings", choices=LSTM_EMBEDDINGS, default="learned",
                   help="lstm: learned = embeddings trained from scratch; pretrained = initialised from the "
                   "--pretrained checkpoint's token embeddings (its vocab and width) and fine-tuned; frozen = "
                   "the checkpoint's token embeddings, not trained. (default: %(default)s)")
    p.add_argument("--class-weights", choices=CLASS_WEIGHTS, default="balanced",
                   help="Loss weight per class from the training split: balanced = n / (k * count) as "
                   "sklearn's, sqrt = its square root (milder), none = 1. (default: %(default)s)")
    p.add_argument("--wandb-project", default="finsent",
                   help="wandb project (key only from $WANDB_API_KEY; without it wandb runs offline). "
                   "Empty string disables wandb. (default: %(default)s)")
    p.add_argument("--wandb-run-name", default=None, help="wandb run name.")
    p.add_argument("--wandb-tags", default="", help="Comma-separated wandb tags.")
    # Test hook: stop the process (as if killed) right after this many finished epochs, checkpoint written.
    p.add_argument("--stop-after-epochs", type=int, default=None, help=argparse.SUPPRESS)
    return p


def parse_buckets(text: str, max_seq_len: int) -> Optional[Tuple[int, ...]]:
    """`--buckets` -> sorted padded lengths ending at max_seq_len, or None for "auto"."""
    if text.strip() == "auto":
        return None
    try:
        lengths = {int(part) for part in text.split(",") if part.strip()}
    except ValueError:
        raise ConfigError(f"--buckets must be 'auto' or comma-separated integers, got {text!r}") from None
    bad = sorted(b for b in lengths if not 1 <= b <= max_seq_len)
    if bad:
        raise ConfigError(f"--buckets {text}: every length must be in [1, --max-seq-len {max_seq_len}], got {bad}")
    return tuple(sorted(lengths | {max_seq_len}))


def parse_config(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    """Parse and validate the command line; raises ConfigError (or exits 2 on usage errors)."""
    args = build_parser().parse_args(argv)
    if not args.output_dir:
        raise ConfigError("--output-dir is required (or set AIP_MODEL_DIR)")
    for flag, value, low in (("--epochs", args.epochs, 1), ("--batch-size", args.batch_size, 1),
                             ("--max-seq-len", args.max_seq_len, 8), ("--patience", args.patience, 1),
                             ("--lstm-vocab-size", args.lstm_vocab_size, 100)):
        if value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    if not 0.0 <= args.warmup_ratio < 1.0:
        raise ConfigError(f"--warmup-ratio must be in [0, 1), got {args.warmup_ratio}")
    dropout = args.dropout if args.dropout is not None else DEFAULT_DROPOUT[args.model]
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"--dropout must be in [0, 1), got {dropout}")
    lr = args.learning_rate if args.learning_rate is not None else DEFAULT_LR[args.model]
    if lr <= 0:
        raise ConfigError(f"--learning-rate must be > 0, got {lr}")
    pretrained = args.pretrained
    if pretrained is None and args.model == "bert":
        pretrained = DEFAULT_PRETRAINED
    if args.model == "lstm" and args.lstm_embeddings != "learned" and not pretrained:
        raise ConfigError(f"--lstm-embeddings {args.lstm_embeddings} needs --pretrained (the checkpoint whose "
                          "token embeddings and vocab to use)")
    buckets = parse_buckets(args.buckets, args.max_seq_len)
    return TrainConfig(
        model=args.model,
        train_data=args.train_data,
        validation_data=args.validation_data,
        test_data=args.test_data,
        output_dir=args.output_dir,
        checkpoint_dir=args.checkpoint_dir or None,
        tensorboard_dir=args.tensorboard_dir or None,
        pretrained=pretrained,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=lr,
        max_seq_len=args.max_seq_len,
        seed=args.seed,
        patience=args.patience,
        precision=args.precision,
        warmup_ratio=args.warmup_ratio,
        weight_decay=args.weight_decay,
        dropout=dropout,
        pooling=args.pooling,
        lstm_vocab_size=args.lstm_vocab_size,
        lstm_embedding_dim=args.lstm_embedding_dim,
        lstm_units=args.lstm_units,
        lstm_pooling=args.lstm_pooling,
        lstm_embeddings=args.lstm_embeddings,
        class_weights=args.class_weights,
        buckets=buckets,
        wandb_project=args.wandb_project or None,
        wandb_run_name=args.wandb_run_name,
        wandb_tags=[t.strip() for t in args.wandb_tags.split(",") if t.strip()],
        stop_after_epochs=args.stop_after_epochs,
    )
