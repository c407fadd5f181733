"""The trainer's hyper-parameters: one declarative table (`PARAMS`) with per-model defaults, and the one validation.

Everything that names a hyper-parameter is derived from this table: the trainer's flags and `--help` and its
`TrainConfig` (trainer.config), the Vertex job's command line (tasks.vertex.trainer_args, through `to_argv`) and
the flow's validated `PipelineConfig.params` (tasks.config, through `resolve`). So a value the trainer would
refuse is refused by the flow before anything is uploaded, and a field the user leaves out takes the default of
*that* model, on the command line as in the flow.

A parameter applies to the models that have a default for it. A parameter of the other model is refused, by the
flow and by the trainer alike, rather than ignored: a setting that silently does nothing misleads whoever set it.

Stdlib only: the flow imports it without the trainer's dependencies.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from trainer.errors import ConfigError

MODELS = ("bert", "lstm")
BERT_CHECKPOINT = "google-bert/bert-base-uncased"
NO_CHECKPOINT = "none"  # command-line spelling of "no pretrained checkpoint"
AUTO_BUCKETS = "auto"  # command-line spelling of "buckets chosen from the training data"


@dataclasses.dataclass(frozen=True)
class Param:
    """One hyper-parameter. `kind`: int | float | choice | checkpoint (a checkpoint URI or None) | lengths (a list
    of padded lengths or None). Bounds: `minimum`/`maximum` inclusive, `above`/`below` exclusive."""

    name: str
    kind: str
    defaults: Mapping[str, Any]  # model -> default; the parameter applies to exactly these models
    help: str
    choices: Tuple[str, ...] = ()
    minimum: Optional[float] = None
    above: Optional[float] = None
    maximum: Optional[float] = None
    below: Optional[float] = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def models(self) -> Tuple[str, ...]:
        return tuple(m for m in MODELS if m in self.defaults)

    def to_text(self, value: Any) -> str:
        """The command-line spelling of a (valid) value."""
        if self.kind == "checkpoint":
            return NO_CHECKPOINT if value is None else value
        if self.kind == "lengths":
            return AUTO_BUCKETS if value is None else ",".join(str(v) for v in value)
        return repr(value) if self.kind == "float" else str(value)

    def bounds_text(self) -> str:
        low = f"[{self.minimum}" if self.minimum is not None else f"({self.above}" if self.above is not None else None
        high = f"{self.maximum}]" if self.maximum is not None else f"{self.below})" if self.below is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        return ("<= " if high[-1] == "]" else "< ") + high[:-1]


def _both(value: Any) -> Dict[str, Any]:
    return {model: value for model in MODELS}


# The defaults are what a Vertex user of the flow has always got (the flow's former per-model defaults); the
# BiLSTM runs on the BERT checkpoint's frozen word-piece vectors (+5 points of accuracy over learned embeddings
# on PhraseBank, docs/benchmarks.md). `--pretrained none --lstm-embeddings learned` trains it with no checkpoint.
PARAMS: Tuple[Param, ...] = (
    Param("pretrained", "checkpoint", _both(BERT_CHECKPOINT),
        "HF-format BERT checkpoint (config.json, model.safetensors, vocab.txt): a local dir, a gs:// dir, or a "
        "Hugging Face hub id (org/name or hf://org/name); 'none' for no checkpoint (lstm only). bert: the "
        "backbone; lstm: its vocab.txt and, unless lstm_embeddings is learned, its token embeddings (without "
        "one, a WordPiece vocab is trained on the training split)."),
    Param("epochs", "int", {"bert": 4, "lstm": 15}, "Maximum number of epochs (early stopping may end sooner).",
        minimum=1, maximum=100),
    Param("batch_size", "int", _both(32),
        "Global batch size (fixed for every padded length): with several GPUs or replicas it is split evenly over "
        "all of them, so it must divide by their number, and the same settings train the same model on any "
        "topology (on TensorFlow up to each device's own dropout masks; docs/scaling.md).", minimum=1, maximum=4096),
    Param("learning_rate", "float", {"bert": 5e-5, "lstm": 2e-3},
        "Peak learning rate, used as given whatever the number of devices (not scaled with them).", above=0,
        below=1),
    Param("max_seq_len", "int", _both(128),
        "Truncate to this many WordPiece tokens; batches are padded to one of a few fixed lengths up to this "
        "(see buckets).", minimum=8, maximum=512),
    Param("buckets", "lengths", _both(None),
        "Comma-separated padded lengths, e.g. 64 (max_seq_len is always one). XLA compiles the train and predict "
        "steps once per length, so fewer buckets mean less compile time and more padded compute (on a GPU, where "
        "a PhraseBank-sized epoch takes seconds, compile time dominates). auto = 32,64,96,... below max_seq_len, "
        "leaving out any that would hold < 5% of the training sentences (they go to the next longer one)."),
    Param("seed", "int", _both(42), "Random seed (weights init, shuffling, dropout).", minimum=0),
    Param("patience", "int", {"bert": 2, "lstm": 4},
        "Early stopping: epochs without a validation macro-F1 gain before stopping; best weights are restored.",
        minimum=1),
    Param("precision", "choice", _both("auto"),
        "auto: mixed_bfloat16 on bf16-capable GPUs, mixed_float16 on older GPUs, float32 on CPU.",
        choices=("auto", "float32", "mixed_bfloat16", "mixed_float16")),
    Param("warmup_ratio", "float", {"bert": 0.1},
        "Fraction of training steps of linear learning-rate warm-up (then cosine decay to 0).", minimum=0, below=1),
    Param("weight_decay", "float", _both(0.01), "AdamW weight decay (not on biases/norms).", minimum=0),
    Param("dropout", "float", {"bert": 0.1, "lstm": 0.5},
        "Dropout before the classification layer (lstm: also on the embeddings).", minimum=0, below=1),
    Param("class_weights", "choice", {"bert": "balanced", "lstm": "sqrt"},
        "Loss weight per class from the training split: balanced = n / (k * count) as sklearn's, sqrt = its "
        "square root (milder), none = 1.", choices=("balanced", "sqrt", "none")),
    Param("pooling", "choice", {"bert": "cls"},
        "Sentence vector for the classifier: the pre-trained [CLS] pooler, or the masked mean of the token "
        "vectors (better for sentence-embedding checkpoints such as all-MiniLM).", choices=("cls", "mean")),
    Param("lstm_embeddings", "choice", {"lstm": "frozen"},
        "learned = embeddings trained from scratch; pretrained = initialised from the pretrained checkpoint's "
        "token embeddings (its vocab and width) and fine-tuned; frozen = the checkpoint's token embeddings, not "
        "trained. pretrained and frozen need a checkpoint.", choices=("learned", "pretrained", "frozen")),
    Param("lstm_vocab_size", "int", {"lstm": 4000},
        "Without a pretrained checkpoint: size of the WordPiece vocab trained on the training split.", minimum=100),
    Param("lstm_embedding_dim", "int", {"lstm": 64}, "Embedding size (a checkpoint's embeddings bring their own).",
        minimum=1),
    Param("lstm_units", "int", {"lstm": 64}, "Units per LSTM direction.", minimum=1),
    Param("lstm_pooling", "choice", {"lstm": "mean_max"},
        "Masked mean of the BiLSTM outputs, or mean and max concatenated.", choices=("mean", "mean_max")),
)
BY_NAME: Dict[str, Param] = {p.name: p for p in PARAMS}


def params_of(model: str) -> Tuple[Param, ...]:
    """The parameters that apply to `model`, in table order."""
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}: choose one of {', '.join(MODELS)}")
    return tuple(p for p in PARAMS if model in p.defaults)


def _checked(p: Param, value: Any, spell: Callable[[str], str]) -> Any:
    """`value` validated against one parameter's type and bounds, in its canonical form."""
    def refuse(what: str) -> ConfigError:
        return ConfigError(f"{spell(p.name)} must be {what}, got {value!r}")

    if p.kind in ("int", "float"):
        numeric = (int,) if p.kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, numeric):
            raise refuse("an integer" if p.kind == "int" else "a number")
        value = float(value) if p.kind == "float" else value
        if not math.isfinite(value):
            raise refuse("a finite number")
        if ((p.minimum is not None and value < p.minimum) or (p.above is not None and value <= p.above)
                or (p.maximum is not None and value > p.maximum) or (p.below is not None and value >= p.below)):
            raise refuse(p.bounds_text())
        return value
    if p.kind == "choice":
        if value not in p.choices:
            raise refuse(f"one of {', '.join(p.choices)}")
        return value
    if p.kind == "checkpoint":
        if value is not None and not isinstance(value, str):
            raise refuse(f"a checkpoint URI or {NO_CHECKPOINT!r}")
        return None if value in (None, "", NO_CHECKPOINT) else value
    # lengths: None = auto, else a list of integers (`check_buckets` orders them and adds max_seq_len)
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or any(
            isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise refuse(f"{AUTO_BUCKETS!r} or a list of integers")
    return list(value)


def lengths_from_text(text: str) -> Optional[List[int]]:
    """The command-line form of the buckets: 'auto' -> None, '96, 48,96' -> [96, 48, 96]."""
    if text.strip() == AUTO_BUCKETS:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"{BY_NAME['buckets'].flag} must be {AUTO_BUCKETS!r} or comma-separated integers, "
                          f"got {text!r}") from None


def check_buckets(lengths: Optional[Sequence[int]], max_seq_len: int,
                  spell: Callable[[str], str] = str) -> Optional[List[int]]:
    """None (auto: chosen from the training data) for no lengths, else the distinct lengths in ascending order
    ending at max_seq_len (always a bucket); every given length must lie in [1, max_seq_len]."""
    if not lengths:
        return None
    bad = sorted(b for b in set(lengths) if not 1 <= b <= max_seq_len)
    if bad:
        raise ConfigError(f"{spell('buckets')} {BY_NAME['buckets'].to_text(lengths)}: every length must be in "
                          f"[1, {spell('max_seq_len')} {max_seq_len}], got {bad}")
    return sorted(set(lengths) | {max_seq_len})


def _check_rules(model: str, values: Dict[str, Any], spell: Callable[[str], str]) -> None:
    """The rules between fields (normalises buckets in place)."""
    values["buckets"] = check_buckets(values["buckets"], values["max_seq_len"], spell)
    if model == "bert" and values["pretrained"] is None:
        raise ConfigError(f"bert needs {spell('pretrained')} (a BERT checkpoint, e.g. {BERT_CHECKPOINT})")
    if model == "lstm" and values["lstm_embeddings"] != "learned" and values["pretrained"] is None:
        raise ConfigError(f"{spell('lstm_embeddings')} {values['lstm_embeddings']} needs {spell('pretrained')} "
                          "(the checkpoint whose token embeddings and vocab to use)")


def resolve(model: str, given: Mapping[str, Any], *, spell: Callable[[str], str] = str) -> Dict[str, Any]:
    """`defaults(model)` updated with `given`, validated as the trainer validates its command line.

    Returns a new JSON-able dict of every parameter of `model`. Raises ConfigError (one line naming the field, as
    `spell(name)` writes it: the field name by default, the trainer passes the flag) for an unknown parameter, a
    parameter of the other model, or a bad value."""
    mine = params_of(model)
    if not isinstance(given, Mapping):
        raise ConfigError(f"{model} hyper-parameters must be a mapping of name to value, got {given!r}")
    values = {p.name: p.defaults[model] for p in mine}
    for name, value in given.items():
        p = BY_NAME.get(name)
        if p is None:
            raise ConfigError(f"{name} is not a hyper-parameter of {model} (known: {', '.join(values)})")
        if model not in p.defaults:
            raise ConfigError(f"{spell(name)} applies to {' and '.join(p.models)} only, not {model}")
        values[name] = _checked(p, value, spell)
    _check_rules(model, values, spell)
    return values


def defaults(model: str) -> Dict[str, Any]:
    """Every hyper-parameter of `model` at its default, resolved."""
    return resolve(model, {})


def to_argv(model: str, values: Mapping[str, Any]) -> List[str]:
    """`--flag=value` for every hyper-parameter of `model`: `values` resolved first, so the command line is one
    the trainer accepts and spells out every setting (nothing is left to the trainer's defaults)."""
    resolved = resolve(model, values)
    return [f"{p.flag}={p.to_text(resolved[p.name])}" for p in params_of(model)]
