"""`prefect deploy` from the repo's prefect.yaml against the session's real Prefect server (tests/conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from emulators.sample_data import KAGGLE_CSV, write_phrasebank_sample
from tests.reliability.conftest import subprocess_env

ROOT = Path(__file__).resolve().parents[2]
PREFECT = Path(sys.executable).parent / "prefect"
POOL = "finsent"  # prefect.yaml's definitions.work_pool
DEPLOYMENTS = ("train/vertex", "train/emulators", "reap/hourly")
VARIABLES = ("finsent_config", "finsent_cron")


def prefect_cli(*args: str, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(PREFECT), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


async def _read_deployments() -> dict:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    found = {}
    async with get_client() as client:
        for name in DEPLOYMENTS:
            try:
                found[name] = await client.read_deployment_by_name(name)
            except ObjectNotFound:
                pass
    return found


def finsent_deployments() -> dict:
    """name -> DeploymentResponse of those of DEPLOYMENTS the server has."""
    return anyio.run(_read_deployments)


async def _reset_server() -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    async with get_client() as client:
        for deployment in (await _read_deployments()).values():
            await client.delete_deployment(deployment.id)
        for name in VARIABLES:
            if await client.read_variable_by_name(name):
                await client.delete_variable_by_name(name)
        try:
            await client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        except ObjectAlreadyExists:
            pass


@pytest.fixture
def deploy_env(prefect_server, tmp_path):
    """Environment of a `prefect deploy` on CI: the session server, no prompts, no FINSENT_* of the caller; the
    server holds none of finsent's deployments or variables and has the `finsent` process pool."""
    anyio.run(_reset_server)
    env = {k: v for k, v in subprocess_env(prefect_server).items() if not k.startswith("FINSENT_")}
    # No prompts: PREFECT_CLI_PROMPT=false (prefect/settings/models/cli.py; unset, the CLI prompts only on a TTY:
    # prefect/cli/_app.py passes it to rich's Console as force_interactive). CI=true as a CI runner sets it.
    env |= {"CI": "true", "PREFECT_CLI_PROMPT": "false", "COLUMNS": "200"}
    yield env
    anyio.run(_reset_server)


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="session")
def small_csv(tmp_path_factory) -> Path:
    """150 real Financial PhraseBank sentences (50 per class), as tests/reliability uses."""
    if not KAGGLE_CSV.exists():
        pytest.skip(f"{KAGGLE_CSV} is not there (the data set is read from ../shared, never committed)")
    return write_phrasebank_sample(tmp_path_factory.mktemp("deploy-data") / "small.csv", per_class=50)


def without(env: dict, *names: str) -> dict:
    return {k: v for k, v in env.items() if k not in names}
