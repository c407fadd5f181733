"""Each job's work directory `work/<job id>/`: the emulator's event log, one log per replica, the replicas' cwd.

Both the API (admin log view) and the job driver (events, the failed replica's last lines) read and write here.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

from emulators.vertex.state import now_rfc3339


def job_log_url(base_url: str, job_id: str) -> str:
    """The admin route serving a job's log: put in `webAccessUris` and in FAILED messages."""
    return f"{base_url.rstrip('/')}/emulator/v1/jobs/{job_id}/log"


class JobFiles:
    """Work directories and logs of every job under `data_dir/work/`."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "work"

    def dir(self, job_id: str) -> Path:
        return self.root / job_id

    def replica_log(self, job_id: str, replica: str) -> Path:
        return self.dir(job_id) / f"{replica}.log"

    def log_event(self, job_id: str, message: str) -> None:
        """Append a timestamped emulator event (download, install, state change) to the job's event log."""
        directory = self.dir(job_id)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "emulator.log", "a") as f:
            f.write(f"{now_rfc3339()} [emulator] {message}\n")

    def exists(self, job_id: str) -> bool:
        return self.dir(job_id).exists()

    def read(self, job_id: str, replica: str | None = None) -> str:
        """One replica's log, or the events followed by every replica's lines prefixed `[workerpoolN-R]`."""
        if replica:
            path = self.replica_log(job_id, replica)
            return path.read_text(errors="replace") if path.exists() else ""
        directory = self.dir(job_id)
        parts = []
        events = directory / "emulator.log"
        if events.exists():
            parts.append(events.read_text(errors="replace"))
        for path in sorted(directory.glob("workerpool*.log")):
            parts.extend(f"[{path.stem}] {line}\n" for line in path.read_text(errors="replace").splitlines())
        return "".join(parts)

    def tail(self, job_id: str, replica: str, lines: int = 10) -> str:
        """The last `lines` lines of a replica's log ("" if it has none), for the FAILED message."""
        try:
            with open(self.replica_log(job_id, replica), "rb") as f:
                text = deque(f, maxlen=lines)
        except OSError:
            return ""
        return b"".join(text).decode("utf-8", "replace").rstrip()
