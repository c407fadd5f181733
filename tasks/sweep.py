"""Hyper-parameter sweeps: `PipelineConfig.sweep` and everything about it that can be pure.

A sweep replaces one model's single job by one Vertex CustomJob per trial (tasks/sweep_jobs.py runs them, at most
`parallel` at once). Two shapes, over the fields of that model's `TrainerParams` (trainer/src/trainer/params.py):

- `grid`: every combination of the listed values, e.g. `{"learning_rate": [1e-3, 2e-3], "dropout": [0.3, 0.5]}`;
- `random`: `trials` seeded samples of `[low, high]` ranges: log-uniform where the range spans a decade
  (high / low >= 10, low > 0), uniform otherwise; an integer parameter gets integers.

Each trial is the model's configured params updated with the trial's values, validated by the trainer's own
`resolve` before anything is uploaded. The trials are a pure function of the sweep and the base params: the same
config gives the same trials, with the same ids (`t<i>-<digest of the values>`), so a rerun with the same run key
reattaches to the same jobs, and a changed sweep cannot reattach to another trial's job.

The winner is the trial with the best *validation* macro-F1 (ties: the first trial): the test split never selects.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import random as _random
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, model_validator
from trainer import params as trainer_params
from trainer.errors import ConfigError as TrainerConfigError

# A typo in a grid (a 10 x 10 x 10 product) should not launch a thousand GPU jobs.
MAX_TRIALS = 100
# Sampled floats keep 4 significant digits: readable in the trials table and on the command line.
SIGNIFICANT_DIGITS = 4
# Random sampling draws at most this many times `trials` before giving up on finding that many distinct trials.
DRAWS_PER_TRIAL = 20
DIGEST_HEX = 6
NUMBER_KINDS = ("int", "float")

Number = StrictInt | StrictFloat


class Sweep(BaseModel):
    """One model's hyper-parameter sweep: each trial its own Vertex job; the winner by validation macro-F1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Literal[trainer_params.MODELS] = Field(  # type: ignore[valid-type]
        ..., description="The model swept; its single job is replaced by the trials (it must be in `models`)."
    )
    grid: dict[str, list[Any]] | None = Field(
        None, description="Every combination of these values, e.g. {'learning_rate': [0.001, 0.002]}."
    )
    random: dict[str, tuple[Number, Number]] | None = Field(
        None,
        description="[low, high] per number parameter, sampled `trials` times (log-uniform where high/low >= 10).",
    )
    trials: int | None = Field(None, ge=1, le=MAX_TRIALS, description="random only: how many trials.")
    seed: int | None = Field(None, ge=0, description="random only: the sampling seed (default 0).")
    parallel: int = Field(
        1, ge=1, description="The most trial jobs at once; size it to the project's GPU quota (a Prefect "
        "global concurrency limit shared by all flow runs also caps them: tasks/sweep_jobs.py)."
    )

    @model_validator(mode="after")
    def _one_shape(self) -> Sweep:
        if (self.grid is None) == (self.random is None):
            raise ValueError("sweep: give exactly one of grid (every combination) or random (seeded samples)")
        if self.grid is not None:
            for name in ("trials", "seed"):
                if getattr(self, name) is not None:
                    raise ValueError(f"sweep.{name} applies to random sweeps only (a grid runs every combination)")
            if not self.grid:
                raise ValueError("sweep.grid: name at least one parameter")
            for name, values in self.grid.items():
                _known(self.model, "grid", name)
                if not values:
                    raise ValueError(f"sweep.grid.{name}: give at least one value")
                if len({_canonical(v) for v in values}) < len(values):
                    raise ValueError(f"sweep.grid.{name}: {values} repeats a value")
            count = math.prod(len(values) for values in self.grid.values())
            if count > MAX_TRIALS:
                raise ValueError(f"sweep.grid: {count} combinations, more than {MAX_TRIALS} trials; give fewer values")
        else:
            if self.trials is None:
                raise ValueError("sweep.trials: a random sweep needs the number of trials")
            if not self.random:
                raise ValueError("sweep.random: name at least one parameter")
            for name, (low, high) in self.random.items():
                kind = _known(self.model, "random", name).kind
                if kind not in NUMBER_KINDS:
                    raise ValueError(f"sweep.random.{name}: {name} is a {kind} parameter; sample numbers only "
                                     "(list its values in a grid instead)")
                if not low < high:
                    raise ValueError(f"sweep.random.{name}: [{low}, {high}] must be [low, high] with low < high")
                if kind == "int" and not (isinstance(low, int) and isinstance(high, int)):
                    raise ValueError(f"sweep.random.{name}: {name} is an integer; give integer bounds")
        return self

    def expand(self, base: dict[str, Any]) -> list[Trial]:
        """The trials, in order, for the model's params `base` (the config's `params[model]`). Raises ValueError
        naming the sweep field (or the trial) whose value the trainer refuses."""
        return expand(self, base)


@dataclass(frozen=True)
class Trial:
    """One point of the sweep: `values` are the swept fields only, `params` the model's full resolved params."""

    index: int
    values: dict[str, Any]
    params: dict[str, Any]

    @property
    def trial_id(self) -> str:
        """`t<index>-<digest of values>`: a valid GCP label value ([a-z0-9_-], far below 63 characters)."""
        return f"t{self.index}-{values_digest(self.values)}"


def _known(model: str, shape: str, name: str) -> trainer_params.Param:
    param = trainer_params.BY_NAME.get(name)
    if param is None or model not in param.defaults:
        known = ", ".join(p.name for p in trainer_params.params_of(model))
        raise ValueError(f"sweep.{shape}.{name}: {name} is not a hyper-parameter of {model} (known: {known})")
    return param


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def values_digest(values: dict[str, Any]) -> str:
    """A short digest of a trial's values (order-independent)."""
    return hashlib.sha256(_canonical(values).encode()).hexdigest()[:DIGEST_HEX]


def is_log_uniform(low: float, high: float) -> bool:
    """A range spanning a decade or more (high / low >= 10, both positive) is sampled on a log scale."""
    return low > 0 and high / low >= 10


def sample(low: float, high: float, kind: str, u: float) -> float | int:
    """The value at quantile `u` in [0, 1) of [low, high]: log-uniform or uniform (`is_log_uniform`); an `int`
    parameter gets an integer in [low, high], a float one 4 significant digits."""
    if is_log_uniform(low, high):
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    else:
        value = low + u * (high - low)
    if kind == "int":
        # log-uniform: round on the log scale's value; uniform: every integer of [low, high] equally likely
        whole = round(value) if is_log_uniform(low, high) else math.floor(low + u * (high - low + 1))
        return int(min(max(whole, low), high))
    return min(max(float(f"{value:.{SIGNIFICANT_DIGITS}g}"), low), high)


def _points(sweep: Sweep) -> list[dict[str, Any]]:
    """The swept values of every trial, in trial order (fields in name order, so key order does not matter)."""
    if sweep.grid is not None:
        names = sorted(sweep.grid)
        return [dict(zip(names, combo)) for combo in itertools.product(*(sweep.grid[n] for n in names))]
    assert sweep.random is not None and sweep.trials is not None
    # random.Random(seed).random() is the same Mersenne Twister stream on every Python version (randint and
    # friends are not guaranteed to be), so every value is derived from it alone.
    rng = _random.Random(0 if sweep.seed is None else sweep.seed)
    names = sorted(sweep.random)
    points: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(sweep.trials * DRAWS_PER_TRIAL):
        point = {n: sample(*sweep.random[n], trainer_params.BY_NAME[n].kind, rng.random()) for n in names}
        if _canonical(point) not in seen:
            seen.add(_canonical(point))
            points.append(point)
            if len(points) == sweep.trials:
                return points
    raise ValueError(f"sweep.random: only {len(points)} distinct trials in {sweep.trials * DRAWS_PER_TRIAL} draws, "
                     f"fewer than trials {sweep.trials}; widen the ranges or lower trials")


def expand(sweep: Sweep, base: dict[str, Any]) -> list[Trial]:
    """See `Sweep.expand`."""
    shape = "grid" if sweep.grid is not None else "random"
    ranges = sweep.grid or sweep.random or {}
    # Each value alone first, so the error names the sweep field rather than a trial.
    for name in sorted(ranges):
        for value in sweep.grid[name] if sweep.grid is not None else ranges[name]:
            try:
                trainer_params.resolve(sweep.model, {**base, name: value})
            except TrainerConfigError as exc:
                raise ValueError(f"sweep.{shape}.{name}: {exc}") from None
    trials = []
    for index, values in enumerate(_points(sweep)):
        try:
            params = trainer_params.resolve(sweep.model, {**base, **values})
        except TrainerConfigError as exc:
            raise ValueError(f"sweep.{shape}: trial t{index} {_canonical(values)}: {exc}") from None
        trials.append(Trial(index, values, params))
    return trials


# --- the winner and the trials table (pure) -----------------------------------------------------------------------
def validation_macro_f1(metrics: dict) -> float:
    return float(metrics["validation"]["macro_f1"])


def pick_winner(metrics_by_trial: dict[str, dict]) -> str:
    """The trial id with the best validation macro-F1 (ties: the first in trial order). Test figures are never
    looked at: choosing on the test split would make its figures an optimistic estimate."""
    if not metrics_by_trial:
        raise ValueError("no trial succeeded")
    return max(metrics_by_trial, key=lambda trial: (validation_macro_f1(metrics_by_trial[trial]),
                                                   -_index_of(trial)))


def _index_of(trial_id: str) -> int:
    return int(trial_id.split("-", 1)[0].removeprefix("t"))


def trial_rows(trials: list[Trial], metrics_by_trial: dict[str, dict], *, winner: str | None,
               seconds_by_trial: dict[str, float] | None = None, errors: dict[str, str] | None = None,
               cost_by_trial: dict[str, float | None] | None = None) -> list[dict]:
    """One row per trial for the `finsent-trials-<model>` table: its values, validation and test figures (the test
    ones for the record only), epochs, seconds, cost (None where unknown) and state."""
    rows = []
    for trial in trials:
        tid = trial.trial_id
        metrics = metrics_by_trial.get(tid)
        row: dict[str, Any] = {"trial": tid, "winner": tid == winner,
                               "params": ", ".join(f"{k}={v}" for k, v in trial.values.items())}
        if metrics is not None:
            train = metrics.get("train", {})
            row |= {
                "validation_accuracy": round(metrics["validation"]["accuracy"], 4),
                "validation_macro_f1": round(metrics["validation"]["macro_f1"], 4),
                "test_accuracy": round(metrics["test"]["accuracy"], 4),
                "test_macro_f1": round(metrics["test"]["macro_f1"], 4),
                "epochs": train.get("epochs_run"),
            }
        else:
            row |= dict.fromkeys(("validation_accuracy", "validation_macro_f1", "test_accuracy", "test_macro_f1",
                                  "epochs"))
        seconds = (seconds_by_trial or {}).get(tid)
        row["seconds"] = round(seconds, 1) if seconds is not None else None
        row["cost_usd"] = (cost_by_trial or {}).get(tid)
        row["state"] = "SUCCEEDED" if metrics is not None else f"FAILED: {(errors or {}).get(tid, 'no metrics')}"
        rows.append(row)
    return rows
