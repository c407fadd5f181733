"""tasks/pricing.py (pure) and the budget's pre-flight in the config: table look-ups, what has no price, the
worst-case refusal line through parse_config, and the running seconds read from Vertex's timestamps."""

from __future__ import annotations

import datetime as dt

import pytest
from google.cloud import aiplatform_v1

from tasks import pricing
from tasks.config import parse_config
from tasks.errors import ConfigError
from tasks.vertex import running_seconds

BASE = {"project": "p", "bucket": "finsent-test-bucket"}
N1_4 = {"machine_type": "n1-standard-4", "accelerator_type": None, "accelerator_count": 0}


def test_the_sourced_rows():
    assert pricing.hourly_usd("n1-standard-4", None, 0, "us-central1") == 0.21849885
    assert pricing.GPU_USD_PER_HOUR[("us-central1", "NVIDIA_H100_80GB")] == 9.79655057
    assert pricing.CHECKED == "2026-12-01"


def test_machine_plus_gpus(monkeypatch):
    # No sourced machine takes a priced GPU yet, so the sum is checked with a test-only row (not a price).
    monkeypatch.setitem(pricing.GPU_USD_PER_HOUR, ("us-central1", "NVIDIA_TESLA_T4"), 0.5)
    assert pricing.hourly_usd("n1-standard-4", "NVIDIA_TESLA_T4", 2, "us-central1") == pytest.approx(1.21849885)


def test_an_unknown_price_names_everything_missing_and_the_file():
    with pytest.raises(pricing.UnknownPrice) as info:
        pricing.hourly_usd("n1-standard-8", "NVIDIA_TESLA_T4", 1, "us-central1")
    line = str(info.value)
    assert "machine type n1-standard-8 in us-central1" in line and "accelerator NVIDIA_TESLA_T4 in us-central1" in line
    assert "tasks/pricing.py" in line and "2026-12-01" in line and "\n" not in line
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("strategy", ["SPOT", "FLEX_START"])
def test_spot_and_flex_start_are_not_estimated(strategy):
    with pytest.raises(pricing.UnknownPrice, match=rf"scheduling_strategy {strategy} \(no sourced rate, not estimated"):
        pricing.hourly_usd("n1-standard-4", None, 0, "us-central1", strategy)


def test_other_regions_have_no_price():
    with pytest.raises(pricing.UnknownPrice, match="machine type n1-standard-4 in europe-west4"):
        pricing.hourly_usd("n1-standard-4", None, 0, "europe-west4")


def test_job_cost_and_worst_case():
    assert pricing.job_cost_usd(3.6, 10) == pytest.approx(0.01)
    assert pricing.job_cost_usd(3.6, -5) == 0.0
    assert pricing.worst_case_usd(0.21849885, 4 * 3600, 3) == pytest.approx(2.6219862)


def test_no_budget_is_todays_behaviour():
    cfg = parse_config(BASE)  # n1-standard-8 + T4 has no price, and needs none without a budget
    assert cfg.max_cost_usd is None


def test_a_budget_the_worst_case_fits_is_accepted():
    assert parse_config(BASE | N1_4 | {"max_cost_usd": 3}).max_cost_usd == 3


def test_over_budget_is_one_line_with_the_arithmetic_and_the_fix():
    with pytest.raises(ConfigError) as info:
        parse_config(BASE | N1_4 | {"max_cost_usd": 1})
    assert str(info.value) == (
        "invalid finsent config: max_cost_usd 1: one job may cost up to $2.62 (n1-standard-4 in us-central1 at "
        "$0.2185/h x 4 h x 3 attempts); raise max_cost_usd, or lower timeout_seconds or max_infra_retries"
    )


def test_fewer_attempts_or_a_shorter_timeout_fit():
    parse_config(BASE | N1_4 | {"max_cost_usd": 1, "max_infra_retries": 0})  # $0.87
    parse_config(BASE | N1_4 | {"max_cost_usd": 1, "timeout_seconds": 3600})  # $0.66


def test_a_budget_on_an_unpriced_job_is_refused_naming_what_has_no_price():
    with pytest.raises(ConfigError) as info:
        parse_config(BASE | {"max_cost_usd": 5})
    line = str(info.value)
    assert line.startswith("invalid finsent config: max_cost_usd 5: cannot estimate n1-standard-8 + 1 x "
                           "NVIDIA_TESLA_T4 in us-central1 (STANDARD): tasks/pricing.py")
    assert "machine type n1-standard-8 in us-central1; accelerator NVIDIA_TESLA_T4 in us-central1" in line
    assert "\n" not in line


def test_a_budget_on_spot_is_refused_not_guessed():
    with pytest.raises(ConfigError, match=r"max_cost_usd 5: cannot estimate .* \(SPOT\): .*scheduling_strategy SPOT"):
        parse_config(BASE | N1_4 | {"max_cost_usd": 5, "scheduling_strategy": "SPOT"})


@pytest.mark.parametrize("budget", [0, -1])
def test_the_budget_is_positive(budget):
    with pytest.raises(ConfigError, match="max_cost_usd: Input should be greater than 0"):
        parse_config(BASE | {"max_cost_usd": budget})


T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(
    "fields, seconds",
    [
        ({}, 0.0),  # queued: never started, nothing counted
        ({"start_time": T0}, 90.0),  # running: up to now
        ({"start_time": T0, "end_time": T0 + dt.timedelta(seconds=30)}, 30.0),  # ended: up to end_time
    ],
    ids=["queued", "running", "ended"],
)
def test_running_seconds_from_vertex_timestamps(fields, seconds):
    job = aiplatform_v1.CustomJob(display_name="j", **fields)
    assert running_seconds(job, T0 + dt.timedelta(seconds=90)) == seconds
