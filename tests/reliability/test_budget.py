"""The budget guard against the emulators: a config whose worst case is over `max_cost_usd` is refused before
anything is uploaded or created, and a running job is cancelled once its cost passes the budget, never resubmitted.

Prices are tasks/pricing.py's (n1-standard-4 in us-central1, $0.21849885/h: the one machine with a sourced price, so
these jobs run without a GPU). The running cost is read from the job's own timestamps: custom_job.proto, start_time
"Time when the CustomJob for the first time entered the JOB_STATE_RUNNING state" and end_time; the emulator stamps
both (emulators/vertex/state.py) as Vertex does.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from google.cloud import storage
from prefect.exceptions import ParameterTypeError

from tasks import pricing
from tasks.config import parse_config
from tasks.errors import BudgetExceededError, ConfigError
from tests.reliability.conftest import lstm_config, run_jobs, wait_until
from tests.reliability.test_job_faults import _cfg, _run, quick_runner

N1_4 = {"machine_type": "n1-standard-4", "accelerator_type": None, "accelerator_count": 0}
HOURLY = pricing.MACHINE_USD_PER_HOUR[("us-central1", "n1-standard-4")]
# Over budget: 4 h timeout x 3 attempts x $0.21849885/h = $2.62 > $1.
OVER = r"max_cost_usd 1: one job may cost up to \$2\.62 \(n1-standard-4 in us-central1 at \$0\.2185/h x 4 h x 3 attempts\)"


def _when(stamp: str) -> dt.datetime:
    return dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _blobs(bucket: str) -> list[str]:
    return [b.name for b in storage.Client(project="t").bucket(bucket).list_blobs()]


@pytest.mark.usefixtures("prefect_server")
def test_a_config_over_budget_is_refused_before_any_upload_or_job(rel_config, vertex_admin, gcs_bucket):
    from flows.train import train

    raw = rel_config | N1_4 | {"max_cost_usd": 1}
    # The one line from parse_config (what a deployment runs at deploy time) ...
    with pytest.raises(ConfigError, match=OVER) as info:
        parse_config(raw)
    assert "\n" not in str(info.value) and "raise max_cost_usd, or lower timeout_seconds or max_infra_retries" in str(
        info.value)
    # ... and through the flow: Prefect validates the `config` parameter before the flow body runs.
    state = train(config=raw, return_state=True)
    assert state.is_failed()
    with pytest.raises(ParameterTypeError) as flow_info:
        state.result()
    assert any("one job may cost up to $2.62" in line for line in str(flow_info.value).splitlines())
    assert vertex_admin.requests("create") == [], "no Vertex job was created"
    assert _blobs(gcs_bucket) == [], "nothing uploaded (no data set, no package)"


def test_a_running_job_is_cancelled_once_its_cost_passes_the_budget(vertex_emulator, vertex_admin, staged):
    run_key = f"budget-{uuid.uuid4().hex[:8]}"
    # The config's own budget passes its pre-flight ($2.62 worst case <= $5). The runner is given $0.0005 (about 8 s
    # of n1-standard-4), which the config would refuse: the watch's guard is the second line of defence, for the
    # restarts Vertex makes inside one job, and this is how a test sees it act.
    cfg = _cfg(vertex_emulator, staged, epochs=100, max_infra_retries=2, max_cost_usd=5, **N1_4)  # runs until stopped
    budget = 0.0005
    lines: list[str] = []
    runner = quick_runner(cfg, lines, max_cost_usd=budget)
    with pytest.raises(BudgetExceededError) as info:
        _run(cfg, staged, run_key, lines, runner=runner)
    error = info.value
    line = str(error)
    (job,) = run_jobs(vertex_admin, run_key)
    assert error.job_name == job["name"] and job["name"] in line
    assert error.budget_usd == budget and error.cost_usd > budget
    assert f"> max_cost_usd {budget:g}" in line and f"${error.cost_usd:.4f} spent" in line
    assert "cancelled the job" in line and "not resubmitted" in line and "\n" not in line

    wait_until(lambda: vertex_admin.job(job["name"])["state"] == "JOB_STATE_CANCELLED", 30, "the job CANCELLED")
    assert len(vertex_admin.requests("create")) == 1, "never resubmitted"
    cancels = vertex_admin.requests("cancel")
    assert [r["status"] for r in cancels] == [200]
    # Cancelled once the budget's RUNNING time had passed, within a few polls (the test polls at most every second).
    ran = (_when(cancels[0]["time"]) - _when(vertex_admin.job(job["name"])["startTime"])).total_seconds()
    budget_seconds = budget / HOURLY * 3600
    assert budget_seconds <= ran < budget_seconds + 5, f"cancelled after {ran:.1f}s RUNNING; budget {budget_seconds:.1f}s"
