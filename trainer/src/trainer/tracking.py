"""wandb tracking that can never fail a training run.

The key comes only from the environment: WANDB_API_KEY, or a Secret Manager version named in
WANDB_API_KEY_SECRET (projects/P/secrets/S/versions/V). Without a key, wandb runs offline. Every wandb call
is wrapped: errors are logged (never the key) and ignored. `wandb.integration.keras` is not used: it imports
TensorFlow.
"""

from __future__ import annotations

import logging
import os
from typing import List, Optional

from trainer.errors import describe

log = logging.getLogger(__name__)


def _key_from_secret_manager(name: str) -> Optional[str]:
    try:
        from google.cloud import secretmanager  # optional dependency, present on Vertex images only if installed

        client = secretmanager.SecretManagerServiceClient()
        return client.access_secret_version(name=name).payload.data.decode("utf-8").strip()
    except Exception as exc:
        log.warning("wandb: could not read WANDB_API_KEY_SECRET (%s); running offline", type(exc).__name__)
        return None


class Tracker:
    """Thin wrapper around a wandb run; every method is a no-op after a failure."""

    def __init__(self, project: Optional[str], run_name: Optional[str], tags: List[str], config: dict,
                 work_dir: str):
        self._run = None
        if not project or os.environ.get("WANDB_MODE") == "disabled":
            log.info("wandb disabled")
            return
        try:
            if not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_API_KEY_SECRET"):
                key = _key_from_secret_manager(os.environ["WANDB_API_KEY_SECRET"])
                if key:
                    os.environ["WANDB_API_KEY"] = key
            if not os.environ.get("WANDB_API_KEY"):
                os.environ["WANDB_MODE"] = "offline"
            import wandb

            os.makedirs(work_dir, exist_ok=True)
            self._wandb = wandb
            self._run = wandb.init(project=project, name=run_name, tags=tags or None, config=config,
                                   dir=work_dir, settings=wandb.Settings(init_timeout=60, console="off"))
            log.info("wandb run %s (%s)", getattr(self._run, "id", "?"), os.environ.get("WANDB_MODE", "online"))
        except Exception as exc:
            log.warning("wandb init failed, continuing without tracking: %s", describe(exc))
            self._run = None

    @property
    def active(self) -> bool:
        return self._run is not None

    def log(self, data: dict, step: Optional[int] = None) -> None:
        if self._run is None:
            return
        try:
            self._run.log(data, step=step)
        except Exception as exc:
            log.warning("wandb log failed (ignored): %s", type(exc).__name__)

    def summary(self, data: dict) -> None:
        if self._run is None:
            return
        try:
            for k, v in data.items():
                self._run.summary[k] = v
        except Exception as exc:
            log.warning("wandb summary failed (ignored): %s", type(exc).__name__)

    def finish(self) -> None:
        if self._run is None:
            return
        try:
            self._run.finish()
        except Exception as exc:
            log.warning("wandb finish failed (ignored): %s", type(exc).__name__)
        self._run = None
