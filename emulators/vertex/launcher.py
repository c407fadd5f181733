"""`VertexEmulator`: the emulator server in a subprocess (so tests can kill and restart it) plus an admin client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from emulators._proc import LoopbackServer, die_with_parent_preexec, kill_group, wait_http_ready


class AdminClient:
    """Typed access to the `/emulator/v1/` admin API (see docs/emulators.md)."""

    def __init__(self, endpoint: str) -> None:
        self.base = f"{endpoint}/emulator/v1"

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = httpx.request(method, f"{self.base}{path}", timeout=30, **kwargs)
        if response.is_error:  # say why (e.g. the unknown key of a fault payload), not only the status
            raise httpx.HTTPStatusError(f"{method} {path}: HTTP {response.status_code}: {response.text}",
                                        request=response.request, response=response)
        return response

    def health(self) -> dict:
        return self._call("GET", "/health").json()

    def set_faults(self, rules: list[dict] | None = None, preempt: dict | None = None) -> dict:
        """Add fault rules, e.g. `set_faults([{"method": "create", "status": 503, "times": 2}])`."""
        payload: dict = {"rules": rules or []}
        if preempt is not None:
            payload["preempt"] = preempt
        return self._call("POST", "/faults", json=payload).json()

    def fail(self, *, code: int, message: str, after_seconds: float = 0.0, times: int = 1) -> dict:
        """The next `times` jobs run `after_seconds`, then end FAILED with `error` {code, message} exactly."""
        return self._arm("fail", after_seconds=after_seconds, code=code, message=message, times=times)

    def hold(self, *, state: str, seconds: float, times: int = 1) -> dict:
        """The next `times` jobs stay `seconds` in `state`: "QUEUED" (before they start), "PAUSED" or "UPDATING"
        (once RUNNING), then go on."""
        return self._arm("hold", state=state, seconds=seconds, times=times)

    def cancel_outcome(self, *, state: str, times: int = 1) -> dict:
        """The next `times` cancels lose the race: CANCELLING, then `state` ("JOB_STATE_SUCCEEDED" or
        "JOB_STATE_FAILED", the latter with a retryable-looking preemption error)."""
        return self._arm("cancel_outcome", state=state, times=times)

    def _arm(self, kind: str, **fields: Any) -> dict:
        return self._call("POST", "/faults", json={kind: fields}).json()

    def faults(self) -> dict:
        """What is armed: {"rules", "preempt", "fail", "hold", "cancel_outcome"} with their `used` counts."""
        return self._call("GET", "/faults").json()

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def requests(self, method: str | None = None) -> list[dict]:
        """API calls received, oldest first; `method` is create/get/list/cancel/delete."""
        params = {"method": method} if method else None
        return self._call("GET", "/requests", params=params).json()["requests"]

    def clear_requests(self) -> None:
        self._call("DELETE", "/requests")

    def jobs(self) -> list[dict]:
        """Every job (dropped-response ones included): the resource plus an `emulator` section (pids, log URL)."""
        return self._call("GET", "/jobs").json()["jobs"]

    def job(self, job: str) -> dict:
        return self._call("GET", f"/jobs/{job.rsplit('/', 1)[-1]}").json()

    def job_log(self, job: str, replica: str | None = None) -> str:
        params = {"replica": replica} if replica else None
        return self._call("GET", f"/jobs/{job.rsplit('/', 1)[-1]}/log", params=params).text

    def reset(self, jobs: bool = False) -> None:
        """Clear faults and the request log; with `jobs=True` also cancel and forget every job."""
        self._call("POST", "/reset", json={"jobs": jobs})


class VertexEmulator(LoopbackServer):
    """Run `python -m emulators.vertex` in a subprocess.

    Args:
        port: TCP port; None lets the server pick a free one.
        host: address to bind.
        state_dir: keep jobs across restarts (None: in memory, gone on stop).
        gcs_endpoint: fake-gcs-server URL given to the server and its jobs as STORAGE_EMULATOR_HOST
            (default: this process's STORAGE_EMULATOR_HOST, if set).
        tick: seconds each quick state (QUEUED, PENDING, CANCELLING) lasts at least.
        kill_grace: seconds between SIGTERM and SIGKILL when killing replicas.
        max_running: jobs running at once (a GPU quota); the rest wait in QUEUED. None: no limit.
        runner: "subprocess" (real processes) or "instant".
        env: extra environment for the server (and so for its jobs' allow-listed variables).
        python: interpreter to run the server with (its jobs run on it too: it stands in for the images).
        startup_timeout: seconds to wait for readiness.
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        state_dir: str | os.PathLike | None = None,
        gcs_endpoint: str | None = None,
        tick: float = 0.2,
        kill_grace: float = 2.0,
        max_running: int | None = None,
        runner: str = "subprocess",
        env: dict[str, str] | None = None,
        python: str = sys.executable,
        startup_timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.port: int | None = None
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.gcs_endpoint = gcs_endpoint or os.environ.get("STORAGE_EMULATOR_HOST")
        self.tick = tick
        self.kill_grace = kill_grace
        self.max_running = max_running
        self.runner = runner
        self.env = dict(env or {})
        self.python = python
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="vertex-emulator-launcher-")
        self.log_path = Path(self._tmp.name) / "server.log"

    @property
    def admin(self) -> AdminClient:
        return AdminClient(self.endpoint)

    def start(self) -> "VertexEmulator":
        """Start the server and wait for `/emulator/v1/health`."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        port_file = Path(self._tmp.name) / "port"
        port_file.unlink(missing_ok=True)
        port = self.requested_port if self.requested_port is not None else (self.port or 0)
        cmd = [self.python, "-m", "emulators.vertex", "--host", self.host, "--port", str(port),
               "--port-file", str(port_file), "--tick", str(self.tick), "--kill-grace", str(self.kill_grace),
               "--runner", self.runner]
        if self.max_running:
            cmd += ["--max-running", str(self.max_running)]
        if self.state_dir is not None:
            cmd += ["--state-dir", str(self.state_dir)]
        if self.gcs_endpoint:
            cmd += ["--gcs-endpoint", self.gcs_endpoint]
        env = {**os.environ, **self.env}
        root = str(Path(__file__).resolve().parents[2])  # so `-m emulators.vertex` imports this checkout
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True, preexec_fn=die_with_parent_preexec())
        deadline = time.monotonic() + self.startup_timeout
        while not port_file.exists() or not port_file.read_text().strip():
            if self._proc.poll() is not None:
                raise RuntimeError(f"Vertex emulator exited with status {self._proc.returncode}:\n{self.server_log()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"Vertex emulator did not start in {self.startup_timeout} s:\n{self.server_log()}")
            time.sleep(0.02)
        self.port = int(port_file.read_text())
        wait_http_ready(f"{self.endpoint}/emulator/v1/health", self._proc,
                        max(1.0, deadline - time.monotonic()), "Vertex emulator")
        return self

    def stop(self) -> None:
        """Graceful stop: SIGTERM (the server kills its jobs' process trees), SIGKILL after 15 s."""
        if self._proc is not None:
            kill_group(self._proc, grace=15.0)
            self._proc = None

    def kill(self) -> None:
        """Crash the server (SIGKILL to the server process only): replicas live on until a restart reaps them."""
        if self._proc is not None:
            try:
                os.kill(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._proc.wait()
            self._proc = None

    def restart(self) -> "VertexEmulator":
        """Stop and start again on the same port (jobs survive only with a state_dir)."""
        self.stop()
        return self.start()

    def server_log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        self.stop()
        self._tmp.cleanup()

    def __enter__(self) -> "VertexEmulator":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
