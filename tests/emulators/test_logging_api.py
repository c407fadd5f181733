"""The emulator's Cloud Logging route (`POST /v2/entries:list`) through the REAL google-cloud-logging client, and
tasks/cloud_logging.JobLogReader on top of it.

Real-service behaviour relied on, with sources:
- entries:list: pageSize default 50, negative or > 1000 rejected; orderBy "timestamp asc" (default) or "timestamp
  desc"; equal timestamps in insert_id order (googleapis google/logging/v2/logging.proto, ListLogEntriesRequest).
- A Vertex job's entries: resource.type="ml_job", resource.labels.job_id=<numeric id>, resource.labels.task_name
  "workerpool0-0" for the replica (google-cloud-sdk command_lib/ai/log_util.py; issue 11 facts, section 7).
- Over REST a 403 is google.api_core's Forbidden, a 400 BadRequest (api_core exceptions.from_http_status; platform
  facts: "Over REST every HTTP 400 raises BadRequest").
"""

from __future__ import annotations

import sys
import time
import uuid

import pytest
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import logging_v2

from emulator_testkit import IMAGE, PARENT, PROJECT, wait_for_state
from tasks.cloud_logging import JobLogReader, job_filter
from tasks.config import parse_config

TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}
REPLICA = "workerpool0-0"


def printing_job(script: str) -> dict:
    """A CustomJob whose one replica runs `script` on the host's Python (a containerSpec with a command)."""
    return {
        "display_name": f"log-{uuid.uuid4().hex[:8]}",
        "job_spec": {"worker_pool_specs": [{
            "machine_spec": {"machine_type": "n1-standard-4"}, "replica_count": 1,
            "container_spec": {"image_uri": IMAGE, "command": [sys.executable, "-c", script]},
        }]},
    }


def lines_script(prefix: str, count: int) -> str:
    return f"for i in range({count}): print('{prefix} line', i, flush=True)"


@pytest.fixture(scope="module")
def logging_client(vertex_emulator):
    """The real client over its JSON/HTTP transport, pointed at the emulator with no credentials."""
    return logging_v2.Client(project=PROJECT, credentials=AnonymousCredentials(), _use_grpc=False,
                             client_options={"api_endpoint": vertex_emulator.endpoint})


@pytest.fixture
def reader_cfg(vertex_emulator):
    return parse_config({"project": PROJECT, "bucket": "unused", "vertex_endpoint": vertex_emulator.endpoint,
                         "anonymous_credentials": True})


def run_to_end(job_client, spec: dict) -> tuple[str, str]:
    """Create the job, wait for its end; (job name, numeric job id)."""
    job = job_client.create_custom_job(parent=PARENT, custom_job=spec)
    done = wait_for_state(job_client, job.name, TERMINAL)
    assert done.state.name == "JOB_STATE_SUCCEEDED", done.error
    return job.name, job.name.rsplit("/", 1)[-1]


def replica_texts(entries) -> list[str]:
    return [e.payload for e in entries if e.resource.labels["task_name"] == REPLICA]


def test_paging_returns_every_line_once_in_order_as_ml_job_entries(job_client, logging_client, vertex_admin):
    _, job_id = run_to_end(job_client, printing_job(lines_script("paged", 120)))
    vertex_admin.clear_requests()
    entries = list(logging_client.list_entries(
        filter_=job_filter(job_id) + f' AND resource.labels.task_name="{REPLICA}"', page_size=50))
    assert [e.payload for e in entries] == [f"paged line {i}" for i in range(120)]
    calls = vertex_admin.requests("list_log_entries")
    assert [c["status"] for c in calls] == [200, 200, 200], "120 entries in pages of at most 50"
    first = entries[0]
    assert first.resource.type == "ml_job"
    assert first.resource.labels == {"job_id": job_id, "project_id": PROJECT, "task_name": REPLICA}
    assert first.timestamp is not None and first.insert_id and first.severity == "DEFAULT"
    stamps = [(e.timestamp, e.insert_id) for e in entries]
    assert stamps == sorted(stamps) and len({e.insert_id for e in entries}) == 120
    # A second read sees the same timestamps: they are recorded once, not made up per request.
    again = list(logging_client.list_entries(filter_=job_filter(job_id), page_size=1000))
    assert [(e.timestamp, e.insert_id) for e in again if e.resource.labels["task_name"] == REPLICA] == stamps
    assert any(e.resource.labels["task_name"] == "service" for e in again), "Vertex's own messages: task 'service'"


def test_filter_by_job_id_returns_only_that_jobs_lines(job_client, logging_client):
    _, first = run_to_end(job_client, printing_job(lines_script("first", 3)))
    _, second = run_to_end(job_client, printing_job(lines_script("second", 4)))
    entries = list(logging_client.list_entries(filter_=job_filter(second), page_size=1000))
    assert replica_texts(entries) == [f"second line {i}" for i in range(4)]
    assert {e.resource.labels["job_id"] for e in entries} == {second}
    assert replica_texts(logging_client.list_entries(filter_=job_filter(first))) == [f"first line {i}" for i in range(3)]


def test_order_desc_is_asc_reversed(job_client, logging_client):
    _, job_id = run_to_end(job_client, printing_job(lines_script("ordered", 7)))
    asc = [(e.timestamp, e.insert_id) for e in logging_client.list_entries(
        filter_=job_filter(job_id), order_by=logging_v2.ASCENDING)]
    desc = [(e.timestamp, e.insert_id) for e in logging_client.list_entries(
        filter_=job_filter(job_id), order_by=logging_v2.DESCENDING)]
    assert desc == asc[::-1] and asc == sorted(asc)


@pytest.mark.parametrize("kwargs", [
    {"page_size": 1001},  # "If the value is negative or exceeds 1000, the request is rejected"
    {"filter_": 'resource.type="ml_job" OR resource.labels.job_id="1"'},  # beyond the emulator's subset: refused
    {"filter_": 'jsonPayload.message:"x"'},
    {"order_by": "insertId asc"},
])
def test_invalid_requests_are_refused_with_400(logging_client, vertex_emulator, kwargs):
    with pytest.raises(gexc.BadRequest):
        list(logging_client.list_entries(**kwargs))


def test_reader_returns_only_new_entries_in_order_while_the_job_runs(job_client, reader_cfg):
    script = ("import time\n" + lines_script("early", 3) + "\ntime.sleep(1.5)\n" + lines_script("late", 3))
    job = job_client.create_custom_job(parent=PARENT, custom_job=printing_job(script))
    reader = JobLogReader(reader_cfg, job.name)
    batches: list[list[str]] = []
    while True:
        state = job_client.get_custom_job(name=job.name).state.name
        batches.append([line.text for line in reader.poll().lines if line.task_name == REPLICA])
        if state in TERMINAL:
            break
        time.sleep(0.3)
    seen = [text for batch in batches for text in batch]
    assert seen == [f"early line {i}" for i in range(3)] + [f"late line {i}" for i in range(3)], batches
    assert sum(1 for batch in batches if batch) >= 2, f"read in one go, not as they came: {batches}"
    assert reader.poll().lines == [], "a poll after the end repeats nothing"


def test_reader_caps_a_poll_and_counts_what_it_skipped(job_client, reader_cfg):
    name, _ = run_to_end(job_client, printing_job(lines_script("chatty", 120)))
    reader = JobLogReader(reader_cfg, name, max_lines=10)
    batch = reader.poll()
    assert [line.text for line in batch.lines if line.task_name == REPLICA][-3:] == [
        "chatty line 117", "chatty line 118", "chatty line 119"]
    assert len(batch.lines) == 10 and batch.skipped >= 110
    assert reader.poll().lines == [] and reader.poll().skipped == 0


def test_permission_denied_warns_once_naming_the_role_and_stops_reading(job_client, reader_cfg, vertex_admin):
    name, _ = run_to_end(job_client, printing_job(lines_script("secret", 2)))
    vertex_admin.set_faults([{"method": "list_log_entries", "status": 403, "times": 0,
                              "message": "Permission 'logging.logEntries.list' denied on resource."}])
    warnings: list[str] = []
    reader = JobLogReader(reader_cfg, name, warn=warnings.append)
    assert reader.poll().lines == [] and reader.poll().lines == []
    assert len(warnings) == 1 and "roles/logging.viewer" in warnings[0] and "403" in warnings[0], warnings
    assert [r["status"] for r in vertex_admin.requests("list_log_entries")] == [403], "no read after the refusal"


def test_a_transient_error_skips_one_poll_quietly(job_client, reader_cfg, vertex_admin):
    name, _ = run_to_end(job_client, printing_job(lines_script("later", 2)))
    vertex_admin.set_faults([{"method": "list_log_entries", "status": 503, "times": 1}])
    warnings: list[str] = []
    reader = JobLogReader(reader_cfg, name, warn=warnings.append)
    assert reader.poll().lines == []
    assert [line.text for line in reader.poll().lines if line.task_name == REPLICA] == ["later line 0", "later line 1"]
    assert warnings == []
