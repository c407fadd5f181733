"""Text -> a clean frame of (text, label): parse PhraseBank lines or a CSV, map the labels, drop duplicates, validate.

Labels end up as negative|neutral|positive; a text seen with two labels is dropped entirely (neither copy can be
trusted), exact repeats keep their first copy, and every class needs enough rows to appear in all three splits.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter

import pandas as pd

from tasks.config import LABELS, DataConfig
from tasks.errors import DataError

# Below this many rows a class cannot appear in each of the three splits.
MIN_ROWS_PER_CLASS = 3


def parse(text: str, cfg: DataConfig, source: str) -> tuple[pd.DataFrame, str]:
    """(raw frame with text, label and maybe split columns, the format read: phrasebank or csv)."""
    fmt = cfg.format
    if fmt == "auto":
        fmt = "phrasebank" if _looks_like_phrasebank(text) else "csv"
    if fmt == "phrasebank" and cfg.split_column is not None:
        raise DataError(f"data.split_column is set but {source} is a PhraseBank file (no columns): unset it or use a CSV")
    frame = parse_phrasebank(text, source) if fmt == "phrasebank" else parse_csv(text, cfg, source)
    if frame.empty:
        raise DataError(f"{source} has no rows: the file is empty")
    return frame, fmt


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
