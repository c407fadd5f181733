"""The hyper-parameter schema: per-model defaults, the command line it writes is the one the trainer reads back,
and a value or flag the trainer cannot use is refused with one line naming it."""

import math

import pytest

from trainer import params
from trainer.config import parse_config
from trainer.errors import ConfigError

IO = ["--train-data=a.csv", "--validation-data=b.csv", "--test-data=c.csv", "--output-dir=out"]


def test_each_model_has_its_own_defaults():
    bert, lstm = params.defaults("bert"), params.defaults("lstm")
    assert (bert["learning_rate"], bert["epochs"], bert["patience"], bert["class_weights"], bert["dropout"]) == (
        5e-5, 4, 2, "balanced", 0.1)  # fmt: skip
    assert (lstm["learning_rate"], lstm["epochs"], lstm["patience"], lstm["class_weights"], lstm["dropout"]) == (
        2e-3, 15, 4, "sqrt", 0.5)  # fmt: skip
    assert lstm["lstm_embeddings"] == "frozen" and lstm["pretrained"] == bert["pretrained"] == params.BERT_CHECKPOINT
    assert "pooling" in bert and "pooling" not in lstm and "lstm_units" not in bert
    assert "warmup_ratio" not in lstm  # the BiLSTM's schedule has no warm-up


@pytest.mark.parametrize("model", params.MODELS)
def test_the_command_line_written_is_read_back_unchanged(model):
    given = {"epochs": 7, "buckets": [64, 32], "learning_rate": 1e-4}
    sent = params.resolve(model, given)
    assert sent["buckets"] == [32, 64, 128]
    cfg = parse_config([f"--model={model}", *params.to_argv(model, given), *IO])
    assert cfg.hyperparameters() == sent
    # ... and with no flag at all the trainer runs the same defaults
    assert parse_config([f"--model={model}", *IO]).hyperparameters() == params.defaults(model)


def test_the_bilstm_runs_without_a_checkpoint():
    lstm = params.resolve("lstm", {"pretrained": "none", "lstm_embeddings": "learned"})
    assert lstm["pretrained"] is None
    assert "--pretrained=none" in params.to_argv("lstm", lstm)


@pytest.mark.parametrize(("model", "given", "message"), [
    ("lstm", {"patience": 0}, "patience must be >= 1, got 0"),
    ("bert", {"warmup_ratio": 1.0}, "warmup_ratio must be in [0, 1), got 1.0"),
    ("bert", {"dropout": -0.1}, "dropout must be in [0, 1), got -0.1"),
    ("bert", {"learning_rate": math.nan}, "learning_rate must be a finite number"),
    ("lstm", {"lstm_vocab_size": 99}, "lstm_vocab_size must be >= 100, got 99"),
    ("bert", {"max_seq_len": 4}, "max_seq_len must be in [8, 512], got 4"),
    ("bert", {"epochs": "3"}, "epochs must be an integer, got '3'"),
    ("bert", {"buckets": [32, 200]}, "buckets 32,200: every length must be in [1, max_seq_len 128], got [200]"),
    ("lstm", {"pretrained": None}, "lstm_embeddings frozen needs pretrained"),
    ("bert", {"pretrained": None}, "bert needs pretrained"),
    ("lstm", {"pooling": "mean"}, "pooling applies to bert only, not lstm"),
    ("bert", {"lstm_units": 8}, "lstm_units applies to lstm only, not bert"),
    ("bert", {"epoch": 3}, "epoch is not a hyper-parameter of bert"),
])
def test_values_the_trainer_cannot_use_are_refused(model, given, message):
    with pytest.raises(ConfigError) as info:
        params.resolve(model, given)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_help_shows_the_default_of_each_model(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: bert 5e-05, lstm 0.002)" in text
    assert "lstm only. learned = embeddings" in text
