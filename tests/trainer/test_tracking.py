"""wandb: offline without a key, and a failing wandb never fails training."""

import pytest

from trainer.tracking import Tracker


@pytest.fixture()
def no_key(monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_API_KEY_SECRET", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)


def test_without_key_runs_offline(no_key, tmp_path, monkeypatch):
    import os

    t = Tracker("finsent-test", "run-1", ["ci"], {"lr": 1e-3}, work_dir=str(tmp_path))
    assert t.active
    assert os.environ["WANDB_MODE"] == "offline"
    t.log({"val/macro_f1": 0.5}, step=1)
    t.summary({"test/accuracy": 0.9})
    t.finish()
    assert list((tmp_path / "wandb").glob("offline-run-*")), list(tmp_path.rglob("*"))[:10]


def test_wandb_failure_is_ignored(no_key, tmp_path, monkeypatch, caplog):
    import wandb

    def boom(*a, **k):
        raise ConnectionError("wandb unreachable")

    monkeypatch.setattr(wandb, "init", boom)
    t = Tracker("finsent-test", None, [], {}, work_dir=str(tmp_path))
    assert not t.active
    t.log({"x": 1})
    t.finish()
    assert "wandb init failed" in caplog.text

