"""A finished data set folder: the three split CSVs and manifest.json, named by a fingerprint of their content.

The split files are UTF-8 with the header `text,label`. The fingerprint is a sha256 over the three split files and
the split parameters, so the same input and seed give the same fingerprint on every run and machine. The manifest
is written last and the folder appears at once under its fingerprint: a folder without a manifest is never a data
set.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.config import LABELS
from tasks.dataset.splitting import SPLITS
from trainer.storage import atomic_write_bytes

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class PreparedDataset:
    """A finished data set folder: the three split CSVs plus manifest.json."""

    directory: Path
    fingerprint: str
    manifest: dict

    def path(self, split: str) -> Path:
        """Local path of `train`, `validation` or `test`."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        return self.directory / f"{split}.csv"

    @property
    def files(self) -> list[Path]:
        """The split files then the manifest: the order to upload them in."""
        return [self.path(s) for s in SPLITS] + [self.directory / MANIFEST]


def csv_bytes(frame: pd.DataFrame) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows(frame[["text", "label"]].itertuples(index=False, name=None))
    return out.getvalue().encode("utf-8")


def fingerprint_splits(files: dict[str, bytes], params: dict[str, Any]) -> str:
    """sha256 over each split's name and bytes, then the split parameters as canonical JSON."""
    digest = hashlib.sha256()
    for split in SPLITS:
        data = files[split]
        digest.update(f"{split}.csv\0{len(data)}\0".encode())
        digest.update(data)
    digest.update(json.dumps(params, sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


def _counts(frame: pd.DataFrame) -> dict[str, int]:
    counts = frame["label"].value_counts()
    return {label: int(counts.get(label, 0)) for label in LABELS} | {"total": len(frame)}


def load_prepared(directory: Path) -> PreparedDataset | None:
    """A finished data set folder (its manifest exists and parses), or None."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not all((directory / f"{split}.csv").is_file() for split in SPLITS):
        return None
    return PreparedDataset(directory=directory, fingerprint=manifest["fingerprint"], manifest=manifest)


def build_manifest(
    *, fingerprint: str, source: dict[str, Any], rows: dict[str, int], split: dict[str, Any],
    frame: pd.DataFrame, splits: dict[str, pd.DataFrame], files: dict[str, bytes],
) -> dict:
    """What the folder holds and where it came from: source, row statistics, split parameters, counts, files."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "fingerprint": fingerprint,
        "labels": list(LABELS),
        "source": source,
        "rows": rows,
        "split": split,
        "counts": {name: _counts(part) for name, part in splits.items()} | {"all": _counts(frame)},
        "files": {
            f"{name}.csv": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "rows": len(splits[name])}
            for name, data in files.items()
        },
    }


def write_prepared(datasets: Path, files: dict[str, bytes], manifest: dict) -> PreparedDataset:
    """`datasets/<fingerprint>/`: the split files, then the manifest, then the folder appears at once.

    An existing finished folder of that fingerprint is kept (same content by construction).
    """
    fingerprint = manifest["fingerprint"]
    final = datasets / fingerprint
    existing = load_prepared(final)
    if existing is not None:
        return existing
    datasets.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{fingerprint[:12]}-", dir=datasets))
    try:
        for split, data in files.items():
            (staging / f"{split}.csv").write_bytes(data)
        # The manifest goes in last, then the whole folder appears at once under its fingerprint.
        atomic_write_bytes(staging / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
        if final.exists():  # a half-written folder from a crashed run: no manifest, so not a data set
            shutil.rmtree(final)
        try:
            os.replace(staging, final)
        except OSError:
            if load_prepared(final) is None:  # another process won the race with a good folder: keep theirs
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return PreparedDataset(directory=final, fingerprint=fingerprint, manifest=manifest)
