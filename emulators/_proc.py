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


def kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process group led by `proc`, then SIGKILL it after `grace` seconds."""
    if proc.poll() is not None:
        _killpg_quiet(proc.pid, signal.SIGKILL)  # stray children of a dead leader
        return
    _killpg_quiet(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    _killpg_quiet(proc.pid, signal.SIGKILL)
    proc.wait()


def _killpg_quiet(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
