"""Pure parts of tasks/vertex.py: the CustomJob spec, the poll schedule, failure classification and the recovery
policy (which failed jobs earn another attempt, how often, after how long)."""

import copy

from google.cloud import aiplatform_v1

from tasks.config import PollConfig, parse_config
from tasks.errors import RetryableJobError
from tasks.vertex import (
    GiveUp, JobRequest, RecoveryPolicy, Resubmit, build_custom_job, classify_failure, poll_schedule,
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
        "display_name": "finsent-lstm-r1-a1",
        "labels": {"finsent-run": "r1", "finsent-model": "lstm", "finsent-attempt": "1"},
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
                    "python_package_spec": {
                        "executor_image_uri": "us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-17.py310:latest",
                        "package_uris": ["gs://b/pkg.tar.gz"],
                        "python_module": "trainer.task",
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
                            "--wandb-run-name=finsent-lstm-r1-a1",
                        ],
                        "env": [
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


def test_poll_schedule_is_fast_early_and_cheap_for_long_jobs():
    calls, first_minute_gap = poll_schedule(PollConfig(), job_seconds=3600)
    assert first_minute_gap <= 10, "state changes in the first minute must be seen within 10 s"
    assert calls < 120, f"a one-hour job took {calls} polls"
    assert poll_schedule(PollConfig(), job_seconds=20)[0] >= 15, "a short job is watched every second"


def _ended(state, message="", code=0):
    return aiplatform_v1.CustomJob(
        name="projects/p/locations/us-central1/customJobs/1", state=state, error={"code": code, "message": message}
    )


def _failed(message, code=3):
    return _ended(aiplatform_v1.JobState.JOB_STATE_FAILED, message, code)


PREEMPTED = _failed("The replica workerpool0-0 was preempted", code=14)
STOCKOUT = _failed("Resources are insufficient in zone us-central1-a")
USER_ERROR = _failed("The replica workerpool0-0 exited with a non-zero status of 1.\nKeyError: x")


def test_preemption_is_retryable_and_user_errors_are_not():
    assert isinstance(classify_failure(PREEMPTED), RetryableJobError)
    user = classify_failure(USER_ERROR)
    assert not isinstance(user, RetryableJobError)
    assert "non-zero status of 1" in str(user) and user.log_tail == "KeyError: x"


def test_infrastructure_failures_are_resubmitted_at_once_up_to_max_infra_retries():
    policy = RecoveryPolicy.for_config(CFG.model_copy(update={"max_infra_retries": 2}))
    for failed in (PREEMPTED, STOCKOUT):
        decisions = [policy.decide(failed, attempt) for attempt in (1, 2, 3)]
        assert [type(d) for d in decisions] == [Resubmit, Resubmit, GiveUp], "first try + 2 resubmits, then stop"
        assert [d.after_seconds for d in decisions[:2]] == [0.0, 0.0], "today a resubmit goes out at once"
        assert isinstance(decisions[2].error, RetryableJobError) and "ended JOB_STATE_FAILED" in str(decisions[2].error)


def test_user_errors_and_endings_other_than_failed_are_never_resubmitted():
    policy = RecoveryPolicy(max_resubmits=5)
    user = policy.decide(USER_ERROR, 1)
    assert isinstance(user, GiveUp) and not isinstance(user.error, RetryableJobError)
    assert user.error.log_tail == "KeyError: x", "the job's log tail reaches the person reading the error"
    for state in ("JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"):  # even with Vertex's capacity words in the message
        decision = policy.decide(_ended(aiplatform_v1.JobState[state], "preempted", code=14), 1)
        assert isinstance(decision, GiveUp) and decision.error.state == state
    assert isinstance(RecoveryPolicy(max_resubmits=0).decide(PREEMPTED, 1), GiveUp), "max_infra_retries=0: no resubmit"


def test_backoff_grows_between_resubmits_and_is_capped():
    policy = RecoveryPolicy(max_resubmits=4, backoff_initial_seconds=10, backoff_multiplier=3, backoff_max_seconds=60)
    assert [policy.decide(PREEMPTED, attempt).after_seconds for attempt in (1, 2, 3, 4)] == [10, 30, 60, 60]
