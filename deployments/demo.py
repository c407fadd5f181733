"""`make demo`: the whole product, offline, on this machine.

Starts fake-gcs-server, the Vertex emulator, a Prefect server (SQLite under .finsent/) and the deployment runner,
then runs `prefect deployment run train/vertex --watch`, prints both models' metrics and the UI address, and stops
everything it started (KEEP_UI=1 keeps the Prefect server up). Exit code 0 only when the flow run completed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from emulators._proc import free_port, kill_group, wait_http_ready
from emulators.gcs import FakeGcs
from emulators.vertex import VertexEmulator

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".finsent"
BIN = Path(sys.executable).parent
DEMO_CONFIG = REPO / "deployments" / "emulators.json"


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def _start(cmd: list[str], env: dict, log_name: str) -> subprocess.Popen:
    log = open(STATE / log_name, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)


def _wait_for_deployment(env: dict, name: str, runner: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if runner.poll() is not None:
            raise RuntimeError(f"the deployment runner exited ({runner.returncode}); see .finsent/runner.log")
        probe = subprocess.run(
            [str(BIN / "prefect"), "deployment", "inspect", name], env=env, capture_output=True, text=True
        )
        if probe.returncode == 0:
            return
        time.sleep(1)
    raise RuntimeError(f"deployment {name} did not appear within {timeout:.0f}s; see .finsent/runner.log")


def _print_results(env: dict, flow_run_id: str) -> bool:
    """Print the flow run's metrics artifact; True when the run completed."""
    api = env["PREFECT_API_URL"]

    def post(path: str, body: dict):
        request = urllib.request.Request(
            f"{api}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    with urllib.request.urlopen(f"{api}/flow_runs/{flow_run_id}", timeout=30) as response:
        run = json.loads(response.read())
    state = run["state"]["type"]
    _say(f"flow run {run['name']} ({flow_run_id}) ended {state}")
    artifacts = post("/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    for artifact in artifacts:
        if artifact["key"] == "finsent-metrics":
            rows = json.loads(artifact["data"]) if isinstance(artifact["data"], str) else artifact["data"]
            print("\nmodel  test_accuracy  test_macro_f1  epochs  train_seconds")
            for row in rows:
                print(
                    f"{row['model']:<6} {row['test_accuracy']:>13.4f} {row['test_macro_f1']:>14.4f} "
                    f"{row['epochs']!s:>7} {row['train_seconds']:>14}"
                )
        if artifact["key"] == "finsent-summary":
            print("\n" + artifact["data"] + "\n")
    return state == "COMPLETED"


def run_and_report(env: dict, port: int, how: str = "") -> int:
    """`prefect deployment run train/vertex --watch`, then the metrics; 0 only when the flow run completed."""
    started = time.monotonic()
    run = subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", "train/vertex", "--watch", "--watch-interval", "5"],
        env=env, capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    if run.returncode != 0:
        print(run.stdout[-4000:], run.stderr[-2000:], sep="\n")
    flow_run_id = next((line.split("UUID:")[1].strip() for line in run.stdout.splitlines() if "UUID:" in line), None)
    if flow_run_id is None:
        _say("could not start the flow run")
        return 1
    completed = _print_results(env, flow_run_id)
    _say(f"flow run took {time.monotonic() - started:.0f}s{how}; UI: http://127.0.0.1:{port}")
    return 0 if completed and run.returncode == 0 else 1


def stop_server(server: subprocess.Popen | None, keep_ui: bool) -> None:
    if server is None:
        return
    if keep_ui:
        _say(f"KEEP_UI=1: Prefect server left running (pid {server.pid}); stop it with kill -- -{server.pid}")
    else:
        kill_group(server)


def demo_env(prefect_home: Path, port: int) -> dict:
    """The environment of every demo process: a local Prefect server on `port`, no telemetry, no wandb.ai."""
    env = os.environ | {
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "DO_NOT_TRACK": "1",
        "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "jax"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("WANDB_API_KEY", None)  # the demo never talks to wandb.ai
    return env


def main() -> int:
    STATE.mkdir(exist_ok=True)
    keep_ui = os.environ.get("KEEP_UI") == "1"
    port = int(os.environ.get("PREFECT_PORT", "0")) or free_port()
    env = demo_env(STATE / "prefect", port)
    processes: list[subprocess.Popen] = []
    server = None
    try:
        with FakeGcs() as gcs, VertexEmulator(gcs_endpoint=gcs.endpoint) as vertex:
            cfg = json.loads(DEMO_CONFIG.read_text())
            gcs.create_bucket(cfg["bucket"])
            env |= {
                "STORAGE_EMULATOR_HOST": gcs.endpoint,
                "FINSENT_VERTEX_ENDPOINT": vertex.endpoint,
                "FINSENT_CONFIG": str(DEMO_CONFIG),
            }
            _say(f"GCS emulator {gcs.endpoint}, Vertex emulator {vertex.endpoint}")
            _say(f"data: {env.get('FINSENT_DATA_URI') or 'the public Financial PhraseBank zip'}")
            server = _start(
                [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, "server.log"
            )
            wait_http_ready(f"http://127.0.0.1:{port}/api/health", server, 120, "prefect server")
            _say(f"Prefect UI: http://127.0.0.1:{port}")
            runner = _start([sys.executable, "-m", "deployments.serve"], env, "runner.log")
            processes.append(runner)
            _wait_for_deployment(env, "train/vertex", runner)
            _say("prefect deployment run train/vertex --watch")
            return run_and_report(env, port)
    finally:
        for process in processes:
            kill_group(process)
        stop_server(server, keep_ui)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
