"""Every admin fault rule, observed through the real REST client."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from google.api_core import exceptions

from emulator_testkit import PARENT, read_gcs_text, wait_for_state

TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}


def test_503_twice_on_create_then_success(job_client, make_job, vertex_admin):
    vertex_admin.set_faults([{"method": "create", "status": 503, "times": 2}])
    spec = make_job("write")
    for _ in range(2):
        with pytest.raises(exceptions.ServiceUnavailable, match="currently unavailable"):
            job_client.create_custom_job(parent=PARENT, custom_job=spec)
    job = job_client.create_custom_job(parent=PARENT, custom_job=spec)
    creates = vertex_admin.requests("create")
    assert [r["status"] for r in creates] == [503, 503, 200]
    assert creates[-1]["job"] == job.name
    run = spec["labels"]["run"]
    assert [j["name"] for j in vertex_admin.jobs() if j.get("labels", {}).get("run") == run] == [job.name]
    wait_for_state(job_client, job.name, TERMINAL)


def test_commit_then_drop_creates_the_job_but_fails_the_call(job_client, make_job, vertex_admin):
    vertex_admin.set_faults([{"method": "create", "commit_then_drop": True, "times": 1}])
    spec = make_job("write")
    run = spec["labels"]["run"]
    with pytest.raises(exceptions.ServiceUnavailable):
        job_client.create_custom_job(parent=PARENT, custom_job=spec)
    ours = [j for j in vertex_admin.jobs() if j.get("labels", {}).get("run") == run]
    assert len(ours) == 1 and ours[0]["emulator"]["createResponseDropped"] is True
    # The de-duplication handle: list by the unique label finds the job the client never heard of.
    listed = list(job_client.list_custom_jobs(request={"parent": PARENT, "filter": f'labels.run="{run}"'}))
    assert [j.name for j in listed] == [ours[0]["name"]]
    job = wait_for_state(job_client, ours[0]["name"], TERMINAL)
    assert job.state.name == "JOB_STATE_SUCCEEDED"  # it really ran


def test_429_on_get_three_times(job_client, make_job, vertex_admin):
    job = job_client.create_custom_job(parent=PARENT, custom_job=make_job("write"))
    vertex_admin.set_faults([{"method": "get", "status": 429, "times": 3}])
    for _ in range(3):
        with pytest.raises(exceptions.TooManyRequests, match="Resource has been exhausted"):
            job_client.get_custom_job(name=job.name)
    wait_for_state(job_client, job.name, TERMINAL)
    statuses = [r["status"] for r in vertex_admin.requests("get")]
    assert statuses[:3] == [429, 429, 429] and set(statuses[3:]) == {200}


@pytest.mark.parametrize("method", ["list", "cancel", "delete"])
def test_status_rules_apply_to_each_method(job_client, make_job, vertex_admin, method):
    job = job_client.create_custom_job(parent=PARENT, custom_job=make_job("write"))
    wait_for_state(job_client, job.name, TERMINAL)
    vertex_admin.set_faults([{"method": method, "status": 500, "times": 1}])
    call = {
        "list": lambda: list(job_client.list_custom_jobs(parent=PARENT)),
        "cancel": lambda: job_client.cancel_custom_job(name=job.name),
        "delete": lambda: job_client.delete_custom_job(name=job.name),
    }[method]
    with pytest.raises(exceptions.InternalServerError):
        call()
    assert [r["status"] for r in vertex_admin.requests(method)] == [500]


def test_delay_on_get_hits_the_client_timeout(job_client, make_job, vertex_admin):
    job = job_client.create_custom_job(parent=PARENT, custom_job=make_job("write"))
    vertex_admin.set_faults([{"method": "get", "delay_seconds": 1.5, "times": 1}])
    started = time.monotonic()
    with pytest.raises(Exception) as excinfo:
        job_client.get_custom_job(name=job.name, timeout=0.5)
    assert "timed out" in repr(excinfo.value).lower() or "timeout" in repr(excinfo.value).lower()
    assert time.monotonic() - started < 1.4
    wait_for_state(job_client, job.name, TERMINAL)


def test_clear_faults(job_client, vertex_admin):
    vertex_admin.set_faults([{"method": "list", "status": 503, "times": 0}])  # forever
    for _ in range(2):
        with pytest.raises(exceptions.ServiceUnavailable):
            list(job_client.list_custom_jobs(parent=PARENT))
    vertex_admin.clear_faults()
    list(job_client.list_custom_jobs(parent=PARENT))
    assert vertex_admin.faults() == {"rules": [], "preempt": None, "fail": None, "hold": None, "cancel_outcome": None}


def test_bad_fault_rule_is_rejected(vertex_emulator):
    response = httpx.post(f"{vertex_emulator.endpoint}/emulator/v1/faults",
                          json={"rules": [{"method": "explode", "status": 503}]})
    assert response.status_code == 400
    assert "method must be one of" in response.json()["error"]["message"]


def test_preempt_without_restart_fails_the_job_with_a_preemption_error(job_client, make_job, vertex_admin):
    vertex_admin.set_faults(preempt={"after_seconds": 0.5, "times": 1})
    job = job_client.create_custom_job(parent=PARENT, custom_job=make_job("sleep", ["600"]))
    job = wait_for_state(job_client, job.name, TERMINAL, timeout=30)
    assert job.state.name == "JOB_STATE_FAILED"
    assert job.error.code == 14
    assert "preempted" in job.error.message
    view = vertex_admin.job(job.name)["emulator"]
    assert view["preemptions"] == 1


def test_preempt_with_restart_job_on_worker_restart_resumes_from_checkpoint(job_client, make_job, vertex_admin):
    # 3 s: time for the first run to write its checkpoint even on a loaded machine (else it is preempted first)
    vertex_admin.set_faults(preempt={"after_seconds": 3.0, "times": 1})
    spec = make_job("resume", ["600"], restart_on_worker_restart=True)
    job = job_client.create_custom_job(parent=PARENT, custom_job=spec)
    job = wait_for_state(job_client, job.name, TERMINAL, timeout=60)
    assert job.state.name == "JOB_STATE_SUCCEEDED", job.error.message
    base = spec["job_spec"]["base_output_directory"]["output_uri_prefix"]
    resumed = json.loads(read_gcs_text(f"{base}/model/resumed.json"))
    first_pid = resumed["checkpoint"]["pid"]
    view = vertex_admin.job(job.name)["emulator"]
    assert view["preemptions"] == 1 and view["replicas"][0]["restarts"] == 1
    assert view["replicas"][0]["pid"] != first_pid  # a new process, same env (AIP_CHECKPOINT_DIR)
    assert "Restarting replicas" in vertex_admin.job_log(job.name)
