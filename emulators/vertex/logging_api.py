"""Cloud Logging v2 `entries:list` over the emulator's jobs: each replica's output, one LogEntry per line.

What the real service does, and where it says so:
- The method is `POST /v2/entries:list` with a JSON body (googleapis google/logging/v2/logging.proto,
  ListLogEntries: `post: "/v2/entries:list" body: "*"`). Request: `resourceNames` (required, "projects/[PROJECT_ID]",
  at most 100), `filter` (at most 20,000 characters), `orderBy` ("timestamp asc" (default) or "timestamp desc";
  "Entries with equal timestamps are returned in order of their insert_id values"), `pageSize` ("Default is 50. If
  the value is negative or exceeds 1000, the request is rejected"), `pageToken`. Response: `entries`,
  `nextPageToken`.
- Vertex job logs are `resource.type="ml_job"` with `resource.labels.job_id` the numeric CustomJob id and
  `resource.labels.task_name` the replica ("workerpool0-0") or "service" for Vertex's own messages (gcloud's
  command_lib/ai/log_util.py builds exactly that filter; issue 11 facts, section 7).
- UNCONFIRMED (no public source found): the log name (here `projects/P/logs/<task_name>`) and the label set
  beyond job_id and task_name (here also project_id, as Google's monitored resources carry). Readers should not
  rely on either.

Timestamps. A replica writes its log file directly (the emulator is not in the pipe, so replicas survive an
emulator restart), so the time of each line is derived, never invented: when the emulator first reads a line it
stamps it with the log file's modification time at that read, kept in `<replica>.stamps` beside the log. That is
the time of the latest write at or after the line: never before the line was written, exact for the newest line of
each read, and stable across reads and restarts. `receiveTimestamp` is the wall time of that first read. Service
entries are the emulator's event log, whose lines carry the time they were written.

Filters: the AND (explicit, or by juxtaposition) of comparisons `FIELD OP VALUE`, OP one of = != < <= > >= :
(substring), on resource.type, resource.labels.KEY, logName, severity, timestamp, receiveTimestamp, insertId,
textPayload. Anything else (OR, NOT, parentheses, other fields) is refused with 400 rather than misread.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass
from typing import Callable, Iterable

from emulators.vertex.errors import InvalidArgument
from emulators.vertex.job_files import JobFiles
from emulators.vertex.state import JobStore, now_rfc3339

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_RESOURCE_NAMES, MAX_FILTER_CHARS = 50, 1000, 100, 20_000
ORDERS = ("timestamp asc", "timestamp desc")
SERVICE_TASK = "service"
#: google.logging.type.LogSeverity, in order (log_severity.proto).
SEVERITIES = {"DEFAULT": 0, "DEBUG": 100, "INFO": 200, "NOTICE": 300, "WARNING": 400, "ERROR": 500,
              "CRITICAL": 600, "ALERT": 700, "EMERGENCY": 800}

_TERM = re.compile(r'\s*(?P<field>[A-Za-z_][\w.\-/]*)\s*(?P<op><=|>=|!=|=|<|>|:)\s*'
                   r'(?P<value>"(?:[^"\\]|\\.)*"|[^\s()"]+)\s*')
_AND = re.compile(r"\s*AND\s+|\s+")
_EVENT_LINE = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z) \[emulator\] (?P<text>.*)$")
_stamp_lock = threading.Lock()


def parse_time(text: str) -> dt.datetime:
    """An RFC 3339 timestamp (any fraction length, Z or an offset) as an aware datetime; ValueError if not one. The
    offset may lack its colon: google-cloud-logging's own default filter sends `timestamp>="...+0000"`
    (logging_v2/_helpers.py, _add_defaults_to_filter with _TIME_FORMAT "%Y-%m-%dT%H:%M:%S.%f%z")."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)", text.strip())
    if not match:
        raise ValueError(text)
    base, frac, zone = match.groups()
    zone = "+00:00" if zone == "Z" else f"{zone[:3]}:{zone[-2:]}"
    parsed = dt.datetime.fromisoformat(f"{base}.{(frac or '0')[:6].ljust(6, '0')}{zone}")
    return parsed.astimezone(dt.timezone.utc)


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---- filter --------------------------------------------------------------------------------------------------------
def _field_value(entry: dict, field: str) -> str | None:
    if field.startswith("resource.labels."):
        return entry["resource"]["labels"].get(field[len("resource.labels."):])
    return {"resource.type": entry["resource"]["type"], "logName": entry["logName"], "severity": entry["severity"],
            "timestamp": entry["timestamp"], "receiveTimestamp": entry["receiveTimestamp"],
            "insertId": entry["insertId"], "textPayload": entry.get("textPayload")}.get(field)


def _comparable(field: str, value: str) -> object:
    if field in ("timestamp", "receiveTimestamp"):
        return parse_time(value)
    if field == "severity":
        return SEVERITIES[value.upper()]
    return value


def _term(field: str, op: str, raw: str) -> Callable[[dict], bool]:
    value = json.loads(raw) if raw.startswith('"') else raw
    known = field.startswith("resource.labels.") or field in (
        "resource.type", "logName", "severity", "timestamp", "receiveTimestamp", "insertId", "textPayload")
    if not known:
        raise InvalidArgument(f"Unsupported field {field!r} in filter (the emulator's subset: resource.type, "
                              "resource.labels.KEY, logName, severity, timestamp, receiveTimestamp, insertId, "
                              "textPayload).")
    try:
        want = _comparable(field, value)
    except (ValueError, KeyError):
        raise InvalidArgument(f"Invalid value {value!r} for {field} in filter.") from None
    compare = {"=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
               "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
               ":": lambda a, b: str(b).lower() in str(a).lower()}[op]

    def matches(entry: dict) -> bool:
        have = _field_value(entry, field)
        if have is None:
            return op == "!="
        return compare(have if op == ":" else _comparable(field, have), value if op == ":" else want)

    return matches


def parse_filter(text: str | None) -> Callable[[dict], bool]:
    """The entries predicate of a Logging filter in the supported subset (module docstring); InvalidArgument else."""
    text = (text or "").strip()
    if len(text) > MAX_FILTER_CHARS:
        raise InvalidArgument(f"The filter is longer than {MAX_FILTER_CHARS} characters.")
    terms: list[Callable[[dict], bool]] = []
    pos = 0
    while pos < len(text):
        match = _TERM.match(text, pos)
        if not match or match.group("field") in ("AND", "OR", "NOT"):
            raise InvalidArgument(f"Unsupported filter syntax at {text[pos:pos + 40]!r}: the emulator understands "
                                  'the AND of comparisons such as resource.labels.job_id="123".')
        terms.append(_term(match.group("field"), match.group("op"), match.group("value")))
        pos = match.end()
        joiner = _AND.match(text, pos)
        if joiner and pos < len(text):
            pos = joiner.end()
    return lambda entry: all(term(entry) for term in terms)


# ---- paging --------------------------------------------------------------------------------------------------------
def _sort_key(entry: dict) -> tuple:
    return parse_time(entry["timestamp"]), entry["insertId"]


def _query_hash(request: dict) -> str:
    query = json.dumps([request.get("resourceNames"), request.get("filter"), request.get("orderBy")], sort_keys=True)
    return hashlib.sha256(query.encode()).hexdigest()[:16]


def _token(entry: dict, request: dict) -> str:
    raw = json.dumps({"after": [entry["timestamp"], entry["insertId"]], "query": _query_hash(request)})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _after(token: str, request: dict) -> tuple:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        if data["query"] != _query_hash(request):
            raise ValueError("the token belongs to another query")
        timestamp, insert_id = data["after"]
        return parse_time(timestamp), insert_id
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"Invalid page token {token!r}: {exc}") from None


def page_size_of(request: dict) -> int:
    raw = request.get("pageSize")
    try:
        size = int(raw) if raw not in (None, "") else 0
    except (TypeError, ValueError):
        raise InvalidArgument(f"Invalid pageSize {raw!r}.") from None
    if size < 0 or size > MAX_PAGE_SIZE:
        raise InvalidArgument(f"pageSize {size} is out of range: it must be between 0 and {MAX_PAGE_SIZE}.")
    return size or DEFAULT_PAGE_SIZE


def projects_of(request: dict) -> set[str]:
    names = request.get("resourceNames") or []
    if not isinstance(names, list) or not names:
        raise InvalidArgument("resourceNames is required, e.g. [\"projects/my-project\"].")
    if len(names) > MAX_RESOURCE_NAMES:
        raise InvalidArgument(f"At most {MAX_RESOURCE_NAMES} resourceNames are allowed.")
    projects = set()
    for name in names:
        match = re.fullmatch(r"projects/([^/]+)", str(name))
        if not match:
            raise InvalidArgument(f"Unsupported resource name {name!r}: the emulator serves projects/PROJECT only.")
        projects.add(match.group(1))
    return projects


def page(entries: Iterable[dict], request: dict) -> dict:
    """One `entries:list` answer over `entries` (any order): filtered, ordered, paged by a token that names the last
    entry returned, so entries written meanwhile neither repeat nor shift the next page."""
    order = request.get("orderBy") or ORDERS[0]
    if order not in ORDERS:
        raise InvalidArgument(f"Invalid orderBy {order!r}: the only permitted values are {' and '.join(ORDERS)}.")
    size = page_size_of(request)
    predicate = parse_filter(request.get("filter"))
    descending = order == ORDERS[1]
    ordered = sorted((e for e in entries if predicate(e)), key=_sort_key, reverse=descending)
    if request.get("pageToken"):
        after = _after(request["pageToken"], request)
        ordered = [e for e in ordered if (_sort_key(e) < after if descending else _sort_key(e) > after)]
    result: dict = {"entries": ordered[:size]}
    if len(ordered) > size:
        result["nextPageToken"] = _token(ordered[size - 1], request)
    return result


# ---- entries from the job files --------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobRef:
    project: str
    job_id: str


def log_entry(job: JobRef, task: str, text: str, timestamp: str, received: str, insert_id: str,
              severity: str = "DEFAULT") -> dict:
    """A LogEntry (log_entry.proto JSON names) of an ml_job."""
    return {
        "logName": f"projects/{job.project}/logs/{task}",
        "resource": {"type": "ml_job", "labels": {"job_id": job.job_id, "project_id": job.project, "task_name": task}},
        "textPayload": text,
        "timestamp": timestamp,
        "receiveTimestamp": received,
        "severity": severity,
        "insertId": insert_id,
    }


def stamped_lines(log_path: os.PathLike) -> list[tuple[int, str, str, str]]:
    """(byte offset, timestamp, receive time, text) of every complete line of a replica log, stamping the lines not
    seen before (module docstring, "Timestamps") in the `.stamps` file beside it."""
    log_path = os.fspath(log_path)
    stamps_path = log_path[: -len(".log")] + ".stamps"
    with _stamp_lock:
        try:
            with open(log_path, "rb") as f:
                data = f.read()
                mtime = os.fstat(f.fileno()).st_mtime_ns
        except FileNotFoundError:
            return []
        stamps: list[tuple[int, str, str]] = []  # (end offset, timestamp, received)
        if os.path.exists(stamps_path):
            with open(stamps_path) as f:
                stamps = [(int(end), ts, rx) for end, ts, rx in (line.split() for line in f if line.strip())]
        done = stamps[-1][0] if stamps else 0
        complete = data.rfind(b"\n") + 1
        if complete > done:
            moment = dt.datetime.fromtimestamp(mtime / 1e9, dt.timezone.utc)
            if stamps:
                moment = max(moment, parse_time(stamps[-1][1]))
            stamp, received = rfc3339(moment), now_rfc3339()
            new, offset = [], done
            for line in data[done:complete].splitlines(keepends=True):
                offset += len(line)
                new.append((offset, stamp, received))
            with open(stamps_path, "a") as f:
                f.writelines(f"{end} {ts} {rx}\n" for end, ts, rx in new)
            stamps.extend(new)
    lines, start = [], 0
    for end, ts, rx in stamps:
        lines.append((start, ts, rx, data[start:end].decode("utf-8", "replace").rstrip("\r\n")))
        start = end
    return lines


def replica_entries(job: JobRef, task: str, log_path: os.PathLike) -> list[dict]:
    """One DEFAULT-severity entry per line (the emulator merges stdout and stderr, so it cannot tell errors apart).
    The insert id orders a replica's lines among equal timestamps."""
    return [log_entry(job, task, text, ts, rx, f"{job.job_id}-{task}-{offset:012d}")
            for offset, ts, rx, text in stamped_lines(log_path)]


def service_entries(job: JobRef, events_text: str) -> list[dict]:
    """The emulator's event log as task_name "service" (where Vertex puts its own messages); a line without a
    timestamp continues the entry before it. A FAILED state is an ERROR entry."""
    entries: list[dict] = []
    for number, line in enumerate(events_text.splitlines()):
        match = _EVENT_LINE.match(line)
        if match:
            text = match.group("text")
            severity = "ERROR" if text.startswith(("State JOB_STATE_FAILED", "Internal error")) else "INFO"
            entries.append(log_entry(job, SERVICE_TASK, text, match.group("ts"), match.group("ts"),
                                     f"{job.job_id}-{SERVICE_TASK}-{number:012d}", severity))
        elif entries:
            entries[-1]["textPayload"] += "\n" + line
    return entries


def job_entries(job: JobRef, files: JobFiles) -> list[dict]:
    directory = files.dir(job.job_id)
    entries = []
    events = directory / "emulator.log"
    if events.exists():
        entries.extend(service_entries(job, events.read_text(errors="replace")))
    for path in sorted(directory.glob("workerpool*.log")):
        entries.extend(replica_entries(job, path.stem, path))
    return entries


def list_log_entries(store: JobStore, files: JobFiles, request: object) -> dict:
    """`POST /v2/entries:list`: the entries of every job of the requested projects that the emulator knows."""
    if not isinstance(request, dict):
        raise InvalidArgument("The request body must be a JSON object.")
    projects = projects_of(request)
    parse_filter(request.get("filter"))  # a bad filter is refused even when there is nothing to filter
    page_size_of(request)
    jobs = [JobRef(record.name.split("/")[1], record.job_id) for record in store.all()]
    wanted = named_job_ids(request.get("filter"))
    entries = [e for job in jobs if job.project in projects and (wanted is None or job.job_id in wanted)
               for e in job_entries(job, files)]
    return page(entries, request)


def named_job_ids(text: str | None) -> set[str] | None:
    """The job ids a filter pins with `resource.labels.job_id="..."`, or None when it pins none. Filters are an AND of
    terms (parse_filter), so only those jobs can match: the others' logs are not read at all (a watch asks every poll)."""
    ids = set(re.findall(r'resource\.labels\.job_id\s*=\s*"?(\d+)"?', text or ""))
    return ids or None
