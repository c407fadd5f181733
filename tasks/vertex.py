"""Vertex AI CustomJobs: the only module that imports google.cloud.aiplatform.

- pure: `build_custom_job` (settings -> CustomJob dict), `next_poll_delay`, `classify_failure`, and
  `RecoveryPolicy`, which decides whether a failed job is worth another attempt;
- I/O: `JobRunner`, one project's jobs: `submit` (exactly once, through the run labels), `watch`, `cancel`, and
  `run`, which resubmits as the policy says with the same checkpoint folder. Its calls to Vertex ride out
  transient errors with one `google.api_core` Retry (`TRANSIENT_RETRY`).

The REST transport is used everywhere, against Google and against the local emulator alike, so what the tests
exercise is the wire that production uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from google.api_core import exceptions as gexc
from google.api_core.retry import Retry, if_exception_type
from google.cloud import aiplatform_v1

from tasks.config import PipelineConfig, TrainerParams
from tasks.credentials import gcp_credentials
from tasks.errors import JobFailedError, JobSubmitError, JobTimeoutError, RetryableJobError
from tasks.run_identity import job_labels, run_label, run_labels
from tasks.transient import TRANSIENT_CALL_ERRORS

JobState = aiplatform_v1.JobState
TERMINAL_STATES = frozenset(
    {
        JobState.JOB_STATE_SUCCEEDED,
        JobState.JOB_STATE_FAILED,
        JobState.JOB_STATE_CANCELLED,
        JobState.JOB_STATE_EXPIRED,
        JobState.JOB_STATE_PARTIALLY_SUCCEEDED,
    }
)
# Errors after which the request may or may not have reached Vertex: never conclude "not created" from them.
is_transient = if_exception_type(*TRANSIENT_CALL_ERRORS)
# The one retry of calls to Vertex (list, cancel, and create's look-again loop): full-jitter backoff 1 s, 2 s, 4 s...
# up to 30 s per wait, for at most a minute (about the six tries of the hand-written loops it replaced).
TRANSIENT_RETRY = Retry(predicate=is_transient, initial=1.0, maximum=30.0, multiplier=2.0, timeout=60.0)
REQUEST_TIMEOUT_SECONDS = 30.0
# How long the watch outlives the job's own Vertex timeout before it gives up on it.
WATCH_GRACE_SECONDS = 3600
# Vertex words for capacity trouble: worth a resubmit. A user error (bad module, bad data) never matches.
_INFRASTRUCTURE_MARKERS = ("preempt", "stockout", "resources are insufficient", "resource_exhausted", "zone_resource")


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


def build_custom_job(cfg: PipelineConfig, request: JobRequest, *, attempt: int = 1) -> dict:
    """The CustomJob for one attempt at `request`, as a new dict (snake_case proto fields); no I/O."""
    model = request.model
    machine_spec: dict = {"machine_type": cfg.machine_type}
    if cfg.accelerator_type:
        machine_spec |= {"accelerator_type": cfg.accelerator_type, "accelerator_count": cfg.accelerator_count}
    # No KERAS_BACKEND: the trainer takes TensorFlow where the image has it (Vertex), else JAX.
    job_env = {"WANDB_PROJECT": cfg.wandb.project} | dict(request.env)
    if cfg.wandb.secret_manager_ref:
        job_env["WANDB_API_KEY_SECRET"] = cfg.wandb.secret_manager_ref
    display_name = f"finsent-{model}-{run_label(request.run_key)[:36]}-a{attempt}"
    job: dict = {
        "display_name": display_name,
        "labels": job_labels(request.run_key, model, attempt),
        "job_spec": {
            "worker_pool_specs": [
                {
                    "machine_spec": machine_spec,
                    "replica_count": cfg.replica_count,
                    "disk_spec": {"boot_disk_type": "pd-ssd", "boot_disk_size_gb": cfg.boot_disk_size_gb},
                    "python_package_spec": {
                        "executor_image_uri": cfg.executor_image_uri,
                        "package_uris": [request.package_uri],
                        "python_module": "trainer.task",
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
    if cfg.service_account:
        job["job_spec"]["service_account"] = cfg.service_account
    return job


def next_poll_delay(elapsed: float, previous: float | None, poll) -> float:
    """Adaptive backoff: a few seconds while the job starts (state changes seen fast), then growing to the cap.

    With the defaults (every second for 30 s, then x1.3 up to 60 s) a one-hour job is polled about 100 times, and
    every state change in its first minute is seen within about 8 s (bench/orchestration.py).
    """
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


def classify_failure(job: aiplatform_v1.CustomJob) -> JobFailedError:
    """The error to raise for a job that ended without success; infrastructure failures are retryable."""
    state = JobState(job.state).name
    message = job.error.message or f"job ended in {state}"
    text = f"Vertex job {job.name} ended {state}: {message}"
    log_tail = message.split("\n", 1)[1] if "\n" in message else ""
    lowered = message.lower()
    retryable = job.state == JobState.JOB_STATE_FAILED and (
        job.error.code == 14 or any(marker in lowered for marker in _INFRASTRUCTURE_MARKERS)
    )
    error_cls = RetryableJobError if retryable else JobFailedError
    return error_cls(text, job_name=job.name, state=state, log_tail=log_tail)


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
    error. The one place that says which failures are worth GPU time again, how often, and how long to wait."""

    max_resubmits: int
    backoff_initial_seconds: float = 0.0  # today a retryable failure is resubmitted at once
    backoff_multiplier: float = 2.0
    backoff_max_seconds: float = 600.0

    @classmethod
    def for_config(cls, cfg: PipelineConfig) -> RecoveryPolicy:
        return cls(max_resubmits=cfg.max_infra_retries)

    def backoff_seconds(self, attempt: int) -> float:
        """The wait before submitting attempt `attempt + 1`."""
        return min(self.backoff_initial_seconds * self.backoff_multiplier ** (attempt - 1), self.backoff_max_seconds)

    def decide(self, failed_job: aiplatform_v1.CustomJob, attempt: int) -> Resubmit | GiveUp:
        """`failed_job` was attempt number `attempt` (1 = the first submit)."""
        error = classify_failure(failed_job)
        if isinstance(error, RetryableJobError) and attempt <= self.max_resubmits:
            return Resubmit(after_seconds=self.backoff_seconds(attempt), reason=error)
        return GiveUp(error)


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
    poll loop is its own retry."""

    def __init__(self, cfg: PipelineConfig, *, log: Callable[[str], None] = print, retry: Retry = TRANSIENT_RETRY):
        self.cfg = cfg
        self.client = job_client(cfg)
        self.parent = parent_of(cfg)
        self.policy = RecoveryPolicy.for_config(cfg)
        self.log = log
        self.retry = retry

    def find(self, labels: Mapping[str, str]) -> list[aiplatform_v1.CustomJob]:
        """Jobs carrying all `labels`, newest first. The only de-duplication handle: create has no request id."""
        filter_ = " AND ".join(f'labels.{key}="{value}"' for key, value in sorted(labels.items()))
        pager = self.client.list_custom_jobs(
            request={"parent": self.parent, "filter": filter_, "page_size": 100},
            retry=self.retry, timeout=REQUEST_TIMEOUT_SECONDS,
        )  # fmt: skip
        return sorted(pager, key=lambda job: job.create_time, reverse=True)

    def submit(self, job: dict) -> aiplatform_v1.CustomJob:
        """Create `job` exactly once: reattach to a job with the same labels, and look again after an ambiguous
        error (the create may have been committed even though we saw an error) before creating again."""
        create_sent = False

        def reattach_or_create() -> aiplatform_v1.CustomJob:
            nonlocal create_sent
            existing = self.find(job["labels"])
            if existing:
                found = existing[0]
                if create_sent:
                    self.log(f"The job was created despite the error: reattaching to {found.name}")
                else:
                    self.log(f"Reattaching to {found.name} ({JobState(found.state).name}); not creating a second job")
                return found
            create_sent = True
            return self.client.create_custom_job(
                parent=self.parent, custom_job=aiplatform_v1.CustomJob(job), timeout=REQUEST_TIMEOUT_SECONDS
            )

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
        timeout_seconds: float,
        on_update: Callable[[aiplatform_v1.CustomJob, float], None] = lambda job, elapsed: None,
        heartbeat_seconds: float = 300.0,
    ) -> aiplatform_v1.CustomJob:
        """Poll until the job ends. A transient error only lengthens the wait (the poll loop is the retry, with
        its adaptive delay), never ends it. `on_update` hears every state change, and the current state again
        every `heartbeat_seconds`, so a long RUNNING phase still shows progress (elapsed time) in the Prefect UI."""
        started = time.monotonic()
        delay: float | None = None
        last_state = None
        last_report = started
        while True:
            elapsed = time.monotonic() - started
            try:
                job = self.client.get_custom_job(name=name, timeout=REQUEST_TIMEOUT_SECONDS)
            except TRANSIENT_CALL_ERRORS:
                job = None
            if job is not None:
                if job.state != last_state or time.monotonic() - last_report >= heartbeat_seconds:
                    last_state, last_report = job.state, time.monotonic()
                    on_update(job, elapsed)
                if job.state in TERMINAL_STATES:
                    return job
            if elapsed > timeout_seconds:
                state = JobState(last_state).name if last_state is not None else "unknown"
                raise JobTimeoutError(
                    f"stopped waiting for {name} after {elapsed:.0f}s (last state {state}); the job may still run: "
                    "check the console or raise timeout_seconds"
                )
            delay = next_poll_delay(elapsed, delay, self.cfg.poll)
            time.sleep(delay)

    def cancel(self, labels: Mapping[str, str]) -> list[str]:
        """Cancel every unfinished job carrying `labels`; returns their names. Safe to call twice."""
        cancelled = []
        for job in self.find(labels):
            if job.state in TERMINAL_STATES or job.state == JobState.JOB_STATE_CANCELLING:
                continue
            try:
                self.client.cancel_custom_job(name=job.name, retry=self.retry, timeout=REQUEST_TIMEOUT_SECONDS)
            except gexc.FailedPrecondition:
                continue  # it ended between our list and the cancel
            cancelled.append(job.name)
        return cancelled

    def run(self, request: JobRequest) -> JobOutcome:
        """Submit (or reattach to) the model's job, watch it to the end, and resubmit as the policy decides."""
        model, started, attempt = request.model, time.monotonic(), 1
        while True:
            job = self.submit(build_custom_job(self.cfg, request, attempt=attempt))
            self.log(f"[{model}] Vertex job {job.name}: {console_url(self.cfg, job.name)}")

            def report(update: aiplatform_v1.CustomJob, elapsed: float) -> None:
                self.log(f"[{model}] {JobState(update.state).name} after {elapsed:.0f}s")

            deadline = self.cfg.timeout_seconds + WATCH_GRACE_SECONDS
            done = self.watch(job.name, timeout_seconds=deadline, on_update=report)
            if done.state == JobState.JOB_STATE_SUCCEEDED:
                return JobOutcome(
                    model=model,
                    job_name=done.name,
                    state=JobState(done.state).name,
                    output_uri=request.output_uri,
                    console_url=console_url(self.cfg, done.name),
                    attempts=attempt,
                    seconds=time.monotonic() - started,
                )
            decision = self.policy.decide(done, attempt)
            if isinstance(decision, GiveUp):
                raise decision.error
            self.log(
                f"[{model}] infrastructure failure, resubmitting with resume (attempt {attempt + 1}) "
                f"in {decision.after_seconds:.0f}s: {decision.reason}"
            )
            time.sleep(decision.after_seconds)
            attempt += 1
