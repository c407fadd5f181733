"""CSV splits -> validated (texts, labels); WordPiece tokenization (HF `tokenizers`); length-bucketed batches.

Tokenization runs in numpy (no tf.data, no tensorflow-text) so the same code works on every Keras backend.
Batches are padded to one of a few fixed lengths, so XLA compiles a handful of shapes instead of one per batch.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from trainer import LABELS
from trainer import storage
from trainer.errors import CheckpointError, DataError

LABEL_TO_ID = {name: i for i, name in enumerate(LABELS)}
STANDARD_BUCKETS = (32, 64, 96, 128, 192, 256, 384, 512)
MIN_BUCKET_SHARE = 0.05
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class Split:
    name: str
    texts: List[str]
    labels: np.ndarray  # int32 ids in LABELS order


def load_split(uri: str, name: str) -> Split:
    """Read and validate one `text,label` CSV (UTF-8)."""
    raw = storage.read_bytes(uri)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{name} split {uri} is not UTF-8 (byte {exc.start})") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise DataError(f"{name} split {uri} is empty (no header)")
    header = [h.strip().lower() for h in header]
    missing = [c for c in ("text", "label") if c not in header]
    if missing:
        raise DataError(f"{name} split {uri} is missing column(s) {', '.join(missing)} (header: {','.join(header)})")
    ti, li = header.index("text"), header.index("label")
    texts, labels = [], []
    for lineno, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) <= max(ti, li):
            raise DataError(f"{name} split {uri} line {lineno}: expected {len(header)} fields, got {len(row)}")
        label = row[li].strip()
        if label not in LABEL_TO_ID:
            raise DataError(f"{name} split {uri} line {lineno}: unknown label {label!r} "
                            f"(expected one of {', '.join(LABELS)})")
        texts.append(row[ti])
        labels.append(LABEL_TO_ID[label])
    if not texts:
        raise DataError(f"{name} split {uri} has no rows")
    return Split(name=name, texts=texts, labels=np.asarray(labels, dtype=np.int32))


# --------------------------------------------------------------------------------------------- tokenizer


def _lowercase_for(checkpoint_dir: str) -> bool:
    """do_lower_case from tokenizer_config.json if present, else True (uncased checkpoints are the norm)."""
    path = os.path.join(checkpoint_dir, "tokenizer_config.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                cfg = json.load(f)
            return bool(cfg.get("do_lower_case", cfg.get("lowercase", True)))
        except (OSError, ValueError):
            pass
    return True


def load_tokenizer(vocab_path: str, lowercase: bool, max_seq_len: int):
    """BERT WordPiece tokenizer ([CLS] ... [SEP], truncated to max_seq_len) from a vocab.txt."""
    from tokenizers import BertWordPieceTokenizer

    if not os.path.exists(vocab_path):
        raise CheckpointError(f"vocab file {vocab_path} does not exist")
    tok = BertWordPieceTokenizer(vocab_path, lowercase=lowercase)
    for t in ("[PAD]", "[CLS]", "[SEP]", "[UNK]"):
        if tok.token_to_id(t) is None:
            raise CheckpointError(f"vocab {vocab_path} has no {t} token")
    tok.enable_truncation(max_length=max_seq_len)
    return tok


def checkpoint_tokenizer(checkpoint_dir: str, max_seq_len: int):
    vocab = os.path.join(checkpoint_dir, "vocab.txt")
    if not os.path.exists(vocab):
        raise CheckpointError(f"checkpoint {checkpoint_dir} has no vocab.txt (needed for WordPiece tokenization)")
    lowercase = _lowercase_for(checkpoint_dir)
    return load_tokenizer(vocab, lowercase, max_seq_len), vocab, lowercase


def train_wordpiece_vocab(texts: Sequence[str], vocab_size: int, out_dir: str) -> str:
    """Train an uncased WordPiece vocab on `texts`; returns the vocab.txt path ([PAD] has id 0)."""
    from tokenizers import BertWordPieceTokenizer

    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(list(texts), vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                            show_progress=False)
    # The id order of the learned tokens differs between processes (hash-map order in the Rust trainer):
    # write specials first, then the tokens sorted, so ids are reproducible whenever the learned set is (on
    # PhraseBank it was, 3 of 3 processes; on small corpora tied merges can change the set itself, which is
    # why a resumed run reuses the vocab stored in the checkpoint dir).
    vocab = tok.get_vocab()
    rest = sorted(t for t in vocab if t not in SPECIAL_TOKENS)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(SPECIAL_TOKENS + rest) + "\n")
    return path


def encode(tokenizer, texts: Sequence[str]) -> List[np.ndarray]:
    return [np.asarray(e.ids, dtype=np.int32) for e in tokenizer.encode_batch(list(texts))]


# --------------------------------------------------------------------------------------------- bucketing


def bucket_lengths(train_lengths: Sequence[int], max_seq_len: int,
                   given: Optional[Sequence[int]] = None) -> Tuple[int, ...]:
    """The padded lengths of the batches, always ending at max_seq_len: `given`, or the standard lengths below
    max_seq_len minus those that would hold < MIN_BUCKET_SHARE of the training sentences (these go to the next
    longer length). Each length costs one XLA compilation of the train and of the predict step, which a handful
    of sentences do not repay (PhraseBank: 2 % of the sentences need 65-96 tokens)."""
    if given is not None:
        return tuple(sorted(set(given) | {max_seq_len}))
    lengths = np.minimum(np.asarray(train_lengths, dtype=np.int64), max_seq_len)
    kept, below = [], 0
    for b in sorted(b for b in STANDARD_BUCKETS if b < max_seq_len):
        share = float(((lengths > below) & (lengths <= b)).mean()) if len(lengths) else 0.0
        if share >= MIN_BUCKET_SHARE:
            kept.append(b)
            below = b
    return tuple(kept) + (max_seq_len,)


@dataclass
class Batch:
    inputs: Dict[str, np.ndarray]
    labels: np.ndarray
    weights: np.ndarray
    index: np.ndarray  # row of each sample in the split; -1 for padding rows


class BucketedBatches:
    """Fixed-size batches whose padded length is one of `buckets`.

    Every bucket's last batch is filled up with copies weighted 0, so only len(buckets) shapes exist.
    """

    def __init__(self, ids: List[np.ndarray], labels: np.ndarray, batch_size: int, buckets: Sequence[int],
                 model: str, class_weights: Optional[np.ndarray] = None, pad_id: int = 0):
        self.ids = ids
        self.labels = labels
        self.batch_size = batch_size
        self.buckets = tuple(buckets)
        self.model = model
        self.class_weights = class_weights
        self.pad_id = pad_id
        lengths = np.asarray([len(x) for x in ids])
        self.bucket_of = np.searchsorted(np.asarray(self.buckets), lengths, side="left")
        self.per_bucket = [np.flatnonzero(self.bucket_of == b) for b in range(len(self.buckets))]

    def __len__(self) -> int:
        return sum(-(-len(rows) // self.batch_size) for rows in self.per_bucket)

    def plan(self, shuffle_seed: Optional[int]) -> List[Tuple[int, np.ndarray]]:
        """(bucket, rows) per batch; shuffled within buckets and across batches when shuffle_seed is set."""
        rng = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
        out = []
        for b, rows in enumerate(self.per_bucket):
            if rng is not None:
                rows = rng.permutation(rows)
            for start in range(0, len(rows), self.batch_size):
                out.append((b, rows[start:start + self.batch_size]))
        if rng is not None:
            order = rng.permutation(len(out))
            out = [out[i] for i in order]
        return out

    def make(self, bucket: int, rows: np.ndarray) -> Batch:
        length = self.buckets[bucket]
        n = len(rows)
        index = np.full(self.batch_size, -1, dtype=np.int64)
        index[:n] = rows
        # Filler rows repeat the first real sample (weight 0): an all-[PAD] row would be fully masked and
        # turn masked means / attention into NaN, and NaN * 0 is still NaN in the loss.
        filled = np.concatenate([rows, np.repeat(rows[:1], self.batch_size - n)])
        token_ids = np.full((self.batch_size, length), self.pad_id, dtype=np.int32)
        for i, r in enumerate(filled):
            seq = self.ids[r][:length]
            token_ids[i, :len(seq)] = seq
        labels = self.labels[filled].astype(np.int32)
        weights = np.zeros(self.batch_size, dtype=np.float32)
        weights[:n] = 1.0 if self.class_weights is None else self.class_weights[labels[:n]]
        if self.model == "bert":
            inputs = {
                "token_ids": token_ids,
                "segment_ids": np.zeros_like(token_ids),
                "padding_mask": (token_ids != self.pad_id).astype(np.int32),
            }
        else:
            inputs = {"token_ids": token_ids}
        return Batch(inputs=inputs, labels=labels, weights=weights, index=index)

    def iterate(self, shuffle_seed: Optional[int] = None) -> Iterator[Batch]:
        for b, rows in self.plan(shuffle_seed):
            yield self.make(b, rows)


def class_weights(labels: np.ndarray, scheme: str = "balanced", num_classes: int = len(LABELS)) -> np.ndarray:
    """Per-class loss weights. balanced: n / (k * count_c), as sklearn's; sqrt: its square root, which keeps
    most of the minority-class recall at a smaller cost in accuracy; none: ones. Classes absent from train get 1."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(num_classes, dtype=np.float32)
    if scheme == "none":
        return weights
    weights[present] = (len(labels) / (present.sum() * counts[present])).astype(np.float32)
    return np.sqrt(weights) if scheme == "sqrt" else weights
