"""Pure parts of tasks/vertex.py: the CustomJob spec and its labels (run identity), the poll schedule, what each
JobState means to the watch and its phase deadline, failure classification from Vertex's structured signals, and the
recovery policy (which failed jobs earn another attempt, how often, after how long)."""

import copy
import re

import pytest
from google.cloud import aiplatform_v1

from tasks.config import PollConfig, parse_config
from tasks.errors import RetryableJobError
from tasks.image import image_tag
from tasks.run_identity import LABEL_FLOW_RUN, identity, run_label
from tasks.vertex import (
    JOB_PHASES, GiveUp, JobRequest, Phase, RecoveryPolicy, Resubmit, WatchDeadline, build_custom_job,
    classify_failure, next_poll_delay, poll_schedule, quota_line, quota_metrics,
)

CFG = parse_config(
    {
        "project": "p",
        "bucket": "finsent-test",
        "scheduling_strategy": "SPOT",
        "timeout_seconds": 3600,
        "params": {"lstm": {"epochs": 3, "batch_size": 16, "buckets": [64, 32]}, "bert": {}},
        "wandb": {"secret_manager_ref": "projects/p/secrets/wandb/versions/1"},
    }
)


def test_custom_job_spec_is_exactly_what_vertex_needs():
    before = copy.deepcopy(CFG.model_dump())
    request = JobRequest(
        "lstm", package_uri="gs://b/pkg.tar.gz", data_uri="gs://b/data/abc", output_uri="gs://b/runs/r1/lstm",
        run_key="R1",
    )  # fmt: skip
    job = build_custom_job(CFG, request)
    assert CFG.model_dump() == before, "building a spec must not change the config"
    assert job == {
        "display_name": "finsent-lstm-r1-a791366f6f-a1",
        "labels": {"finsent-run": "r1-a791366f6f", "finsent-model": "lstm", "finsent-attempt": "1"},
        "job_spec": {
            "worker_pool_specs": [
                {
                    "machine_spec": {
                        "machine_type": "n1-standard-8",
                        "accelerator_type": "NVIDIA_TESLA_T4",
                        "accelerator_count": 1,
                    },
                    "replica_count": 1,
                    "disk_spec": {"boot_disk_type": "pd-ssd", "boot_disk_size_gb": 100},
                    "container_spec": {
                        "image_uri": f"us-central1-docker.pkg.dev/p/finsent/finsent-trainer:{image_tag()}",
                        "args": [
                            "--model=lstm",
                            "--train-data=gs://b/data/abc/train.csv",
                            "--validation-data=gs://b/data/abc/validation.csv",
                            "--test-data=gs://b/data/abc/test.csv",
                            # every hyper-parameter, the BiLSTM's own defaults for those not in params.lstm
                            "--pretrained=google-bert/bert-base-uncased",
                            "--epochs=3",
                            "--batch-size=16",
                            "--learning-rate=0.002",
                            "--max-seq-len=128",
                            "--buckets=32,64,128",
                            "--seed=42",
                            "--patience=4",
                            "--precision=auto",
                            "--weight-decay=0.01",
                            "--dropout=0.5",
                            "--class-weights=sqrt",
                            "--lstm-embeddings=frozen",
                            "--lstm-vocab-size=4000",
                            "--lstm-embedding-dim=64",
                            "--lstm-units=64",
                            "--lstm-pooling=mean_max",
                            "--wandb-project=finsent",
                            "--wandb-run-name=finsent-lstm-r1-a791366f6f-a1",
                        ],
                        "env": [
                            {"name": "FINSENT_PACKAGE_URIS", "value": "gs://b/pkg.tar.gz"},  # the image installs it
                            {"name": "WANDB_API_KEY_SECRET", "value": "projects/p/secrets/wandb/versions/1"},
                            {"name": "WANDB_PROJECT", "value": "finsent"},
                        ],
                    },
                }
            ],
            "scheduling": {"timeout": "3600s", "restart_job_on_worker_restart": True, "strategy": "SPOT"},
            "base_output_directory": {"output_uri_prefix": "gs://b/runs/r1/lstm"},
        },
    }
    # The real client accepts it as a CustomJob message.
    assert aiplatform_v1.CustomJob(job).job_spec.scheduling.strategy == aiplatform_v1.Scheduling.Strategy.SPOT


def test_several_replicas_are_one_chief_pool_and_one_worker_pool():
    """replica_count 3: workerpool0 holds the one primary replica, workerpool1 the 2 workers, each the same machine
    (4 GPUs), image and trainer command ("Use the first worker pool specification only for your primary replica,
    and set its replicaCount to 1", https://cloud.google.com/vertex-ai/docs/training/distributed-training)."""
    cfg = parse_config({"project": "p", "bucket": "finsent-test", "machine_type": "a2-highgpu-4g",
                        "accelerator_type": "NVIDIA_TESLA_A100", "accelerator_count": 4, "replica_count": 3,
                        "params": {"lstm": {"batch_size": 24}, "bert": {"batch_size": 48}}})
    request = JobRequest("bert", package_uri="gs://b/p.tar.gz", data_uri="gs://b/d", output_uri="gs://b/o",
                         run_key="r")
    chief, workers = build_custom_job(cfg, request)["job_spec"]["worker_pool_specs"]
    assert (chief["replica_count"], workers["replica_count"]) == (1, 2)
    assert workers == chief | {"replica_count": 2}
    assert chief["machine_spec"] == {"machine_type": "a2-highgpu-4g", "accelerator_type": "NVIDIA_TESLA_A100",
                                     "accelerator_count": 4}
    assert "--batch-size=48" in chief["container_spec"]["args"]  # the global batch: 4 per GPU on 12 GPUs
    job = aiplatform_v1.CustomJob(build_custom_job(cfg, request))  # the real client's message takes both pools
    assert [p.replica_count for p in job.job_spec.worker_pool_specs] == [1, 2]


def test_poll_schedule_is_fast_early_and_cheap_for_long_jobs():
    calls, first_minute_gap = poll_schedule(PollConfig(), job_seconds=3600)
    assert first_minute_gap <= 10, "state changes in the first minute must be seen within 10 s"
    assert calls < 120, f"a one-hour job took {calls} polls"
    assert poll_schedule(PollConfig(), job_seconds=20)[0] >= 15, "a short job is watched every second"


def test_a_finished_trainer_restarts_the_schedule_from_a_short_gap_and_costs_few_gets():
    poll = PollConfig()
    assert next_poll_delay(1800.0, 60.0, poll, finishing=True) == poll.finishing_seconds
    # From the short gap back up to the 60 s cap: the extra GETs a long job pays for seeing its end soon.
    delay, elapsed, calls = None, 1800.0, 0
    while delay != poll.max_seconds:
        delay = next_poll_delay(elapsed, delay, poll, finishing=delay is None)
        elapsed, calls = elapsed + delay, calls + 1
    assert calls <= 25 and elapsed - 1800.0 < 400


def test_flex_start_passes_max_wait_and_a_flow_run_labels_its_job():
    cfg = parse_config({"project": "p", "bucket": "bkt", "machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_L4",
                        "accelerator_count": 1, "scheduling_strategy": "FLEX_START", "max_wait_seconds": 7200})
    request = JobRequest("lstm", package_uri="gs://b/p.tar.gz", data_uri="gs://b/d", output_uri="gs://b/o",
                         run_key="r", flow_run_id="0F1E2D3C-4b5a-6978-8796-a5b4c3d2e1f0")
    job = build_custom_job(cfg, request)
    # custom_job.proto Scheduling.max_wait_duration (FLEX_START's wait for resources; Vertex's default is 24 h).
    assert job["job_spec"]["scheduling"]["max_wait_duration"] == "7200s"
    assert aiplatform_v1.CustomJob(job).job_spec.scheduling.max_wait_duration.total_seconds() == 7200
    assert "max_wait_duration" not in build_custom_job(CFG, request)["job_spec"]["scheduling"], "FLEX_START only"
    assert job["labels"][LABEL_FLOW_RUN] == "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    assert LABEL_FLOW_RUN not in identity(job["labels"]), "a rerun (a new flow run) still reattaches by identity"


GCP_LABEL_VALUE = re.compile(r"[a-z0-9_-]{0,63}")


@pytest.mark.parametrize("a, b", [("Nightly/A", "nightly-a"), ("Nightly/2026-11-27", "nightly-2026-11-27"),
                                  ("x" * 70 + "1", "x" * 70 + "2")])
def test_run_keys_that_one_label_value_would_merge_get_two_run_labels(a, b):
    # issue 11 item 5: label_value lower-cases, maps punctuation to '-' and cuts at 63 characters.
    assert run_label(a) != run_label(b)
    for key in (a, b):
        assert GCP_LABEL_VALUE.fullmatch(run_label(key)), run_label(key)
        assert run_label(key) == run_label(key), "deterministic: a rerun with the same key finds its jobs"


def test_every_job_state_has_a_meaning_and_paused_or_updating_keep_the_watch_going_as_running_time():
    assert set(JOB_PHASES) == set(aiplatform_v1.JobState), "a new JobState needs a row here and in reliability.md"
    running = {state.name for state, phase in JOB_PHASES.items() if phase is Phase.RUNNING}
    assert running == {"JOB_STATE_RUNNING", "JOB_STATE_PAUSED", "JOB_STATE_UPDATING", "JOB_STATE_CANCELLING"}
    waiting = {state.name for state, phase in JOB_PHASES.items() if phase is Phase.WAITING}
    assert waiting == {"JOB_STATE_UNSPECIFIED", "JOB_STATE_QUEUED", "JOB_STATE_PENDING"}


def test_the_watch_deadline_follows_the_phases_then_a_grace():
    deadline = WatchDeadline(max_wait_seconds=600, timeout_seconds=3600, grace_seconds=60)
    assert deadline.overdue(waited=650, ran=0) is None, "within max_wait + grace"
    assert "max_wait_seconds=600" in deadline.overdue(waited=661, ran=0), "queued too long: Vertex may never start it"
    assert deadline.overdue(waited=600, ran=3650) is None, "a long queue does not eat the running allowance"
    assert "timeout_seconds=3600" in deadline.overdue(waited=10, ran=3661)
    assert deadline.overdue(waited=640, ran=3641) is not None, "the grace is one slack for both phases"


def _ended(state, message="", code=0):
    return aiplatform_v1.CustomJob(
        name="projects/p/locations/us-central1/customJobs/1", state=state, error={"code": code, "message": message}
    )


def _failed(message, code=3):
    return _ended(aiplatform_v1.JobState.JOB_STATE_FAILED, message, code)


# The emulator's preemption (code 14 UNAVAILABLE); Vertex's exact SPOT text is unconfirmed (facts file section 5).
PREEMPTED = _failed("The replica workerpool0-0 was preempted", code=14)
# "Resources are insufficient in region: us-central1" (openreview/openreview-expertise#401), the docs' template ends
# ". Try a different region or use a different accelerator." (understanding-training-service); code unconfirmed.
STOCKOUT = _failed("Resources are insufficient in region: us-central1. Try a different region or use a different "
                   "accelerator.", code=8)
# The first line as vertex-ai-samples PR #1504 shows it (code 3), then the replica's traceback.
EXIT_LINE = "The replica workerpool0-0 exited with a non-zero status of 1. Termination reason: Error. "
USER_ERROR = _failed(EXIT_LINE + "\nKeyError: x")
# The host OOM line of understanding-training-service ("ran out of memory and exited with a non-zero status of
# EXIT_CODE") and legacy AI Platform's (tensorflow/models#5591).
HOST_OOM = _failed("The replica workerpool0-0 ran out of memory and exited with a non-zero status of 137.")
LEGACY_OOM = _failed("The replica master 0 ran out-of-memory and exited with a non-zero status of 9(SIGKILL)")
OOM_KILLED = _failed("The replica workerpool0-0 exited with a non-zero status of 137. Termination reason: OOMKilled.")
# A CUDA/XLA OOM raises inside Python, so the replica exits 1 with Vertex's generic line (inferred, facts section 5);
# the words RESOURCE_EXHAUSTED / out of memory are only in the traceback, which is never read.
XLA_OOM_IN_TRACEBACK = _failed(
    EXIT_LINE + "\nTraceback (most recent call last):\n  File \"trainer/train.py\", line 9, in fit\n"
    "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4294967296 "
    "bytes.\ntensorflow.python.framework.errors_impl.ResourceExhaustedError: OOM when allocating tensor; preempted"
)
# code 8 with the quota text as a job error (vertex-ai-samples#700).
QUOTA_JOB = _failed("The following quota metrics exceed quota limits: "
                    "aiplatform.googleapis.com/custom_model_training_nvidia_k80_gpus", code=8)
# "Internal error occurred for the current attempt" after Vertex's own three attempts (understanding-training-service).
INTERNAL = _failed("Internal error occurred for the current attempt.", code=13)


@pytest.mark.parametrize("job, reason", [(PREEMPTED, "preempted"), (STOCKOUT, "stockout")])
def test_preemption_and_stockout_are_retryable(job, reason):
    error = classify_failure(job)
    assert isinstance(error, RetryableJobError) and error.reason == reason


@pytest.mark.parametrize(
    "job, reason",
    [(USER_ERROR, "user_error"), (XLA_OOM_IN_TRACEBACK, "user_error"), (HOST_OOM, "out_of_memory"),
     (LEGACY_OOM, "out_of_memory"), (OOM_KILLED, "out_of_memory"), (QUOTA_JOB, "quota"), (INTERNAL, "internal")],
    ids=["user", "xla-oom-in-traceback", "host-oom", "legacy-oom", "oom-killed", "quota", "internal"],
)
def test_user_errors_oom_quota_and_internal_errors_are_final_and_one_line(job, reason):
    error = classify_failure(job)
    assert not isinstance(error, RetryableJobError) and error.reason == reason
    assert "\n" not in str(error), "one line: the traceback goes to log_tail"
    if reason == "out_of_memory":
        assert "batch_size" in str(error) and "max_seq_len" in str(error) and "more memory" in str(error)


def test_the_traceback_reaches_the_error_but_never_decides():
    user = classify_failure(USER_ERROR)
    assert "non-zero status of 1" in str(user) and user.log_tail == "KeyError: x"
    xla = classify_failure(XLA_OOM_IN_TRACEBACK)
    assert "RESOURCE_EXHAUSTED" in xla.log_tail and "RESOURCE_EXHAUSTED" not in str(xla)


def test_quota_errors_name_the_metric_region_and_quota_page():
    # The 429 of a create as the REST client words it (api_core prefixes method and URL); text from
    # GoogleCloudPlatform/stable-diffusion-on-gcp#12.
    message = ("POST https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/us-central1/customJobs: "
               "The following quota metrics exceed quota limits: "
               "aiplatform.googleapis.com/custom_model_training_nvidia_l4_gpus")
    metrics = quota_metrics(message)
    assert metrics == "aiplatform.googleapis.com/custom_model_training_nvidia_l4_gpus"
    assert quota_metrics("Resource has been exhausted (e.g. check quota).") is None, "a rate limit stays transient"
    line = quota_line(metrics, "projects/p/locations/us-central1")
    assert "region us-central1" in line and metrics in line
    assert "https://console.cloud.google.com/iam-admin/quotas?project=p" in line
    assert "custom_model_training_nvidia_k80_gpus" in str(classify_failure(QUOTA_JOB))


def test_infrastructure_failures_are_resubmitted_with_growing_backoff_up_to_max_infra_retries():
    policy = RecoveryPolicy.for_config(CFG.model_copy(update={"max_infra_retries": 2}))
    for failed in (PREEMPTED, STOCKOUT):
        decisions = [policy.decide(failed, attempt) for attempt in (1, 2, 3)]
        assert [type(d) for d in decisions] == [Resubmit, Resubmit, GiveUp], "first try + 2 resubmits, then stop"
        first, second = (d.after_seconds for d in decisions[:2])
        assert 0 < first < second, "not at once to the same place: capacity is short right now"
        assert isinstance(decisions[2].error, RetryableJobError) and "ended JOB_STATE_FAILED" in str(decisions[2].error)


def test_user_errors_and_endings_other_than_failed_are_never_resubmitted():
    policy = RecoveryPolicy(max_resubmits=5)
    for failed in (USER_ERROR, HOST_OOM, XLA_OOM_IN_TRACEBACK, QUOTA_JOB, INTERNAL):
        decision = policy.decide(failed, 1)
        assert isinstance(decision, GiveUp) and not isinstance(decision.error, RetryableJobError)
    assert policy.decide(USER_ERROR, 1).error.log_tail == "KeyError: x", "the log tail reaches the reader"
    for state in ("JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED", "JOB_STATE_PARTIALLY_SUCCEEDED"):
        decision = policy.decide(_ended(aiplatform_v1.JobState[state], "preempted", code=14), 1)
        assert isinstance(decision, GiveUp) and decision.error.state == state
    assert isinstance(RecoveryPolicy(max_resubmits=0).decide(PREEMPTED, 1), GiveUp), "max_infra_retries=0: no resubmit"


def test_a_job_someone_cancelled_is_never_resubmitted_whatever_it_ends_in():
    # job_state.proto: "From [CANCELLING] the job may only go to either SUCCEEDED, FAILED or CANCELLED".
    policy = RecoveryPolicy(max_resubmits=5)
    lost_race = policy.decide(PREEMPTED, 1, cancel_requested=True)
    assert isinstance(lost_race, GiveUp) and lost_race.error.reason == "cancelled"
    code_1 = policy.decide(_failed("The replica workerpool0-0 was preempted", code=1), 1)
    assert isinstance(code_1, GiveUp) and code_1.error.reason == "cancelled", "error.code 1 is CANCELLED"


def test_backoff_grows_between_resubmits_and_is_capped():
    policy = RecoveryPolicy(max_resubmits=4, backoff_initial_seconds=10, backoff_multiplier=3, backoff_max_seconds=60)
    assert [policy.decide(PREEMPTED, attempt).after_seconds for attempt in (1, 2, 3, 4)] == [10, 30, 60, 60]
