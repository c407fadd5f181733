"""`make demo-worker`: `make demo`'s flow run, deployed the production way, offline on this machine.

Instead of `python -m deployments.serve` it creates the process work pool `finsent`, runs `prefect deploy --all`
from prefect.yaml (no prompts; the build step validates the settings first), starts `prefect worker start --pool
finsent`, shows train/vertex's weekly schedule from `prefect deployment inspect`, then starts a run of
train/vertex and follows it like `make demo` (the same `run_and_report`). Its Prefect server has its own SQLite
(.finsent/prefect-worker) so it never shares a database with `make demo`'s. KEEP_UI=1 keeps the server up;
FINSENT_DEMO_CONFIG=my.json is merged over deployments/emulators.json as in `make demo` (e.g. a smaller training).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from deployments.demo import BIN, REPO, STATE, _say, _start, configured_env, demo_env, run_and_report, stop_server
from emulators._proc import free_port, kill_group, wait_http_ready
from emulators.gcs import FakeGcs
from emulators.vertex import VertexEmulator

POOL = "finsent"  # prefect.yaml's definitions.work_pool


def _prefect(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=REPO, capture_output=True, text=True)


def _must(env: dict, *args: str) -> subprocess.CompletedProcess:
    done = _prefect(env, *args)
    if done.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}"
                           f"\n{done.stderr[-3000:]}")
    return done


def main() -> int:
    STATE.mkdir(exist_ok=True)
    keep_ui = os.environ.get("KEEP_UI") == "1"
    port = int(os.environ.get("PREFECT_PORT", "0")) or free_port()
    # The worker looks for runs to start every PREFECT_WORKER_QUERY_SECONDS (10 s by default): 2 s for the demo.
    configured = configured_env(
        demo_env(STATE / "prefect-worker", port) | {"PREFECT_WORKER_QUERY_SECONDS": "2", "CI": "true"})
    if configured is None:
        return 2
    env, cfg = configured
    worker = server = None
    try:
        with FakeGcs() as gcs, VertexEmulator(gcs_endpoint=gcs.endpoint) as vertex:
            gcs.create_bucket(cfg.bucket)
            env |= {"STORAGE_EMULATOR_HOST": gcs.endpoint, "FINSENT_VERTEX_ENDPOINT": vertex.endpoint}
            _say(f"GCS emulator {gcs.endpoint}, Vertex emulator {vertex.endpoint}")
            server = _start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env, "server-worker.log")
            wait_http_ready(f"http://127.0.0.1:{port}/api/health", server, 120, "prefect server")
            _say(f"Prefect UI: http://127.0.0.1:{port}")
            _say(f"prefect work-pool create {POOL} --type process")
            _must(env, "work-pool", "create", POOL, "--type", "process", "--overwrite")
            _say(f"FINSENT_CONFIG={env['FINSENT_CONFIG']} prefect --no-prompt deploy --all")
            for line in _must(env, "--no-prompt", "deploy", "--all").stdout.splitlines():
                if "successfully created" in line:
                    print("   ", line.strip(" │").removesuffix(" with id"))
            schedule = [line.strip() for line in _must(env, "deployment", "inspect", "train/vertex").stdout
                        .splitlines() if "'cron'" in line or "'timezone'" in line]  # fmt: skip
            _say(f"prefect deployment inspect train/vertex: {' '.join(schedule)}")
            _say(f"prefect worker start --pool {POOL}")
            worker = _start([str(BIN / "prefect"), "worker", "start", "--pool", POOL], env, "worker.log")
            return run_and_report(env, port, " through the worker (log: .finsent/worker.log)")
    finally:
        if worker is not None:
            kill_group(worker)
        stop_server(server, keep_ui)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
