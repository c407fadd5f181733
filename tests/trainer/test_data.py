"""CSV validation, bucketing and class weights (trainer.data)."""

import numpy as np
import pytest

from trainer import data as D
from trainer.config import parse_buckets
from trainer.errors import DataError


class TestLoadSplit:
    def test_reads_labels_in_contract_order(self, tmp_path):
        p = tmp_path / "s.csv"
        p.write_text('text,label\n"Sales rose, strongly",positive\nNo change,neutral\nLoss,negative\n',
                     encoding="utf-8")
        s = D.load_split(str(p), "train")
        assert s.texts == ["Sales rose, strongly", "No change", "Loss"]
        assert s.labels.tolist() == [2, 1, 0]

    def test_column_order_does_not_matter(self, tmp_path):
        p = tmp_path / "s.csv"
        p.write_text("label,text\nneutral,hello\n", encoding="utf-8")
        assert D.load_split(str(p), "train").texts == ["hello"]

    @pytest.mark.parametrize("content,match", [
        ("sentence,label\nhi,neutral\n", "missing column\\(s\\) text"),
        ("text,label\nhi,bullish\n", "line 2: unknown label 'bullish'"),
        ("text,label\n", "has no rows"),
        ("", "empty"),
    ])
    def test_bad_csv_names_the_problem(self, tmp_path, content, match):
        p = tmp_path / "bad.csv"
        p.write_text(content, encoding="utf-8")
        with pytest.raises(DataError, match=match):
            D.load_split(str(p), "validation")

    def test_non_utf8_is_rejected(self, tmp_path):
        p = tmp_path / "latin.csv"
        p.write_bytes("text,label\nOsakeyhti\xf6,neutral\n".encode("latin-1"))
        with pytest.raises(DataError, match="not UTF-8"):
            D.load_split(str(p), "test")


class TestBucketing:
    def _batches(self, lengths, batch_size=4, buckets=(32, 64), weights=None):
        ids = [np.arange(1, n + 1, dtype=np.int32) for n in lengths]
        labels = np.asarray([i % 3 for i in range(len(lengths))], dtype=np.int32)
        return D.BucketedBatches(ids, labels, batch_size, buckets, "bert", class_weights=weights)

    def test_auto_buckets_are_the_standard_lengths_the_data_fills(self):
        spread = [20] * 30 + [50] * 30 + [80] * 30 + [120] * 10
        assert D.bucket_lengths(spread, 128) == (32, 64, 96, 128)
        assert D.bucket_lengths(spread, 50) == (32, 50)
        assert D.bucket_lengths(spread, 16) == (16,)
        # PhraseBank's shape: 63 % <= 32 tokens, 35 % <= 64, 2 % <= 96, 0.1 % longer. A length that 2 % of the
        # sentences would use is not worth its own compilations: they are padded to the next one.
        phrasebank = [25] * 630 + [50] * 350 + [80] * 19 + [110] * 1
        assert D.bucket_lengths(phrasebank, 128) == (32, 64, 128)
        assert D.bucket_lengths([300] * 10, 512) == (384, 512)
        assert D.bucket_lengths([500] * 10, 512) == (512,)  # only the longest length is filled: one shape

    def test_given_buckets_always_end_at_max_seq_len(self):
        assert parse_buckets("auto", 128) is None
        assert parse_buckets("64", 128) == (64, 128)
        assert parse_buckets("128", 128) == (128,)  # one shape: one compilation per step function
        assert parse_buckets(" 96, 48,96", 128) == (48, 96, 128)
        assert D.bucket_lengths([20] * 100, 128, given=(64, 128)) == (64, 128)

    def test_only_bucket_shapes_and_every_sample_once(self):
        lengths = [5, 40, 7, 33, 12, 64, 3, 30, 31, 2, 60]
        bb = self._batches(lengths)
        seen = []
        shapes = set()
        for b in bb.iterate(shuffle_seed=3):
            shapes.add(b.inputs["token_ids"].shape)
            real = b.index >= 0
            seen += b.index[real].tolist()
            # filler rows weigh nothing; real rows are not truncated
            assert (b.weights[~real] == 0).all() and (b.weights[real] > 0).all()
            for row, i in zip(b.inputs["token_ids"][real], b.index[real]):
                assert (row != 0).sum() == lengths[i]
            assert (b.inputs["padding_mask"] == (b.inputs["token_ids"] != 0)).all()
        assert shapes <= {(4, 32), (4, 64)}
        assert sorted(seen) == list(range(len(lengths)))
        assert len(bb) == len(list(bb.iterate()))

    def test_filler_rows_are_never_all_padding(self):
        bb = self._batches([3, 4, 5])
        (b,) = list(bb.iterate())
        assert (b.inputs["padding_mask"].sum(axis=1) > 0).all()

    def test_shuffle_depends_on_seed_only(self):
        bb = self._batches(list(range(1, 60)))
        order = lambda s: [b.index.tolist() for b in bb.iterate(shuffle_seed=s)]  # noqa: E731
        assert order(1) == order(1)
        assert order(1) != order(2)


def test_class_weights_schemes():
    labels = np.asarray([0, 1, 1, 1, 2, 2])
    np.testing.assert_allclose(D.class_weights(labels, "balanced"), [2.0, 2 / 3, 1.0], rtol=1e-6)
    np.testing.assert_allclose(D.class_weights(labels, "sqrt"), np.sqrt([2.0, 2 / 3, 1.0]), rtol=1e-6)
    np.testing.assert_allclose(D.class_weights(labels, "none"), [1.0, 1.0, 1.0])
    # a class missing from train gets weight 1 instead of a division by zero
    np.testing.assert_allclose(D.class_weights(np.asarray([1, 1, 2]), "balanced"), [1.0, 0.75, 1.5], rtol=1e-6)


def test_trained_vocab_puts_pad_first(tmp_path):
    path = D.train_wordpiece_vocab(["profit rose", "loss fell", "profit fell"] * 5, 200, str(tmp_path))
    tok = D.load_tokenizer(path, True, 16)
    assert tok.token_to_id("[PAD]") == 0
    assert tok.encode("Profit rose").tokens[0] == "[CLS]"

