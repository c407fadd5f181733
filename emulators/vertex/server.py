"""Run the Vertex AI CustomJob emulator: `python -m emulators.vertex --host 127.0.0.1 --port PORT [--state-dir DIR]`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import tempfile
from pathlib import Path

import uvicorn

from emulators.vertex.driver import JobDriver
from emulators.vertex.faults import Faults
from emulators.vertex.job_files import JobFiles
from emulators.vertex.routes import RequestLog, build_app
from emulators.vertex.runner import InstantRunner, SubprocessRunner
from emulators.vertex.service import JobService
from emulators.vertex.state import JobStore


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m emulators.vertex", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: a free one; see --port-file)")
    parser.add_argument("--state-dir", default=None, help="keep jobs and logs here across restarts")
    parser.add_argument("--port-file", default=None, help="write the bound port here once listening")
    parser.add_argument("--gcs-endpoint", default=None,
                        help="fake-gcs-server URL (sets STORAGE_EMULATOR_HOST for package downloads and jobs)")
    parser.add_argument("--runner", choices=["subprocess", "instant"], default="subprocess")
    parser.add_argument("--tick", type=float, default=0.2, help="seconds QUEUED, PENDING and CANCELLING last at least")
    parser.add_argument("--max-running", type=int, default=None,
                        help="jobs past QUEUED at once, like a GPU quota: the rest wait in QUEUED (default: no limit)")
    parser.add_argument("--kill-grace", type=float, default=2.0, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("--log-level", default="warning")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.gcs_endpoint:
        os.environ["STORAGE_EMULATOR_HOST"] = args.gcs_endpoint
    tmp = None
    if args.state_dir:
        data_dir = Path(args.state_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="vertex-emulator-")
        data_dir = Path(tmp.name)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    port = sock.getsockname()[1]
    base_url = f"http://{args.host}:{port}"
    runner = InstantRunner() if args.runner == "instant" else SubprocessRunner()
    faults = Faults()
    store, files = JobStore(args.state_dir), JobFiles(data_dir)
    driver = JobDriver(store, runner, faults, files, base_url, tick=args.tick, kill_grace=args.kill_grace,
                       max_running=args.max_running)
    app = build_app(JobService(store, driver, files, base_url), faults, RequestLog())
    driver.recover()
    config = uvicorn.Config(app, log_level=args.log_level, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    if args.port_file:
        Path(args.port_file).write_text(str(port))
    print(f"Vertex AI emulator listening on {base_url} (state: {args.state_dir or 'memory'})", flush=True)
    # uvicorn re-raises the signal that stopped it once it has shut down, which would kill this process before
    # `driver.shutdown()` reaps the replicas; with no-op handlers in place the re-raise is harmless.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        server.run(sockets=[sock])
    finally:
        driver.shutdown()
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
