"""The Prefect face of the Vertex job runner (tasks/vertex.py): the training step and the cancel paths of a run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefect import get_client, get_run_logger, task
from prefect.exceptions import TerminationSignal
from prefect.futures import wait
from prefect.runtime import flow_run as current_flow_run

from tasks import vertex
from tasks.config import PipelineConfig, parse_config
from tasks.inputs import UploadedInputs
from tasks.layout import BucketLayout
from tasks.run_identity import run_labels

if TYPE_CHECKING:
    from tasks.sweep_jobs import TrialWindow


def train_models(
    cfg: PipelineConfig, layout: BucketLayout, uploads: UploadedInputs, *, run_key: str, env: dict[str, str],
    trials: TrialWindow | None = None,
) -> dict[str, vertex.JobOutcome]:
    """The flow's train step: one `train_model` task per model, concurrently; on SIGTERM the jobs are cancelled
    only if the run was cancelled. With a sweep, `trials` (tasks/sweep_jobs.py) runs the swept model's trial jobs
    alongside, topped up from this loop; that model has no single job, and its outcome comes from the trials.

    Waits in short slices: a blocking `future.result()` is not interrupted by SIGTERM, so a cancelled run would only
    notice when its jobs ended (and Prefect's runner runs on_cancellation hooks only after the process exits).
    """
    futures = {
        model: train_model.submit(
            cfg, model, package_uri=uploads.package_uri, data_uri=uploads.data_uri,
            output_uri=layout.run_output(run_key, model), run_key=run_key, env=env,
        )  # fmt: skip
        for model in cfg.models
        if trials is None or model != trials.model
    }
    try:
        while wait(list(futures.values()) + (trials.top_up() if trials else []), timeout=0.5).not_done or (
            trials and not trials.done
        ):  # fmt: skip
            pass
        return {model: future.result() for model, future in futures.items()}
    except TerminationSignal:
        cancel_if_run_cancelled(cfg, run_key)
        raise


@task(name="train-model", task_run_name="train-{model}")
def train_model(
    cfg: PipelineConfig,
    model: str,
    *,
    package_uri: str,
    data_uri: str,
    output_uri: str,
    run_key: str,
    env: dict[str, str],
    trial: str | None = None,
) -> vertex.JobOutcome:
    """One Vertex CustomJob for one model, watched to the end; `output_uri` is the model's folder in the layout
    (or a sweep `trial`'s, tasks/sweep_jobs.py). The job is labelled with this flow run's id, so the orphan reaper
    can tell whether anyone still watches it."""
    request = vertex.JobRequest(
        model, package_uri=package_uri, data_uri=data_uri, output_uri=output_uri, run_key=run_key, env=env,
        flow_run_id=current_flow_run.id, trial=trial,
    )  # fmt: skip
    return vertex.JobRunner(cfg, log=get_run_logger().info).run(request)


def cancel_run_jobs(cfg: PipelineConfig, run_key: str) -> list[str]:
    """Cancel every unfinished Vertex job of the run; returns their names."""
    return vertex.JobRunner(cfg).cancel(run_labels(run_key))


def cancel_vertex_jobs(flow, flow_run, state) -> None:
    """on_cancellation hook (Prefect calls hooks with the keywords flow, flow_run, state): the Vertex jobs of this
    run are cancelled too, not left burning GPU hours. A backstop for `cancel_if_run_cancelled`; idempotent."""
    params = flow_run.parameters
    cfg = parse_config(params["config"])
    cancelled = cancel_run_jobs(cfg, params.get("run_key") or str(flow_run.id))
    print(f"Cancelled Vertex jobs: {cancelled or 'none running'}")


def cancel_if_run_cancelled(cfg: PipelineConfig, run_key: str) -> None:
    """SIGTERM reached the flow process. Cancel the Vertex jobs only when the flow run is being cancelled: a worker
    shutting down or a crash must leave them running, so that a rerun with the same run_key reattaches."""
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(current_flow_run.id).state
    except Exception as exc:  # noqa: BLE001 - the on_cancellation hook is the backstop
        print(f"Could not read the flow run state ({type(exc).__name__}); leaving the Vertex jobs to the hook")
        return
    if state is not None and (state.is_cancelling() or state.is_cancelled()):
        cancelled = cancel_run_jobs(cfg, run_key)
        print(f"Flow run cancelled: cancelled Vertex jobs {cancelled or 'none running'}")
