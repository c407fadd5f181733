"""Job state across emulator restarts and crashes (--state-dir), with orphaned replicas reaped."""

from __future__ import annotations

import json
import re
import time

import pytest

from emulator_testkit import PARENT, make_client, pid_alive, read_gcs_text, wait_for_state
from emulators.vertex import VertexEmulator

TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}


@pytest.fixture
def own_emulator(gcs_emulator, tmp_path):
    with VertexEmulator(gcs_endpoint=gcs_emulator.endpoint, state_dir=tmp_path / "state") as emulator:
        yield emulator


def _wait_log(emulator: VertexEmulator, name: str, pattern: str, timeout: float = 30) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(pattern, emulator.admin.job_log(name))
        if match:
            return match
        time.sleep(0.05)
    raise AssertionError(f"{pattern!r} not in the log of {name}:\n{emulator.admin.job_log(name)}")


def test_restart_with_state_dir_keeps_jobs_and_logs(own_emulator, make_job):
    client = make_client(own_emulator.endpoint)
    ok = client.create_custom_job(parent=PARENT, custom_job=make_job("write"))
    bad = client.create_custom_job(parent=PARENT, custom_job=make_job("fail"))
    ok_job, bad_job = (wait_for_state(client, j.name, TERMINAL) for j in (ok, bad))
    port = own_emulator.port
    own_emulator.restart()
    assert own_emulator.port == port
    client = make_client(own_emulator.endpoint)
    assert client.get_custom_job(name=ok.name).state.name == "JOB_STATE_SUCCEEDED"
    again = client.get_custom_job(name=bad.name)
    assert again.state.name == "JOB_STATE_FAILED" and again.error.message == bad_job.error.message
    assert again.create_time == bad_job.create_time and again.end_time == bad_job.end_time
    run = ok_job.labels["run"]
    assert [j.name for j in client.list_custom_jobs(request={"parent": PARENT, "filter": f"labels.run={run}"})] == [ok.name]
    assert "[workerpool0-0] done" in own_emulator.admin.job_log(ok.name)


def test_without_state_dir_jobs_are_forgotten(gcs_emulator, make_job):
    with VertexEmulator(gcs_endpoint=gcs_emulator.endpoint) as emulator:
        client = make_client(emulator.endpoint)
        job = client.create_custom_job(parent=PARENT, custom_job=make_job("write"))
        wait_for_state(client, job.name, TERMINAL)
        emulator.restart()
        assert emulator.admin.jobs() == []


def test_crash_while_running_reaps_the_orphan_and_fails_the_job(own_emulator, make_job):
    client = make_client(own_emulator.endpoint)
    job = client.create_custom_job(parent=PARENT, custom_job=make_job("sleep", ["600"]))
    wait_for_state(client, job.name, {"JOB_STATE_RUNNING"})
    pid, child = map(int, _wait_log(own_emulator, job.name, r"pid=(\d+) child=(\d+)").groups())
    own_emulator.kill()  # SIGKILL: the server cannot clean up
    assert pid_alive(pid) and pid_alive(child)
    own_emulator.start()
    client = make_client(own_emulator.endpoint)
    failed = wait_for_state(client, job.name, TERMINAL)
    assert failed.state.name == "JOB_STATE_FAILED" and failed.error.code == 13
    assert "emulator restarted" in failed.error.message
    deadline = time.monotonic() + 5
    while (pid_alive(pid) or pid_alive(child)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(pid) and not pid_alive(child)


def test_crash_with_restart_job_on_worker_restart_restarts_the_job(own_emulator, make_job):
    client = make_client(own_emulator.endpoint)
    spec = make_job("resume", ["600"], restart_on_worker_restart=True)
    job = client.create_custom_job(parent=PARENT, custom_job=spec)
    _wait_log(own_emulator, job.name, "checkpoint written")
    own_emulator.kill()
    own_emulator.start()
    client = make_client(own_emulator.endpoint)
    done = wait_for_state(client, job.name, TERMINAL, timeout=60)
    assert done.state.name == "JOB_STATE_SUCCEEDED", done.error.message
    base = spec["job_spec"]["base_output_directory"]["output_uri_prefix"]
    assert json.loads(read_gcs_text(f"{base}/model/resumed.json"))["checkpoint"]["epoch"] == 1


def test_graceful_stop_kills_replicas(own_emulator, make_job):
    client = make_client(own_emulator.endpoint)
    job = client.create_custom_job(parent=PARENT, custom_job=make_job("sleep", ["600"]))
    pid, child = map(int, _wait_log(own_emulator, job.name, r"pid=(\d+) child=(\d+)").groups())
    server_pid = own_emulator.pid
    own_emulator.stop()
    assert not pid_alive(server_pid) and not pid_alive(pid) and not pid_alive(child)
    own_emulator.start()
    client = make_client(own_emulator.endpoint)
    assert wait_for_state(client, job.name, TERMINAL).state.name == "JOB_STATE_FAILED"


def test_instant_runner_needs_no_processes(gcs_emulator, make_job):
    with VertexEmulator(gcs_endpoint=gcs_emulator.endpoint, runner="instant", tick=0.05) as emulator:
        client = make_client(emulator.endpoint)
        ok = client.create_custom_job(parent=PARENT, custom_job=make_job("write"))
        failing = make_job("write")
        failing["job_spec"]["worker_pool_specs"][0]["container_spec"]["env"] = [
            {"name": "EMULATOR_EXIT_CODE", "value": "2"}]
        bad = client.create_custom_job(parent=PARENT, custom_job=failing)
        assert wait_for_state(client, ok.name, TERMINAL).state.name == "JOB_STATE_SUCCEEDED"
        failed = wait_for_state(client, bad.name, TERMINAL)
        assert failed.state.name == "JOB_STATE_FAILED" and "non-zero status of 2" in failed.error.message
