"""Watching a running job from the flow run (issue 12): the progress artifact, the trainer's own log lines and one
line per epoch in the flow-run logs, the per-epoch table and curves, and the cost in the results; a job whose
replica is killed and restarted keeps one progress record going forward. Real Prefect server, fake-gcs-server and
the Vertex emulator running real tiny trainings."""

from __future__ import annotations

import json
import threading
import time

import pytest
from google.cloud import storage
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey, FlowRunFilter, FlowRunFilterState,
    FlowRunFilterStateType, LogFilter, LogFilterFlowRunId,
)
from prefect.client.schemas.objects import StateType
from prefect.logging.handlers import APILogHandler

from flows.train import train
from tasks.config import parse_config
from tasks.layout import BucketLayout
from tasks.run_identity import LABEL_RUN, run_label
from trainer.storage import parse_gs_uri

pytestmark = pytest.mark.usefixtures("prefect_server")

# tasks/cloud_logging.py job_log_printer: "[model] task_name: text"; Keras prints "Epoch k/N" at each epoch's start
# with fit(verbose=2) (tests/reliability/test_job_log_lines.py cites the Keras source).
TRAINER_LINE = "[lstm] workerpool0-0: Epoch {k}/{n}"


def _lstm_only(flow_config: dict, epochs: int, **overrides) -> dict:
    """The flow config for the BiLSTM alone on n1-standard-4 without a GPU, STANDARD: a job tasks/pricing.py prices."""
    lstm = dict(flow_config["params"]["lstm"], epochs=epochs, patience=100)
    return flow_config | {"models": ["lstm"], "params": {"lstm": lstm}, "machine_type": "n1-standard-4",
                          "accelerator_type": None, "accelerator_count": 0,
                          "scheduling_strategy": "STANDARD"} | overrides


def _artifacts(flow_run_id) -> dict:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in found}


def _logs(flow_run_id, wanted: str) -> list[str]:
    """The flow run's log messages; they reach the server in batches, so flush and wait for `wanted`."""
    messages: list[str] = []
    for _ in range(40):
        APILogHandler().flush()
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        messages = [log.message for log in logs]
        if any(wanted in m for m in messages):
            break
        time.sleep(0.25)
    return messages


def _blob(uri: str) -> storage.Blob:
    bucket, name = parse_gs_uri(uri)
    return storage.Client(project="t").bucket(bucket).blob(name)


def _table(artifact) -> list[dict]:
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


def test_the_flow_run_shows_progress_trainer_lines_epochs_curves_and_cost(flow_config):
    cfg = parse_config(_lstm_only(flow_config, epochs=2))
    state = train(config=cfg, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    flow_run_id = state.state_details.flow_run_id

    artifacts = _artifacts(flow_run_id)
    progress = artifacts["finsent-progress-lstm"]
    assert progress.type == "progress" and float(progress.data) == 100.0
    assert "**lstm**: trained 2/2 epochs" in progress.description

    messages = _logs(flow_run_id, "[lstm] epoch 2/2:")
    assert TRAINER_LINE.format(k=2, n=2) in messages, "the trainer's own line, tagged with the model"
    epoch_lines = [m for m in messages if m.startswith("[lstm] epoch ")]
    assert [m.split(":")[0] for m in epoch_lines] == ["[lstm] epoch 1/2", "[lstm] epoch 2/2"], "once each, in order"
    assert " val acc " in epoch_lines[-1] and " macro-F1 " in epoch_lines[-1]

    epochs = _table(artifacts["finsent-epochs-lstm"])
    assert [row["epoch"] for row in epochs] == [1, 2]
    assert set(epochs[0]) == {"epoch", "train_loss", "val_accuracy", "val_macro_f1", "seconds"}
    metrics_row = _table(artifacts["finsent-metrics"])[0]
    cost = result["cost"]["per_model"]["lstm"]
    assert metrics_row["cost_usd"] == cost["usd"] and cost["usd"] > 0, "priced: n1-standard-4 STANDARD"
    assert cost["running_seconds"] > 0 and result["cost"]["total_usd"] == cost["usd"]
    summary = artifacts["finsent-summary"].data
    assert f"${cost['usd']:.4f}" in summary and "**total**: $" in summary
    curves = artifacts["finsent-curves-lstm"].data
    assert "data:image/svg+xml;base64," in curves and "| val macro-F1 |" in curves
    output_uri = BucketLayout.of(cfg).run_output(str(flow_run_id), "lstm")
    assert _blob(BucketLayout.curves(output_uri)).download_as_bytes().startswith(b"<svg")
    record = json.loads(_blob(BucketLayout.progress(output_uri)).download_as_bytes())
    assert record["finished"] and [e["epoch"] for e in record["history"]] == [1, 2]


class Sampler:
    """While the flow runs: what the job's progress record (GCS) and the flow run's progress artifact (Prefect API)
    say, sampled every 0.1 s; and the replica kill once the first epoch's checkpoint is committed."""

    def __init__(self, admin, output_uri: str):
        self.admin, self.output_uri = admin, output_uri
        self.record_percents: list[float] = []
        self.artifact_percents: list[float] = []
        self.injected = False
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            checkpoint = _blob(f"{self.output_uri}/checkpoints/state.json")
            flow_run_id = None
            with get_client(sync_client=True) as client:
                while not self.stop.is_set():
                    if not self.injected and checkpoint.exists():
                        # a replica restart (Vertex restarts the job with restart_job_on_worker_restart)
                        self.admin.set_faults(preempt={"after_seconds": 0, "times": 1})
                        self.injected = True
                    record = _blob(BucketLayout.progress(self.output_uri))  # a new Blob: one that has read an
                    if record.exists():  # object asks for that generation again (google-cloud-storage _get_download_url)
                        self.record_percents.append(json.loads(record.download_as_bytes())["percent"])
                    if flow_run_id is None:
                        running = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                            type=FlowRunFilterStateType(any_=[StateType.RUNNING]))))
                        flow_run_id = running[0].id if len(running) == 1 else None
                    else:
                        found = client.read_artifacts(artifact_filter=ArtifactFilter(
                            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                            key=ArtifactFilterKey(any_=["finsent-progress-lstm"])))
                        self.artifact_percents += [float(a.data) for a in found]
                    time.sleep(0.1)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def test_a_restarted_job_keeps_one_progress_record_going_forward(flow_config, vertex_admin):
    run_key = f"watch-resume-{time.time_ns()}"
    cfg = parse_config(_lstm_only(flow_config, epochs=3, restart_job_on_worker_restart=True))
    output_uri = BucketLayout.of(cfg).run_output(run_key, "lstm")
    sampler = Sampler(vertex_admin, output_uri)
    sampler.thread.start()
    try:
        state = train(config=cfg, run_key=run_key, return_state=True)
    finally:
        sampler.stop.set()
        sampler.thread.join(10)
    assert sampler.error is None, sampler.error
    assert state.is_completed(), state.message
    (job,) = [j for j in vertex_admin.jobs() if j.get("labels", {}).get(LABEL_RUN) == run_label(run_key)]
    assert sampler.injected and job["emulator"]["preemptions"] == 1, "the replica was killed once and restarted"

    record = json.loads(_blob(BucketLayout.progress(output_uri)).download_as_bytes())
    assert record["resumed_from_epoch"] >= 1 and [e["epoch"] for e in record["history"]] == [1, 2, 3]
    seen = sampler.record_percents
    assert seen and seen == sorted(seen) and seen[-1] == 100.0, f"the record went backwards: {seen}"
    shown = sampler.artifact_percents
    assert shown and shown == sorted(shown), f"the artifact went backwards (or was never seen): {shown}"
    assert float(_artifacts(state.state_details.flow_run_id)["finsent-progress-lstm"].data) == 100.0
    epoch_lines = [m.split(":")[0] for m in _logs(state.state_details.flow_run_id, "[lstm] epoch 3/3:")
                   if m.startswith("[lstm] epoch ")]
    assert epoch_lines == ["[lstm] epoch 1/3", "[lstm] epoch 2/3", "[lstm] epoch 3/3"], "each epoch once"
