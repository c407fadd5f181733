"""The worker path end to end on the emulators: `prefect deploy --all` + a process worker runs `prefect deployment
run train/vertex` to the same artifacts as the `serve` path, and a CLI cancel of a run cancels its Vertex job."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid

import anyio
import pytest

from deployments.serve import DEFAULT_CRON
from emulators._proc import kill_group
from tests.deployments.conftest import POOL, PREFECT, ROOT, finsent_deployments, prefect_cli, write_config
from tests.reliability.conftest import lstm_config, run_jobs, wait_until

pytestmark = pytest.mark.slow


async def _artifacts(flow_run_id: str) -> dict:
    """key -> (type, data) of a flow run's artifacts."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(flow_run_id)])))
    return {a.key: (a.type, a.data) for a in found if a.key}


async def _flow_run(flow_run_id: str):
    from prefect import get_client

    async with get_client() as client:
        return await client.read_flow_run(uuid.UUID(flow_run_id))


def _run_to_the_end(env: dict, *params: str) -> str:
    """`prefect deployment run train/vertex --watch`; the flow run id, after checking it COMPLETED."""
    run = prefect_cli("deployment", "run", "train/vertex", *params, "--watch", "--watch-interval", "2",
                      env=env, timeout=300)
    flow_run_id = next(line.split("UUID:")[1].strip() for line in run.stdout.splitlines() if "UUID:" in line)
    state = anyio.run(_flow_run, flow_run_id).state
    assert run.returncode == 0 and state.is_completed(), f"{state}\n{run.stdout[-3000:]}\n{run.stderr[-2000:]}"
    return flow_run_id


def _same_artifacts(served: dict, worked: dict) -> None:
    """Same keys and types; the metrics table has the same models and columns (numbers differ per run)."""
    assert {k: t for k, (t, _) in worked.items()} == {k: t for k, (t, _) in served.items()}
    assert {"finsent-metrics", "finsent-summary"} <= set(worked)

    def table(data):
        return json.loads(data) if isinstance(data, str) else data

    rows = {which: table(arts["finsent-metrics"][1]) for which, arts in (("serve", served), ("worker", worked))}
    assert [r["model"] for r in rows["worker"]] == [r["model"] for r in rows["serve"]] == ["lstm"]
    assert [sorted(r) for r in rows["worker"]] == [sorted(r) for r in rows["serve"]]


def _start(cmd: list[str], env: dict, log) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_a_process_worker_runs_and_cancels_train_vertex(deploy_env, vertex_emulator, vertex_admin, gcs_emulator,
                                                        small_csv, tmp_path):
    def settings_file(name: str, epochs: int) -> str:
        """A tiny LSTM training on its own bucket (so neither path skips as already trained)."""
        bucket = f"deploy-{name}-{uuid.uuid4().hex[:8]}"
        gcs_emulator.create_bucket(bucket)
        cfg = lstm_config(vertex_emulator.endpoint, bucket, str(small_csv), epochs=epochs)
        return str(write_config(tmp_path / f"{name}.json", cfg))

    # Poll quickly: runner and worker (PREFECT_WORKER_QUERY_SECONDS, default 10 s) both look for runs to start.
    env = deploy_env | {"PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_WORKER_QUERY_SECONDS": "1"}
    started = time.monotonic()

    # The serve path, for comparison.
    serve = _start([sys.executable, "-m", "deployments.serve"], env | {"FINSENT_CONFIG": settings_file("serve", 2)},
                   tmp_path / "serve.log")
    try:
        wait_until(lambda: finsent_deployments().get("train/vertex"), 90, "serve's train/vertex", 0.5)
        served = anyio.run(_artifacts, _run_to_the_end(env))
    finally:
        kill_group(serve)
    serve_seconds = time.monotonic() - started
    for deployment in finsent_deployments().values():  # the worker path deploys the same names
        anyio.run(_delete_deployment, deployment.id)

    # The worker path: prefect deploy --all, then a process worker of the pool.
    deploy = prefect_cli("deploy", "--all", env=env | {"FINSENT_CONFIG": settings_file("worker", 2)})
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    inspect = prefect_cli("deployment", "inspect", "train/vertex", env=env)
    assert f"'cron': '{DEFAULT_CRON}'" in inspect.stdout, inspect.stdout
    worker = _start([str(PREFECT), "worker", "start", "--pool", POOL, "--type", "process"],
                    env, tmp_path / "worker.log")
    try:
        t0 = time.monotonic()
        flow_run_id = _run_to_the_end(env)
        worker_seconds = time.monotonic() - t0
        _same_artifacts(served, anyio.run(_artifacts, flow_run_id))
        assert anyio.run(_flow_run, flow_run_id).work_pool_name == POOL

        # A long run of the same deployment (epochs overridden), cancelled from the CLI while its job runs.
        long_cfg = json.loads(open(settings_file("cancel", 100)).read())
        run = prefect_cli("deployment", "run", "train/vertex", "--params", json.dumps({"config": long_cfg}), env=env)
        flow_run_id = next(line.split("UUID:")[1].strip() for line in run.stdout.splitlines() if "UUID:" in line)
        job = wait_until(lambda: next((j for j in run_jobs(vertex_admin, flow_run_id)
                                       if j["state"] == "JOB_STATE_RUNNING"), None), 180, "the job RUNNING", 0.2)
        t0 = time.monotonic()
        cancel = prefect_cli("flow-run", "cancel", flow_run_id, env=env, timeout=60)
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        wait_until(lambda: vertex_admin.job(job["name"])["state"] == "JOB_STATE_CANCELLED", 60,
                   "the Vertex job CANCELLED", 0.1)
        cancel_seconds = time.monotonic() - t0
        final = wait_until(lambda: (lambda fr: fr if fr.state and fr.state.is_final() else None)(
            anyio.run(_flow_run, flow_run_id)), 60, "the flow run final", 0.5)
    finally:
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            kill_group(worker)
    # What the emulator itself says (GET /emulator/v1/jobs): the job cancelled on request, one job for that run.
    (listed,) = [j for j in vertex_admin.jobs() if j["name"] == job["name"]]
    assert listed["state"] == "JOB_STATE_CANCELLED" and listed["emulator"]["cancelRequested"]
    assert len(run_jobs(vertex_admin, flow_run_id)) == 1
    assert final.state.is_cancelled(), final.state
    print(f"\n[worker] serve path {serve_seconds:.0f}s (start + run); worker run {worker_seconds:.0f}s; "
          f"Vertex job CANCELLED {cancel_seconds:.2f}s after the CLI cancel started")


async def _delete_deployment(deployment_id) -> None:
    from prefect import get_client

    async with get_client() as client:
        await client.delete_deployment(deployment_id)
