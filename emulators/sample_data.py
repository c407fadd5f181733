"""Small real samples of the shared financial-news data, for offline runs of the whole path (tests, benchmarks).

Like the emulators, they stand in for what a real run reads from outside: the data stays in ../shared (its licence
forbids committing it), and these helpers cut the few hundred sentences a flow test needs from it.
"""

from __future__ import annotations

import csv
import io
import random
import zipfile
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # ../shared/data beside the repo
KAGGLE_CSV = SHARED_DATA / "financial_news_kaggle" / "all-data.csv"


def write_phrasebank_sample(out: Path, per_class: int) -> Path:
    """The first `per_class` sentences of each label of the Kaggle CSV (latin-1, no header) as UTF-8 `text,label`."""
    rows: dict[str, list[str]] = {"negative": [], "neutral": [], "positive": []}
    with open(KAGGLE_CSV, encoding="latin-1", newline="") as f:
        for label, text in csv.reader(f):
            if len(rows[label]) < per_class:
                rows[label].append(text)
    with open(out, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for label, texts in rows.items():
            writer.writerows((text, label) for text in texts)
    return out


def make_zip(members: dict[str, bytes]) -> bytes:
    """A zip archive (bytes) holding `members`: name -> content."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# --- synthetic sentences ---------------------------------------------------------------------------------
LABELS = ("negative", "neutral", "positive")
# Words that carry the label, so a tiny model can learn the task in an epoch or two.
_CUES = {
    "negative": ["loss", "fell", "decline", "weak", "cut", "drop", "lower", "down"],
    "neutral": ["reported", "announced", "located", "said", "held", "based", "meeting", "office"],
    "positive": ["profit", "rose", "growth", "strong", "record", "gain", "higher", "up"],
}
_FILLER = ["the", "company", "quarter", "sales", "in", "of", "its", "share", "net", "operating", "finland",
           "group", "year", "million", "euro", "period", "market", "bank"]


def make_sentences(n: int, seed: int) -> list[tuple[str, str]]:
    """`n` (sentence, label) pairs, labels in turn; cue words make them learnable by a tiny model in an epoch."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        words = rng.sample(_FILLER, rng.randint(3, 12)) + rng.sample(_CUES[label], 2)
        # A few long sentences so more than one padded length (bucket) is used.
        if i % 17 == 0:
            words += rng.choices(_FILLER, k=40)
        rng.shuffle(words)
        rows.append((" ".join(words).capitalize() + ".", label))
    return rows
