"""The stages in order: fetch -> unpack -> decode -> parse -> map labels -> dedupe -> validate -> split -> write."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tasks.config import DataConfig
from tasks.dataset.decoding import decode_text, looks_like_html, unpack
from tasks.dataset.manifest import PreparedDataset, build_manifest, csv_bytes, fingerprint_splits, write_prepared
from tasks.dataset.parsing import dedupe, map_labels, parse, validate
from tasks.dataset.sources import cache_raw, fetch_bytes, redact_uri
from tasks.dataset.splitting import split, split_params
from tasks.errors import DataError

if TYPE_CHECKING:
    from google.cloud.storage import Client as StorageClient


def prepare_dataset(cfg: DataConfig, work_dir: Path, *, storage: StorageClient | None = None) -> PreparedDataset:
    """Fetch, parse, clean, validate and split `cfg.uri` into `work_dir/datasets/<fingerprint>/`.

    Args:
        cfg: DataConfig. Source URI, format, columns, label map and split parameters.
        work_dir: Path. Holds `cache/` (raw bytes by sha256) and `datasets/<fingerprint>/`.
        storage: google.cloud.storage.Client. Needed for a gs:// source only.

    Returns:
        PreparedDataset. The finished folder, its fingerprint and manifest.

    Raises:
        DataError: the source is unreachable (DataUnavailableError), undecodable, an HTML page, a zip without the
            member, empty, has unknown labels or misses a class. Nothing is written to `datasets/` then.
    """
    work_dir = Path(work_dir)
    source = redact_uri(cfg.uri)
    raw = fetch_bytes(cfg.uri, storage=storage)
    if not raw.strip():
        raise DataError(f"{source} is empty ({len(raw)} bytes): check data.uri / FINSENT_DATA_URI")
    raw_sha256 = cache_raw(raw, work_dir / "cache")
    if looks_like_html(raw):
        raise DataError(
            f"{source} returned an HTML page, not a zip or CSV (an error or login page?): check data.uri / FINSENT_DATA_URI"
        )
    payload, member = unpack(raw, cfg.phrasebank_file, source)
    where = f"{source}!{member}" if member else source
    text, encoding, confidence = decode_text(payload, where)

    frame, fmt = parse(text, cfg, where)
    frame = map_labels(frame, cfg, where)
    frame, stats = dedupe(frame)
    validate(frame, where)

    splits = split(frame, cfg, where)
    files = {name: csv_bytes(part) for name, part in splits.items()}
    params = split_params(cfg)
    fingerprint = fingerprint_splits(files, params)
    manifest = build_manifest(
        fingerprint=fingerprint,
        source={
            "uri": source,
            "sha256": raw_sha256,
            "bytes": len(raw),
            "format": fmt,
            "member": member,
            "encoding": encoding,
            "encoding_confidence": confidence,
        },
        rows=stats,
        split=params,
        frame=frame,
        splits=splits,
        files=files,
    )
    return write_prepared(work_dir / "datasets", files, manifest)
