"""Flow level, the flow in its own process against a real Prefect server: SIGKILL mid-poll then the same run_key
again (reattach, never a second job, never a cancel), and a flow-run cancel that reaches the Vertex job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import anyio
import pytest

from tests.reliability.conftest import PYTHON, ROOT, lstm_config, run_jobs, subprocess_env, wait_until

pytestmark = pytest.mark.usefixtures("prefect_server")

RUN_FLOW = """
import json, sys
from flows.train import train
result = train(config=json.loads(sys.argv[1]), run_key=sys.argv[2])
print("FINSENT-RESULT " + json.dumps({k: result.get(k) for k in ("skipped", "inputs_key", "winner")}))
"""

SERVE = """
import json, sys
from prefect import serve
from flows.train import train
serve(train.to_deployment(name=sys.argv[2], parameters={"config": json.loads(sys.argv[1])}))
"""


@pytest.fixture
def flow_process(prefect_server, vertex_emulator, gcs_bucket, small_csv, tmp_path):
    """`spawn(code, arg, epochs=, log=)`: `code` in its own Python process (argv: a cheap LSTM config of `epochs`,
    then `arg`) against the session's Prefect server, output in tmp_path/log; `env` is that process's environment."""
    env = subprocess_env(prefect_server)

    def spawn(code: str, arg: str, *, epochs: int, log: str) -> subprocess.Popen:
        cfg = json.dumps(lstm_config(vertex_emulator.endpoint, gcs_bucket, str(small_csv), epochs=epochs))
        return subprocess.Popen([PYTHON, "-c", code, cfg, arg], cwd=ROOT, env=env, stdout=open(tmp_path / log, "w"),
                                stderr=subprocess.STDOUT, start_new_session=True)

    spawn.env = env
    return spawn


def _stop(proc, sig=signal.SIGTERM, timeout=20):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_sigkill_mid_poll_then_same_run_key_reattaches(vertex_admin, flow_process, tmp_path):
    run_key = f"crash-{uuid.uuid4().hex[:8]}"
    first = flow_process(RUN_FLOW, run_key, epochs=12, log="first.log")
    try:
        def polled_while_running():
            jobs = run_jobs(vertex_admin, run_key)
            if not jobs or jobs[0]["state"] != "JOB_STATE_RUNNING":
                return None
            gets = [r for r in vertex_admin.requests("get") if r.get("job") and jobs[0]["name"].endswith(r["job"])
                    or r["path"].endswith(jobs[0]["name"])]
            return jobs[0] if len(gets) >= 2 else None

        job = wait_until(polled_while_running, 120, "the job RUNNING and polled")
    finally:
        first.kill()  # SIGKILL: no handler, no hook, no finally in the flow process
        first.wait()
    assert first.returncode == -signal.SIGKILL
    time.sleep(1.0)
    after_crash = vertex_admin.job(job["name"])
    assert not after_crash["emulator"]["cancelRequested"], "a crashed orchestrator must not cancel the job"
    assert after_crash["state"] in ("JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED")

    started = time.monotonic()
    second = flow_process(RUN_FLOW, run_key, epochs=12, log="second.log")
    try:
        second.wait(240)
    finally:
        _stop(second)
    out = (tmp_path / "second.log").read_text()
    assert second.returncode == 0, out[-3000:]
    assert "FINSENT-RESULT" in out and f"Reattaching to {job['name']}" in out
    creates = vertex_admin.requests("create")
    jobs = run_jobs(vertex_admin, run_key)
    assert len(creates) == 1 and len(jobs) == 1 and jobs[0]["state"] == "JOB_STATE_SUCCEEDED"
    state_seen = out.split(f"Reattaching to {job['name']} (", 1)[1].split(")", 1)[0]
    print(f"\n[sigkill] reattached to a {state_seen} job; creates {len(creates)}; "
          f"rerun finished in {time.monotonic() - started:.1f}s")


async def _flow_run(flow_run_id):
    from prefect import get_client

    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


def test_cancelling_the_flow_run_cancels_the_vertex_job(vertex_admin, flow_process, tmp_path):
    from prefect.deployments import run_deployment

    name = f"rel-cancel-{uuid.uuid4().hex[:6]}"
    server = flow_process(SERVE, name, epochs=100, log="serve.log")
    try:
        def deployment_ready():
            from prefect import get_client

            async def read():
                async with get_client() as client:
                    try:
                        return await client.read_deployment_by_name(f"train/{name}")
                    except Exception:  # noqa: BLE001 - not registered yet
                        return None

            return anyio.run(read)

        wait_until(deployment_ready, 60, "the served deployment", 0.5)
        flow_run = run_deployment(f"train/{name}", timeout=0)
        run_key = str(flow_run.id)
        job = wait_until(lambda: next((j for j in run_jobs(vertex_admin, run_key)
                                       if j["state"] == "JOB_STATE_RUNNING"), None), 180, "the job RUNNING", 0.2)

        t0 = time.monotonic()
        cli = subprocess.run([str(ROOT / ".venv" / "bin" / "prefect"), "flow-run", "cancel", str(flow_run.id)],
                             env=flow_process.env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        cli_seconds = time.monotonic() - t0
        assert cli.returncode == 0, cli.stdout + cli.stderr
        wait_until(lambda: vertex_admin.job(job["name"])["state"] == "JOB_STATE_CANCELLED", 60,
                   "the Vertex job CANCELLED", 0.05)
        latency = time.monotonic() - t0
        final = wait_until(lambda: (lambda fr: fr if fr.state and fr.state.is_final() else None)(
            anyio.run(_flow_run, flow_run.id)), 60, "the flow run final", 0.5)
    finally:
        _stop(server, signal.SIGINT)
    log = (tmp_path / "serve.log").read_text()
    done = vertex_admin.job(job["name"])
    assert done["emulator"]["cancelRequested"] and done["state"] == "JOB_STATE_CANCELLED"
    assert final.state.is_cancelled(), final.state
    assert len(vertex_admin.requests("create")) == 1
    print(f"\n[cancel] CLI returned after {cli_seconds:.2f}s; Vertex job CANCELLED {latency:.2f}s after the cancel "
          f"command started; flow run {final.state.name}")
    assert latency < 10, f"cancel took {latency:.1f}s to reach Vertex\n{log[-3000:]}"
