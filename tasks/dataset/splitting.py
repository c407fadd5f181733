"""The clean frame -> train / validation / test: a seeded stratified draw, or the source's own split column."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from tasks.config import LABELS, DataConfig
from tasks.errors import DataError

SPLITS = ("train", "validation", "test")


def split(frame: pd.DataFrame, cfg: DataConfig, source: str) -> dict[str, pd.DataFrame]:
    """The three splits as `cfg` asks: predefined when data.split_column is set, else stratified and seeded."""
    if cfg.split_column is not None:
        return predefined_split(frame, source)
    return stratified_split(
        frame, test_fraction=cfg.test_fraction, validation_fraction=cfg.validation_fraction, seed=cfg.seed
    )


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def stratified_split(frame: pd.DataFrame, *, test_fraction: float, validation_fraction: float, seed: int) -> dict[str, pd.DataFrame]:
    """Per class: shuffle with the seed, take `test_fraction` for test, then `validation_fraction` of the rest.

    Each class keeps at least one row in every split; rows keep their source order inside a split, so a split file
    reads like the source and is byte-stable for a given seed.
    """
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[int]] = {split: [] for split in SPLITS}
    for label in LABELS:
        index = frame.index[frame["label"] == label].to_numpy()
        index = index[rng.permutation(len(index))]
        n = len(index)
        n_test = min(max(_round_half_up(n * test_fraction), 1), n - 2)
        n_val = min(max(_round_half_up((n - n_test) * validation_fraction), 1), n - n_test - 1)
        chosen["test"] += index[:n_test].tolist()
        chosen["validation"] += index[n_test : n_test + n_val].tolist()
        chosen["train"] += index[n_test + n_val :].tolist()
    return {split: frame.loc[sorted(rows)].reset_index(drop=True) for split, rows in chosen.items()}


_SPLIT_NAMES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                "val": "validation", "dev": "validation", "test": "test", "testing": "test"}  # fmt: skip


def predefined_split(frame: pd.DataFrame, source: str) -> dict[str, pd.DataFrame]:
    """Use the split column of the source (data.split_column) instead of drawing one."""
    names = frame["split"].astype(str).str.strip().str.lower().map(_SPLIT_NAMES)
    unknown = sorted(set(frame.loc[names.isna(), "split"].astype(str)))
    if unknown:
        raise DataError(f"{source} has unknown split names {unknown[:5]} in data.split_column: use train, validation (val, dev) or test")
    parts = {split: frame.loc[names == split, ["text", "label"]].reset_index(drop=True) for split in SPLITS}
    empty = [split for split, part in parts.items() if part.empty]
    if empty:
        raise DataError(f"{source} has no {' or '.join(empty)} rows in its predefined split: add them, or unset data.split_column")
    missing = [label for label in LABELS if not (parts["train"]["label"] == label).any()]
    if missing:
        raise DataError(f"{source} has no {' or '.join(missing)} examples in its train split: every class needs training examples")
    return parts


def split_params(cfg: DataConfig) -> dict[str, Any]:
    if cfg.split_column is not None:
        return {"predefined": True, "split_column": cfg.split_column}
    return {"seed": cfg.seed, "test_fraction": cfg.test_fraction, "validation_fraction": cfg.validation_fraction, "stratified": True}
