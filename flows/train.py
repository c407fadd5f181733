"""Flow `train`: fetch -> package -> upload -> train -> report.

Only puts tasks in order. Everything that can fail on bad settings or bad data fails before the first upload; the
model jobs run concurrently; a cancelled flow run cancels its Vertex jobs (tasks/training.py). A sweep's trials run
alongside as their own jobs and the winner stands for its model (tasks/sweep_jobs.py). One storage client serves the
whole run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from tasks import gcs
from tasks.config import PipelineConfig, parse_config
from tasks.dataset import fetch_dataset
from tasks.inputs import find_trained, inputs_key, mark_trained, upload_inputs
from tasks.layout import BucketLayout
from tasks.packaging import package_trainer
from tasks.report import report_results, report_skipped
from tasks.sweep_jobs import TrialWindow, report_trials
from tasks.training import cancel_vertex_jobs, train_models
from tasks.wandb_secret import wandb_env

TRAINER_DIR = Path(__file__).resolve().parent.parent / "trainer"


@flow(name="train", log_prints=True, on_cancellation=[cancel_vertex_jobs])
def train(config: PipelineConfig, force: bool = False, run_key: str | None = None) -> dict:
    """Train the configured models on Vertex AI and report them.

    Args:
        config: every setting (see tasks/config.py); validated before anything is uploaded.
        force: train even when data, trainer and settings are the same as a finished run's.
        run_key: identity of this training run; the flow run id by default. Running again with the same key
            reattaches to its Vertex jobs instead of launching new ones.
    """
    cfg = parse_config(config)
    run_key = run_key or str(flow_run.id)
    layout = BucketLayout.of(cfg)

    # Pre-flight: credentials, bucket and secrets, before any download, build or upload.
    storage = gcs.storage_client(cfg)
    gcs.check_bucket(storage, cfg.bucket, region=cfg.region)
    env = wandb_env(cfg)

    work_dir = Path(tempfile.mkdtemp(prefix="finsent-"))
    prepared = fetch_dataset(cfg.data, work_dir, storage)
    package = package_trainer(TRAINER_DIR, work_dir)
    key = inputs_key(cfg, prepared.fingerprint, package.sha256)
    previous = None if force else find_trained(storage, layout, key)
    if previous:
        report_skipped(previous, data_fingerprint=prepared.fingerprint, trainer_sha256=package.sha256)
        return {"skipped": True, "inputs_key": key, "previous": previous}

    uploads = upload_inputs(storage, layout, prepared, package)
    trials = TrialWindow.of(cfg, layout, uploads, run_key=run_key, env=env)  # None without a sweep
    outcomes = train_models(cfg, layout, uploads, run_key=run_key, env=env, trials=trials)
    if trials:
        outcomes[trials.model] = report_trials(cfg, storage, layout, trials.results())
    summary = report_results(
        cfg, storage, layout, outcomes, inputs_key=key, data_fingerprint=prepared.fingerprint,
        trainer_sha256=package.sha256, run_key=run_key,
    )  # fmt: skip
    mark_trained(storage, layout, key, run_key=run_key, metrics=summary["metrics"])
    return {"skipped": False, "inputs_key": key, "bytes_uploaded": uploads.bytes_uploaded, **summary}

