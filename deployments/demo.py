"""`make demo`: the whole product, offline, on this machine.

Starts fake-gcs-server, the Vertex emulator, a Prefect server (SQLite under .finsent/) and the deployment runner,
starts a run of train/vertex and follows it: its state changes and flow-run log lines (each model's job states,
one line per epoch, the trainer's own lines) as they reach the Prefect API, then both models' metrics and the UI
address; it stops everything it started (KEEP_UI=1 keeps the Prefect server up). Exit code 0 only when the flow
run completed; a failed run's error is its last line.

A user's settings: FINSENT_DEMO_CONFIG=my.json (`make demo CONFIG=my.json`) is merged over
deployments/emulators.json (objects key by key, lists and values replaced) and validated before anything starts.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from deployments.serve import config_from_env, read_config_files
from emulators._proc import free_port, kill_group, wait_http_ready
from emulators.gcs import FakeGcs
from emulators.vertex import VertexEmulator
from tasks.config import PipelineConfig
from tasks.errors import ConfigError

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


# --- following a flow run: pure formatting ----------------------------------------------------------------------
def _clock(when: datetime) -> str:
    return when.astimezone().strftime("%H:%M:%S")


def format_log(level: int, message: str, when: datetime, task: str | None = None) -> str | None:
    """One terminal line for a flow-run log record (`task`: the name of its task run, e.g. train-lstm), or None for
    DEBUG (Prefect's own chatter; the UI has it).

    A traceback (the engine logs a failed task's in full) is cut to its first and last lines: the last one is the
    error a user acts on; the whole text stays in the UI's log."""
    if level < logging.INFO:
        return None
    lines = [line for line in message.splitlines() if line.strip()] or [""]
    if len(lines) > 2 and any(line.startswith("Traceback (most recent call last)") for line in lines):
        error = lines[-1].strip()
        lines = [lines[0]] + ([] if error.partition(": ")[2] in lines[0] else ["... " + error])
    text = "\n         ".join(lines)
    prefix = f"{_clock(when)} " + (f"{task} | " if task else "")
    return prefix + (text if level == logging.INFO else f"{logging.getLevelName(level)}: {text}")


def format_state(name: str, message: str | None, when: datetime) -> str:
    """The flow run's state change, e.g. `12:00:01 flow run -> Running`."""
    return f"{_clock(when)} flow run -> {name}" + (f": {message}" if message and name != "Running" else "")


METRIC_COLUMNS = (("model", "<6", "s"), ("test_accuracy", ">13", ".4f"), ("test_macro_f1", ">13", ".4f"),
                  ("epochs", ">6", ""), ("train_seconds", ">13", ""), ("cost_usd", ">8", ".4f"))


def metrics_table(rows: list[dict]) -> str:
    """The finsent-metrics artifact as terminal text; cost_usd only when the rows have it."""
    columns = [c for c in METRIC_COLUMNS if any(c[0] in row for row in rows)]
    head = " ".join(f"{name:{align}}" for name, align, _ in columns)

    def cell(value, align: str, fmt: str) -> str:
        if value is None:
            return f"{'-':{align}}"
        return f"{value:{align}{fmt}}" if fmt and isinstance(value, int | float) else f"{value!s:{align}}"

    body = [" ".join(cell(row.get(name), align, fmt) for name, align, fmt in columns) for row in rows]
    return "\n".join([head, *body])


# --- following a flow run: the API edge --------------------------------------------------------------------------
class RunFollower:
    """A flow run's state changes and log lines, each returned once, in timestamp order, as they reach the API.

    Logs reach the server in batches (every ~2 s from each process), so one poll can bring a line older than the
    newest one already shown: each poll reads back `lookback` before the newest line seen and drops the ids seen."""

    def __init__(self, client, flow_run_id, lookback: timedelta = timedelta(seconds=30)):
        self.client, self.flow_run_id, self.lookback = client, flow_run_id, lookback
        self._seen: set = set()
        self._newest: datetime | None = None
        self._task_names: dict = {}

    def _task_name(self, task_run_id) -> str | None:
        if task_run_id is not None and task_run_id not in self._task_names:  # a new task run: read its name once
            from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

            runs = self.client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(
                any_=[self.flow_run_id])))
            self._task_names |= {run.id: run.name for run in runs}
        return self._task_names.get(task_run_id)

    def _new_logs(self) -> list:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp
        from prefect.client.schemas.sorting import LogSort

        after = self._newest - self.lookback if self._newest else None
        log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[self.flow_run_id]),
                               timestamp=LogFilterTimestamp(after_=after))
        found, offset = [], 0
        while True:  # the API answers at most 200 logs per request (PREFECT_API_DEFAULT_LIMIT)
            page = self.client.read_logs(log_filter=log_filter, limit=200, offset=offset, sort=LogSort.TIMESTAMP_ASC)
            found += page
            offset += len(page)
            if len(page) < 200:
                return found

    def poll(self) -> tuple[list[tuple[datetime, str]], object]:
        """(new (timestamp, terminal line)s in timestamp order, the flow run's current state)."""
        events = []
        for state in self.client.read_flow_run_states(self.flow_run_id):
            if state.id not in self._seen:
                self._seen.add(state.id)
                events.append((state.timestamp, format_state(state.name, state.message, state.timestamp)))
        for log in self._new_logs():
            if log.id not in self._seen:
                self._seen.add(log.id)
                self._newest = max(self._newest or log.timestamp, log.timestamp)
                task = self._task_name(log.task_run_id) if log.level >= logging.INFO else None
                if line := format_log(log.level, log.message, log.timestamp, task):
                    events.append((log.timestamp, line))
        events.sort(key=lambda event: event[0])
        return events, self.client.read_flow_run(self.flow_run_id).state


def _print(line: str) -> None:
    print(line, flush=True)


def follow(client, flow_run_id, emit=_print, interval: float = 2.0, hold: float = 3.0, settle: float = 5.0):
    """Print the run's lines until it is final and no new line came for `settle` s; returns the final state.

    A line is printed once it is `hold` s old, in timestamp order: a process sends its logs every ~2 s
    (PREFECT_LOGGING_TO_API_BATCH_INTERVAL), so a task's last lines can reach the API after the state change that
    followed them; `settle` because the flow process sends its last batch after it has set the final state."""
    follower = RunFollower(client, flow_run_id)
    pending: list[tuple[datetime, str]] = []
    quiet_since = None
    while True:
        events, state = follower.poll()
        pending = sorted(pending + events, key=lambda event: event[0])
        done = False
        if state is not None and state.is_final():
            quiet_since = time.monotonic() if events or quiet_since is None else quiet_since
            done = time.monotonic() - quiet_since >= settle
        horizon = datetime.now(timezone.utc) - timedelta(seconds=hold)
        while pending and (done or pending[0][0] <= horizon):
            emit(pending.pop(0)[1])
        if done:
            return state
        time.sleep(interval)


def _artifacts(client, flow_run_id) -> dict:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
        any_=[flow_run_id])))
    return {artifact.key: artifact.data for artifact in found if artifact.key}


def run_and_report(env: dict, port: int | None, how: str = "", deployment: str = "train/vertex") -> int:
    """Start a run of `deployment`, print its state changes and log lines as they come, then the metrics table;
    0 only when the run completed. A failed run's state message (its error) is the last line."""
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import StateType

    started = time.monotonic()
    with SyncPrefectClient(env["PREFECT_API_URL"]) as client:
        flow_run = client.create_flow_run_from_deployment(client.read_deployment_by_name(deployment).id)
        _say(f"flow run {flow_run.name} ({flow_run.id}) of {deployment}; following its logs")
        state = follow(client, flow_run.id)
        artifacts = _artifacts(client, flow_run.id)
    if (rows := artifacts.get("finsent-metrics")) is not None:
        print("\n" + metrics_table(json.loads(rows) if isinstance(rows, str) else rows))
    if summary := artifacts.get("finsent-summary"):
        print("\n" + summary + "\n")
    ui = f"; UI: http://127.0.0.1:{port}/v2/runs/flow-run/{flow_run.id}" if port else ""
    _say(f"flow run {flow_run.name} ended {state.name} after {time.monotonic() - started:.0f}s{how}{ui}")
    if state.type != StateType.COMPLETED:
        _say(f"error: {state.message or state.name}")
        return 1
    return 0


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


def _is_local(uri: str) -> bool:
    return "://" not in uri


def demo_settings(env: dict) -> tuple[dict, PipelineConfig]:
    """The FINSENT_* settings of the demo's runner (or `prefect deploy`) and the config they give, validated now,
    before any service starts; raises ConfigError with one line naming the user's file.

    deployments/emulators.json, with FINSENT_DEMO_CONFIG's file merged over it (serve's `read_config_files`, the
    code every path reads FINSENT_CONFIG with). A data.uri in the user's file wins over the Makefile's
    FINSENT_DATA_URI (the shared Financial PhraseBank copy); a relative one is read from the file's folder."""
    settings = {"FINSENT_CONFIG": str(DEMO_CONFIG)}
    user = env.get("FINSENT_DEMO_CONFIG")
    if user:
        path = Path(user).expanduser().resolve()
        overlay = read_config_files(str(path))
        settings["FINSENT_CONFIG"] += os.pathsep + str(path)
        uri = overlay.get("data", {}).get("uri") if isinstance(overlay.get("data"), dict) else None
        if isinstance(uri, str):
            settings["FINSENT_DATA_URI"] = str(path.parent / uri) if _is_local(uri) else uri
    try:
        cfg = config_from_env(env | settings)
    except ConfigError as exc:
        raise ConfigError(f"{user} (merged over {DEMO_CONFIG.relative_to(REPO)}): {exc}" if user else str(exc)) \
            from None
    if _is_local(cfg.data.uri) and not (REPO / cfg.data.uri).exists():
        where = f"data.uri of {user}" if user and "FINSENT_DATA_URI" in settings else "FINSENT_DATA_URI"
        raise ConfigError(f"{where}: {cfg.data.uri} does not exist")
    return settings, cfg


def configured_env(env: dict) -> tuple[dict, PipelineConfig] | None:
    """`env` with the demo's settings and the checked config, for both demos' start; None after printing a bad
    setting's one line (the demo then exits 2 before starting anything)."""
    try:
        settings, cfg = demo_settings(env)
    except ConfigError as exc:
        print(f"finsent: error: {exc}", file=sys.stderr)
        return None
    return env | settings, cfg


def main() -> int:
    STATE.mkdir(exist_ok=True)
    keep_ui = os.environ.get("KEEP_UI") == "1"
    port = int(os.environ.get("PREFECT_PORT", "0")) or free_port()
    configured = configured_env(demo_env(STATE / "prefect", port))
    if configured is None:
        return 2
    env, cfg = configured
    processes: list[subprocess.Popen] = []
    server = None
    try:
        with FakeGcs() as gcs, VertexEmulator(gcs_endpoint=gcs.endpoint) as vertex:
            gcs.create_bucket(cfg.bucket)
            env |= {"STORAGE_EMULATOR_HOST": gcs.endpoint, "FINSENT_VERTEX_ENDPOINT": vertex.endpoint}
            _say(f"GCS emulator {gcs.endpoint}, Vertex emulator {vertex.endpoint}")
            _say(f"settings: {' + '.join(env['FINSENT_CONFIG'].split(os.pathsep))}; data: {cfg.data.uri}")
            server = _start(
                [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, "server.log"
            )
            wait_http_ready(f"http://127.0.0.1:{port}/api/health", server, 120, "prefect server")
            _say(f"Prefect UI: http://127.0.0.1:{port}")
            runner = _start([sys.executable, "-m", "deployments.serve"], env, "runner.log")
            processes.append(runner)
            _wait_for_deployment(env, "train/vertex", runner)
            return run_and_report(env, port)
    finally:
        for process in processes:
            kill_group(process)
        stop_server(server, keep_ui)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.exit(main())
