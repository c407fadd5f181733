"""`python -m emulators up`: start fake-gcs-server and the Vertex emulator, print the environment, stop on Ctrl-C.

    $ python -m emulators up --bucket finsent-demo --state-dir .finsent/emulators
    export STORAGE_EMULATOR_HOST=http://127.0.0.1:4443
    export FINSENT_VERTEX_ENDPOINT=http://127.0.0.1:8089
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from emulators.gcs import FakeGcs
from emulators.vertex import VertexEmulator


def _up(args: argparse.Namespace) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    state_dir = Path(args.state_dir) if args.state_dir else None
    gcs_kwargs: dict = {"port": args.gcs_port or None, "host": args.host}
    if state_dir is not None:  # keep GCS objects next to the jobs that wrote them
        gcs_kwargs.update(backend="filesystem", root=state_dir / "gcs")
    gcs = FakeGcs(**gcs_kwargs).start()
    vertex = None
    try:
        for bucket in args.bucket:
            gcs.create_bucket(bucket)
        vertex = VertexEmulator(port=args.vertex_port or None, host=args.host, gcs_endpoint=gcs.endpoint,
                                state_dir=state_dir / "vertex" if state_dir else None).start()
        lines = [f"export STORAGE_EMULATOR_HOST={gcs.endpoint}", f"export FINSENT_VERTEX_ENDPOINT={vertex.endpoint}"]
        if args.env_file:
            Path(args.env_file).write_text("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)
        print(f"# emulators up (admin API: {vertex.endpoint}/emulator/v1/); Ctrl-C to stop", file=sys.stderr, flush=True)
        stop.wait()
    finally:
        if vertex is not None:
            vertex.close()
        gcs.stop()
        print("# emulators stopped", file=sys.stderr, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emulators", description="Local GCS and Vertex AI emulators.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start fake-gcs-server and the Vertex emulator until Ctrl-C")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--gcs-port", type=int, default=0, help="default: a free port")
    up.add_argument("--vertex-port", type=int, default=0, help="default: a free port")
    up.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    up.add_argument("--state-dir", default=None,
                    help="keep Vertex jobs (and GCS objects, filesystem backend) here across restarts")
    up.add_argument("--env-file", default=None, help="also write the export lines to this file")
    args = parser.parse_args(argv)
    return _up(args)


if __name__ == "__main__":
    sys.exit(main())
