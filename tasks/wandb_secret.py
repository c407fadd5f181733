"""The wandb API key for the training jobs: the one place a secret value is read on the flow side.

With a Secret Manager reference the trainer reads the key itself and it never enters the job spec (nothing to do
here). The fallback, a Prefect Secret block, puts the key in the job's environment, visible to anyone who can read
the CustomJob (docs/reliability.md).
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.config import PipelineConfig


@task(name="wandb-secret", cache_policy=NO_CACHE, persist_result=False)
def wandb_env(cfg: PipelineConfig) -> dict[str, str]:
    """Environment variables for the job: {"WANDB_API_KEY": ...} from the Secret block, or {} (never persisted)."""
    if cfg.wandb.secret_manager_ref or not cfg.wandb.api_key_secret_block:
        return {}
    from prefect.blocks.system import Secret

    return {"WANDB_API_KEY": Secret.load(cfg.wandb.api_key_secret_block).get()}
