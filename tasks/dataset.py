"""Data set preparation: fetch -> detect -> decode -> parse -> map labels -> dedupe -> validate -> split -> write.

The output folder holds `train.csv`, `validation.csv`, `test.csv` (UTF-8, header `text,label`, labels
negative|neutral|positive) and `manifest.json`, which is written last: a folder without a manifest is never a
data set. The fingerprint is a sha256 over the three split files (and the split parameters), so the same input
and seed give the same fingerprint on every run and machine.

Everything above the Prefect task at the bottom is plain Python, testable without Prefect.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import unicodedata
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import chardet
import httpx
import numpy as np
import pandas as pd

from tasks.config import LABELS, DataConfig, PipelineConfig
from tasks.errors import DataError, FinsentError

__all__ = [
    "DataUnavailableError",
    "PreparedDataset",
    "SPLITS",
    "fetch_dataset",
    "fingerprint_splits",
    "load_prepared",
    "prepare_dataset",
]

SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
HTTP_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
# Below this many rows a class cannot appear in each of the three splits.
MIN_ROWS_PER_CLASS = 3


class DataUnavailableError(DataError):
    """The source could not be reached right now (connection, timeout, 5xx, 429): worth a retry."""


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


# --- fetch ------------------------------------------------------------------------------------------------------
def redact_uri(uri: str) -> str:
    """Drop user info and query string (signed URLs, tokens) so a URI can go into logs and the manifest."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, "", ""))
    return uri


def _fetch_http(uri: str) -> bytes:
    shown = redact_uri(uri)
    # The transport retries connection failures itself; the task retries DataUnavailableError on top.
    transport = httpx.HTTPTransport(retries=2)
    try:
        with httpx.Client(transport=transport, timeout=HTTP_TIMEOUT, follow_redirects=True) as client:
            response = client.get(uri, headers={"User-Agent": "finsent"})
    except httpx.TimeoutException as exc:
        raise DataUnavailableError(f"timed out downloading {shown} ({type(exc).__name__}): retry later or check the network") from None
    except httpx.TransportError as exc:
        raise DataUnavailableError(
            f"cannot reach {shown} ({type(exc).__name__}: {exc}): check the URL and the network, or set data.uri / FINSENT_DATA_URI to a local copy"
        ) from None
    status = response.status_code
    if status == 429 or status >= 500:
        raise DataUnavailableError(f"{shown} answered HTTP {status} {response.reason_phrase}: the server is busy or down, retry later")
    if status >= 400:
        raise DataError(
            f"{shown} answered HTTP {status} {response.reason_phrase}: check the URL, or set data.uri / FINSENT_DATA_URI to a local copy"
        )
    return response.content


def _fetch_gs(uri: str, gcs_client: Any | None) -> bytes:
    from tasks import gcs  # only gs:// sources need google-cloud-storage

    client = gcs_client if gcs_client is not None else gcs.storage_client_from_env()
    try:
        return gcs.download_bytes(client, uri)
    except gcs.ObjectNotFoundError:
        raise DataError(f"{uri} does not exist: check data.uri / FINSENT_DATA_URI") from None
    except FinsentError as exc:
        raise DataError(f"cannot read {uri}: {exc}") from None
    except Exception as exc:  # network / 5xx from GCS after the client's own retries: transient
        raise DataUnavailableError(f"cannot read {uri} ({type(exc).__name__}: {exc}): retry later") from None


def _fetch_local(uri: str) -> bytes:
    path = Path(uri.removeprefix("file://")).expanduser()
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"data file {path} {what}: check data.uri / FINSENT_DATA_URI")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror}") from None


def fetch_bytes(uri: str, *, gcs_client: Any | None = None) -> bytes:
    """Raw bytes of an https:// (or http://) URL, a gs:// object or a local path."""
    scheme = urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch_http(uri)
    if scheme == "gs":
        return _fetch_gs(uri, gcs_client)
    if scheme in ("", "file") or len(scheme) == 1:  # one letter: a Windows drive
        return _fetch_local(uri)
    raise DataError(f"unsupported data URI scheme {scheme!r} in {redact_uri(uri)}: use https://, gs:// or a local path")


def _cache_raw(raw: bytes, cache_dir: Path) -> tuple[str, Path]:
    """Keep the raw bytes under cache/<sha256>: what a run read can always be found again by its hash."""
    digest = hashlib.sha256(raw).hexdigest()
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / digest
    if not target.exists():
        _atomic_write(target, raw)
    return digest, target


# --- detect and decode ------------------------------------------------------------------------------------------
def _looks_like_html(raw: bytes) -> bool:
    head = raw[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")) or b"<html" in head[:512]


def _is_zip(raw: bytes) -> bool:
    return raw[:4] in (b"PK\x03\x04", b"PK\x05\x06")


def _normal_codec(name: str) -> str:
    return codecs.lookup(name).name


def _control_ratio(text: str) -> float:
    sample = text[:200_000]
    if not sample:
        return 0.0
    bad = sum(1 for ch in sample if ch not in "\t\r\n" and unicodedata.category(ch) in ("Cc", "Cs", "Co", "Cn"))
    return bad / len(sample)


def decode_text(raw: bytes, source: str) -> tuple[str, str, float]:
    """Decode bytes to text; returns (text, codec name, confidence).

    Strict UTF-8 wins when it decodes (chardet can misname short UTF-8 text); otherwise chardet's guess, with
    cp1252 as the fallback for a low-confidence guess (the usual encoding of Western financial text). Text that
    only decodes into control characters is binary, not data.
    """
    if raw.startswith(codecs.BOM_UTF8):
        candidates = [("utf-8-sig", 1.0)]
    else:
        candidates = [("utf-8", 1.0)]
        guess = chardet.detect(raw[:1_000_000])
        encoding, confidence = guess.get("encoding"), float(guess.get("confidence") or 0.0)
        if encoding:
            try:
                candidates.append((_normal_codec(encoding), confidence))
            except LookupError:
                pass
            if confidence < 0.2:
                candidates.append(("cp1252", confidence))
    for codec, confidence in candidates:
        try:
            text = raw.decode(codec)
        except (UnicodeDecodeError, LookupError):
            continue
        if "\x00" in text or _control_ratio(text) > 0.01:
            continue
        return text, _normal_codec(codec), round(confidence, 3)
    raise DataError(
        f"cannot decode {source} as text (no encoding fits; binary or corrupt file?): check that data.uri points at a CSV or the PhraseBank zip"
    )


# --- parse ------------------------------------------------------------------------------------------------------
_PHRASEBANK_LINE = re.compile(r"^.+@\s*[A-Za-z]+\s*$")


def _looks_like_phrasebank(text: str) -> bool:
    lines = [line for line in text.splitlines()[:200] if line.strip()]
    if not lines:
        return False
    return sum(bool(_PHRASEBANK_LINE.match(line)) for line in lines) >= 0.9 * len(lines)


def parse_phrasebank(text: str, source: str) -> pd.DataFrame:
    """`sentence@label` per line; the sentence may itself contain '@', so split on the LAST one."""
    texts, labels = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        sentence, sep, label = line.rpartition("@")
        if not sep:
            raise DataError(f"{source} line {number} has no '@label' ({line[:60]!r}): is this a PhraseBank file? set data.format='csv' otherwise")
        texts.append(sentence)
        labels.append(label)
    return pd.DataFrame({"text": texts, "label": labels}, dtype=object)


def _preview(row: list[str], cells: int = 4, width: int = 40) -> str:
    shown = [cell if len(cell) <= width else cell[: width - 3] + "..." for cell in row[:cells]]
    return repr(shown) + (f" + {len(row) - cells} more" if len(row) > cells else "")


def _resolve_column(column: str | int, header: list[str] | None, what: str, first_row: list[str]) -> int:
    if isinstance(column, int):
        width = len(header) if header is not None else len(first_row)
        if not 0 <= column < width:
            raise DataError(f"data.{what}={column} is out of range: the CSV has {width} columns (0-based indexes)")
        return column
    if header is None:
        raise DataError(
            f"data.{what}={column!r} names a column but the CSV has no header (first row: {_preview(first_row)}): "
            "give 0-based column indexes and has_header=False"
        )
    lowered = [name.strip().lower() for name in header]
    if column.strip().lower() not in lowered:
        raise DataError(
            f"CSV has no column named {column!r} (header: {_preview(header)}): set data.{what} to one of these, "
            "or to a 0-based index with has_header=False"
        )
    return lowered.index(column.strip().lower())


def parse_csv(text: str, cfg: DataConfig, source: str) -> pd.DataFrame:
    """Text and label columns by name or 0-based index; the header is sniffed when `has_header` is None."""
    sample = text[:64_000]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = [row for row in csv.reader(io.StringIO(text), dialect) if any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise DataError(f"{source} is not a readable CSV ({exc}): check data.format and the file") from None
    if not rows:
        raise DataError(f"{source} has no rows: the file is empty")
    has_header = cfg.has_header
    if has_header is None:
        has_header = _sniff_header(rows, cfg)
    header = rows[0] if has_header else None
    body = rows[1:] if has_header else rows
    if not body:
        raise DataError(f"{source} has a header but no rows: the file is empty")
    text_index = _resolve_column(cfg.text_column, header, "text_column", rows[0])
    label_index = _resolve_column(cfg.label_column, header, "label_column", rows[0])
    needed = max(text_index, label_index)
    short = [n for n, row in enumerate(body, start=2 if has_header else 1) if len(row) <= needed]
    if short:
        raise DataError(f"{source} rows {short[:5]} have fewer than {needed + 1} columns: check the delimiter and quoting")
    frame = pd.DataFrame({"text": [r[text_index] for r in body], "label": [r[label_index] for r in body]}, dtype=object)
    if cfg.split_column is not None:
        split_index = _resolve_column(cfg.split_column, header, "split_column", rows[0])
        if any(len(row) <= split_index for row in body):
            raise DataError(f"{source} has rows without the split column {cfg.split_column!r}: check the delimiter and quoting")
        frame["split"] = [row[split_index] for row in body]
    return frame


def _sniff_header(rows: list[list[str]], cfg: DataConfig) -> bool:
    """Named columns mean a header. With indexes: a header when row 1's label is not a label but row 2's is."""
    if isinstance(cfg.text_column, str) or isinstance(cfg.label_column, str):
        named = (cfg.text_column, cfg.label_column, cfg.split_column)
        wanted = {c.strip().lower() for c in named if isinstance(c, str)}
        return wanted <= {cell.strip().lower() for cell in rows[0]}
    index = cfg.label_column
    known = _label_lookup(cfg)

    def is_label(row: list[str]) -> bool:
        return len(row) > index and row[index].strip().lower() in known

    return len(rows) > 1 and not is_label(rows[0]) and is_label(rows[1])


def _pick_member(archive: zipfile.ZipFile, wanted: str, source: str) -> str:
    members = [
        info.filename
        for info in archive.infolist()
        if not info.is_dir() and not info.filename.startswith("__MACOSX/") and not Path(info.filename).name.startswith("._")
    ]
    matches = [m for m in members if m == wanted or Path(m).name == wanted]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        listing = ", ".join(Path(m).name for m in members) or "none"
        raise DataError(f"{source} has no member {wanted!r} (members: {listing}): set data.phrasebank_file to one of them")
    raise DataError(f"{source} has several members named {wanted!r} ({matches}): give the full path in data.phrasebank_file")


# --- labels, dedupe, validation ---------------------------------------------------------------------------------
def _label_lookup(cfg: DataConfig) -> dict[str, str]:
    lookup = {label: label for label in LABELS}
    lookup.update({str(key).strip().lower(): value for key, value in cfg.label_map.items()})
    return lookup


def map_labels(frame: pd.DataFrame, cfg: DataConfig, source: str) -> pd.DataFrame:
    """Source labels -> negative/neutral/positive (identity plus data.label_map, case-insensitive)."""
    lookup = _label_lookup(cfg)
    raw = frame["label"].astype(str).str.strip()
    mapped = raw.str.lower().map(lookup)
    unknown = raw[mapped.isna()]
    if len(unknown):
        counts = Counter(unknown)
        shown = ", ".join(f"{label!r} ({n} rows)" for label, n in counts.most_common(5))
        more = f" and {len(counts) - 5} more" if len(counts) > 5 else ""
        example = next(iter(counts))
        raise DataError(
            f"{source} has unknown labels {shown}{more}: map them with data.label_map, e.g. {{{example!r}: 'positive'}}"
        )
    result = pd.DataFrame({"text": frame["text"].astype(str).str.strip(), "label": mapped.astype(str)})
    if "split" in frame:
        result["split"] = frame["split"]
    return result


def dedupe(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop every copy of a text seen with more than one label, then exact (text, label) repeats."""
    before = len(frame)
    empty = frame["text"] == ""
    frame = frame[~empty]
    labels_per_text = frame.groupby("text", sort=False)["label"].transform("nunique")
    conflicting = labels_per_text > 1
    conflicting_texts = int(frame.loc[conflicting, "text"].nunique())
    kept = frame[~conflicting]
    repeats = kept.duplicated(subset=["text", "label"], keep="first")
    kept = kept[~repeats].reset_index(drop=True)
    stats = {
        "rows_read": before,
        "empty_texts_dropped": int(empty.sum()),
        "conflicting_duplicates_dropped": int(conflicting.sum()),
        "conflicting_texts": conflicting_texts,
        "duplicates_dropped": int(repeats.sum()),
        "rows_kept": len(kept),
    }
    return kept, stats


def validate(frame: pd.DataFrame, source: str) -> None:
    if frame.empty:
        raise DataError(f"{source} has no usable rows after parsing and de-duplication: check the file and data.format")
    counts = frame["label"].value_counts()
    missing = [label for label in LABELS if counts.get(label, 0) == 0]
    if missing:
        present = ", ".join(f"{label} ({int(counts[label])})" for label in LABELS if counts.get(label, 0))
        raise DataError(
            f"{source} has no {' or '.join(missing)} examples (only {present}): every class of {', '.join(LABELS)} needs examples; check data.label_map"
        )
    thin = [f"{label} ({int(counts[label])})" for label in LABELS if counts[label] < MIN_ROWS_PER_CLASS]
    if thin:
        raise DataError(f"{source} has too few rows of {', '.join(thin)}: each class needs at least {MIN_ROWS_PER_CLASS} to appear in train, validation and test")


# --- split ------------------------------------------------------------------------------------------------------
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


# --- write ------------------------------------------------------------------------------------------------------
def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _csv_bytes(frame: pd.DataFrame) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["text", "label"])
    writer.writerows(frame[["text", "label"]].itertuples(index=False, name=None))
    return out.getvalue().encode("utf-8")


def split_params(cfg: DataConfig) -> dict[str, Any]:
    if cfg.split_column is not None:
        return {"predefined": True, "split_column": cfg.split_column}
    return {"seed": cfg.seed, "test_fraction": cfg.test_fraction, "validation_fraction": cfg.validation_fraction, "stratified": True}


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


def prepare_dataset(cfg: DataConfig, work_dir: Path, *, gcs_client: Any | None = None) -> PreparedDataset:
    """Fetch, parse, clean, validate and split `cfg.uri` into `work_dir/datasets/<fingerprint>/`.

    Args:
        cfg: DataConfig. Source URI, format, columns, label map and split parameters.
        work_dir: Path. Holds `cache/` (raw bytes by sha256) and `datasets/<fingerprint>/`.
        gcs_client: google.cloud.storage.Client, optional. For gs:// sources; default: from the environment.

    Returns:
        PreparedDataset. The finished folder, its fingerprint and manifest.

    Raises:
        DataError: the source is unreachable (DataUnavailableError), undecodable, an HTML page, a zip without the
            member, empty, has unknown labels or misses a class. Nothing is written to `datasets/` then.
    """
    work_dir = Path(work_dir)
    source = redact_uri(cfg.uri)
    raw = fetch_bytes(cfg.uri, gcs_client=gcs_client)
    if not raw.strip():
        raise DataError(f"{source} is empty ({len(raw)} bytes): check data.uri / FINSENT_DATA_URI")
    raw_sha256, _ = _cache_raw(raw, work_dir / "cache")
    if _looks_like_html(raw):
        raise DataError(
            f"{source} returned an HTML page, not a zip or CSV (an error or login page?): check data.uri / FINSENT_DATA_URI"
        )

    member = None
    payload = raw
    if _is_zip(raw):
        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as archive:
                member = _pick_member(archive, cfg.phrasebank_file, source)
                payload = archive.read(member)
        except zipfile.BadZipFile as exc:
            raise DataError(f"{source} is a damaged zip ({exc}): download it again or check data.uri") from None
        if not payload.strip():
            raise DataError(f"{source} member {member} is empty: choose another data.phrasebank_file")
    where = f"{source}!{member}" if member else source
    text, encoding, confidence = decode_text(payload, where)

    fmt = cfg.format
    if fmt == "auto":
        fmt = "phrasebank" if _looks_like_phrasebank(text) else "csv"
    if fmt == "phrasebank" and cfg.split_column is not None:
        raise DataError(f"data.split_column is set but {where} is a PhraseBank file (no columns): unset it or use a CSV")
    frame = parse_phrasebank(text, where) if fmt == "phrasebank" else parse_csv(text, cfg, where)
    if frame.empty:
        raise DataError(f"{where} has no rows: the file is empty")
    frame = map_labels(frame, cfg, where)
    frame, stats = dedupe(frame)
    validate(frame, where)

    params = split_params(cfg)
    if cfg.split_column is not None:
        splits = predefined_split(frame, where)
    else:
        splits = stratified_split(
            frame, test_fraction=cfg.test_fraction, validation_fraction=cfg.validation_fraction, seed=cfg.seed
        )
    files = {split: _csv_bytes(part) for split, part in splits.items()}
    fingerprint = fingerprint_splits(files, params)
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "fingerprint": fingerprint,
        "labels": list(LABELS),
        "source": {
            "uri": source,
            "sha256": raw_sha256,
            "bytes": len(raw),
            "format": fmt,
            "member": member,
            "encoding": encoding,
            "encoding_confidence": confidence,
        },
        "rows": stats,
        "split": params,
        "counts": {split: _counts(part) for split, part in splits.items()} | {"all": _counts(frame)},
        "files": {
            f"{split}.csv": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "rows": len(splits[split])}
            for split, data in files.items()
        },
    }

    datasets = work_dir / "datasets"
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
        _atomic_write(staging / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n")
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


# --- Prefect task -----------------------------------------------------------------------------------------------
def _retry_unless_bad_data(task: Any, task_run: Any, state: Any) -> bool:
    """Retry an unreachable source; never retry a data set that is bad (retrying cannot fix it)."""
    try:
        state.result()
    except DataUnavailableError:
        return True
    except FinsentError:
        return False
    except Exception:
        return True
    return False


from prefect import get_run_logger, task  # noqa: E402  (the pure parts above need no Prefect)
from prefect.cache_policies import NO_CACHE  # noqa: E402


@task(
    name="fetch-dataset",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=_retry_unless_bad_data,
    cache_policy=NO_CACHE,
)
def fetch_dataset(cfg: DataConfig, work_dir: Path, pipeline: PipelineConfig | None = None) -> PreparedDataset:
    """Prepare the data set; `pipeline` supplies the GCS credentials for a gs:// source."""
    client = None
    if cfg.uri.startswith("gs://") and pipeline is not None:
        from tasks import gcs

        client = gcs.storage_client(pipeline)
    prepared = prepare_dataset(cfg, Path(work_dir), gcs_client=client)
    rows = prepared.manifest["rows"]
    get_run_logger().info(
        "Data set %s from %s: %d rows kept (%d duplicates, %d conflicting dropped), train/validation/test %d/%d/%d",
        prepared.fingerprint[:12],
        prepared.manifest["source"]["uri"],
        rows["rows_kept"],
        rows["duplicates_dropped"],
        rows["conflicting_duplicates_dropped"],
        *(prepared.manifest["counts"][s]["total"] for s in SPLITS),
    )
    return prepared
