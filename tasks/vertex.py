"""Vertex AI CustomJobs: the only module that imports google.cloud.aiplatform.

Three layers, as in prefect-gcp's worker but without its gaps (no de-duplication, fixed 5 s polls, a watch that dies
on one transient error, cancels that never reach Vertex):

- pure: `build_custom_job` (settings -> CustomJob dict), `next_poll_delay`, `classify_failure`;
- thin I/O: `job_client`, `find_jobs`, `submit_job` (idempotent through a run label), `wait_for_job`, `cancel_jobs`;
- Prefect: `run_training_job`, which resubmits after infrastructure failures with the same checkpoint folder.

The REST transport is used everywhere, against Google and against the local emulator alike, so what the tests
exercise is the wire that production uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from google.api_core import exceptions as gexc
from google.auth.exceptions import TransportError
from google.cloud import aiplatform_v1
from requests import exceptions as rexc

from tasks.config import PipelineConfig, TrainerParams
from tasks.credentials import gcp_credentials
from tasks.errors import JobFailedError, JobSubmitError, JobTimeoutError, RetryableJobError

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
TRANSIENT_ERRORS = (
    gexc.ServiceUnavailable,
    gexc.TooManyRequests,
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.GatewayTimeout,
    gexc.DeadlineExceeded,
    rexc.ConnectionError,
    rexc.Timeout,
    TransportError,
)
LABEL_RUN = "finsent-run"
LABEL_MODEL = "finsent-model"
LABEL_ATTEMPT = "finsent-attempt"
REQUEST_TIMEOUT_SECONDS = 30.0
# Vertex words for capacity trouble: worth a resubmit. A user error (bad module, bad data) never matches.
_INFRASTRUCTURE_MARKERS = ("preempt", "stockout", "resources are insufficient", "resource_exhausted", "zone_resource")


# --- pure ---------------------------------------------------------------------------------------------------------
def label_value(text: str) -> str:
    """GCP label values: lowercase letters, digits, '-' and '_', at most 63 characters."""
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in text.lower())
    return cleaned[:63]


def job_labels(run_key: str, model: str, attempt: int) -> dict[str, str]:
    return {LABEL_RUN: label_value(run_key), LABEL_MODEL: model, LABEL_ATTEMPT: str(attempt)}


def trainer_args(model: str, params: TrainerParams, data_uri: str, wandb_project: str, run_name: str) -> list[str]:
    """Command line of `python -m trainer.task` (the contract in docs/design.md). Never carries a secret."""
    args = [
        f"--model={model}",
        f"--train-data={data_uri}/train.csv",
        f"--validation-data={data_uri}/validation.csv",
        f"--test-data={data_uri}/test.csv",
        f"--epochs={params.epochs}",
        f"--batch-size={params.batch_size}",
        f"--learning-rate={params.learning_rate}",
        f"--max-seq-len={params.max_seq_len}",
        f"--seed={params.seed}",
        f"--patience={params.patience}",
        f"--precision={params.precision}",
        f"--class-weights={params.class_weights}",
        f"--wandb-project={wandb_project}",
        f"--wandb-run-name={run_name}",
    ]
    if params.pretrained:
        args.append(f"--pretrained={params.pretrained}")
    if params.buckets:
        args.append(f"--buckets={','.join(str(b) for b in sorted(set(params.buckets)))}")
    if model == "bert":
        args.append(f"--pooling={params.pooling}")
    else:
        args.append(f"--lstm-embeddings={params.lstm_embeddings}")
    return args


def build_custom_job(
    cfg: PipelineConfig,
    model: str,
    *,
    package_uri: str,
    data_uri: str,
    output_uri: str,
    run_key: str,
    attempt: int = 1,
    env: dict[str, str] | None = None,
) -> dict:
    """The CustomJob for one model, as a new dict (snake_case proto fields); no I/O, `cfg` is untouched.

    `output_uri` stays the same across attempts, so a resubmitted job finds its checkpoints in
    `output_uri/checkpoints/` (AIP_CHECKPOINT_DIR) and resumes.
    """
    params = cfg.params[model]
    machine_spec: dict = {"machine_type": cfg.machine_type}
    if cfg.accelerator_type:
        machine_spec |= {"accelerator_type": cfg.accelerator_type, "accelerator_count": cfg.accelerator_count}
    # No KERAS_BACKEND: the trainer takes TensorFlow where the image has it (Vertex), else JAX.
    job_env = {"WANDB_PROJECT": cfg.wandb.project} | (env or {})
    if cfg.wandb.secret_manager_ref:
        job_env["WANDB_API_KEY_SECRET"] = cfg.wandb.secret_manager_ref
    display_name = f"finsent-{model}-{label_value(run_key)[:36]}-a{attempt}"
    job: dict = {
        "display_name": display_name,
        "labels": job_labels(run_key, model, attempt),
        "job_spec": {
            "worker_pool_specs": [
                {
                    "machine_spec": machine_spec,
                    "replica_count": cfg.replica_count,
                    "disk_spec": {"boot_disk_type": "pd-ssd", "boot_disk_size_gb": cfg.boot_disk_size_gb},
                    "python_package_spec": {
                        "executor_image_uri": cfg.executor_image_uri,
                        "package_uris": [package_uri],
                        "python_module": "trainer.task",
                        "args": trainer_args(model, params, data_uri, cfg.wandb.project, display_name),
                        "env": [{"name": k, "value": v} for k, v in sorted(job_env.items())],
                    },
                }
            ],
            "scheduling": {
                "timeout": f"{cfg.timeout_seconds}s",
                "restart_job_on_worker_restart": cfg.restart_job_on_worker_restart,
                "strategy": cfg.scheduling_strategy,
            },
            "base_output_directory": {"output_uri_prefix": output_uri},
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


def console_url(cfg: PipelineConfig, job_name: str) -> str:
    """The page a person opens to watch the job (the emulator's log route when running locally)."""
    job_id = job_name.rsplit("/", 1)[-1]
    if cfg.vertex_endpoint:
        return f"{cfg.vertex_endpoint.rstrip('/')}/emulator/v1/jobs/{job_id}/log"
    return (
        f"https://console.cloud.google.com/vertex-ai/locations/{cfg.region}/training/{job_id}/cpu"
        f"?project={cfg.project}"
    )


# --- thin I/O -----------------------------------------------------------------------------------------------------
def job_client(cfg: PipelineConfig) -> aiplatform_v1.JobServiceClient:
    endpoint = cfg.vertex_endpoint or f"https://{cfg.region}-aiplatform.googleapis.com"
    return aiplatform_v1.JobServiceClient(
        transport="rest", credentials=gcp_credentials(cfg), client_options={"api_endpoint": endpoint}
    )


def parent_of(cfg: PipelineConfig) -> str:
    return f"projects/{cfg.project}/locations/{cfg.region}"


def find_jobs(client, parent: str, labels: dict[str, str]) -> list[aiplatform_v1.CustomJob]:
    """Jobs carrying all `labels`, newest first. The only de-duplication handle: create has no request id."""
    filter_ = " AND ".join(f'labels.{key}="{value}"' for key, value in sorted(labels.items()))
    pager = client.list_custom_jobs(
        request={"parent": parent, "filter": filter_, "page_size": 100}, timeout=REQUEST_TIMEOUT_SECONDS
    )
    return sorted(pager, key=lambda job: job.create_time, reverse=True)


def _call_with_retries(call: Callable, *, attempts: int, sleep: Callable[[float], None], what: str):
    """Run an idempotent read, riding out transient errors with exponential backoff."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except TRANSIENT_ERRORS:
            if attempt == attempts:
                raise
            sleep(min(2.0 ** (attempt - 1), 30.0))
    raise AssertionError(f"unreachable: {what}")


def submit_job(
    client,
    parent: str,
    job: dict,
    *,
    attempts: int = 6,
    sleep: Callable[[float], None] = time.sleep,
    log: Callable[[str], None] = lambda _: None,
) -> aiplatform_v1.CustomJob:
    """Create `job` exactly once: reattach to a job with the same labels, and look again after an ambiguous error."""
    labels = job["labels"]
    list_existing = lambda: find_jobs(client, parent, labels)  # noqa: E731
    existing = _call_with_retries(list_existing, attempts=attempts, sleep=sleep, what="list")
    if existing:
        log(f"Reattaching to {existing[0].name} ({JobState(existing[0].state).name}); not creating a second job")
        return existing[0]
    for attempt in range(1, attempts + 1):
        try:
            return client.create_custom_job(
                parent=parent, custom_job=aiplatform_v1.CustomJob(job), timeout=REQUEST_TIMEOUT_SECONDS
            )
        except gexc.BadRequest as exc:  # REST maps every 400 to BadRequest (InvalidArgument over gRPC)
            raise JobSubmitError(f"Vertex refused the job {job['display_name']}: {exc.message}") from None
        except (gexc.PermissionDenied, gexc.Unauthenticated, gexc.NotFound) as exc:
            raise JobSubmitError(
                f"Vertex refused the job {job['display_name']} in {parent}: {exc.message} "
                "(check the project, region, Vertex AI API enablement and the credentials' roles)"
            ) from None
        except TRANSIENT_ERRORS as exc:
            # The create may have been committed even though we saw an error: look before creating again.
            log(f"create attempt {attempt} failed ({type(exc).__name__}); checking whether the job exists")
            sleep(min(2.0 ** (attempt - 1), 30.0))
            existing = _call_with_retries(list_existing, attempts=attempts, sleep=sleep, what="list")
            if existing:
                log(f"The job was created despite the error: reattaching to {existing[0].name}")
                return existing[0]
            if attempt == attempts:
                raise JobSubmitError(
                    f"could not create {job['display_name']} after {attempts} attempts: {exc}"
                ) from None
    raise AssertionError("unreachable")


def wait_for_job(
    client,
    name: str,
    poll,
    *,
    timeout_seconds: float,
    on_update: Callable[[aiplatform_v1.CustomJob, float], None] = lambda job, elapsed: None,
    heartbeat_seconds: float = 300.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> aiplatform_v1.CustomJob:
    """Poll until the job ends; transient errors (429, 5xx, resets) only lengthen the wait, never end it.

    `on_update` hears every state change, and the current state again every `heartbeat_seconds`, so a long
    RUNNING phase still shows progress (elapsed time) in the Prefect UI.
    """
    started = clock()
    delay: float | None = None
    last_state = None
    last_report = started
    while True:
        elapsed = clock() - started
        try:
            job = client.get_custom_job(name=name, timeout=REQUEST_TIMEOUT_SECONDS)
        except TRANSIENT_ERRORS:
            job = None
        if job is not None:
            if job.state != last_state or clock() - last_report >= heartbeat_seconds:
                last_state, last_report = job.state, clock()
                on_update(job, elapsed)
            if job.state in TERMINAL_STATES:
                return job
        if elapsed > timeout_seconds:
            state = JobState(last_state).name if last_state is not None else "unknown"
            raise JobTimeoutError(
                f"stopped waiting for {name} after {elapsed:.0f}s (last state {state}); the job may still run: "
                "check the console or raise timeout_seconds"
            )
        delay = next_poll_delay(elapsed, delay, poll)
        sleep(delay)


def cancel_jobs(client, parent: str, labels: dict[str, str]) -> list[str]:
    """Cancel every unfinished job carrying `labels`; returns their names. Safe to call twice."""
    cancelled = []
    for job in find_jobs(client, parent, labels):
        if job.state not in TERMINAL_STATES and job.state != JobState.JOB_STATE_CANCELLING:
            try:
                client.cancel_custom_job(name=job.name, timeout=REQUEST_TIMEOUT_SECONDS)
            except gexc.FailedPrecondition:
                continue  # it ended between our list and the cancel
            cancelled.append(job.name)
    return cancelled


# --- Prefect ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class JobOutcome:
    model: str
    job_name: str
    state: str
    output_uri: str
    console_url: str
    attempts: int
    seconds: float


def run_training_job(
    cfg: PipelineConfig,
    model: str,
    *,
    package_uri: str,
    data_uri: str,
    output_uri: str,
    run_key: str,
    env: dict[str, str] | None = None,
    log: Callable[[str], None] = print,
    client=None,
) -> JobOutcome:
    """Submit (or reattach to) the model's job, watch it, and resubmit after infrastructure failures."""
    client = client or job_client(cfg)
    parent = parent_of(cfg)
    started = time.monotonic()
    attempt = 1
    while True:
        spec = build_custom_job(
            cfg, model, package_uri=package_uri, data_uri=data_uri, output_uri=output_uri,
            run_key=run_key, attempt=attempt, env=env,
        )  # fmt: skip
        job = submit_job(client, parent, spec, log=log)
        log(f"[{model}] Vertex job {job.name}: {console_url(cfg, job.name)}")

        def report(update: aiplatform_v1.CustomJob, elapsed: float) -> None:
            log(f"[{model}] {JobState(update.state).name} after {elapsed:.0f}s")

        done = wait_for_job(
            client, job.name, cfg.poll, timeout_seconds=cfg.timeout_seconds + 3600, on_update=report
        )
        if done.state == JobState.JOB_STATE_SUCCEEDED:
            return JobOutcome(
                model=model,
                job_name=done.name,
                state=JobState(done.state).name,
                output_uri=output_uri,
                console_url=console_url(cfg, done.name),
                attempts=attempt,
                seconds=time.monotonic() - started,
            )
        error = classify_failure(done)
        if isinstance(error, RetryableJobError) and attempt <= cfg.max_infra_retries:
            log(f"[{model}] infrastructure failure, resubmitting with resume (attempt {attempt + 1}): {error}")
            attempt += 1
            continue
        raise error
