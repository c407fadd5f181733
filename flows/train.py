"""Flow `train`: fetch -> package -> upload -> submit -> poll -> report.

Only puts tasks in order. Everything that can fail on bad settings or bad data fails before the first upload; the
two model jobs run concurrently; a cancelled flow run cancels its Vertex jobs (see `cancel_vertex_jobs`).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import TerminationSignal
from prefect.futures import wait
from prefect.runtime import flow_run

from tasks import gcs, vertex
from tasks.config import PipelineConfig, parse_config, tf_version_of_image
from tasks.dataset import fetch_dataset
from tasks.packaging import package_trainer
from tasks.report import report_results

TRAINER_DIR = Path(__file__).resolve().parent.parent / "trainer"


def inputs_key(cfg: PipelineConfig, data_fingerprint: str, trainer_sha256: str) -> str:
    """What decides a model: the data, the trainer code and the training settings. Same key, same model."""
    training = {
        "models": list(cfg.models),
        "params": {m: cfg.params[m].model_dump() for m in cfg.models},
        "machine": [cfg.machine_type, cfg.accelerator_type, cfg.accelerator_count, cfg.executor_image_uri],
    }
    blob = json.dumps([data_fingerprint, trainer_sha256, training], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _wandb_env(cfg: PipelineConfig) -> dict[str, str]:
    """The wandb key for the job. With a Secret Manager reference the key never enters the job spec; the env-var
    fallback (a Prefect Secret block) is visible to anyone who can read the CustomJob (docs/reliability.md)."""
    if cfg.wandb.secret_manager_ref or not cfg.wandb.api_key_secret_block:
        return {}
    from prefect.blocks.system import Secret

    return {"WANDB_API_KEY": Secret.load(cfg.wandb.api_key_secret_block).get()}


@task(name="train-model", task_run_name="train-{model}")
def train_model(
    cfg: PipelineConfig, model: str, *, package_uri: str, data_uri: str, run_key: str, env: dict[str, str]
) -> vertex.JobOutcome:
    """One Vertex CustomJob for one model, watched to the end."""
    logger = get_run_logger()
    output_uri = f"{cfg.base_uri}/runs/{vertex.label_value(run_key)}/{model}"
    return vertex.run_training_job(
        cfg, model, package_uri=package_uri, data_uri=data_uri, output_uri=output_uri, run_key=run_key,
        env=env, log=logger.info,
    )  # fmt: skip


def _cancel_run_jobs(cfg: PipelineConfig, run_key: str) -> list[str]:
    client = vertex.job_client(cfg)
    return vertex.cancel_jobs(client, vertex.parent_of(cfg), {vertex.LABEL_RUN: vertex.label_value(run_key)})


def cancel_vertex_jobs(flow, flow_run, state) -> None:
    """on_cancellation hook (Prefect calls hooks with the keywords flow, flow_run, state): the Vertex jobs of this
    run are cancelled too, not left burning GPU hours. A backstop for `_cancel_if_run_cancelled`; idempotent."""
    params = flow_run.parameters
    cfg = parse_config(params["config"])
    cancelled = _cancel_run_jobs(cfg, params.get("run_key") or str(flow_run.id))
    print(f"Cancelled Vertex jobs: {cancelled or 'none running'}")


def _cancel_if_run_cancelled(cfg: PipelineConfig, run_key: str) -> None:
    """SIGTERM reached the flow process. Cancel the Vertex jobs only when the flow run is being cancelled: a worker
    shutting down or a crash must leave them running, so that a rerun with the same run_key reattaches."""
    from prefect import get_client

    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run.id).state
    except Exception as exc:  # noqa: BLE001 - the on_cancellation hook is the backstop
        print(f"Could not read the flow run state ({type(exc).__name__}); leaving the Vertex jobs to the hook")
        return
    if state is not None and (state.is_cancelling() or state.is_cancelled()):
        cancelled = _cancel_run_jobs(cfg, run_key)
        print(f"Flow run cancelled: cancelled Vertex jobs {cancelled or 'none running'}")


def _results(futures: dict) -> dict:
    """Wait in short slices: a blocking `future.result()` is not interrupted by SIGTERM, so a cancelled run would
    only notice when its jobs ended (and Prefect's runner runs on_cancellation hooks only after the process exits)."""
    pending = list(futures.values())
    while wait(pending, timeout=0.5).not_done:
        pass
    return {model: future.result() for model, future in futures.items()}


@flow(name="train", log_prints=True, on_cancellation=[cancel_vertex_jobs])
def train(config: PipelineConfig, force: bool = False, run_key: str | None = None) -> dict:
    """Train the configured models on Vertex AI and report them.

    Args:
        config: every setting (see tasks/config.py); validated before anything is uploaded.
        force: train even when data, trainer and settings are the same as a finished run's.
        run_key: identity of this training run; the flow run id by default. Running again with the same key
            reattaches to its Vertex jobs instead of launching new ones.
    """
    logger = get_run_logger()
    cfg = parse_config(config)
    run_key = run_key or str(flow_run.id)

    # Pre-flight: credentials and bucket, before any download, build or upload.
    storage = gcs.storage_client(cfg)
    gcs.check_bucket(storage, cfg.bucket, region=cfg.region)
    env = _wandb_env(cfg)

    work_dir = Path(tempfile.mkdtemp(prefix="finsent-"))
    prepared = fetch_dataset(cfg.data, work_dir, pipeline=cfg)
    package = package_trainer(TRAINER_DIR, work_dir, tf_version=tf_version_of_image(cfg.executor_image_uri))
    key = inputs_key(cfg, prepared.fingerprint, package.sha256)
    marker_uri = f"{cfg.base_uri}/trained/{key}.json"
    finished = gcs.read_json(storage, marker_uri)
    if finished and not force:
        message = (
            f"Skipped: data {prepared.fingerprint[:12]}, trainer {package.sha256[:12]} and settings are unchanged "
            f"since run {finished['run_key']} (pass force=true to train anyway)."
        )
        logger.info(message)
        create_markdown_artifact(key="finsent-summary", markdown=f"## finsent\n\n{message}")
        return {"skipped": True, "inputs_key": key, "previous": finished}

    uploads = gcs.upload_inputs(cfg, prepared, package)

    futures = {
        model: train_model.submit(
            cfg, model, package_uri=uploads.package_uri, data_uri=uploads.data_uri, run_key=run_key, env=env
        )
        for model in cfg.models
    }
    try:
        outcomes = _results(futures)
    except TerminationSignal:
        _cancel_if_run_cancelled(cfg, run_key)
        raise
    summary = report_results(
        cfg, outcomes, inputs_key=key, data_fingerprint=prepared.fingerprint, trainer_sha256=package.sha256,
        run_key=run_key,
    )  # fmt: skip
    gcs.write_json(storage, marker_uri, {"run_key": run_key, "metrics": summary["metrics"]})
    return {"skipped": False, "inputs_key": key, "bytes_uploaded": uploads.bytes_uploaded, **summary}
