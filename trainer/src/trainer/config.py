"""Command line -> `TrainConfig` (typed, validated before any I/O).

The hyper-parameter flags, their defaults per model and their validation come from trainer.params (the schema
the flow validates with too); this module adds the run's inputs, outputs and tracking flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from trainer import params as schema
from trainer.errors import ConfigError

ERROR_PREFIX = "finsent-trainer: error: "


@dataclasses.dataclass(frozen=True, kw_only=True)
class _RunSettings:
    """The settings of a run that are not hyper-parameters: what to read, where to write, how to track."""

    model: str
    train_data: str
    validation_data: str
    test_data: str
    output_dir: str
    checkpoint_dir: Optional[str]
    tensorboard_dir: Optional[str]
    wandb_project: Optional[str]
    wandb_run_name: Optional[str]
    wandb_tags: List[str]
    stop_after_epochs: Optional[int] = None

    def hyperparameters(self) -> Dict[str, Any]:
        """The settings that shape the model and the optimisation (for metrics.json, wandb and the checkpoint's
        fingerprint): every schema parameter of this model."""
        return {p.name: getattr(self, p.name) for p in schema.params_of(self.model)}


# One field per schema parameter; a parameter of the other model is None.
TrainConfig = dataclasses.make_dataclass(
    "TrainConfig",
    [(p.name, Any, dataclasses.field(default=None)) for p in schema.PARAMS],
    bases=(_RunSettings,),
    namespace={"__doc__": "Every setting of one training run.", "__module__": __name__},
    frozen=True,
    kw_only=True,
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line with the trainer's prefix (exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{ERROR_PREFIX}{message}\n")
        sys.exit(2)


# How each kind of schema parameter is read from the command line (lengths and checkpoints are checked by the
# schema, so that their errors read the same from the flow and from the command line).
_ARGPARSE_KIND = {
    "int": lambda param: {"type": int, "metavar": "N"},
    "float": lambda param: {"type": float, "metavar": "X"},
    "choice": lambda param: {"choices": param.choices},
    "checkpoint": lambda param: {"metavar": "URI"},
    "lengths": lambda param: {"metavar": "auto|N,N,..."},
}


def _flag_help(param: schema.Param) -> str:
    """The schema's help text, which models take the flag, and its default for each."""
    shown = {model: param.to_text(value) for model, value in param.defaults.items()}
    if len(param.models) < len(schema.MODELS):
        return f"{'/'.join(param.models)} only. {param.help} (default: {shown[param.models[0]]})"
    if len(set(shown.values())) == 1:
        return f"{param.help} (default: {shown[param.models[0]]})"
    return f"{param.help} (default: {', '.join(f'{m} {v}' for m, v in shown.items())})"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m trainer.task",
        description="Train a financial-sentiment classifier (BERT via keras-hub, or a BiLSTM) on CSV splits "
        "with header `text,label` and labels negative|neutral|positive. Writes model.keras, vocab.txt, "
        "labels.json and (last) metrics.json to --output-dir.",
    )
    p.add_argument("--model", choices=schema.MODELS, required=True,
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
    hyper = p.add_argument_group(
        "hyper-parameters", "Defaults differ per model; a flag of the other model is refused. The flow's "
        "PipelineConfig.params takes the same names, with underscores (trainer/src/trainer/params.py).")
    for param in schema.PARAMS:
        hyper.add_argument(param.flag, default=argparse.SUPPRESS, help=_flag_help(param).replace("%", "%%"),
                           **_ARGPARSE_KIND[param.kind](param))
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
    lengths = schema.check_buckets(schema.lengths_from_text(text), max_seq_len, spell=_flag_of)
    return None if lengths is None else tuple(lengths)


def _flag_of(name: str) -> str:
    """How an error message spells a parameter on the command line: as its flag."""
    return schema.BY_NAME[name].flag


def parse_config(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    """Parse and validate the command line; raises ConfigError (or exits 2 on usage errors)."""
    args = vars(build_parser().parse_args(argv))
    if not args["output_dir"]:
        raise ConfigError("--output-dir is required (or set AIP_MODEL_DIR)")
    given = {p.name: args.pop(p.name) for p in schema.PARAMS if p.name in args}  # only the flags on the line
    if "buckets" in given:
        given["buckets"] = schema.lengths_from_text(given["buckets"])
    run = dict(args, checkpoint_dir=args["checkpoint_dir"] or None, tensorboard_dir=args["tensorboard_dir"] or None,
               wandb_project=args["wandb_project"] or None,
               wandb_tags=[t.strip() for t in args["wandb_tags"].split(",") if t.strip()])
    return TrainConfig(**run, **schema.resolve(args["model"], given, spell=_flag_of))
