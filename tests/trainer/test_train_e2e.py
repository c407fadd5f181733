"""Both models train through the CLI, export a model that reloads with plain Keras, and write metrics.json;
a killed run resumes from its last finished epoch."""

import json

import numpy as np
import pytest

from trainer_testkit import LSTM_FROM_SCRATCH, base_args, check_metrics_shape, reload_and_score, run_trainer


@pytest.mark.parametrize("model", ["bert", "lstm"])
def test_train_export_reload(model, splits, tiny_bert, tmp_path):
    out = tmp_path / "out"
    extra = ["--epochs", "2", "--learning-rate", "5e-3"]
    extra += ["--pretrained", str(tiny_bert)] if model == "bert" else LSTM_FROM_SCRATCH
    proc = run_trainer(*base_args(splits, out, model, *extra))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert proc.stderr.strip() == ""  or "error" not in proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    check_metrics_shape(m, model, n_test=60)
    assert m["train"]["epochs_run"] == 2 and m["train"]["resumed_from_epoch"] == 0
    for name in ("model.keras", "vocab.txt", "labels.json", "preprocessing.json"):
        assert (out / name).exists(), name
    # the export is the evaluated model: same test accuracy outside the trainer (up to padding round-off)
    assert reload_and_score(out, splits["test"]) == pytest.approx(m["test"]["accuracy"], abs=0.034)
    # ... and only the model: no optimizer state (AdamW's moments would triple the file)
    import keras
    import keras_hub  # noqa: F401  registers BertBackbone

    exported = keras.saving.load_model(str(out / "model.keras"))
    assert getattr(exported, "optimizer", None) is None
    assert (out / "model.keras").stat().st_size < 1.2 * 4 * exported.count_params() + 2**20


def test_lstm_learns_the_synthetic_task(splits, tmp_path):
    """Also with every batch padded to one length (--buckets = --max-seq-len 64: one XLA compilation per step
    function)."""
    out = tmp_path / "out"
    proc = run_trainer(*base_args(splits, out, "lstm", *LSTM_FROM_SCRATCH, "--epochs", "8", "--buckets", "64"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["test"]["accuracy"] >= 0.8, m["test"]
    assert m["hyperparameters"]["buckets"] == [64]
    assert json.loads((out / "preprocessing.json").read_text())["buckets"] == [64]


def test_lstm_on_frozen_pretrained_embeddings(splits, tiny_bert, tmp_path):
    """--lstm-embeddings frozen: the checkpoint's vocab and token embeddings, unchanged by training."""
    from safetensors.numpy import load_file

    out = tmp_path / "out"
    proc = run_trainer(*base_args(splits, out, "lstm", "--epochs", "2", "--pretrained", str(tiny_bert),
                                  "--lstm-embeddings", "frozen", "--class-weights", "sqrt"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["hyperparameters"]["lstm_embeddings"] == "frozen"
    assert m["hyperparameters"]["class_weights"] == "sqrt" and len(m["hyperparameters"]["class_weight_values"]) == 3
    assert (out / "vocab.txt").read_text() == (tiny_bert / "vocab.txt").read_text()

    import keras

    exported = keras.saving.load_model(str(out / "model.keras")).get_layer("embedding").get_weights()[0]
    checkpoint = next(v for k, v in load_file(str(tiny_bert / "model.safetensors")).items()
                      if k.endswith("word_embeddings.weight"))
    np.testing.assert_array_equal(exported, checkpoint)
    assert reload_and_score(out, splits["test"]) == pytest.approx(m["test"]["accuracy"], abs=0.034)


def test_resume_after_kill_trains_no_epoch_twice(splits, tmp_path):
    out, ck = tmp_path / "out", tmp_path / "ck"
    args = base_args(splits, out, "lstm", *LSTM_FROM_SCRATCH, "--epochs", "3", "--patience", "5",
                     "--checkpoint-dir", str(ck))

    killed = run_trainer(*args, "--stop-after-epochs", "1")
    assert killed.returncode == 75, killed.stdout[-3000:] + killed.stderr
    assert not (out / "metrics.json").exists()  # a killed run never looks complete
    assert json.loads((ck / "state.json").read_text())["epoch"] == 1
    # A kill between the epoch log's upload and state.json's (the commit point) leaves a line for epoch 2 that
    # the checkpoint does not hold: the resumed run drops it and trains epoch 2 again.
    with open(ck / "epochs.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "run_id": "killed-between-uploads"}) + "\n")

    resumed = run_trainer(*args)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr
    assert "resuming from" in resumed.stdout
    steps_per_epoch = json.loads((ck / "state.json").read_text())["optimizer_iterations"] // 3
    assert f"optimizer step {steps_per_epoch}" in resumed.stdout  # AdamW moments/step restored, not reset
    m = json.loads((out / "metrics.json").read_text())
    assert m["train"]["epochs_run"] == 3 and m["train"]["resumed_from_epoch"] == 1

    log = [json.loads(line) for line in (ck / "epochs.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2, 3]  # every epoch exactly once
    assert log[0]["run_id"] != log[1]["run_id"] == log[2]["run_id"]  # epoch 1 by the killed process only
    assert "killed-between-uploads" not in {e["run_id"] for e in log}
    history = json.loads((out / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    # only the last (and best) epoch's files are kept
    assert {p.name for p in ck.iterdir() if p.name.startswith("epoch-")} <= {"epoch-0001", "epoch-0002",
                                                                              "epoch-0003"}

    again = run_trainer(*args)  # restarted after the run finished: nothing to train, same result
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr
    m2 = json.loads((out / "metrics.json").read_text())
    assert m2["train"]["epochs_run"] == 3 and m2["train"]["resumed_from_epoch"] == 3
    assert m2["test"] == m["test"]
    assert len((ck / "epochs.jsonl").read_text().splitlines()) == 3


def test_checkpoint_from_other_settings_is_refused(splits, tmp_path):
    ck = tmp_path / "ck"
    args = ("--epochs", "1", "--checkpoint-dir", str(ck), *LSTM_FROM_SCRATCH)
    first = run_trainer(*base_args(splits, tmp_path / "o1", "lstm", *args))
    assert first.returncode == 0, first.stderr
    other = run_trainer(*base_args(splits, tmp_path / "o2", "lstm", *args, "--lstm-units", "8"))
    assert other.returncode == 2
    assert "holds a run with different settings" in other.stderr
