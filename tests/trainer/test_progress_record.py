"""The trainer's progress record (trainer/src/trainer/progress.py): what it says, when it is written, and that a
resumed run continues it forward."""

from __future__ import annotations

import json

import pytest

from trainer import progress as P
from trainer_testkit import LSTM_FROM_SCRATCH, run_trainer


def _state(epoch: int, *, stopped_early: bool = False) -> dict:
    history = [{"epoch": k, "loss": 1.0 / k, "val_accuracy": 0.5 + k / 10, "val_macro_f1": 0.4 + k / 10,
                "seconds": 2.0} for k in range(1, epoch + 1)]
    return {"epoch": epoch, "history": history, "stopped_early": stopped_early}


class Clock:
    def __init__(self):
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_percent_counts_finished_epochs_and_the_steps_of_the_current_one():
    assert P.percent_of(1, 0, 10, 4) == 0.0
    assert P.percent_of(1, 5, 10, 4) == 12.5
    assert P.percent_of(3, 10, 10, 4) == 75.0
    assert P.percent_of(4, 10, 10, 4) == 100.0
    assert P.percent_of(2, 3, 10, 4, finished=True) == 100.0  # early stop: the planned training is over
    assert P.percent_of(9, 99, 10, 4) == 100.0 and P.percent_of(1, 1, 0, 4) == 0.0  # clamped, no division by 0


def test_a_resume_continues_only_its_own_run_s_record():
    mine = {"model": "lstm", "epochs": 4, "percent": 37.5, "history": [{"epoch": 1}]}
    assert P.resume_floor(mine, "lstm", 4, epochs_done=1) == 37.5
    assert P.resume_floor(mine, "bert", 4, epochs_done=1) == 0.0
    assert P.resume_floor(mine, "lstm", 6, epochs_done=1) == 0.0
    assert P.resume_floor(dict(mine, history=[{"epoch": 1}, {"epoch": 2}]), "lstm", 4, epochs_done=1) == 0.0
    assert P.resume_floor(None, "lstm", 4, epochs_done=1) == 0.0


def test_the_interval_comes_from_the_environment_when_set(monkeypatch):
    monkeypatch.delenv(P.INTERVAL_ENV, raising=False)
    assert P.interval_seconds() == 30.0
    monkeypatch.setenv(P.INTERVAL_ENV, "0.5")
    assert P.interval_seconds() == 0.5
    monkeypatch.setenv(P.INTERVAL_ENV, "soon")
    assert P.interval_seconds() == 30.0


def test_only_the_chief_replica_writes(tmp_path, monkeypatch):
    worker = {"cluster": {"workerpool0": ["chief:2222"], "workerpool1": ["w:2222"]},
              "task": {"type": "workerpool1", "index": 0}}
    monkeypatch.setenv("CLUSTER_SPEC", json.dumps(worker))
    rec = P.ProgressRecorder(str(tmp_path), "lstm", epochs=1, steps_per_epoch=1, samples_per_epoch=1, interval=0.0)
    rec.start(_state(0))
    rec.epoch_end(_state(1))
    assert not (tmp_path / P.PROGRESS_FILE).exists(), "a worker writes no record"
    monkeypatch.setenv("CLUSTER_SPEC", json.dumps(worker | {"task": {"type": "workerpool0", "index": 0}}))
    chief = P.ProgressRecorder(str(tmp_path), "lstm", epochs=1, steps_per_epoch=1, samples_per_epoch=1, interval=0.0)
    chief.start(_state(0))
    assert (tmp_path / P.PROGRESS_FILE).exists()


def test_recorder_writes_at_start_throttled_inside_an_epoch_and_at_every_epoch_end(tmp_path):
    clock = Clock()
    rec = P.ProgressRecorder(str(tmp_path), "lstm", epochs=2, steps_per_epoch=10, samples_per_epoch=320,
                             interval=30.0, clock=clock)
    path = tmp_path / P.PROGRESS_FILE

    def read() -> dict:
        return json.loads(path.read_text())

    rec.start(_state(0))
    first = read()
    assert (first["epoch"], first["step"], first["percent"], first["history"]) == (1, 0, 0.0, [])
    rec.epoch_begin(0)
    clock.now += 5
    rec.batch_end(0, 2, 1.3)  # 5 s after the start's write: not yet
    assert read() == first
    clock.now += 30
    rec.batch_end(0, 5, 1.2)
    mid = read()
    assert (mid["epoch"], mid["step"], mid["percent"], mid["loss"]) == (1, 5, 25.0, 1.2)
    assert mid["samples_per_second"] == pytest.approx(5 * 32 / 35, abs=0.01)
    assert mid["eta_seconds"] == pytest.approx(15 * 7.0, abs=0.1)  # 15 steps left at 35 s / 5 steps
    clock.now += 1
    rec.epoch_end(_state(1))  # an epoch end is always written
    end = read()
    assert (end["epoch"], end["percent"], end["val_macro_f1"], end["finished"]) == (1, 50.0, 0.5, False)
    assert end["history"] == [{"epoch": 1, "loss": 1.0, "val_accuracy": 0.6, "val_macro_f1": 0.5, "seconds": 2.0}]
    rec.epoch_end(_state(2))
    last = read()
    assert (last["percent"], last["finished"], last["eta_seconds"]) == (100.0, True, 0.0)
    assert [e["epoch"] for e in last["history"]] == [1, 2]
    assert not list(tmp_path.glob("*.tmp")), "written through a temp file and a rename"


def test_a_resumed_recorder_keeps_the_history_and_never_reports_less(tmp_path):
    clock = Clock()
    before = P.ProgressRecorder(str(tmp_path), "lstm", epochs=4, steps_per_epoch=10, samples_per_epoch=320,
                                interval=0.0, clock=clock)
    before.start(_state(0))
    before.epoch_end(_state(1))
    before.epoch_begin(1)
    clock.now += 1
    before.batch_end(1, 8, 0.9)  # 45 %, then the VM goes away
    assert before.record["percent"] == 45.0

    after = P.ProgressRecorder(str(tmp_path), "lstm", epochs=4, steps_per_epoch=10, samples_per_epoch=320,
                               interval=0.0, clock=clock)
    after.start(_state(1))  # the checkpoint holds epoch 1 only: epoch 2 starts again at step 0
    seen = [after.record["percent"]]
    after.epoch_begin(1)
    for step in range(1, 11):
        clock.now += 1
        after.batch_end(1, step, 0.8)
        seen.append(after.record["percent"])
    after.epoch_end(_state(2))
    seen.append(after.record["percent"])
    assert seen == sorted(seen) and seen[0] == 45.0 and seen[-1] == 50.0
    assert after.record["resumed_from_epoch"] == 1 and [e["epoch"] for e in after.record["history"]] == [1, 2]


def test_a_write_that_fails_is_logged_once_and_training_goes_on(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("x")  # the output "folder" is a file: every write fails
    rec = P.ProgressRecorder(str(blocker), "lstm", epochs=1, steps_per_epoch=1, samples_per_epoch=1, interval=0.0)
    rec.start(_state(0))
    rec.epoch_end(_state(1))
    assert rec.record["percent"] == 100.0
    assert sum("cannot write the progress record" in r.message for r in caplog.records) == 1


def test_a_killed_and_resumed_training_leaves_one_forward_record_and_the_history_in_metrics(splits, tmp_path):
    out, ck = tmp_path / "out", tmp_path / "ck"
    args = ["--model", "lstm", "--train-data", str(splits["train"]), "--validation-data", str(splits["validation"]),
            "--test-data", str(splits["test"]), "--output-dir", str(out), *LSTM_FROM_SCRATCH, "--epochs", "2",
            "--patience", "5", "--batch-size", "32", "--max-seq-len", "32", "--checkpoint-dir", str(ck)]
    env = {P.INTERVAL_ENV: "0"}  # every step: the in-epoch writes are exercised too
    killed = run_trainer(*args, "--stop-after-epochs", "1", extra_env=env)
    assert killed.returncode == 75, killed.stdout[-3000:] + killed.stderr
    after_kill = json.loads((out / P.PROGRESS_FILE).read_text())
    assert (after_kill["epoch"], after_kill["percent"], after_kill["finished"]) == (1, 50.0, False)
    assert after_kill["val_macro_f1"] is not None and after_kill["steps_per_epoch"] >= 1

    resumed = run_trainer(*args, extra_env=env)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr
    final = json.loads((out / P.PROGRESS_FILE).read_text())
    assert (final["percent"], final["finished"], final["resumed_from_epoch"]) == (100.0, True, 1)
    assert [e["epoch"] for e in final["history"]] == [1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["history"] == final["history"], "one history: the record's and metrics.json's"
    assert set(metrics["train"]["history"][0]) == {"epoch", "loss", "val_accuracy", "val_macro_f1", "seconds"}
