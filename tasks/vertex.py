"""Vertex AI CustomJobs: the only module that imports google.cloud.aiplatform.

- pure: `build_custom_job` (settings -> CustomJob dict), `next_poll_delay`, `JOB_PHASES` (what each JobState means
  to the watch), `WatchDeadline`, `classify_failure` (from Vertex's structured signals: error.code and Vertex's own
  first line, never the user's traceback), and `RecoveryPolicy`, which decides whether a failed job is worth
  another attempt and after what wait;
- I/O: `JobRunner`, one project's jobs: `submit` (exactly once, through the run labels; a quota refusal is final),
  `watch` (cancels the job whenever it stops watching before the job ended), `cancel` (reaches every job), and
  `run`, which resubmits as the policy says with the same checkpoint folder. Its calls to Vertex ride out
  transient errors with one `google.api_core` Retry (`TRANSIENT_RETRY`).

The REST transport is used everywhere, against Google and against the local emulator alike, so what the tests
exercise is the wire that production uses.
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry, if_exception_type
from google.cloud import aiplatform_v1

from tasks import pricing
from tasks.config import PipelineConfig, TrainerParams
from tasks.credentials import gcp_credentials
from tasks.errors import (
    BudgetExceededError, ConfigError, JobCancelError, JobFailedError, JobSubmitError, JobTimeoutError, JobWatchError,
    RetryableJobError,
)
from tasks.image import PACKAGE_URIS_ENV
from tasks.progress import ProgressWatcher
from tasks.run_identity import identity, job_labels, run_label
from tasks.transient import TRANSIENT_CALL_ERRORS, WATCH_TRANSIENT_ERRORS

JobState = aiplatform_v1.JobState


class Phase(Enum):
    """What a JobState means to the watch: which deadline its time counts against, or that the job ended."""

    WAITING = "waiting"  # not started: counts against max_wait_seconds
    RUNNING = "running"  # started (also paused, updating, being cancelled): counts against timeout_seconds
    ENDED = "ended"  # final: SUCCEEDED is the result, everything else goes to RecoveryPolicy


# Every JobState of job_state.proto (googleapis/googleapis google/cloud/aiplatform/v1/job_state.proto); a test
# fails when the client learns a state this table does not name. PAUSED ("can be resumed") and UPDATING ("after
# updating, the job goes back to RUNNING") keep the watch going as RUNNING time; CANCELLING "may only go to
# SUCCEEDED, FAILED or CANCELLED", so it is watched to its end too. docs/reliability.md has the table in words.
JOB_PHASES: dict[JobState, Phase] = {
    JobState.JOB_STATE_UNSPECIFIED: Phase.WAITING,
    JobState.JOB_STATE_QUEUED: Phase.WAITING,
    JobState.JOB_STATE_PENDING: Phase.WAITING,
    JobState.JOB_STATE_RUNNING: Phase.RUNNING,
    JobState.JOB_STATE_PAUSED: Phase.RUNNING,
    JobState.JOB_STATE_UPDATING: Phase.RUNNING,
    JobState.JOB_STATE_CANCELLING: Phase.RUNNING,
    JobState.JOB_STATE_SUCCEEDED: Phase.ENDED,
    JobState.JOB_STATE_FAILED: Phase.ENDED,
    JobState.JOB_STATE_CANCELLED: Phase.ENDED,
    JobState.JOB_STATE_EXPIRED: Phase.ENDED,
    JobState.JOB_STATE_PARTIALLY_SUCCEEDED: Phase.ENDED,
}
TERMINAL_STATES = frozenset(state for state, phase in JOB_PHASES.items() if phase is Phase.ENDED)
# Errors after which the request may or may not have reached Vertex: never conclude "not created" from them.
is_transient = if_exception_type(*TRANSIENT_CALL_ERRORS)
# The one retry of calls to Vertex (list, cancel, and create's look-again loop): full-jitter backoff 1 s, 2 s, 4 s...
# up to 30 s per wait, for at most a minute (about the six tries of the hand-written loops it replaced).
TRANSIENT_RETRY = Retry(predicate=is_transient, initial=1.0, maximum=30.0, multiplier=2.0, timeout=60.0)
REQUEST_TIMEOUT_SECONDS = 30.0
# Slack beyond the job's own allowances (max_wait_seconds queued, timeout_seconds running) before the watch gives up
# and cancels: Vertex enforces scheduling.timeout itself, and a poll can be up to a minute late.
WATCH_GRACE_SECONDS = 900
QUOTA_PAGE = "https://console.cloud.google.com/iam-admin/quotas?project={project}"
# Names of the jobs this process asked Vertex to cancel (the run's cancel and the watch's own run on other threads
# than the watch that sees the job end): such a job is never resubmitted, whatever state it ends in.
_CANCEL_REQUESTED: set[str] = set()


# --- pure ---------------------------------------------------------------------------------------------------------



def trainer_args(model: str, params: TrainerParams, data_uri: str, wandb_project: str, run_name: str) -> list[str]:
    """Command line of `python -m trainer.task` (the contract in docs/design.md). Never carries a secret.
    Every hyper-parameter is spelled out (trainer.params.to_argv), so the job runs exactly the validated config."""
    from trainer.params import to_argv

    return [
        f"--model={model}",
        f"--train-data={data_uri}/train.csv",
        f"--validation-data={data_uri}/validation.csv",
        f"--test-data={data_uri}/test.csv",
        *to_argv(model, params.model_dump()),
        f"--wandb-project={wandb_project}",
        f"--wandb-run-name={run_name}",
    ]


@dataclass(frozen=True)
class JobRequest:
    """What one model's job is given. The same on every attempt: a resubmitted job finds its checkpoints in
    `output_uri/checkpoints/` (AIP_CHECKPOINT_DIR) and resumes."""

    model: str
    package_uri: str
    data_uri: str
    output_uri: str
    run_key: str
    env: Mapping[str, str] = field(default_factory=dict, repr=False)  # may hold the wandb key: never printed
    flow_run_id: str | None = None  # the Prefect flow run that creates and watches the job (label finsent-flow-run)
    trial: str | None = None  # a sweep trial's id (tasks/sweep.py): its own job, labelled finsent-trial

    @property
    def tag(self) -> str:
        """How the logs name the job: the model, and the trial of a sweep (`lstm/t0-f95009`)."""
        return f"{self.model}/{self.trial}" if self.trial else self.model


def build_custom_job(cfg: PipelineConfig, request: JobRequest, *, attempt: int = 1) -> dict:
    """The CustomJob for one attempt at `request`, as a new dict (snake_case proto fields); no I/O."""
    model = request.model
    machine_spec: dict = {"machine_type": cfg.machine_type}
    if cfg.accelerator_type:
        machine_spec |= {"accelerator_type": cfg.accelerator_type, "accelerator_count": cfg.accelerator_count}
    # No KERAS_BACKEND: the image sets it (JAX); PACKAGE_URIS_ENV tells its entrypoint what to install.
    job_env = {PACKAGE_URIS_ENV: request.package_uri, "WANDB_PROJECT": cfg.wandb.project} | dict(request.env)
    if cfg.wandb.secret_manager_ref:
        job_env["WANDB_API_KEY_SECRET"] = cfg.wandb.secret_manager_ref
    # CustomJob.displayName "can be up to 128 characters long"; label "keys and values can be no longer than 64
    # characters (Unicode codepoints), can only contain lowercase letters, numeric characters, underscores and
    # dashes" (https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.customJobs). Here at
    # most 8 + 4 + 1 + 63 + 11 (a trial, "-t99-abcdef") + 4 = 91 characters; every label value is <= 63 (run_identity).
    trial = f"-{request.trial}" if request.trial else ""
    display_name = f"finsent-{model}-{run_label(request.run_key)}{trial}-a{attempt}"
    job: dict = {
        "display_name": display_name,
        "labels": job_labels(request.run_key, model, attempt, request.flow_run_id, request.trial),
        "job_spec": {
            "worker_pool_specs": [
                {
                    "machine_spec": machine_spec,
                    "replica_count": 1,  # workerpool0: the one primary replica (the chief)
                    "disk_spec": {"boot_disk_type": "pd-ssd", "boot_disk_size_gb": cfg.boot_disk_size_gb},
                    # finsent's image (tasks/image.py): its entrypoint installs the sdist, then runs
                    # `python -m trainer.task ARGS`, as a prebuilt executor does for a python_package_spec.
                    "container_spec": {
                        "image_uri": cfg.image_uri,
                        "args": trainer_args(model, cfg.params[model], request.data_uri, cfg.wandb.project,
                                             display_name),
                        "env": [{"name": k, "value": v} for k, v in sorted(job_env.items())],
                    },
                }
            ],
            "scheduling": {
                "timeout": f"{cfg.timeout_seconds}s",
                "restart_job_on_worker_restart": cfg.restart_job_on_worker_restart,
                "strategy": cfg.scheduling_strategy,
            },
            "base_output_directory": {"output_uri_prefix": request.output_uri},
        },
    }
    if cfg.replica_count > 1:
        # https://cloud.google.com/vertex-ai/docs/training/distributed-training: "Use the first worker pool
        # specification only for your primary replica, and set its replicaCount to 1"; the second pool holds the
        # workers. Same machine, image and args: every replica runs the same trainer, which joins the others from
        # CLUSTER_SPEC (trainer/src/trainer/distribute.py).
        pools = job["job_spec"]["worker_pool_specs"]
        pools.append(copy.deepcopy(pools[0]) | {"replica_count": cfg.replica_count - 1})
    if cfg.scheduling_strategy == "FLEX_START":
        # custom_job.proto Scheduling.max_wait_duration: how long DWS may wait for the resources (default 24 h).
        job["job_spec"]["scheduling"]["max_wait_duration"] = f"{cfg.max_wait_seconds}s"
    if cfg.service_account:
        job["job_spec"]["service_account"] = cfg.service_account
    return job


def next_poll_delay(elapsed: float, previous: float | None, poll, finishing: bool = False) -> float:
    """Adaptive backoff: a few seconds while the job starts (state changes seen fast), then growing to the cap.

    With the defaults (every second for 30 s, then x1.3 up to 60 s) a one-hour job is polled about 100 times, and
    every state change in its first minute is seen within about 8 s (bench/orchestration.py). `finishing`: the
    trainer has just said its training is done, so the schedule starts again from `poll.finishing_seconds`.
    """
    if finishing:
        return poll.finishing_seconds
    if previous is None:
        return poll.initial_seconds
    grown = previous * poll.growth
    if elapsed < poll.fast_phase_seconds:
        return min(grown, poll.fast_phase_max_seconds)
    return min(grown, poll.max_seconds)


def poll_schedule(poll, job_seconds: float = 3600.0) -> tuple[int, float]:
    """(polls made while a job of `job_seconds` runs, longest gap between polls in its first minute)."""
    elapsed, delay, calls, first_minute_gap = 0.0, None, 0, 0.0
    while elapsed < job_seconds:
        delay = next_poll_delay(elapsed, delay, poll)
        if elapsed < 60:
            first_minute_gap = max(first_minute_gap, delay)
        elapsed += delay
        calls += 1
    return calls, first_minute_gap


@dataclass(frozen=True)
class WatchDeadline:
    """When the watch gives up on a job that has not ended: each phase has its own allowance (`max_wait_seconds`
    QUEUED/PENDING, `timeout_seconds` RUNNING, PAUSED, UPDATING, CANCELLING), and `grace_seconds` is one slack
    beyond both. Vertex keeps a job QUEUED until quota frees up and scheduling.timeout counts running time only, so
    one total from the first poll would let a job start hours after nobody watches it."""

    max_wait_seconds: float
    timeout_seconds: float
    grace_seconds: float

    def overdue(self, waited: float, ran: float) -> str | None:
        """Why the watch gives up after `waited` seconds not started and `ran` seconds started; None: not yet."""
        over = max(0.0, waited - self.max_wait_seconds) + max(0.0, ran - self.timeout_seconds)
        if over <= self.grace_seconds:
            return None
        if waited > self.max_wait_seconds:
            return f"it waited {waited:.0f}s to start (max_wait_seconds={self.max_wait_seconds:.0f})"
        return f"it ran {ran:.0f}s (timeout_seconds={self.timeout_seconds:.0f})"


class Failure(Enum):
    """Why a job ended without success, read from Vertex's structured signals (see `classify_failure`)."""

    OUT_OF_MEMORY = "out_of_memory"  # the same job fails the same way: a user error with a hint
    USER_ERROR = "user_error"  # the trainer exited non-zero (bad data, a bug, a CUDA/XLA OOM inside Python)
    PREEMPTED = "preempted"  # a spot VM was reclaimed: worth another attempt
    STOCKOUT = "stockout"  # no GPUs in the region right now: worth another attempt, later
    QUOTA = "quota"  # the project's quota: final until someone raises it
    INTERNAL = "internal"  # Vertex's internal error, after its own three attempts: final
    CANCELLED = "cancelled"  # someone cancelled it (code 1, or a cancel was asked): never resubmitted
    EXPIRED = "expired"
    PARTIALLY_SUCCEEDED = "partially_succeeded"


RETRYABLE_FAILURES = frozenset({Failure.PREEMPTED, Failure.STOCKOUT})
# google.rpc.Code values on CustomJob.error (google/rpc/code.proto).
CODE_CANCELLED, CODE_RESOURCE_EXHAUSTED, CODE_INTERNAL, CODE_UNAVAILABLE = 1, 8, 13, 14

# Vertex's own first line of error.message (the user's traceback, if any, follows on the next lines and is never
# read). Sources: "Understand the serverless training service" (docs.cloud.google.com/.../understanding-training-
# service): "The replica REPLICA_NAME ran out of memory and exited with a non-zero status of EXIT_CODE", "The replica
# REPLICA_NAME exited with a non-zero status of EXIT_CODE. Termination reason: REASON", "Resources are insufficient in
# region: REGION_NAME", "Internal error occurred for the current attempt"; legacy AI Platform's "ran out-of-memory"
# (tensorflow/models#5591); the quota text (vertex-ai-samples#700, code 8); the emulator's "was preempted" (SPOT
# preemption's exact text is unconfirmed: code 14 UNAVAILABLE decides). Matched at the start of the line only.
_OUT_OF_MEMORY = re.compile(r"The replica (?P<replica>\S+(?: \d+)?) ran out[ -]of[ -]memory", re.IGNORECASE)
_REPLICA_EXIT = re.compile(
    r"The replica (?P<replica>\S+) exited with a non-zero status of (?P<status>-?\d+)[^.]*\."
    r"(?:\s*Termination reason: (?P<reason>\w+))?"
)
_OOM_TERMINATION_REASONS = frozenset({"oomkilled"})
_STOCKOUT = re.compile(r"(?:Resources are insufficient in (?:region|zone)|STOCKOUT\b)")
_PREEMPTED = re.compile(r"The replica \S+ was preempted")
_INTERNAL = re.compile(r"Internal error occurred")
# Anywhere in a create's 429 (that answer carries no traceback), or at the start of a failed job's first line.
_QUOTA = re.compile(r"The following quota metrics exceed quota limits:\s*(?P<metrics>[\w./-]+(?:\s*,\s*[\w./-]+)*)")
OOM_HINT = "lower batch_size or max_seq_len, or pick a machine/GPU with more memory"


def first_line(message: str) -> str:
    return message.strip().split("\n", 1)[0].strip()


def failure_of(state: JobState, code: int, message: str, *, cancel_requested: bool = False) -> Failure:
    """Pure: why a job that ended in `state` failed, from error.code and Vertex's first line only."""
    if cancel_requested or code == CODE_CANCELLED or state == JobState.JOB_STATE_CANCELLED:
        return Failure.CANCELLED
    if state == JobState.JOB_STATE_EXPIRED:
        return Failure.EXPIRED
    if state == JobState.JOB_STATE_PARTIALLY_SUCCEEDED:
        return Failure.PARTIALLY_SUCCEEDED
    line = first_line(message)
    exit_ = _REPLICA_EXIT.match(line)
    if _OUT_OF_MEMORY.match(line) or (exit_ and (exit_["reason"] or "").lower() in _OOM_TERMINATION_REASONS):
        return Failure.OUT_OF_MEMORY
    if _QUOTA.match(line):
        return Failure.QUOTA
    if _STOCKOUT.match(line):
        return Failure.STOCKOUT
    if _PREEMPTED.match(line) or code == CODE_UNAVAILABLE:
        return Failure.PREEMPTED
    if _INTERNAL.match(line) or code == CODE_INTERNAL:
        return Failure.INTERNAL
    return Failure.USER_ERROR


def quota_metrics(message: str) -> str | None:
    """The quota metric(s) Vertex names in "The following quota metrics exceed quota limits: ...", or None."""
    found = _QUOTA.search(message)
    return found["metrics"] if found else None


def quota_line(metrics: str, parent: str) -> str:
    """One line for a quota refusal: the metric, the project and region, where to ask for more."""
    project, region = parent.split("/")[1], parent.split("/")[3]
    return (
        f"quota exceeded in project {project}, region {region}: {metrics}; request more at "
        f"{QUOTA_PAGE.format(project=project)} (not retried: quota does not free up by itself)"
    )


def classify_failure(job: aiplatform_v1.CustomJob, *, cancel_requested: bool = False) -> JobFailedError:
    """The error to raise for a job that ended without success: one line (Vertex's first line and what to do);
    the rest of error.message (the replica's traceback) goes to `log_tail`. Infrastructure failures are retryable."""
    state = JobState(job.state).name
    message = job.error.message or f"job ended in {state}"
    line = first_line(message)
    log_tail = message.strip().split("\n", 1)[1].strip() if "\n" in message.strip() else ""
    failure = failure_of(job.state, job.error.code, message, cancel_requested=cancel_requested)
    text = f"Vertex job {job.name} ended {state}: {line}"
    if failure is Failure.OUT_OF_MEMORY:
        text += f" (out of memory: {OOM_HINT}; not resubmitted, it would fail the same way)"
    elif failure is Failure.QUOTA:
        text = f"Vertex job {job.name} ended {state}: {quota_line(quota_metrics(line) or line, job.name)}"
    elif failure is Failure.CANCELLED:
        text += " (cancelled: not resubmitted)"
    error_cls = RetryableJobError if failure in RETRYABLE_FAILURES else JobFailedError
    return error_cls(text, job_name=job.name, state=state, log_tail=log_tail, reason=failure.value)


@dataclass(frozen=True)
class Resubmit:
    """Submit the next attempt after `after_seconds`; `reason` is why the last one ended."""

    after_seconds: float
    reason: JobFailedError


@dataclass(frozen=True)
class GiveUp:
    error: JobFailedError


@dataclass(frozen=True)
class RecoveryPolicy:
    """What a job that ended without success earns: another attempt (same output folder, so it resumes) or its
    error. The one place that says which failures are worth GPU time again, how often, and how long to wait.

    Only preemption and stockout are resubmitted, at most `max_resubmits` times, after a wait that grows: Vertex
    has already restarted the job itself (up to three times for a stockout, six for a spot VM), so capacity is
    short right now and an immediate resubmit to the same region mostly fails again."""

    max_resubmits: int
    backoff_initial_seconds: float = 60.0
    backoff_multiplier: float = 2.0
    backoff_max_seconds: float = 900.0

    @classmethod
    def for_config(cls, cfg: PipelineConfig) -> RecoveryPolicy:
        return cls(max_resubmits=cfg.max_infra_retries)

    def backoff_seconds(self, attempt: int) -> float:
        """The wait before submitting attempt `attempt + 1`."""
        return min(self.backoff_initial_seconds * self.backoff_multiplier ** (attempt - 1), self.backoff_max_seconds)

    def decide(self, failed_job: aiplatform_v1.CustomJob, attempt: int, *, cancel_requested: bool = False
               ) -> Resubmit | GiveUp:  # fmt: skip
        """`failed_job` was attempt number `attempt` (1 = the first submit); `cancel_requested`: someone asked
        Vertex to cancel it, so it is not resubmitted even if it ended FAILED with a retryable-looking message."""
        error = classify_failure(failed_job, cancel_requested=cancel_requested)
        if isinstance(error, RetryableJobError) and attempt <= self.max_resubmits:
            return Resubmit(after_seconds=self.backoff_seconds(attempt), reason=error)
        return GiveUp(error)


def running_seconds(job: aiplatform_v1.CustomJob, now: datetime) -> float:
    """Pure: how long `job` has been RUNNING by Vertex's own timestamps (custom_job.proto): from start_time, "Time
    when the CustomJob for the first time entered the JOB_STATE_RUNNING state", to end_time, "Time when the CustomJob
    entered any of the following states: JOB_STATE_SUCCEEDED, JOB_STATE_FAILED, JOB_STATE_CANCELLED", or to `now`
    while it has none. 0 before it started: queued time is not counted ("You don't pay for the time that the job is
    in a queue", Vertex's Spot VMs page). A restart inside the job (Vertex's own, or
    restart_job_on_worker_restart) keeps the first start_time, so the whole span counts: an upper bound."""
    if "start_time" not in job:
        return 0.0
    end = job.end_time if "end_time" in job else now
    return max(0.0, (end - job.start_time).total_seconds())


def console_url(cfg: PipelineConfig, job_name: str) -> str:
    """The page a person opens to watch the job (the emulator's log route when running locally)."""
    job_id = job_name.rsplit("/", 1)[-1]
    if cfg.vertex_endpoint:
        return f"{cfg.vertex_endpoint.rstrip('/')}/emulator/v1/jobs/{job_id}/log"
    return (
        f"https://console.cloud.google.com/vertex-ai/locations/{cfg.region}/training/{job_id}/cpu"
        f"?project={cfg.project}"
    )


@dataclass(frozen=True)
class JobOutcome:
    model: str
    job_name: str
    state: str
    output_uri: str
    console_url: str
    attempts: int
    seconds: float
    # RUNNING seconds over every attempt, by Vertex's start/end times (`running_seconds`): what the job is billed for
    running_seconds: float = 0.0


# --- I/O ----------------------------------------------------------------------------------------------------------
def job_client(cfg: PipelineConfig) -> aiplatform_v1.JobServiceClient:
    endpoint = cfg.vertex_endpoint or f"https://{cfg.region}-aiplatform.googleapis.com"
    return aiplatform_v1.JobServiceClient(
        transport="rest", credentials=gcp_credentials(cfg), client_options={"api_endpoint": endpoint}
    )


def parent_of(cfg: PipelineConfig) -> str:
    return f"projects/{cfg.project}/locations/{cfg.region}"


class JobRunner:
    """One project's CustomJobs: submit (exactly once per label set), watch, cancel, and `run` = submit, watch and
    resubmit as `policy` decides. List, create and cancel ride out transient errors through `retry`; the watch's
    poll loop is its own retry. `policy` and `grace_seconds` are settable for tests (short waits)."""

    def __init__(
        self,
        cfg: PipelineConfig,
        *,
        log: Callable[[str], None] = print,
        retry: Retry = TRANSIENT_RETRY,
        policy: RecoveryPolicy | None = None,
        grace_seconds: float = WATCH_GRACE_SECONDS,
        max_cost_usd: float | None = None,
    ):
        self.cfg = cfg
        self.client = job_client(cfg)
        self.parent = parent_of(cfg)
        self.policy = policy or RecoveryPolicy.for_config(cfg)
        self.log = log
        self.retry = retry
        self.grace_seconds = grace_seconds
        # The running guard's budget per model, all attempts: the config's max_cost_usd unless given (a test gives
        # one lower than the config's pre-flight would accept, to see the guard itself act).
        self.max_cost_usd = cfg.max_cost_usd if max_cost_usd is None else max_cost_usd
        self.progress: dict[str, ProgressWatcher] = {}  # per job tag, over its attempts (`run`); tests read it

    def list(self, filter_: str) -> list[aiplatform_v1.CustomJob]:
        """Every job of the project and region matching a Vertex list filter (all pages), oldest first."""
        pager = self.client.list_custom_jobs(
            request={"parent": self.parent, "filter": filter_, "page_size": 100},
            retry=self.retry, timeout=REQUEST_TIMEOUT_SECONDS,
        )  # fmt: skip
        return sorted(pager, key=lambda job: job.create_time)

    def find(self, labels: Mapping[str, str]) -> list[aiplatform_v1.CustomJob]:
        """Jobs carrying all `labels`, newest first. The only de-duplication handle: create has no request id."""
        filter_ = " AND ".join(f'labels.{key}="{value}"' for key, value in sorted(labels.items()))
        return self.list(filter_)[::-1]

    def submit(self, job: dict) -> aiplatform_v1.CustomJob:
        """Create `job` exactly once: reattach to a job with the same identity labels (not the creating flow run:
        a rerun is a new flow run), and look again after an ambiguous error (the create may have been committed
        even though we saw an error) before creating again. A quota refusal is final at once."""
        create_sent = False

        def reattach_or_create() -> aiplatform_v1.CustomJob:
            nonlocal create_sent
            # exactly this identity: a model's single job must not reattach to one of its sweep trials' jobs
            wanted = identity(job["labels"])
            existing = [found for found in self.find(wanted) if identity(dict(found.labels)) == wanted]
            if existing:
                found = existing[0]
                if create_sent:
                    self.log(f"The job was created despite the error: reattaching to {found.name}")
                else:
                    self.log(f"Reattaching to {found.name} ({JobState(found.state).name}); not creating a second job")
                return found
            create_sent = True
            try:
                return self.client.create_custom_job(
                    parent=self.parent, custom_job=aiplatform_v1.CustomJob(job), timeout=REQUEST_TIMEOUT_SECONDS
                )
            except gexc.TooManyRequests as exc:
                # A 429 naming quota metrics is the project's training quota (stable-diffusion-on-gcp#12: code 429,
                # "The following quota metrics exceed quota limits: ...", RESOURCE_EXHAUSTED): it will not free up
                # within the retry's minute. Any other 429 is a request-rate limit and stays transient.
                metrics = quota_metrics(exc.message or "")
                if metrics:
                    raise JobSubmitError(f"Vertex refused the job {job['display_name']}: "
                                         f"{quota_line(metrics, self.parent)}") from None
                raise

        def on_error(exc: Exception) -> None:
            self.log(f"creating {job['display_name']} failed ({type(exc).__name__}); checking whether it exists")

        try:
            return self.retry(reattach_or_create, on_error=on_error)()
        except gexc.RetryError as exc:
            raise JobSubmitError(f"could not create {job['display_name']}: {exc.cause or exc}") from None
        except gexc.BadRequest as exc:  # REST maps every 400 to BadRequest (InvalidArgument over gRPC)
            raise JobSubmitError(f"Vertex refused the job {job['display_name']}: {exc.message}") from None
        # Over REST a 403 is Forbidden and a 401 Unauthorized (google.api_core.exceptions.from_http_status); the
        # gRPC names PermissionDenied and Unauthenticated are their subclasses.
        except (gexc.Forbidden, gexc.Unauthorized, gexc.NotFound) as exc:
            raise JobSubmitError(
                f"Vertex refused the job {job['display_name']} in {self.parent}: {exc.message} "
                "(check the project, region, Vertex AI API enablement and the credentials' roles)"
            ) from None

    def watch(
        self,
        name: str,
        *,
        timeout_seconds: float | None = None,
        max_wait_seconds: float | None = None,
        on_update: Callable[[aiplatform_v1.CustomJob, float], None] = lambda job, elapsed: None,
        on_poll: Callable[[aiplatform_v1.CustomJob], bool | None] = lambda job: None,
        heartbeat_seconds: float = 300.0,
        max_cost_usd: float | None = None,
        prior_running_seconds: float = 0.0,
    ) -> aiplatform_v1.CustomJob:
        """Poll until the job ends. A transient error (a failed token refresh included) only lengthens the wait, never
        ends it. The deadline follows the job's phases (`WatchDeadline`; by default the config's max_wait_seconds and
        timeout_seconds). If the watch stops for any other reason than the job's end (deadline, an error) it cancels
        the job and says so: no job is left running unwatched. (A KeyboardInterrupt or Prefect's TerminationSignal
        passes through untouched: tasks/training.py cancels only when the flow run was cancelled.) `on_update`
        hears every state change, and the current state again every `heartbeat_seconds`; `on_poll` hears every
        successful get, the last one included (it must not raise: it rides on the poll, adding no loop of its own);
        when it returns True (the trainer's record says training finished) the poll schedule starts again from its
        short `finishing_seconds`, once per watch.

        Budget (`max_cost_usd`, by default the runner's): once the job's running cost, hourly list price x its
        RUNNING seconds by Vertex's timestamps plus `prior_running_seconds` of the model's earlier attempts, passes
        it, the job is cancelled and `BudgetExceededError` raised. The config's pre-flight already refuses a budget
        the worst case could pass; this is the second line of defence (for restarts Vertex makes inside one
        job)."""
        budget = self.max_cost_usd if max_cost_usd is None else max_cost_usd
        hourly = self._hourly_usd(budget) if budget is not None else 0.0
        deadline = WatchDeadline(
            max_wait_seconds=self.cfg.max_wait_seconds if max_wait_seconds is None else max_wait_seconds,
            timeout_seconds=self.cfg.timeout_seconds if timeout_seconds is None else timeout_seconds,
            grace_seconds=self.grace_seconds,
        )
        started = last_tick = last_report = time.monotonic()
        spent = {Phase.WAITING: 0.0, Phase.RUNNING: 0.0}
        delay: float | None = None
        last_state = None
        finishing = restart = False
        try:
            while True:
                try:
                    job = self.client.get_custom_job(name=name, timeout=REQUEST_TIMEOUT_SECONDS)
                except WATCH_TRANSIENT_ERRORS:
                    job = None
                now = time.monotonic()
                # The time since the last poll counts against the phase the job was last seen in.
                spent[JOB_PHASES.get(last_state, Phase.WAITING)] += now - last_tick  # never ENDED: that returned
                last_tick = now
                if job is not None:
                    if job.state != last_state or now - last_report >= heartbeat_seconds:
                        last_state, last_report = job.state, now
                        on_update(job, now - started)
                    restart = bool(on_poll(job)) and not finishing
                    finishing = finishing or restart
                    if job.state in TERMINAL_STATES:
                        return job
                    if budget is not None:
                        ran = prior_running_seconds + running_seconds(job, datetime.now(timezone.utc))
                        cost = pricing.job_cost_usd(hourly, ran)
                        if cost > budget:
                            note = self._cancel_after_watch(name, done="cancelled the job")
                            raise BudgetExceededError(
                                f"Vertex job {name} passed its budget: ${cost:.4f} spent ({ran:.0f}s RUNNING over "
                                f"this model's attempts at ${hourly:.4f}/h) > max_cost_usd {budget:g}; {note}; not "
                                "resubmitted", job_name=name, cost_usd=cost, budget_usd=budget,
                            )  # fmt: skip
                why = deadline.overdue(spent[Phase.WAITING], spent[Phase.RUNNING])
                if why:
                    state = JobState(last_state).name if last_state is not None else "unknown"
                    note = self._cancel_after_watch(name)
                    raise JobTimeoutError(f"stopped watching {name} (last state {state}): {why}; {note}")
                delay = next_poll_delay(now - started, delay, self.cfg.poll, finishing=restart)
                # The schedule spaces the GETs: the time on_update/on_poll took (log and progress reads) counts
                # against the wait, so they do not stretch it (nor the lag at the job's end).
                time.sleep(max(0.0, delay - (time.monotonic() - now)))
        except (JobTimeoutError, BudgetExceededError):
            raise
        except Exception as exc:
            note = self._cancel_after_watch(name)
            raise JobWatchError(f"stopped watching {name} on {type(exc).__name__}: {first_line(str(exc))}; {note}"
                                ) from exc  # fmt: skip

    def _cancel_after_watch(self, name: str, done: str = "cancelled the job so it does not run unwatched") -> str:
        """Cancel a job the watch is leaving; the half line that says what happened (`done` when it was)."""
        try:
            sent = self._cancel_job(name)
        except Exception as exc:  # noqa: BLE001 - reported in the watch's error, which is raised next
            return (f"could not cancel it ({type(exc).__name__}: {first_line(str(exc))}): cancel it at "
                    f"{console_url(self.cfg, name)}")  # fmt: skip
        return done if sent else "the job had already ended"

    def _cancel_job(self, name: str) -> bool:
        """Ask Vertex to cancel `name`: True when the cancel was accepted (or the job is being/was cancelled),
        False when the job had already ended. Raises what a retry could not fix."""
        _CANCEL_REQUESTED.add(name)  # before the call: a cancel that errored may still have been committed
        try:
            self.client.cancel_custom_job(name=name, retry=self.retry, timeout=REQUEST_TIMEOUT_SECONDS)
            return True
        except gexc.NotFound:
            return False  # deleted meanwhile: nothing runs
        except gexc.BadRequest:
            # "Cannot cancel ... in state SUCCEEDED" is FailedPrecondition over gRPC; REST maps every 400 to
            # BadRequest. Look at the job rather than trust every 400: skip it only if it has really ended.
            state = self.client.get_custom_job(name=name, retry=self.retry, timeout=REQUEST_TIMEOUT_SECONDS).state
            if state in (JobState.JOB_STATE_CANCELLING, JobState.JOB_STATE_CANCELLED):
                return True
            if state in TERMINAL_STATES:
                return False
            raise

    def _hourly_usd(self, budget: float) -> float:
        """The job's list price per hour (tasks/pricing.py); a ConfigError when it has none."""
        try:
            return self.cfg.hourly_usd()
        except pricing.UnknownPrice as exc:
            raise ConfigError(f"max_cost_usd {budget:g}: cannot watch the cost: {exc}") from None

    def cancel(self, labels: Mapping[str, str]) -> list[str]:
        """Cancel every unfinished job carrying `labels`; returns the names of those cancelled. Safe to call twice.
        Jobs that end meanwhile are skipped; one job's error does not stop the others: all are tried, then one
        `JobCancelError` names those not cancelled."""
        cancelled: list[str] = []
        not_cancelled: dict[str, str] = {}
        for job in self.find(labels):
            if job.state == JobState.JOB_STATE_CANCELLING:
                _CANCEL_REQUESTED.add(job.name)
                continue
            if job.state in TERMINAL_STATES:
                continue
            try:
                if self._cancel_job(job.name):
                    cancelled.append(job.name)
            except Exception as exc:  # noqa: BLE001 - collected and raised below, after the other jobs
                not_cancelled[job.name] = f"{type(exc).__name__}: {first_line(str(exc))}"
        if not_cancelled:
            failures = "; ".join(f"{name} ({why})" for name, why in not_cancelled.items())
            raise JobCancelError(
                f"could not cancel {len(not_cancelled)} Vertex job(s), cancel them in the console: {failures}"
                + (f" (cancelled: {', '.join(cancelled)})" if cancelled else ""),
                cancelled=cancelled, not_cancelled=not_cancelled,
            )  # fmt: skip
        return cancelled

    def run(self, request: JobRequest) -> JobOutcome:
        """Submit (or reattach to) the model's job, watch it to the end, and resubmit as the policy decides."""
        from tasks.cloud_logging import job_log_printer  # google.cloud.logging, imported only by a run that watches

        model, tag, started, attempt = request.model, request.tag, time.monotonic(), 1
        if self.max_cost_usd is not None:
            self._hourly_usd(self.max_cost_usd)  # an unpriced job is refused before it is created
        ran_before = 0.0  # RUNNING seconds of this model's earlier attempts: the budget covers them all
        # One progress record per job tag: a resubmitted attempt resumes it (same output folder), so one watcher.
        progress = self.progress[tag] = ProgressWatcher(self.cfg, tag, request.output_uri, self.log)
        while True:
            job = self.submit(build_custom_job(self.cfg, request, attempt=attempt))
            self.log(f"[{tag}] Vertex job {job.name}: {console_url(self.cfg, job.name)}")
            seen: set[JobState] = set()

            def report(update: aiplatform_v1.CustomJob, elapsed: float) -> None:
                seen.add(update.state)
                self.log(f"[{tag}] {JobState(update.state).name} after {elapsed:.0f}s")

            log_lines = job_log_printer(self.cfg, tag, job.name, self.log, more_at=console_url(self.cfg, job.name))

            def on_poll(update: aiplatform_v1.CustomJob) -> bool:  # neither part raises (on_poll must not)
                log_lines(update)
                return progress(update)  # True once training is finished: poll soon, the job's end is near

            done = self.watch(job.name, on_update=report, on_poll=on_poll, prior_running_seconds=ran_before)
            ran_before += running_seconds(done, datetime.now(timezone.utc))
            if done.state == JobState.JOB_STATE_SUCCEEDED:
                return JobOutcome(
                    model=model,
                    job_name=done.name,
                    state=JobState(done.state).name,
                    output_uri=request.output_uri,
                    console_url=console_url(self.cfg, done.name),
                    attempts=attempt,
                    seconds=time.monotonic() - started,
                    running_seconds=ran_before,
                )
            cancel_requested = done.name in _CANCEL_REQUESTED or JobState.JOB_STATE_CANCELLING in seen
            decision = self.policy.decide(done, attempt, cancel_requested=cancel_requested)
            if isinstance(decision, GiveUp):
                raise decision.error
            self.log(
                f"[{tag}] infrastructure failure, resubmitting with resume (attempt {attempt + 1}) "
                f"in {decision.after_seconds:.0f}s: {decision.reason}"
            )
            time.sleep(decision.after_seconds)
            attempt += 1
