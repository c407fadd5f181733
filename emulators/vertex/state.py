"""CustomJob records, the JobState enum, the allowed transitions and the (optionally on-disk) job store."""

from __future__ import annotations

import copy
import datetime as dt
import enum
import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trainer.storage import atomic_write_bytes


class JobState(enum.IntEnum):
    """google.cloud.aiplatform.v1.JobState: the wire integers the REST client sends with enum-encoding=int."""

    JOB_STATE_UNSPECIFIED = 0
    JOB_STATE_QUEUED = 1
    JOB_STATE_PENDING = 2
    JOB_STATE_RUNNING = 3
    JOB_STATE_SUCCEEDED = 4
    JOB_STATE_FAILED = 5
    JOB_STATE_CANCELLING = 6
    JOB_STATE_CANCELLED = 7
    JOB_STATE_PAUSED = 8
    JOB_STATE_EXPIRED = 9
    JOB_STATE_UPDATING = 10
    JOB_STATE_PARTIALLY_SUCCEEDED = 11

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


S = JobState
TERMINAL_STATES = frozenset({S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED})

#: Every transition the emulator makes, within what google/cloud/aiplatform/v1/job_state.proto allows:
#: - QUEUED: "The job has been just created or resumed and processing has not yet begun." (so PAUSED -> QUEUED)
#: - CANCELLING: "From this state the job may only go to either `JOB_STATE_SUCCEEDED`, `JOB_STATE_FAILED` or
#:   `JOB_STATE_CANCELLED`." (the `cancel_outcome` fault makes the first two)
#: - PAUSED: "The job has been stopped, and can be resumed."
#: - UPDATING: "Only jobs in the `RUNNING` state can be updated. After updating, the job goes back to the `RUNNING`
#:   state."
#: A preempted replica that restarts keeps the job RUNNING (as Vertex does). FAILED is reachable from every live
#: state (an infrastructure failure). EXPIRED and PARTIALLY_SUCCEEDED are never made (not CustomJob states).
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.JOB_STATE_QUEUED: frozenset({S.JOB_STATE_PENDING, S.JOB_STATE_CANCELLING, S.JOB_STATE_FAILED}),
    S.JOB_STATE_PENDING: frozenset({S.JOB_STATE_RUNNING, S.JOB_STATE_CANCELLING, S.JOB_STATE_FAILED, S.JOB_STATE_QUEUED}),
    S.JOB_STATE_RUNNING: frozenset({S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLING,
                                    S.JOB_STATE_PAUSED, S.JOB_STATE_UPDATING}),
    S.JOB_STATE_PAUSED: frozenset({S.JOB_STATE_QUEUED, S.JOB_STATE_CANCELLING, S.JOB_STATE_FAILED}),
    S.JOB_STATE_UPDATING: frozenset({S.JOB_STATE_RUNNING, S.JOB_STATE_CANCELLING, S.JOB_STATE_FAILED}),
    S.JOB_STATE_CANCELLING: frozenset({S.JOB_STATE_CANCELLED, S.JOB_STATE_SUCCEEDED, S.JOB_STATE_FAILED}),
    S.JOB_STATE_SUCCEEDED: frozenset(),
    S.JOB_STATE_FAILED: frozenset(),
    S.JOB_STATE_CANCELLED: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A bug in the emulator: a transition outside TRANSITIONS."""


def now_rfc3339() -> str:
    """UTC timestamp as Google's JSON mapping writes it (microseconds, trailing Z)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class ReplicaInfo:
    """One replica process (or its last incarnation): enough to find and kill it after an emulator restart."""

    replica: str  # "workerpool0-0"
    pid: int | None = None
    start_ticks: int | None = None  # /proc/<pid>/stat starttime, guards against pid reuse
    exit_code: int | None = None
    restarts: int = 0


@dataclass
class JobRecord:
    """A CustomJob: `resource` is exactly what the API returns (camelCase, enum names, int64 as strings)."""

    resource: dict
    job_id: str
    cancel_requested: bool = False
    create_response_dropped: bool = False
    preemptions: int = 0
    replicas: list[ReplicaInfo] = field(default_factory=list)
    #: Every state the job was in, with when it entered it: [{"state": "JOB_STATE_QUEUED", "time": RFC 3339}, ...].
    history: list[dict] = field(default_factory=list)
    #: The per-job faults this job (or its cancel) claimed: {"fail": {...}, "hold": {...}, "cancel_outcome": {...}}.
    faults: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.resource["name"]

    @property
    def state(self) -> JobState:
        return JobState[self.resource["state"]]

    def transition(self, new: JobState, error: dict | None = None) -> None:
        """Move to `new`, stamping the times Vertex stamps; raise IllegalTransition outside TRANSITIONS."""
        old = self.state
        if new not in TRANSITIONS.get(old, frozenset()):
            raise IllegalTransition(f"{self.name}: {old.name} -> {new.name} is not allowed")
        stamp = now_rfc3339()
        self.resource["state"] = new.name
        self.resource["updateTime"] = stamp
        if new == S.JOB_STATE_RUNNING and "startTime" not in self.resource:
            self.resource["startTime"] = stamp
        if new.terminal:
            self.resource["endTime"] = stamp
        if error is not None:
            self.resource["error"] = error
        self.history.append({"state": new.name, "time": stamp})

    def to_json(self) -> dict:
        data = asdict(self)
        data["resource"] = copy.deepcopy(self.resource)
        return data

    @classmethod
    def from_json(cls, data: dict) -> "JobRecord":
        replicas = [ReplicaInfo(**r) for r in data.pop("replicas", [])]
        return cls(replicas=replicas, **data)


class JobStore:
    """Jobs by id, kept in memory and, with `state_dir`, one JSON file per job written atomically on every save."""

    def __init__(self, state_dir: str | os.PathLike | None = None) -> None:
        self._lock = threading.RLock()
        self._jobs: dict[str, JobRecord] = {}
        self.state_dir = Path(state_dir) if state_dir is not None else None
        if self.state_dir is not None:
            (self.state_dir / "jobs").mkdir(parents=True, exist_ok=True)
            for path in sorted((self.state_dir / "jobs").glob("*.json")):
                record = JobRecord.from_json(json.loads(path.read_text()))
                self._jobs[record.job_id] = record

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def add(self, record: JobRecord) -> None:
        with self._lock:
            self._jobs[record.job_id] = record
            self.save(record)

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[JobRecord]:
        with self._lock:
            return list(self._jobs.values())

    def remove(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)
            if self.state_dir is not None:
                (self.state_dir / "jobs" / f"{job_id}.json").unlink(missing_ok=True)

    def save(self, record: JobRecord) -> None:
        if self.state_dir is None:
            return
        with self._lock:
            path = self.state_dir / "jobs" / f"{record.job_id}.json"
            atomic_write_bytes(str(path), json.dumps(record.to_json(), indent=1).encode())
