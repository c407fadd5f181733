"""The orphan reaper: cancels finsent Vertex jobs that no flow run watches any more.

A job is an orphan when the flow run that created it (label `finsent-flow-run`) has ended (COMPLETED, FAILED,
CANCELLED, CRASHED) or does not exist, for longer than a grace period, and no live flow run works on the same run
key (a rerun with the same `run_key` reattaches to the job, so it watches it although the label names the old run).
A job with no flow-run label was made outside a flow: it is reported, never cancelled.

- pure: `decide` (one job, what is known of its flow run, the clock) -> a `Verdict`;
- I/O: the `reap-jobs` task lists the unfinished finsent jobs, asks the Prefect API about their flow runs, cancels
  the orphans through `JobRunner.cancel` and returns one `Reaped` row per job.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal
from uuid import UUID

from prefect import get_client, get_run_logger, task

from tasks import vertex
from tasks.config import PipelineConfig
from tasks.errors import JobCancelError
from tasks.run_identity import LABEL_FLOW_RUN, LABEL_MODEL, LABEL_RUN, identity, run_label

# Prefect's final state types (prefect.client.schemas.objects.TERMINAL_STATES): nobody will watch the job again.
FINAL_FLOW_RUN_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})
# Flow runs that are, or may yet be, watching jobs: every other state type.
LIVE_FLOW_RUN_STATES = ("SCHEDULED", "PENDING", "RUNNING", "PAUSED", "CANCELLING")
# Job states in which there is nothing left to cancel (CANCELLING: a cancel is already under way).
ENDED_JOB_STATES = frozenset(
    {vertex.JobState(s).name for s in vertex.TERMINAL_STATES} | {vertex.JobState.JOB_STATE_CANCELLING.name}
)
Action = Literal["cancel", "leave", "report"]


@dataclass(frozen=True)
class FlowRunSeen:
    """What the Prefect API says of a job's flow run: its state type and when it reached a final state."""

    state: str  # a Prefect StateType value, e.g. "RUNNING", "CRASHED"
    ended: dt.datetime | None = None


@dataclass(frozen=True)
class Verdict:
    action: Action
    reason: str


def decide(
    labels: Mapping[str, str],
    job_state: str,
    created: dt.datetime,
    flow_run: FlowRunSeen | None,
    *,
    now: dt.datetime,
    grace_seconds: float,
    live_run_labels: Mapping[str, str] | None = None,
) -> Verdict:
    """Whether to cancel one job. `flow_run` is None when the labelled flow run does not exist (or there is no
    label); `live_run_labels` maps the run label of every live flow run to that flow run's id."""
    if job_state in ENDED_JOB_STATES:
        return Verdict("leave", f"already {job_state}")
    watcher = (live_run_labels or {}).get(labels.get(LABEL_RUN, ""))
    if watcher:
        return Verdict("leave", f"run {labels[LABEL_RUN]} is watched by live flow run {watcher}")
    flow_run_id = labels.get(LABEL_FLOW_RUN)
    if not flow_run_id:
        return Verdict("report", f"no {LABEL_FLOW_RUN} label (created outside a flow run): not cancelled")
    if flow_run is None:
        since, why = created, f"flow run {flow_run_id} does not exist"
    elif flow_run.state in FINAL_FLOW_RUN_STATES:
        since, why = flow_run.ended or created, f"flow run {flow_run_id} is {flow_run.state}"
    else:
        return Verdict("leave", f"flow run {flow_run_id} is {flow_run.state}")
    age = (now - since).total_seconds()
    if age <= grace_seconds:
        return Verdict("leave", f"{why}, for {age:.0f}s: within the {grace_seconds:.0f}s grace")
    return Verdict("cancel", f"{why}, for {age:.0f}s (grace {grace_seconds:.0f}s)")


@dataclass(frozen=True)
class Reaped:
    """One row of the reaper's report."""

    job: str
    state: str
    run: str
    model: str
    flow_run: str
    action: Action
    reason: str


# --- I/O ----------------------------------------------------------------------------------------------------------
# https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.customJobs/list: `labels.keyB:*`
# ("key existence") and `state!=` are documented list filters, so the list returns only live finsent jobs.
UNFINISHED_FINSENT_JOBS = " AND ".join(
    [f"labels.{LABEL_RUN}:*"] + [f'state!="{state}"' for state in sorted(ENDED_JOB_STATES)]
)


def unfinished_jobs(runner: vertex.JobRunner) -> list:
    """Every unfinished job of the runner's project and region that carries a finsent run label, oldest first."""
    return runner.list(UNFINISHED_FINSENT_JOBS)


def _flow_run_seen(client, label: str | None) -> FlowRunSeen | None:
    """The labelled flow run, or None when it does not exist (or the label is not a flow run id)."""
    from prefect.exceptions import ObjectNotFound

    try:
        flow_run = client.read_flow_run(UUID(label)) if label else None
    except (ValueError, ObjectNotFound):
        return None
    if flow_run is None or flow_run.state is None:
        return None
    return FlowRunSeen(state=flow_run.state.type.value, ended=flow_run.end_time or flow_run.state.timestamp)


def _live_run_labels(client) -> dict[str, str]:
    """Run label -> id of every live flow run (its `run_key` parameter, else its id: what `train` uses)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    live = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(s) for s in LIVE_FLOW_RUN_STATES]))
    )
    labels: dict[str, str] = {}
    offset, page = 0, 200
    while True:
        runs = client.read_flow_runs(flow_run_filter=live, limit=page, offset=offset)
        for run in runs:
            labels[run_label(str(run.parameters.get("run_key") or run.id))] = str(run.id)
        if len(runs) < page:
            return labels
        offset += page


def _cancel(runner: vertex.JobRunner, job, log) -> tuple[list[str], str]:
    """Cancel one orphan through the runner, by its identity labels (so the runner's skipping of ended jobs and its
    retries apply); returns the names cancelled and, on failure, why: one job's error must not stop the sweep."""
    try:
        return runner.cancel(identity(dict(job.labels))), ""
    except JobCancelError as exc:
        log(f"could not cancel {job.name}: {exc}")
        return exc.cancelled, f"cancel failed: {exc.not_cancelled.get(job.name, exc)}"
    except Exception as exc:  # noqa: BLE001 - reported in the row; the other orphans are still cancelled
        log(f"could not cancel {job.name}: {type(exc).__name__}: {exc}")
        return [], f"cancel failed: {type(exc).__name__}: {exc}"


def reap_once(
    cfg: PipelineConfig, *, grace_seconds: float, now: dt.datetime | None = None, log=print
) -> list[Reaped]:
    """List, decide, cancel: one row per unfinished finsent job of the project and region."""
    runner = vertex.JobRunner(cfg, log=log)
    jobs = unfinished_jobs(runner)
    if not jobs:
        return []
    now = now or dt.datetime.now(dt.timezone.utc)
    with get_client(sync_client=True) as client:
        live = _live_run_labels(client)
        seen = {label: _flow_run_seen(client, label) for label in {job.labels.get(LABEL_FLOW_RUN) for job in jobs}}
    rows, cancelled = [], set()
    for job in jobs:
        flow_run_label = job.labels.get(LABEL_FLOW_RUN)
        verdict = decide(
            dict(job.labels), vertex.JobState(job.state).name, job.create_time, seen.get(flow_run_label),
            now=now, grace_seconds=grace_seconds, live_run_labels=live,
        )  # fmt: skip
        action, reason = verdict.action, verdict.reason
        if action == "cancel" and job.name not in cancelled:
            names, failure = _cancel(runner, job, log)
            cancelled.update(names)
            if failure:
                action, reason = "report", f"{reason}; {failure}"
            elif job.name not in cancelled:
                action, reason = "leave", f"{reason}; it ended before the cancel"
        rows.append(Reaped(
            job=job.name, state=vertex.JobState(job.state).name, run=job.labels.get(LABEL_RUN, ""),
            model=job.labels.get(LABEL_MODEL, ""), flow_run=flow_run_label or "", action=action, reason=reason,
        ))  # fmt: skip
        log(f"{action}: {job.name} ({reason})")
    return rows


@task(name="reap-jobs")
def reap_jobs(cfg: PipelineConfig, grace_seconds: float) -> list[Reaped]:
    """The reaper's one task: every unfinished finsent job looked at, the orphans cancelled."""
    return reap_once(cfg, grace_seconds=grace_seconds, log=get_run_logger().info)


def by_action(rows: Iterable[Reaped]) -> dict[str, list[str]]:
    """{"cancelled": [job names], "left": [...], "reported": [...]}: what the flow returns."""
    result: dict[str, list[str]] = {"cancelled": [], "left": [], "reported": []}
    key = {"cancel": "cancelled", "leave": "left", "report": "reported"}
    for row in rows:
        result[key[row.action]].append(row.job)
    return result
