"""The orphan reaper (flow `reap`) against the real Prefect test server and the Vertex emulator.

Jobs run the emujob `sleep` module (tests/emulators/emujob_sdist.py), so they stay RUNNING for no GPU and little
CPU; their flow runs are made on the Prefect server with the client, in the states each case needs. Each test has
its own Vertex project, so the reaper sees only that test's jobs. Asserted: the flow's result, each job's state on
the emulator, and the cancel requests the emulator received.
"""

from __future__ import annotations

import uuid

import pytest
from google.cloud import storage
from prefect import flow, get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.states import Completed, Crashed, Running

from flows.reap import ARTIFACT_KEY, reap
from tasks import vertex
from tasks.config import parse_config
from tests.emulators.emujob_sdist import build_sdist, run_module
from tests.reliability.conftest import wait_until


@flow(name="reaper-test-subject")
def subject(run_key: str | None = None) -> None:
    """Never run: its flow runs are created and put in a state by hand, as the jobs' watchers."""


@pytest.fixture(scope="module")
def sleep_package(gcs_emulator) -> str:
    bucket = f"reap-{uuid.uuid4().hex[:10]}"
    gcs_emulator.create_bucket(bucket)
    blob = storage.Client(project="t").bucket(bucket).blob("packages/emujob-0.1.0.tar.gz")
    blob.upload_from_string(build_sdist(), content_type="application/gzip")
    return f"gs://{bucket}/packages/emujob-0.1.0.tar.gz"


@pytest.fixture
def reap_config(prefect_server, vertex_emulator, vertex_admin, sleep_package):
    """A config of a project of its own (the reaper lists a project's jobs); its jobs are cancelled afterwards."""
    config = {"project": f"reap-{uuid.uuid4().hex[:8]}", "bucket": sleep_package.split("/")[2],
              "vertex_endpoint": vertex_emulator.endpoint, "anonymous_credentials": True}
    yield config
    vertex.JobRunner(parse_config(config), log=lambda line: None).cancel({})


def sleeping_job(config: dict, package_uri: str, *, flow_run_id: str | None, run_key: str | None = None) -> str:
    """A RUNNING job with the labels the flow gives its jobs (plus `finsent-flow-run` when `flow_run_id`)."""
    cfg = parse_config(config)
    run_key = run_key or f"reap-{uuid.uuid4().hex[:8]}"
    request = vertex.JobRequest("lstm", package_uri=package_uri, data_uri="gs://unused/data",
                                output_uri=f"gs://unused/runs/{run_key}", run_key=run_key, flow_run_id=flow_run_id)
    job = vertex.build_custom_job(cfg, request)
    run_module(job, "emujob.sleep", ["600"])
    runner = vertex.JobRunner(cfg, log=lambda line: None)
    name = runner.submit(job).name
    wait_until(lambda: runner.client.get_custom_job(name=name).state == vertex.JobState.JOB_STATE_RUNNING, 120,
               f"{name} RUNNING")
    return name


def flow_run_in(state, **parameters) -> str:
    """A flow run on the Prefect server, forced into `state`; returns its id."""
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(subject, parameters=parameters)
        client.set_flow_run_state(run.id, state, force=True)
        assert client.read_flow_run(run.id).state.type == state.type
    return str(run.id)


def cancel_requests(admin) -> list[str]:
    """Job names the emulator received a cancel for."""
    return [r["path"].removeprefix("/v1/").removesuffix(":cancel") for r in admin.requests("cancel")]


def run_reap(config: dict, grace_seconds: int) -> tuple[dict, list[dict]]:
    """The `reap` flow in this process, on the Prefect test server: its result and its table artifact's rows."""
    import json

    state = reap(config=config, grace_seconds=grace_seconds, return_state=True)
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    assert artifact.key == ARTIFACT_KEY
    table = artifact.data if isinstance(artifact.data, list) else json.loads(artifact.data)
    return state.result(), table


def test_orphans_are_cancelled_watched_jobs_left_and_unlabelled_jobs_reported(
    reap_config, sleep_package, vertex_admin
):
    completed = sleeping_job(reap_config, sleep_package, flow_run_id=flow_run_in(Completed()))
    crashed = sleeping_job(reap_config, sleep_package, flow_run_id=flow_run_in(Crashed()))
    gone = sleeping_job(reap_config, sleep_package, flow_run_id=str(uuid.uuid4()))  # no such flow run
    watched = sleeping_job(reap_config, sleep_package, flow_run_id=flow_run_in(Running()))
    unlabelled = sleeping_job(reap_config, sleep_package, flow_run_id=None)  # made outside a flow run
    vertex_admin.clear_requests()

    result, table = run_reap(reap_config, grace_seconds=0)

    orphans = {completed, crashed, gone}
    assert set(result["cancelled"]) == orphans
    assert result["left"] == [watched] and result["reported"] == [unlabelled]
    assert sorted(cancel_requests(vertex_admin)) == sorted(orphans), "one cancel per orphan, none for the others"
    states = {job["name"]: job["state"] for job in vertex_admin.jobs()}
    assert all(states[name] in ("JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED") for name in orphans)
    assert states[watched] == states[unlabelled] == "JOB_STATE_RUNNING"
    rows = {row["job"]: row for row in table}
    assert rows[crashed]["action"] == "cancel" and "is CRASHED" in rows[crashed]["reason"]
    assert rows[gone]["action"] == "cancel" and "does not exist" in rows[gone]["reason"]
    assert rows[watched]["action"] == "leave" and "is RUNNING" in rows[watched]["reason"]
    assert rows[unlabelled]["action"] == "report" and "created outside a flow run" in rows[unlabelled]["reason"]


def test_within_the_grace_or_reattached_by_a_live_rerun_the_job_is_left(reap_config, sleep_package, vertex_admin):
    """A crash leaves the job running for a rerun with the same run key: within the grace it is left, and once a
    live flow run works on that run key (it reattached) it is left however long ago the first run crashed."""
    just_crashed = sleeping_job(reap_config, sleep_package, flow_run_id=flow_run_in(Crashed()))
    run_key = f"rerun-{uuid.uuid4().hex[:8]}"
    reattached = sleeping_job(reap_config, sleep_package, flow_run_id=flow_run_in(Crashed()), run_key=run_key)
    flow_run_in(Running(), run_key=run_key)  # the rerun, watching `reattached`
    vertex_admin.clear_requests()

    result, _ = run_reap(reap_config, grace_seconds=3600)
    assert result["cancelled"] == [] and just_crashed in result["left"]
    result, table = run_reap(reap_config, grace_seconds=0)
    assert result["cancelled"] == [just_crashed] and result["left"] == [reattached]
    assert "watched by live flow run" in {row["job"]: row for row in table}[reattached]["reason"]
    assert cancel_requests(vertex_admin) == [just_crashed]
    assert vertex_admin.job(reattached)["state"] == "JOB_STATE_RUNNING"
