"""tasks/vertex.py against the Vertex emulator through the real REST client: idempotent submit, the watch (and the
cancel when it stops watching), the cancel that reaches every job, and the one retry of list, create and cancel
against injected 503/429 bursts."""

from __future__ import annotations

import copy
import uuid

import pytest
from google.api_core import exceptions as gexc
from google.cloud import storage

from tasks import vertex
from tasks.config import parse_config
from tasks.errors import JobCancelError, JobSubmitError, JobTimeoutError, JobWatchError
from tasks.run_identity import LABEL_MODEL, LABEL_RUN
from tests.emulators.emujob_sdist import build_sdist, run_module


# The runner's retry with waits of a few milliseconds: the same predicate and loop, without the real backoff.
QUICK_RETRY = vertex.TRANSIENT_RETRY.with_delay(initial=0.01, maximum=0.05)


def _statuses(admin, method):
    return [r["status"] for r in admin.requests(method)]


@pytest.fixture
def sleeper_job(gcs_emulator, gcs_bucket, vertex_emulator):
    """A CustomJob (spec as finsent builds it) whose package sleeps 3 s instead of training."""
    storage.Client(project="t").bucket(gcs_bucket).blob("pkg/emujob-0.1.0.tar.gz").upload_from_string(build_sdist())
    cfg = parse_config(
        {"project": "finsent-test", "bucket": gcs_bucket, "vertex_endpoint": vertex_emulator.endpoint,
         "anonymous_credentials": True, "machine_type": "n1-standard-4",
         "poll": {"initial_seconds": 0.2, "fast_phase_max_seconds": 0.5}}
    )  # fmt: skip
    request = vertex.JobRequest(
        "lstm", package_uri=f"gs://{gcs_bucket}/pkg/emujob-0.1.0.tar.gz", data_uri=f"gs://{gcs_bucket}/d",
        output_uri=f"gs://{gcs_bucket}/out", run_key=uuid.uuid4().hex,
    )  # fmt: skip
    job = vertex.build_custom_job(cfg, request)
    run_module(job, "emujob.sleep", ["3"])
    return cfg, job


def test_submit_twice_creates_one_job_and_the_watch_reports_progress_through_transient_errors(
    sleeper_job, vertex_admin
):
    cfg, spec = sleeper_job
    runner = vertex.JobRunner(cfg)
    first = runner.submit(spec)
    again = runner.submit(spec)  # e.g. a retried task or a rerun after a crash
    assert again.name == first.name
    assert len(vertex_admin.requests("create")) == 1

    vertex_admin.set_faults([{"method": "get", "status": 503, "times": 2}, {"method": "get", "status": 429}])
    updates: list[tuple[str, float]] = []
    done = runner.watch(
        first.name, timeout_seconds=60, heartbeat_seconds=1.0,
        on_update=lambda job, elapsed: updates.append((vertex.JobState(job.state).name, elapsed)),
    )  # fmt: skip
    assert vertex.JobState(done.state).name == "JOB_STATE_SUCCEEDED"
    assert _statuses(vertex_admin, "get")[:4] == [503, 503, 429, 200], "a transient error only delays the watch"
    states = [state for state, _ in updates]
    assert states[-1] == "JOB_STATE_SUCCEEDED"
    assert states.count("JOB_STATE_RUNNING") >= 2, f"no heartbeat while RUNNING: {updates}"


def test_list_and_cancel_ride_out_503_and_429(sleeper_job, vertex_admin):
    cfg, spec = sleeper_job
    runner = vertex.JobRunner(cfg, retry=QUICK_RETRY)
    job = runner.submit(spec)
    vertex_admin.clear_requests()
    vertex_admin.set_faults([
        {"method": "list", "status": 503, "times": 2},
        {"method": "list", "status": 429, "times": 1},
        {"method": "cancel", "status": 503, "times": 1},
        {"method": "cancel", "status": 429, "times": 1},
    ])  # fmt: skip
    assert runner.cancel(spec["labels"]) == [job.name]
    assert _statuses(vertex_admin, "list") == [503, 503, 429, 200]
    assert _statuses(vertex_admin, "cancel") == [503, 429, 200], "the cancel reached Vertex: no GPU job left running"
    assert vertex_admin.job(job.name)["state"] in ("JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED")


def test_the_retry_gives_up_at_its_deadline_and_never_retries_a_refusal(sleeper_job, vertex_admin):
    cfg, spec = sleeper_job
    vertex_admin.set_faults([{"method": "list", "status": 503, "times": 0}])  # down for good
    with pytest.raises(gexc.RetryError):
        vertex.JobRunner(cfg, retry=QUICK_RETRY.with_timeout(0.5)).find(spec["labels"])
    assert len(_statuses(vertex_admin, "list")) > 2
    vertex_admin.reset()
    vertex_admin.set_faults([{"method": "list", "status": 403, "times": 1}])
    with pytest.raises(gexc.Forbidden):  # REST maps 403 to Forbidden
        vertex.JobRunner(cfg, retry=QUICK_RETRY).find(spec["labels"])
    assert _statuses(vertex_admin, "list") == [403], "a permission error is final: asked once"


def test_create_refused_for_permissions_is_one_line_naming_roles_and_not_retried(sleeper_job, vertex_admin):
    # A 403 arrives over REST as Forbidden, not PermissionDenied. (A 401 is not tested here: google-auth's session
    # answers it by refreshing the credentials, which anonymous credentials cannot do.)
    cfg, spec = sleeper_job
    vertex_admin.set_faults([{"method": "create", "status": 403, "times": 1}])
    with pytest.raises(JobSubmitError, match="credentials' roles"):
        vertex.JobRunner(cfg, retry=QUICK_RETRY).submit(spec)
    assert _statuses(vertex_admin, "create") == [403], "a refusal is final: one create, no retry"


def test_create_that_keeps_failing_is_a_submit_error_and_creates_nothing(sleeper_job, vertex_admin):
    cfg, spec = sleeper_job
    vertex_admin.set_faults([{"method": "create", "status": 503, "times": 0}])
    with pytest.raises(JobSubmitError, match="could not create"):
        vertex.JobRunner(cfg, retry=QUICK_RETRY.with_timeout(0.5)).submit(spec)
    creates, lists = _statuses(vertex_admin, "create"), _statuses(vertex_admin, "list")
    assert len(creates) > 1 and set(creates) == {503}
    assert len(lists) == len(creates), "every create, first and again, is preceded by a look for the job"
    assert not [j for j in vertex_admin.jobs() if j.get("labels") == spec["labels"]], "no job behind the 503s"


def _other_model(spec: dict) -> dict:
    """The same run's job for the other model (same run label)."""
    other = copy.deepcopy(spec)
    other["labels"][LABEL_MODEL] = "bert"
    other["display_name"] = spec["display_name"].replace("-lstm-", "-bert-")
    return other


def test_one_jobs_cancel_error_does_not_stop_the_others(sleeper_job, vertex_admin):
    cfg, spec = sleeper_job
    runner = vertex.JobRunner(cfg, retry=QUICK_RETRY)
    jobs = [runner.submit(spec), runner.submit(_other_model(spec))]
    vertex_admin.set_faults([{"method": "cancel", "status": 403, "times": 1}])  # the first cancel is refused
    with pytest.raises(JobCancelError) as info:
        runner.cancel({LABEL_RUN: spec["labels"][LABEL_RUN]})
    assert _statuses(vertex_admin, "cancel") == [403, 200], "the loop went on to the second job"
    (refused,) = info.value.not_cancelled
    (cancelled,) = info.value.cancelled
    assert refused in str(info.value) and "\n" not in str(info.value)
    assert {refused, cancelled} == {job.name for job in jobs}
    assert vertex_admin.job(cancelled)["state"] in ("JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED")
    assert vertex_admin.job(refused)["state"] in ("JOB_STATE_PENDING", "JOB_STATE_QUEUED", "JOB_STATE_RUNNING")


def test_a_watch_past_its_deadline_cancels_the_job_and_says_so(sleeper_job, vertex_admin):
    cfg, spec = sleeper_job
    runner = vertex.JobRunner(cfg, retry=QUICK_RETRY, grace_seconds=0)
    job = runner.submit(spec)
    with pytest.raises(JobTimeoutError, match=r"timeout_seconds=1\); cancelled the job") as info:
        runner.watch(job.name, timeout_seconds=1)  # the sleeper runs 3 s
    assert "\n" not in str(info.value)
    assert _statuses(vertex_admin, "cancel") == [200]
    assert vertex_admin.job(job.name)["state"] in ("JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED")


def test_a_watch_stopped_by_an_error_cancels_the_job_and_says_so(sleeper_job, vertex_admin):
    cfg, spec = sleeper_job
    runner = vertex.JobRunner(cfg, retry=QUICK_RETRY)
    job = runner.submit(spec)
    vertex_admin.set_faults([{"method": "get", "status": 403, "times": 1}])  # not transient: polling cannot fix it
    with pytest.raises(JobWatchError, match="Forbidden.*cancelled the job"):
        runner.watch(job.name)
    assert _statuses(vertex_admin, "cancel") == [200]
    assert vertex_admin.job(job.name)["state"] in ("JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED")


def test_when_the_trainer_says_training_finished_the_watch_polls_soon(sleeper_job, vertex_admin):
    """on_poll returning True (tasks/progress.py: the record's `finished`) restarts the schedule from
    `finishing_seconds`, once: a long job's end is not seen a whole long gap late."""
    import time

    cfg, spec = sleeper_job
    cfg = cfg.model_copy(update={"poll": cfg.poll.model_copy(update={
        "initial_seconds": 1.5, "fast_phase_max_seconds": 1.5, "finishing_seconds": 0.1})})
    runner = vertex.JobRunner(cfg, retry=QUICK_RETRY)
    job = runner.submit(spec)
    polls: list[tuple[float, str]] = []

    def on_poll(update) -> bool:
        polls.append((time.monotonic(), vertex.JobState(update.state).name))
        return update.state == vertex.JobState.JOB_STATE_RUNNING  # "finished" from the first RUNNING poll on

    done = runner.watch(job.name, timeout_seconds=60, on_poll=on_poll)
    assert vertex.JobState(done.state).name == "JOB_STATE_SUCCEEDED"
    first = next(i for i, (_, state) in enumerate(polls) if state == "JOB_STATE_RUNNING")
    gaps = [b - a for (a, _), (b, _) in zip(polls, polls[1:])]
    assert all(gap >= 1.4 for gap in gaps[:first]), f"before the hint the schedule's own gaps: {gaps}"
    after = gaps[first:]
    assert after and after[0] < 0.6, f"the poll right after the hint comes soon: {gaps}"
    # Once per watch: from there the gaps grow again (0.1, 0.13, 0.17, ... capped at 1.5 s: ~10 polls in the job's
    # 3 s), they do not stay at finishing_seconds (~30 polls) though every poll returned True.
    assert len(after) <= 15, f"the hint restarted the schedule more than once: {gaps}"
