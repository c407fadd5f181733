"""Bad input -> exit code 2 and exactly one stderr line `finsent-trainer: error: ...` naming the problem."""

import shutil

import pytest

from trainer_testkit import base_args, run_trainer

PREFIX = "finsent-trainer: error: "


def _assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(PREFIX)
    for n in needles:
        assert n in lines[0], lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr


class TestBadInput:
    @pytest.mark.parametrize("split,content,needle", [
        ("train", "sentence,label\nProfit rose,positive\n", "missing column(s) text"),
        ("validation", "text,label\nProfit rose,bullish\n", "unknown label 'bullish'"),
        ("test", "text,label\n", "test split"),
        ("train", "text\nProfit rose\n", "missing column(s) label"),
    ])
    def test_bad_csv(self, splits, tmp_path, split, content, needle):
        bad = tmp_path / f"{split}.csv"
        bad.write_text(content, encoding="utf-8")
        args = dict(splits, **{split: bad})
        proc = run_trainer(*base_args(args, tmp_path / "out", "lstm"))
        _assert_one_line_error(proc, needle, str(bad))
        assert not (tmp_path / "out" / "metrics.json").exists()

    def test_unreadable_uri(self, splits, tmp_path):
        missing = tmp_path / "nope" / "train.csv"
        proc = run_trainer(*base_args(dict(splits, train=missing), tmp_path / "out", "lstm"))
        _assert_one_line_error(proc, "cannot read", str(missing))

    def test_checkpoint_without_vocab(self, splits, tiny_bert, tmp_path):
        ckpt = tmp_path / "ckpt"
        shutil.copytree(tiny_bert, ckpt)
        (ckpt / "vocab.txt").unlink()
        proc = run_trainer(*base_args(splits, tmp_path / "out", "bert", "--pretrained", str(ckpt)))
        _assert_one_line_error(proc, "has no vocab.txt", str(ckpt))

    def test_pretrained_not_found(self, splits, tmp_path):
        proc = run_trainer(*base_args(splits, tmp_path / "out", "bert", "--pretrained", str(tmp_path / "none")))
        _assert_one_line_error(proc, "is not a directory")

    @pytest.mark.parametrize("extra,needle", [
        (["--epochs", "0"], "--epochs must be in [1, 100], got 0"),
        (["--patience", "0"], "--patience must be >= 1, got 0"),
        (["--warmup-ratio", "0.1"], "--warmup-ratio applies to bert only, not lstm"),
        (["--pooling", "mean"], "--pooling applies to bert only, not lstm"),
        (["--model", "gpt"], "invalid choice: 'gpt'"),
        (["--precision", "fp8"], "--precision"),
        (["--pretrained", "none", "--lstm-embeddings", "frozen"], "--lstm-embeddings frozen needs --pretrained"),
        (["--class-weights", "inverse"], "--class-weights"),
        (["--buckets", "32,200"], "--buckets 32,200: every length must be in [1, --max-seq-len"),
        (["--buckets", "short"], "--buckets must be 'auto' or comma-separated integers"),
    ])
    def test_bad_flags(self, splits, tmp_path, extra, needle):
        proc = run_trainer(*base_args(splits, tmp_path / "out", "lstm"), *extra)
        _assert_one_line_error(proc, needle)

    def test_bert_without_checkpoint(self, splits, tmp_path):
        proc = run_trainer(*base_args(splits, tmp_path / "out", "bert", "--pretrained", "none"))
        _assert_one_line_error(proc, "bert needs --pretrained")

    def test_missing_output_dir(self, splits, tmp_path):
        args = base_args(splits, tmp_path / "out", "lstm")
        i = args.index("--output-dir")
        del args[i:i + 2]
        proc = run_trainer(*args, extra_env={"AIP_MODEL_DIR": ""})
        _assert_one_line_error(proc, "--output-dir is required")


def test_help_documents_every_contract_flag():
    proc = run_trainer("--help")
    assert proc.returncode == 0
    for flag in ("--model", "--train-data", "--validation-data", "--test-data", "--output-dir", "--checkpoint-dir",
                 "--tensorboard-dir", "--pretrained", "--epochs", "--batch-size", "--learning-rate",
                 "--max-seq-len", "--seed", "--patience", "--precision", "--wandb-project", "--wandb-run-name",
                 "--wandb-tags", "--lstm-embeddings", "--class-weights", "--buckets"):
        assert flag in proc.stdout, flag
    assert "--stop-after-epochs" not in proc.stdout
