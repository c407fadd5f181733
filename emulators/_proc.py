"""Process helpers shared by the emulators: free ports, readiness polling, killing process groups."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import threading
import time
from typing import Callable

import httpx

_PR_SET_PDEATHSIG = 1


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free a moment ago (the caller must tolerate a rare race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def die_with_parent_preexec() -> Callable[[], None] | None:
    """A preexec_fn that asks Linux to SIGTERM the child when its parent dies, so nothing strays.

    PR_SET_PDEATHSIG fires when the *thread* that forked exits, so it is only safe from the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None

    def _preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return _preexec


def wait_http_ready(url: str, proc: subprocess.Popen | None, timeout: float, what: str) -> None:
    """Poll `url` until it answers below 500; raise RuntimeError if `proc` exits or `timeout` passes."""
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} before it was ready")
        try:
            response = httpx.get(url, timeout=1.0)
            if response.status_code < 500:
                return
            last_error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            last_error = repr(exc)
        time.sleep(0.05)
    raise RuntimeError(f"{what} was not ready at {url} after {timeout:.0f} s ({last_error})")


class LoopbackServer:
    """What FakeGcs and VertexEmulator share: a server process of ours listening on `host:port`."""

    host: str
    port: int | None
    _proc: subprocess.Popen | None

    @property
    def endpoint(self) -> str:
        """`http://HOST:PORT`: STORAGE_EMULATOR_HOST for GCS, the `api_endpoint` of aiplatform clients for Vertex."""
        if self.port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None


def kill_group(leader: subprocess.Popen | int, grace: float = 5.0) -> None:
    """SIGTERM the process group `leader` leads, wait up to `grace` s for the leader, then SIGKILL the group.

    `leader` is a Popen of ours or the bare pid of a leader that is not our child (a replica left behind by an
    emulator that restarted). A leader that has already exited gets only the SIGKILL, for its stray children.
    """
    popen = leader if isinstance(leader, subprocess.Popen) else None
    pgid = popen.pid if popen is not None else leader
    if popen is not None and popen.poll() is not None:
        signal_group(pgid, signal.SIGKILL)
        return
    if popen is not None:
        signal_group(pgid, signal.SIGTERM)
        try:
            popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    elif signal_group(pgid, signal.SIGTERM):
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and os.path.exists(f"/proc/{pgid}"):
            time.sleep(0.02)
    else:
        return  # no such group: nothing left to kill
    signal_group(pgid, signal.SIGKILL)
    if popen is not None:
        popen.wait()


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the group; False when there is no such group (or it is not ours)."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True
