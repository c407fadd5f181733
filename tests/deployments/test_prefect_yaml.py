"""`prefect deploy --all` from the repo's prefect.yaml, non-interactive, against a real Prefect server: what it
creates, the same crons and settings as `python -m deployments.serve`, and a bad setting refused with one line
before anything is created."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import anyio
import pytest
import yaml

from deployments.serve import DEFAULT_CRON, REAP_CRON, config_from_env
from deployments.validate import EMULATOR_GCS_ENDPOINT, REPO
from tests.deployments.conftest import (
    DEPLOYMENTS, POOL, ROOT, finsent_deployments, prefect_cli, write_config,
)  # fmt: skip
from tests.reliability.conftest import wait_until

DEMO_CONFIG = ROOT / "deployments" / "emulators.json"


def _cron(deployment) -> tuple[str, str]:
    """(cron, timezone) of the one schedule. serve's `to_deployment(cron=...)` stores no timezone, which the
    scheduler reads as UTC (prefect/server/schemas/schedules.py, _prepare_scheduling_start_and_end:
    `timezone = timezone or "UTC"`); prefect.yaml says UTC."""
    (schedule,) = deployment.schedules
    return schedule.schedule.cron, schedule.schedule.timezone or "UTC"


def test_prefect_yaml_holds_no_setting_of_its_own():
    """Crons and config are the build step's outputs, so prefect.yaml and serve.py cannot drift apart."""
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert spec["build"] == [{"deployments.validate.check": {"id": "finsent"}}]
    assert by_name["vertex"]["schedules"][0]["cron"] == "{{ finsent.cron }}"
    assert by_name["hourly"]["schedules"][0]["cron"] == "{{ finsent.reap_cron }}"
    assert by_name["emulators"]["schedules"] == []
    assert {d["parameters"]["config"] for d in by_name.values()} == {"{{ finsent.config }}",
                                                                      "{{ finsent.emulator_config }}"}
    assert {d["work_pool"]["name"] for d in by_name.values()} == {POOL}


def test_deploy_all_creates_the_three_deployments(deploy_env, tmp_path):
    env = deploy_env | {"FINSENT_CONFIG": str(DEMO_CONFIG)}
    deploy = prefect_cli("deploy", "--all", env=env)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

    made = finsent_deployments()
    assert set(made) == set(DEPLOYMENTS)
    expected = config_from_env(env).model_dump(mode="json")
    vertex, reaper, emulators = made["train/vertex"], made["reap/hourly"], made["train/emulators"]
    assert _cron(vertex) == (DEFAULT_CRON, "UTC")
    assert _cron(reaper) == (REAP_CRON, "UTC")
    assert emulators.schedules == []
    assert vertex.parameters["config"] == expected == reaper.parameters["config"]
    assert emulators.parameters["config"]["anonymous_credentials"] is True
    assert emulators.job_variables == {"env": {"STORAGE_EMULATOR_HOST": env.get("STORAGE_EMULATOR_HOST")
                                               or EMULATOR_GCS_ENDPOINT}}
    assert {d.work_pool_name for d in made.values()} == {POOL}
    assert vertex.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]

    inspect = prefect_cli("deployment", "inspect", "train/vertex", env=env)
    assert inspect.returncode == 0 and f"'cron': '{DEFAULT_CRON}'" in inspect.stdout, inspect.stdout

    # Deploying again updates the same three deployments (what CI does on every merge).
    again = prefect_cli("deploy", "--all", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {name: d.id for name, d in finsent_deployments().items()} == {name: d.id for name, d in made.items()}


def _bad_settings(tmp_path) -> dict:
    good = json.loads(DEMO_CONFIG.read_text())
    return {
        "bad cron": ({"FINSENT_CONFIG": str(DEMO_CONFIG), "FINSENT_CRON": "0 3 * *"},
                     "finsent: error: FINSENT_CRON='0 3 * *' is not a valid cron expression"),
        "bad config": ({"FINSENT_CONFIG": str(write_config(tmp_path / "bad.json", good | {"region": "us-central9"}))},
                       "finsent: error: invalid finsent config: region 'us-central9' does not offer Vertex"),
        "unreadable file": ({"FINSENT_CONFIG": str(tmp_path / "missing.json")},
                     "finsent: error: FINSENT_CONFIG="),
        "no settings": ({}, "finsent: error: no settings: set FINSENT_CONFIG"),
    }


@pytest.mark.parametrize("case", ["bad cron", "bad config", "unreadable file", "no settings"])
def test_a_bad_setting_fails_deploy_with_one_line_and_creates_nothing(deploy_env, tmp_path, case):
    extra, message = _bad_settings(tmp_path)[case]
    deploy = prefect_cli("deploy", "--all", env=deploy_env | extra)
    lines = [line for line in deploy.stderr.splitlines() if line.strip()]
    assert deploy.returncode == 2, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith(message), deploy.stderr
    assert "Traceback" not in deploy.stdout + deploy.stderr
    assert finsent_deployments() == {}


async def _set_variables(values: dict) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import VariableCreate

    async with get_client() as client:
        for name, value in values.items():
            await client.create_variable(VariableCreate(name=name, value=value))


def test_settings_from_prefect_variables(deploy_env):
    """No FINSENT_CONFIG: the config and cron come from the Prefect variables finsent_config and finsent_cron."""
    cfg = json.loads(DEMO_CONFIG.read_text()) | {"bucket": "finsent-from-variable"}
    anyio.run(_set_variables, {"finsent_config": cfg, "finsent_cron": "30 4 * * 2"})
    deploy = prefect_cli("deploy", "--all", env=deploy_env)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    vertex = finsent_deployments()["train/vertex"]
    assert _cron(vertex) == ("30 4 * * 2", "UTC")
    assert vertex.parameters["config"]["bucket"] == "finsent-from-variable"


def test_serve_path_shows_the_weekly_schedule(deploy_env):
    """`python -m deployments.serve` (the laptop path): the same schedule in `prefect deployment inspect`."""
    env = deploy_env | {"FINSENT_CONFIG": str(DEMO_CONFIG), "PREFECT_RUNNER_POLL_FREQUENCY": "2"}
    serve = subprocess.Popen([sys.executable, "-m", "deployments.serve"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        vertex = wait_until(lambda: finsent_deployments().get("train/vertex"), 90, "serve's train/vertex", 0.5)
        inspect = prefect_cli("deployment", "inspect", "train/vertex", env=env)
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(30)
    assert _cron(vertex) == (DEFAULT_CRON, "UTC")
    assert inspect.returncode == 0 and f"'cron': '{DEFAULT_CRON}'" in inspect.stdout, inspect.stdout
