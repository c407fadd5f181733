"""A Vertex job's own log lines, read from Cloud Logging: the only module of the flow that imports google.cloud.logging.

Vertex sends each replica's stdout and stderr to Cloud Logging as `resource.type="ml_job"` entries labelled with the
numeric job id and the replica (`resource.labels.task_name`: "workerpool0-0", or "service" for Vertex's own
messages); gcloud's `ai custom-jobs stream-logs` reads them with exactly that filter (google-cloud-sdk,
command_lib/ai/log_util.py). Reading them needs `roles/logging.viewer` (platform facts, Cloud Logging).

The JSON-over-HTTP transport of the real client is used, against Google and against the Vertex emulator alike (it
serves `POST /v2/entries:list` on its own port), so the tests exercise the wire production uses. The log lines are
a nicety: nothing here ever raises into the run.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from google.api_core import exceptions as gexc
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import AuthorizedSession
from google.cloud import logging_v2

from tasks.config import PipelineConfig
from tasks.credentials import gcp_credentials
from tasks.transient import TRANSIENT_CALL_ERRORS

LOG_VIEWER_ROLE = "roles/logging.viewer"
#: Lines shown per poll: a chatty job keeps the newest this many and says how many it skipped.
MAX_LINES_PER_POLL = 200
#: Entries one poll reads at most (pages of the API's maximum, 1000); the rest wait for the next poll.
MAX_ENTRIES_PER_POLL = 5000
#: Cloud Logging may receive an entry after a later one: each poll looks back this far and drops what it has seen.
LATE_SECONDS = 5.0
#: One request's limit: a hung Logging call must not hold up the job's watch.
REQUEST_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class LogLine:
    task_name: str
    text: str
    timestamp: dt.datetime
    severity: str = "DEFAULT"


@dataclass
class LogBatch:
    """What one poll found: the lines to show, in order, and how many newer-than-last lines it left out."""

    lines: list[LogLine] = field(default_factory=list)
    skipped: int = 0


def job_filter(job_id: str, since: dt.datetime | None = None) -> str:
    """The Logging filter of one CustomJob's entries (gcloud's, log_util.py), from `since` on when given."""
    terms = ['resource.type="ml_job"', f'resource.labels.job_id="{job_id}"']
    if since is not None:
        terms.append(f'timestamp>="{since.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}"')
    return " AND ".join(terms)


def entry_text(payload: object) -> str:
    """An entry's message: textPayload, or jsonPayload.message (as gcloud's log_util._EntryToDict reads it)."""
    if isinstance(payload, dict):
        return str(payload.get("message", payload))
    return "" if payload is None else str(payload)


def warning_of(log: Callable[[str], None]) -> Callable[[str], None]:
    """The `warning` method beside `log` when `log` is a logger's bound method (the flow passes Prefect's run logger
    `.info`), so a warning shows as one; else `log` itself."""
    owner = getattr(log, "__self__", None)
    return owner.warning if isinstance(owner, (logging.Logger, logging.LoggerAdapter)) else log


class _TimeoutSession(AuthorizedSession):
    """Caps every request at REQUEST_TIMEOUT_SECONDS (the client's own default is 60 s)."""

    def request(self, method, url, *args, timeout=None, **kwargs):  # noqa: ANN001 - requests' signature
        timeout = REQUEST_TIMEOUT_SECONDS if timeout is None else min(timeout, REQUEST_TIMEOUT_SECONDS)
        return super().request(method, url, *args, timeout=timeout, **kwargs)


def logging_client(cfg: PipelineConfig) -> logging_v2.Client:
    """The real client over HTTP: to the emulator when `cfg.vertex_endpoint` is set (same port), else to Google."""
    credentials = gcp_credentials(cfg)
    options = {"api_endpoint": cfg.vertex_endpoint.rstrip("/")} if cfg.vertex_endpoint else None
    return logging_v2.Client(project=cfg.project, credentials=credentials, _http=_TimeoutSession(credentials),
                             _use_grpc=False, client_options=options)


class JobLogReader:
    """The new log lines of one job, one call per watch poll: `poll()` returns only entries it has not returned
    before, oldest first, at most `max_lines` of them (the newest; the others counted as skipped).

    A permission error (HTTP 403: the credentials lack `roles/logging.viewer`) or any other error that a retry would
    not fix logs ONE warning and turns the reader off for this job; a transient error skips the poll quietly."""

    def __init__(self, cfg: PipelineConfig, job_name: str, *, warn: Callable[[str], None] = print,
                 max_lines: int = MAX_LINES_PER_POLL, max_entries: int = MAX_ENTRIES_PER_POLL,
                 client: logging_v2.Client | None = None) -> None:
        self.cfg = cfg
        self.job_id = job_name.rsplit("/", 1)[-1]
        self.warn = warn
        self.max_lines = max_lines
        self.max_entries = max_entries
        self.client = client
        self.stopped = False
        self._cursor: dt.datetime | None = None  # the newest timestamp returned so far
        self._seen: dict[str, dt.datetime] = {}  # insert ids returned within LATE_SECONDS of the cursor

    def poll(self) -> LogBatch:
        if self.stopped:
            return LogBatch()
        try:
            return self._read()
        except (*TRANSIENT_CALL_ERRORS, RefreshError, gexc.RetryError):
            return LogBatch()
        except (gexc.Forbidden, gexc.Unauthorized) as exc:  # over REST; PermissionDenied is Forbidden's subclass
            self._stop(f"cannot read the job's log lines from Cloud Logging ({exc.code} {exc.message}): grant the "
                       f"flow's credentials {LOG_VIEWER_ROLE} on project {self.cfg.project} to see them here")
        except Exception as exc:  # noqa: BLE001 - the log lines are optional; the run must go on
            self._stop(f"stopped reading the job's log lines from Cloud Logging ({type(exc).__name__}: {exc})")
        return LogBatch()

    def _stop(self, why: str) -> None:
        self.stopped = True
        self.warn(f"Vertex job {self.job_id}: {why}; the run goes on without them")

    def _read(self) -> LogBatch:
        if self.client is None:
            self.client = logging_client(self.cfg)
        since = self._cursor - dt.timedelta(seconds=LATE_SECONDS) if self._cursor else None
        entries = self.client.list_entries(
            resource_names=[f"projects/{self.cfg.project}"], filter_=job_filter(self.job_id, since),
            order_by=logging_v2.ASCENDING, page_size=1000, max_results=self.max_entries,
        )  # fmt: skip
        fresh: list[LogLine] = []
        for entry in entries:
            if entry.insert_id in self._seen:
                continue
            self._seen[entry.insert_id] = entry.timestamp
            resource = entry.resource.labels if entry.resource is not None else {}
            fresh.append(LogLine(resource.get("task_name", "unknown_task"), entry_text(entry.payload),
                                 entry.timestamp, entry.severity or "DEFAULT"))
        if fresh:
            self._cursor = max(self._cursor or fresh[-1].timestamp, max(line.timestamp for line in fresh))
            horizon = self._cursor - dt.timedelta(seconds=LATE_SECONDS)
            self._seen = {k: t for k, t in self._seen.items() if t >= horizon}
        shown = fresh[-self.max_lines:] if self.max_lines else []
        return LogBatch(shown, len(fresh) - len(shown))


#: States in which no replica has written anything yet: no read.
_NOT_STARTED = ("JOB_STATE_UNSPECIFIED", "JOB_STATE_QUEUED", "JOB_STATE_PENDING")


def job_log_printer(cfg: PipelineConfig, model: str, job_name: str, log: Callable[[str], None], *,
                    more_at: str = "") -> Callable[[object], None]:
    """A watch `on_poll` (tasks/vertex.py) that logs the job's new lines as `[model] task_name: text`, from RUNNING
    on and at the poll that sees the end; a permission warning goes out as a warning when `log` is a logger's."""
    reader = JobLogReader(cfg, job_name, warn=lambda line: warning_of(log)(f"[{model}] {line}"))

    def on_poll(job: object) -> None:
        if getattr(job.state, "name", None) in _NOT_STARTED:
            return
        batch = reader.poll()
        if batch.skipped:
            log(f"[{model}] ({batch.skipped} log lines skipped" + (f"; all of them: {more_at})" if more_at else ")"))
        for line in batch.lines:
            log(f"[{model}] {line.task_name}: {line.text}")

    return on_poll
