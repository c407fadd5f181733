"""Task level (`JobRunner.run`) against the Vertex emulator's fault injection, real tiny LSTM trainings:
API bursts, a create whose response is lost, spot preemption with and without restart, user errors."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from google.api_core.exceptions import NotFound
from google.cloud import storage

from tasks import run_identity, vertex
from tasks.config import parse_config
from tasks.errors import JobFailedError, RetryableJobError
from tasks.layout import BucketLayout
from tests.emulators.emujob_sdist import run_module
from tests.reliability.conftest import lstm_config, run_jobs, wait_until
from trainer.storage import parse_gs_uri


def _cfg(vertex_emulator, staged, **overrides):
    return parse_config(lstm_config(vertex_emulator.endpoint, staged["bucket"], "unused", **overrides))


# The policy's rules with waits of seconds (the production backoff starts at a minute).
QUICK_POLICY = dict(backoff_initial_seconds=1.0, backoff_multiplier=2.0, backoff_max_seconds=4.0)


def quick_runner(cfg, lines: list[str], **kwargs) -> vertex.JobRunner:
    """A JobRunner whose RecoveryPolicy (the production one, for cfg.max_infra_retries) waits seconds, not minutes."""
    policy = vertex.RecoveryPolicy(max_resubmits=cfg.max_infra_retries, **QUICK_POLICY)
    return vertex.JobRunner(cfg, log=lines.append, policy=policy, **kwargs)


def _run(cfg, staged, run_key, lines, model="lstm", data_uri=None, runner=None, output_uri=None):
    output_uri = output_uri or f"gs://{staged['bucket']}/rel/{run_key}/{model}"
    request = vertex.JobRequest(
        model, package_uri=staged["package_uri"], data_uri=data_uri or staged["data_uri"], output_uri=output_uri,
        run_key=run_key,
    )  # fmt: skip
    outcome = (runner or quick_runner(cfg, lines)).run(request)
    return outcome, output_uri


_STORAGE: list[storage.Client] = []


def _read(uri: str):
    """The object's bytes, None when absent: one GET on one shared client (the preemption watcher polls this)."""
    if not _STORAGE:
        _STORAGE.append(storage.Client(project="t"))
    bucket, name = parse_gs_uri(uri)
    try:
        return _STORAGE[0].bucket(bucket).blob(name).download_as_bytes()
    except NotFound:
        return None


def _metrics(output_uri):
    raw = _read(BucketLayout.metrics(output_uri))
    return json.loads(raw) if raw else None


def _epoch_log(output_uri):
    raw = _read(f"{output_uri}/checkpoints/epochs.jsonl")
    return [json.loads(line) for line in raw.decode().splitlines() if line.strip()] if raw else []


def test_503_and_429_bursts_on_create_get_and_list_make_exactly_one_job(vertex_emulator, vertex_admin, staged):
    run_key = f"burst-{uuid.uuid4().hex[:8]}"
    vertex_admin.set_faults([
        {"method": "list", "status": 503, "times": 1},
        {"method": "create", "status": 503, "times": 1},
        # A request-rate 429 (no quota metric named): transient. A quota 429 is final (test_vertex_failures.py).
        {"method": "create", "status": 429, "times": 1, "message": "Resource has been exhausted (e.g. check quota)."},
        {"method": "get", "status": 503, "times": 3},
        {"method": "get", "status": 429, "times": 3},
    ])
    lines: list[str] = []
    outcome, output_uri = _run(_cfg(vertex_emulator, staged), staged, run_key, lines)

    assert outcome.state == "JOB_STATE_SUCCEEDED" and outcome.attempts == 1
    creates = vertex_admin.requests("create")
    assert [r["status"] for r in creates] == [503, 429, 200], "two refused creates, then exactly one real one"
    gets = vertex_admin.requests("get")
    assert [r["status"] for r in gets[:6]] == [503] * 3 + [429] * 3 and gets[-1]["status"] == 200
    jobs = run_jobs(vertex_admin, run_key)
    assert len(jobs) == 1 and jobs[0]["state"] == "JOB_STATE_SUCCEEDED"
    assert _metrics(output_uri)["train"]["epochs_run"] == 1
    print(f"\n[bursts] requests: {len(creates)} create, {len(gets)} get, "
          f"{len(vertex_admin.requests('list'))} list; jobs 1; {outcome.seconds:.1f}s")


def test_commit_then_drop_on_create_reattaches_instead_of_creating_a_second_job(
    vertex_emulator, vertex_admin, staged
):
    run_key = f"drop-{uuid.uuid4().hex[:8]}"
    vertex_admin.set_faults([{"method": "create", "commit_then_drop": True, "times": 1}])
    lines: list[str] = []
    outcome, output_uri = _run(_cfg(vertex_emulator, staged), staged, run_key, lines)

    creates = vertex_admin.requests("create")
    assert len(creates) == 1 and creates[0]["status"] == 503, "the one create was committed; no second create"
    jobs = run_jobs(vertex_admin, run_key)
    assert len(jobs) == 1 and jobs[0]["emulator"]["createResponseDropped"]
    assert outcome.job_name == jobs[0]["name"] and outcome.state == "JOB_STATE_SUCCEEDED"
    assert any("created despite the error" in line for line in lines)
    assert _metrics(output_uri) is not None, "no lost model"


def _preempt_after_first_checkpoint(admin, output_uri, result: dict):
    """Inject the preemption once the first epoch's checkpoint is committed (deterministic, no timing guess)."""
    def watch():
        try:
            wait_until(lambda: _read(f"{output_uri}/checkpoints/state.json"), 180, "first checkpoint", 0.05)
            admin.set_faults(preempt={"after_seconds": 0, "times": 1})
            result["injected"] = True
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            result["error"] = exc

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


# Epochs after the first take ~0.15 s each here: the preemption must land within the rest of the first process's
# run (the watcher's poll + one admin call), so 20 epochs leave it ~3 s even on a loaded CI machine (6 left 0.7 s
# and a CI run once saw the job finish before the fault took effect).
EPOCHS = 20


@pytest.mark.parametrize("restart", [True, False], ids=["restart-on-worker-restart", "resubmit"])
def test_spot_preemption_resumes_from_the_last_checkpoint_without_training_an_epoch_twice(
    vertex_emulator, vertex_admin, staged, restart
):
    run_key = f"spot-{'r' if restart else 's'}-{uuid.uuid4().hex[:8]}"
    cfg = _cfg(vertex_emulator, staged, epochs=EPOCHS, scheduling_strategy="SPOT",
               restart_job_on_worker_restart=restart, max_infra_retries=2)
    output_uri = f"gs://{staged['bucket']}/rel/{run_key}/lstm"
    injected: dict = {}
    watcher = _preempt_after_first_checkpoint(vertex_admin, output_uri, injected)
    lines: list[str] = []
    outcome, _ = _run(cfg, staged, run_key, lines)
    watcher.join(5)
    assert injected.get("injected"), injected
    jobs = run_jobs(vertex_admin, run_key)
    assert sum(j["emulator"]["preemptions"] for j in jobs) == 1, "the preemption hit the running job once"

    metrics = _metrics(output_uri)
    epochs = [entry["epoch"] for entry in _epoch_log(output_uri)]
    assert epochs == list(range(1, EPOCHS + 1)), f"each epoch exactly once, in order: {epochs}"
    assert metrics["train"]["epochs_run"] == EPOCHS
    assert metrics["train"]["resumed_from_epoch"] >= 1, "the last process resumed from a checkpoint"
    processes = {entry["run_id"] for entry in _epoch_log(output_uri)}
    assert len(processes) == 2, "epochs came from two processes: before and after the preemption"
    creates = vertex_admin.requests("create")
    if restart:
        assert len(jobs) == 1 and len(creates) == 1 and outcome.attempts == 1
        assert jobs[0]["emulator"]["preemptions"] == 1 and jobs[0]["state"] == "JOB_STATE_SUCCEEDED"
        assert jobs[0]["emulator"]["replicas"][0]["restarts"] == 1
    else:
        by_attempt = {j["labels"][run_identity.LABEL_ATTEMPT]: j for j in jobs}
        assert len(creates) == 2 and set(by_attempt) == {"1", "2"} and outcome.attempts == 2
        assert by_attempt["1"]["state"] == "JOB_STATE_FAILED" and "preempted" in by_attempt["1"]["error"]["message"]
        assert by_attempt["2"]["state"] == "JOB_STATE_SUCCEEDED"
        assert {j["jobSpec"]["baseOutputDirectory"]["outputUriPrefix"] for j in jobs} == {output_uri}
    finished = [entry["finished_at"] for entry in _epoch_log(output_uri)]
    print(f"\n[preempt restart={restart}] epochs {epochs}, seconds between epoch ends "
          f"{[round(b - a, 2) for a, b in zip(finished, finished[1:])]}, resumed_from_epoch "
          f"{metrics['train']['resumed_from_epoch']}, creates {len(creates)}, {outcome.seconds:.1f}s")


def test_repeated_preemption_is_resubmitted_a_bounded_number_of_times(vertex_emulator, vertex_admin, staged):
    run_key = f"spot-bound-{uuid.uuid4().hex[:8]}"
    cfg = _cfg(vertex_emulator, staged, scheduling_strategy="SPOT", restart_job_on_worker_restart=False,
               max_infra_retries=1)
    vertex_admin.set_faults(preempt={"after_seconds": 0, "times": 0})  # every replica, forever
    with pytest.raises(RetryableJobError, match="preempted"):
        _run(cfg, staged, run_key, [])
    jobs = run_jobs(vertex_admin, run_key)
    assert len(vertex_admin.requests("create")) == 2, "first try + max_infra_retries=1 resubmit, then give up"
    assert sorted(j["labels"][run_identity.LABEL_ATTEMPT] for j in jobs) == ["1", "2"]
    assert all(j["state"] == "JOB_STATE_FAILED" for j in jobs)


@pytest.mark.parametrize("bad", ["module", "data"])
def test_user_error_is_never_retried(vertex_emulator, vertex_admin, staged, bad, monkeypatch):
    run_key = f"user-{bad}-{uuid.uuid4().hex[:8]}"
    cfg = _cfg(vertex_emulator, staged, max_infra_retries=2)
    data_uri = staged["data_uri"]
    if bad == "module":
        real = vertex.build_custom_job

        def broken(*args, **kwargs):
            job = real(*args, **kwargs)
            return run_module(job, "trainer.no_such")

        monkeypatch.setattr(vertex, "build_custom_job", broken)
    else:
        data_uri = f"gs://{staged['bucket']}/no-such-data"
    with pytest.raises(JobFailedError) as info:
        _run(cfg, staged, run_key, [], data_uri=data_uri)
    assert not isinstance(info.value, RetryableJobError)
    assert len(vertex_admin.requests("create")) == 1, "a user error is never resubmitted"
    assert [j["state"] for j in run_jobs(vertex_admin, run_key)] == ["JOB_STATE_FAILED"]
