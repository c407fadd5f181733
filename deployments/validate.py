"""prefect.yaml's build step: every deployment setting, read and validated before `prefect deploy` creates anything.

prefect.yaml runs `deployments.validate.check` (step id `finsent`) first and templates its outputs into the
deployments (`{{ finsent.config }}`, `{{ finsent.cron }}`, ...), so the YAML holds no setting of its own: the
config and crons come from deployments/serve.py (`config_from_env`, `validate_cron`, DEFAULT_CRON, REAP_CRON), the
code `serve` uses, and the two paths cannot drift.

Where the settings come from: FINSENT_CONFIG (a JSON file of PipelineConfig fields, or several joined by ':', each
merged over the ones before it: serve.py `read_config_files`) or else the Prefect variable
`finsent_config` (the same JSON object), then the FINSENT_* overrides of serve.py; the cron from FINSENT_CRON, else
the Prefect variable `finsent_cron`, else DEFAULT_CRON.

Why a refusal is a SystemExit: Prefect wraps any exception of a step in StepExecutionError and the CLI prints it
with a traceback ("An exception occurred.": prefect/deployments/steps/core.py `run_steps` catches `Exception`,
prefect/cli/_utilities.py `with_cli_exception_handling` re-raises only SystemExit). A SystemExit passes both, so
`prefect deploy` stops before its first deployment is applied, with our one line and exit status 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from deployments.serve import DEFAULT_CRON, REAP_CRON, config_from_env, emulator_config, validate_cron
from tasks.errors import ConfigError

CONFIG_VARIABLE = "finsent_config"
CRON_VARIABLE = "finsent_cron"
REPO = Path(__file__).resolve().parent.parent
# train/emulators when the settings name no emulator: the ports to start them on by hand,
# `python -m emulators.vertex --port 8470` and `python -m emulators.gcs --port 4443`.
EMULATOR_VERTEX_ENDPOINT = "http://127.0.0.1:8470"
EMULATOR_GCS_ENDPOINT = "http://127.0.0.1:4443"


class DeployRefused(SystemExit):
    """A bad setting: ends `prefect deploy` with status 2 after one `finsent: error: ...` line (see above)."""


def _prefect_variable(name: str):
    from prefect.variables import Variable

    return Variable.get(name)


def deployment_settings(env: Mapping[str, str] = os.environ, variable=_prefect_variable) -> dict:
    """The values prefect.yaml templates in; raises ConfigError with one line."""
    raw = None
    if not env.get("FINSENT_CONFIG"):
        raw = variable(CONFIG_VARIABLE)
        if raw is None:
            raise ConfigError(f"no settings: set FINSENT_CONFIG to a JSON file of PipelineConfig fields, or the "
                              f"Prefect variable {CONFIG_VARIABLE} to that JSON object")
        if not isinstance(raw, dict):
            raise ConfigError(f"Prefect variable {CONFIG_VARIABLE} must hold a JSON object, not {type(raw).__name__}")
    cfg = config_from_env(env, raw=raw)
    cron = validate_cron(env.get("FINSENT_CRON") or variable(CRON_VARIABLE) or DEFAULT_CRON)
    emulator = emulator_config(cfg, EMULATOR_VERTEX_ENDPOINT)
    return {
        "config": cfg.model_dump(mode="json"),
        "cron": cron,
        "reap_cron": validate_cron(REAP_CRON),
        "emulator_config": emulator.model_dump(mode="json"),
        "storage_emulator_host": env.get("STORAGE_EMULATOR_HOST") or EMULATOR_GCS_ENDPOINT,
        # Where a worker finds the code: this checkout for a process worker; the image's copy on Cloud Run/Vertex.
        "code_dir": env.get("FINSENT_CODE_DIR") or str(REPO),
    }


def check() -> dict:
    """The build step: deployment_settings, or one line on stderr and DeployRefused."""
    try:
        return deployment_settings()
    except ConfigError as exc:
        print(f"finsent: error: {exc}", file=sys.stderr, flush=True)
        raise DeployRefused(2) from None
