"""The orphan reaper's decision (tasks/reaper.py `decide`), pure: which job is cancelled, left alone or reported."""

from __future__ import annotations

import datetime as dt

import pytest
from prefect.client.schemas.objects import TERMINAL_STATES, StateType

from tasks.reaper import FINAL_FLOW_RUN_STATES, LIVE_FLOW_RUN_STATES, UNFINISHED_FINSENT_JOBS, FlowRunSeen, decide
from tasks.run_identity import LABEL_FLOW_RUN, LABEL_RUN

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)
FLOW_RUN = "0b8f6a52-5a7e-4c1e-9f43-1d2f3a4b5c6d"
LABELS = {LABEL_RUN: "nightly-1a2b3c4d5e", "finsent-model": "bert", "finsent-attempt": "1", LABEL_FLOW_RUN: FLOW_RUN}
GRACE = 900


def ago(seconds: float) -> dt.datetime:
    return NOW - dt.timedelta(seconds=seconds)


def verdict(flow_run, *, labels=LABELS, state="JOB_STATE_RUNNING", created=ago(7200), live=None):
    return decide(labels, state, created, flow_run, now=NOW, grace_seconds=GRACE, live_run_labels=live)


@pytest.mark.parametrize("final", sorted(FINAL_FLOW_RUN_STATES))
def test_a_job_whose_flow_run_ended_longer_than_the_grace_ago_is_cancelled(final):
    v = verdict(FlowRunSeen(final, ended=ago(GRACE + 1)))
    assert v.action == "cancel" and f"flow run {FLOW_RUN} is {final}, for 901s (grace 900s)" in v.reason


def test_within_the_grace_the_job_is_left_for_a_rerun_to_reattach():
    v = verdict(FlowRunSeen("CRASHED", ended=ago(GRACE - 60)))
    assert v.action == "leave" and "within the 900s grace" in v.reason


def test_a_job_whose_flow_run_does_not_exist_is_cancelled_once_the_job_is_older_than_the_grace():
    assert verdict(None, created=ago(GRACE + 1)).action == "cancel"
    assert "does not exist" in verdict(None).reason
    assert verdict(None, created=ago(10)).action == "leave"


@pytest.mark.parametrize("live", LIVE_FLOW_RUN_STATES)
def test_a_job_of_a_live_flow_run_is_left_alone(live):
    v = verdict(FlowRunSeen(live))
    assert v.action == "leave" and v.reason == f"flow run {FLOW_RUN} is {live}"


def test_a_job_reattached_by_a_live_rerun_with_the_same_run_key_is_left_alone():
    """The label names the crashed first flow run; the rerun (same run key) now watches the job."""
    rerun = "5d4c3b2a-0000-4000-8000-000000000000"
    v = verdict(FlowRunSeen("CRASHED", ended=ago(86400)), live={LABELS[LABEL_RUN]: rerun})
    assert v.action == "leave" and rerun in v.reason


def test_a_job_without_a_flow_run_label_is_reported_never_cancelled():
    labels = {k: v for k, v in LABELS.items() if k != LABEL_FLOW_RUN}
    v = verdict(None, labels=labels, created=ago(30 * 86400))
    assert v.action == "report" and "created outside a flow run" in v.reason


@pytest.mark.parametrize("ended", ["JOB_STATE_SUCCEEDED", "JOB_STATE_CANCELLED", "JOB_STATE_CANCELLING"])
def test_an_ended_or_ending_job_is_left(ended):
    assert verdict(None, state=ended).action == "leave"


def test_final_and_live_flow_run_states_cover_prefect_state_types_once():
    assert FINAL_FLOW_RUN_STATES == {s.value for s in TERMINAL_STATES}
    assert FINAL_FLOW_RUN_STATES | set(LIVE_FLOW_RUN_STATES) == {s.value for s in StateType}
    assert not FINAL_FLOW_RUN_STATES & set(LIVE_FLOW_RUN_STATES)


def test_the_list_filter_asks_for_unfinished_jobs_with_a_run_label():
    assert UNFINISHED_FINSENT_JOBS.startswith(f"labels.{LABEL_RUN}:* AND ")
    assert 'state!="JOB_STATE_CANCELLING"' in UNFINISHED_FINSENT_JOBS
    assert 'state!="JOB_STATE_RUNNING"' not in UNFINISHED_FINSENT_JOBS
