"""A running job's progress in the flow run: the trainer's progress record (trainer/src/trainer/progress.py, the
model folder's progress.json) read on the watch's own polls and shown as a Prefect progress artifact per model, plus
one log line per finished epoch.

- pure: `record_percent`, `epoch_line`, `progress_description`, `new_epochs`, `format_eta`;
- I/O: `ProgressWatcher`, one model's watch `on_poll` (tasks/vertex.py `JobRunner.run`), the same object over every
  attempt of the model (a resubmitted job resumes the same record). At most one GCS request per poll, and it returns
  no body when the record has not changed (`tasks.gcs.download_if_changed`); no request before the job runs.

Nothing here raises into the watch: a GCS or Prefect API error is logged once and the next poll tries again. Outside
a Prefect run (a test calling JobRunner directly) there is no artifact to write: the log lines still go out.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable

from tasks.layout import BucketLayout
from trainer.progress import percent_of

PROGRESS_ARTIFACT = "finsent-progress-{tag}"
#: States in which no replica has run yet: nothing to read.
_NOT_STARTED = ("JOB_STATE_UNSPECIFIED", "JOB_STATE_QUEUED", "JOB_STATE_PENDING")


# --- pure -----------------------------------------------------------------------------------------------------------
def artifact_key(tag: str) -> str:
    """The progress artifact's key for a job tag (`lstm`, a sweep's `lstm/t0-f95009`): Prefect keys allow only
    lowercase letters, digits and dashes."""
    return PROGRESS_ARTIFACT.format(tag=re.sub(r"[^a-z0-9]+", "-", tag.lower()).strip("-"))


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def record_percent(record: dict) -> float:
    """The record's percent, 0-100: its own field, else from epoch/step by the trainer's own rule (a record without
    one), else 0."""
    percent = _number(record.get("percent"))
    if percent is None:
        epochs, epoch = _number(record.get("epochs")), _number(record.get("epoch"))
        if not epochs or epoch is None:
            return 0.0
        return percent_of(int(epoch), int(_number(record.get("step")) or 0), int(_number(record.get("steps_per_epoch"))
                          or 0), int(epochs))  # fmt: skip
    return round(min(100.0, max(0.0, percent)), 2)


def format_eta(seconds) -> str:
    """'1h 02m', '3m 05s', '12s'; '?' when unknown."""
    value = _number(seconds)
    if value is None:
        return "?"
    total = int(round(max(0.0, value)))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def _fixed(value, digits: int) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number:.{digits}f}"


def epoch_line(model: str, entry: dict, epochs) -> str:
    """`[lstm] epoch 2/2: loss 0.81 val acc 0.70 macro-F1 0.68 (3.1s)` for one finished epoch."""
    return (f"[{model}] epoch {entry.get('epoch')}/{epochs}: loss {_fixed(entry.get('loss'), 4)} "
            f"val acc {_fixed(entry.get('val_accuracy'), 4)} macro-F1 {_fixed(entry.get('val_macro_f1'), 4)} "
            f"({_fixed(entry.get('seconds'), 1)}s)")


def progress_description(model: str, record: dict) -> str:
    """The progress artifact's description: where the model's training is, in one line of markdown."""
    epochs, epoch = record.get("epochs"), record.get("epoch")
    if record.get("finished"):
        where = f"trained {len(record.get('history') or [])}/{epochs} epochs"
    else:
        where = f"epoch {epoch}/{epochs}, step {record.get('step')}/{record.get('steps_per_epoch')}"
    parts = [f"**{model}**: {where}", f"loss {_fixed(record.get('loss'), 4)}"]
    if record.get("val_macro_f1") is not None:
        parts.append(f"val macro-F1 {_fixed(record.get('val_macro_f1'), 4)}")
    if record.get("samples_per_second") is not None:
        parts.append(f"{_fixed(record.get('samples_per_second'), 1)} samples/s")
    if not record.get("finished"):
        parts.append(f"ETA {format_eta(record.get('eta_seconds'))}")
    if record.get("resumed_from_epoch"):
        parts.append(f"resumed after epoch {record['resumed_from_epoch']}")
    return " · ".join(parts)


def new_epochs(record: dict, last_logged: int) -> list[dict]:
    """The record's finished epochs after epoch `last_logged`, in order (a resumed job's history repeats the old)."""
    entries = [e for e in record.get("history") or [] if isinstance(e, dict) and _number(e.get("epoch")) is not None]
    return sorted((e for e in entries if e["epoch"] > last_logged), key=lambda e: e["epoch"])


# --- I/O ------------------------------------------------------------------------------------------------------------
def _in_prefect_run() -> bool:
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


class ProgressWatcher:
    """One model's progress on the watch's polls: call it with each polled CustomJob (a watch `on_poll`).

    `client` is a google.cloud.storage Client (default: the config's, made on the first read); `artifacts=False`
    skips the Prefect artifact (default: only inside a Prefect run)."""

    def __init__(self, cfg, model: str, output_uri: str, log: Callable[[str], None], *, client=None,
                 artifacts: bool | None = None, warn: Callable[[str], None] | None = None):
        from tasks.cloud_logging import warning_of

        self.cfg, self.model, self.log = cfg, model, log
        self.warn = warn or warning_of(log)
        self.uri = BucketLayout.progress(output_uri)
        self.client = client
        self.artifacts = artifacts
        self.generation = 0
        self.reads = 0  # GCS requests made (bench/orchestration.py compares it with the polls)
        self.polls = 0
        self.percent = 0.0  # the highest shown: the artifact never goes backwards
        self.percents: list[float] = []  # what each changed record showed, in order (tests read it)
        self.last_epoch = 0
        self.record: dict | None = None
        self.artifact_id = None
        self._warned: set[str] = set()

    def __call__(self, job) -> bool:
        """The watch's on_poll: True when the record says training is finished (the watch then polls soon)."""
        try:
            self.poll(getattr(getattr(job, "state", None), "name", None))
        except Exception as exc:  # noqa: BLE001 - on_poll must never raise into the watch
            self._warn_once("poll", f"[{self.model}] progress: {type(exc).__name__}: {exc}; the run goes on")
        return bool(self.record and self.record.get("finished"))

    def poll(self, state_name: str | None) -> None:
        """One poll: read the record if the job has started and it changed; show what is new."""
        self.polls += 1
        if state_name in _NOT_STARTED:
            return
        record = self._read()
        if record is None:
            return
        self.record = record
        for entry in new_epochs(record, self.last_epoch):
            self.log(epoch_line(self.model, entry, record.get("epochs")))
            self.last_epoch = int(entry["epoch"])
        self.percent = max(self.percent, record_percent(record))
        self.percents.append(self.percent)
        self._show(progress_description(self.model, record))

    def _read(self) -> dict | None:
        from tasks import gcs

        try:
            if self.client is None:
                self.client = gcs.storage_client(self.cfg)
            self.reads += 1
            data, self.generation = gcs.download_if_changed(self.client, self.uri, self.generation)
        except Exception as exc:  # noqa: BLE001 - transient or not: this poll shows nothing new
            self._warn_once("read", f"[{self.model}] cannot read the progress record {self.uri} "
                                    f"({type(exc).__name__}: {exc}); the run goes on, trying again on the next polls")
            return None
        if data is None:
            return None
        try:
            record = json.loads(data)
        except ValueError:
            self._warn_once("json", f"[{self.model}] the progress record {self.uri} is not JSON; skipped")
            return None
        return record if isinstance(record, dict) else None

    def _show(self, description: str) -> None:
        if self.artifacts is None:
            self.artifacts = _in_prefect_run()
        if not self.artifacts:
            return
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        try:
            if self.artifact_id is None:
                self.artifact_id = create_progress_artifact(
                    self.percent, key=artifact_key(self.model), description=description)
            else:
                update_progress_artifact(self.artifact_id, self.percent, description=description)
        except Exception as exc:  # noqa: BLE001 - the artifact is a view: the watch goes on
            self._warn_once("artifact", f"[{self.model}] cannot update the progress artifact "
                                        f"({type(exc).__name__}: {exc}); the run goes on")

    def _warn_once(self, what: str, line: str) -> None:
        if what not in self._warned:
            self._warned.add(what)
            self.warn(line)
