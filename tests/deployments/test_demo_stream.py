"""`make demo`'s terminal: a run's state changes and log lines printed as they come, then the metrics table; a
failed run's error line and a non-zero exit. The formatting is pure; the follower runs against the session's real
Prefect server and a real runner serving two tiny flows (tests/deployments/stream_flows.py)."""

from __future__ import annotations

import logging
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from deployments.demo import format_log, format_state, metrics_table, run_and_report
from emulators._proc import kill_group
from tests.deployments import stream_flows
from tests.deployments.conftest import ROOT
from tests.reliability.conftest import subprocess_env, wait_until

WHEN = datetime(2026, 12, 1, 12, 0, 5, tzinfo=timezone.utc)


def test_a_log_line_has_its_time_task_and_level_and_debug_is_hidden():
    clock = WHEN.astimezone().strftime("%H:%M:%S")
    assert format_log(logging.INFO, "[lstm] workerpool0-0: Epoch 1/2", WHEN, "train-lstm") == \
        f"{clock} train-lstm | [lstm] workerpool0-0: Epoch 1/2"
    assert format_log(logging.WARNING, "no roles/logging.viewer", WHEN) == f"{clock} WARNING: no roles/logging.viewer"
    assert format_log(logging.DEBUG, "chatter", WHEN) is None
    assert format_state("Failed", "DataError: bad labels", WHEN) == f"{clock} flow run -> Failed: DataError: bad labels"


def test_a_traceback_is_cut_to_its_first_line_and_the_error():
    trace = ('Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n    raise DataError("bad labels")\n'
             "tasks.errors.DataError: bad labels\n")
    line = format_log(logging.ERROR, "Encountered an exception\n" + trace, WHEN)
    assert line.endswith("ERROR: Encountered an exception\n         ... tasks.errors.DataError: bad labels")
    assert "File" not in line
    # Prefect's own lines name the error already: the first line alone, not the error twice.
    line = format_log(logging.ERROR, "Task run failed with exception: DataError('bad labels')\n" + trace, WHEN)
    assert line.endswith("ERROR: Task run failed with exception: DataError('bad labels')")


def test_the_metrics_table_shows_cost_only_when_the_rows_have_it():
    row = {"model": "lstm", "test_accuracy": 0.79112, "test_macro_f1": 0.7459, "epochs": 15, "train_seconds": 80.5}
    without = metrics_table([row]).splitlines()
    assert without[0].split() == ["model", "test_accuracy", "test_macro_f1", "epochs", "train_seconds"]
    assert without[1].split() == ["lstm", "0.7911", "0.7459", "15", "80.5"]
    with_cost = metrics_table([row | {"cost_usd": 0.01234}, {"model": "bert", "cost_usd": None}]).splitlines()
    assert with_cost[0].split()[-1] == "cost_usd" and with_cost[1].split()[-1] == "0.0123"
    assert with_cost[2].split() == ["bert", "-", "-", "-", "-", "-"]


@pytest.fixture(scope="module")
def stream_runner(prefect_server, tmp_path_factory):
    """A runner serving stream-ok/ok and stream-fail/fails; yields the environment run_and_report needs."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    import anyio

    env = subprocess_env(prefect_server, PREFECT_RUNNER_POLL_FREQUENCY="1")
    log = tmp_path_factory.mktemp("stream") / "runner.log"
    runner = subprocess.Popen([sys.executable, "-m", "tests.deployments.stream_flows"], cwd=ROOT, env=env,
                              stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    async def served() -> bool:
        async with get_client() as client:
            try:
                await client.read_deployment_by_name("stream-fail/fails")
                return True
            except ObjectNotFound:
                return False

    try:
        wait_until(lambda: anyio.run(served), 90, f"the stream deployments (runner log: {log})", 0.5)
        yield env
    finally:
        kill_group(runner)


def test_a_finished_run_prints_its_states_and_lines_in_order_then_the_table(stream_runner, capsys):
    assert run_and_report(stream_runner, None, deployment="stream-ok/ok") == 0
    out = capsys.readouterr().out.splitlines()
    text = "\n".join(out)

    def where(fragment: str) -> int:
        (index,) = [i for i, line in enumerate(out) if fragment in line]  # printed once
        return index

    epochs = [where(f"train-lstm | [lstm] workerpool0-0: Epoch {k}/3") for k in (1, 2, 3)]
    assert where("flow run -> Running") < epochs[0] < epochs[1] < epochs[2] < where("flow run -> Completed")
    assert "DEBUG" not in text and "a DEBUG line" not in text
    table = out.index(next(line for line in out if line.startswith("model ")))
    assert table > where("flow run -> Completed")
    assert out[table].split()[-1] == "cost_usd" and out[table + 1].split() == \
        ["lstm", "0.5000", "0.4000", "3", "1.5", "0.0012"]
    assert "ended Completed" in out[-1]


def test_a_failed_run_prints_its_error_line_and_returns_non_zero(stream_runner, capsys):
    assert run_and_report(stream_runner, None, deployment="stream-fail/fails") == 1
    out = capsys.readouterr().out.splitlines()
    assert any(line.endswith("reading the data") for line in out)
    assert "ended Failed" in out[-2]
    assert out[-1].startswith("[demo] error: ") and stream_flows.ERROR in out[-1]
