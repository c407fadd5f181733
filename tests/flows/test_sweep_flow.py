"""A hyper-parameter sweep through the flow `train`: Prefect + fake-gcs-server + the Vertex emulator, each trial a
real (tiny) training job. The proof of issue 13's "Sweeps": 4 trials with parallel 2 are 4 jobs, never more than 2
RUNNING at once by the emulator's own state timestamps, a trials table of 4 rows, the winner by validation
macro-F1, and a forced rerun with the same run key creates no job."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import datetime

import pytest
from google.cloud import storage
from prefect import flow, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

from emulators.sample_data import KAGGLE_CSV, write_phrasebank_sample
from flows.train import train
from tasks import vertex
from tasks.config import PipelineConfig, parse_config
from tasks.image import PYTHON_MODULE_ENV
from tasks.inputs import UploadedInputs
from tasks.layout import BucketLayout
from tasks.run_identity import LABEL_RUN, LABEL_TRIAL, run_label, run_labels
from tasks.sweep_jobs import TrialWindow, limit_name
from tasks.training import train_models
from tests.emulators.emujob_sdist import build_sdist
from tests.emulators.emulator_testkit import read_gcs_text

pytestmark = pytest.mark.usefixtures("prefect_server")

RUNNING, ENDED = "JOB_STATE_RUNNING", {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory):
    """90 real PhraseBank sentences (30 per class): enough for a stratified split with every class in each part."""
    if not KAGGLE_CSV.exists():
        pytest.skip(f"{KAGGLE_CSV} is not there (the data set is read from ../shared, never committed)")
    return write_phrasebank_sample(tmp_path_factory.mktemp("sweep-data") / "sample.csv", per_class=30)


@pytest.fixture
def sweep_config(flow_config, small_csv):
    """The emulator config of tests/flows/conftest.py, BiLSTM only, as small as still trains; a 2 x 2 grid."""
    lstm = {"epochs": 1, "batch_size": 16, "max_seq_len": 16, "buckets": [16], "pretrained": None,
            "lstm_embeddings": "learned", "lstm_vocab_size": 100, "lstm_embedding_dim": 8, "lstm_units": 4}
    return flow_config | {
        # a project of its own: the sweep's concurrency limit is named by project, region and GPU
        "project": f"sweep-{uuid.uuid4().hex[:8]}",
        # a machine tasks/pricing.py has a sourced price for, so the trials table shows each trial's cost
        "machine_type": "n1-standard-4", "accelerator_type": None, "accelerator_count": 0,
        "models": ["lstm"],
        "params": {"lstm": lstm},
        "data": {"uri": str(small_csv)},
        "sweep": {"model": "lstm", "grid": {"learning_rate": [0.003, 0.03], "dropout": [0.0, 0.5]}, "parallel": 2},
    }


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def most_running_at_once(jobs: list[dict]) -> int:
    """The most jobs RUNNING at one instant, from each job's state history (first RUNNING to its end)."""
    events = []
    for job in jobs:
        history = job["emulator"]["stateHistory"]
        start = next(_time(h["time"]) for h in history if h["state"] == RUNNING)
        end = next(_time(h["time"]) for h in history if h["state"] in ENDED)
        events += [(start, 1), (end, -1)]
    running = most = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        running += step
        most = max(most, running)
    return most


def _trials_table(flow_run_id) -> list[dict]:
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=["finsent-trials-lstm"])))
    return artifact.data if isinstance(artifact.data, list) else json.loads(artifact.data)


def _creates(admin) -> int:
    return sum(1 for r in admin.requests() if r["method"] == "create")


def test_a_four_trial_sweep_runs_two_at_a_time_and_reports_the_validation_winner(sweep_config, vertex_admin,
                                                                                 gcs_bucket):
    cfg = parse_config(sweep_config)
    run_key = f"sweep-{uuid.uuid4().hex[:8]}"
    state = train(config=cfg, run_key=run_key, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()

    jobs = [job for job in vertex_admin.jobs() if job.get("labels", {}).get(LABEL_RUN) == run_label(run_key)]
    trial_ids = [t.trial_id for t in cfg.sweep_trials()]
    assert _creates(vertex_admin) == 4 and len(jobs) == 4, "one Vertex job per trial, no single lstm job"
    assert sorted(job["labels"][LABEL_TRIAL] for job in jobs) == sorted(trial_ids)
    assert all(job["state"] == "JOB_STATE_SUCCEEDED" for job in jobs)
    assert len({job["jobSpec"]["baseOutputDirectory"]["outputUriPrefix"] for job in jobs}) == 4, "own folders"
    # parallel 2: two trials did run together, and never a third (the emulator itself has no limit here)
    assert most_running_at_once(jobs) == 2
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(limit_name(cfg)).limit == 2, "created with parallel"

    # the winner: best validation macro-F1 of the trials' own metrics.json (ties: the first trial)
    layout = BucketLayout.of(cfg)
    metrics = {tid: json.loads(read_gcs_text(layout.metrics(layout.trial_output(run_key, "lstm", tid))))
               for tid in trial_ids}  # fmt: skip
    winner = max(trial_ids, key=lambda tid: (metrics[tid]["validation"]["macro_f1"], -trial_ids.index(tid)))
    table = _trials_table(state.state_details.flow_run_id)
    assert [row["trial"] for row in table] == trial_ids
    assert [row["trial"] for row in table if row["winner"]] == [winner]
    for row in table:
        assert row["validation_macro_f1"] == pytest.approx(metrics[row["trial"]]["validation"]["macro_f1"], abs=1e-4)
        assert row["test_macro_f1"] == pytest.approx(metrics[row["trial"]]["test"]["macro_f1"], abs=1e-4)
        assert row["epochs"] == 1 and row["seconds"] > 0 and row["state"] == "SUCCEEDED"
        # cost: the trial's RUNNING time by the emulator's timestamps x the list price
        (job,) = (job for job in jobs if job["labels"][LABEL_TRIAL] == row["trial"])
        ran = (_time(job["endTime"]) - _time(job["startTime"])).total_seconds()
        assert row["cost_usd"] == pytest.approx(cfg.hourly_usd() * ran / 3600, rel=0.05, abs=1e-6)
    # only the winner's test figures are the model's result, and they feed the champion rule
    (row,) = result["metrics"]
    assert row["model"] == "lstm"
    assert row["test_macro_f1"] == pytest.approx(metrics[winner]["test"]["macro_f1"], abs=1e-4)
    assert row["validation_macro_f1"] == pytest.approx(metrics[winner]["validation"]["macro_f1"], abs=1e-4)
    # ... while the model's cost is the whole sweep's: every trial was paid for to pick the winner
    sweep_usd = sum(r["cost_usd"] for r in table)
    assert row["cost_usd"] == pytest.approx(sweep_usd, rel=1e-3) and result["cost"]["total_usd"] == pytest.approx(
        sweep_usd, rel=1e-3)

    # The same run key again, forced past the unchanged-inputs skip: every trial reattaches, no job is created.
    vertex_admin.clear_requests()
    again = train(config=cfg, run_key=run_key, force=True, return_state=True)
    assert again.is_completed(), again.message
    assert _creates(vertex_admin) == 0
    assert again.result()["metrics"] == result["metrics"]
    assert [r["trial"] for r in _trials_table(again.state_details.flow_run_id) if r["winner"]] == [winner]


@flow(name="sweep-trials-only")
def trials_only(cfg: PipelineConfig, package_uri: str, run_key: str) -> dict:
    """The flow's train step alone (tasks/training.py with the run's TrialWindow), on jobs of the emujob `write`
    module: each job succeeds within seconds, no training."""
    uploads = UploadedInputs(data_uri="gs://unused/data", package_uri=package_uri, data_bytes_uploaded=0,
                             package_bytes_uploaded=0)  # fmt: skip
    layout = BucketLayout.of(cfg)
    env = {PYTHON_MODULE_ENV: "emujob.write"}
    trials = TrialWindow(cfg, layout, uploads, run_key=run_key, env=env)
    assert train_models(cfg, layout, uploads, run_key=run_key, env=env, trials=trials) == {}, "no single lstm job"
    return trials.results()


def test_an_admin_limit_below_parallel_caps_two_flow_runs_together(vertex_emulator, vertex_admin, gcs_bucket):
    blob = storage.Client(project="t").bucket(gcs_bucket).blob("packages/emujob-0.1.0.tar.gz")
    blob.upload_from_string(build_sdist(), content_type="application/gzip")
    cfg = parse_config({
        "project": f"sweep-{uuid.uuid4().hex[:8]}", "bucket": gcs_bucket, "vertex_endpoint": vertex_emulator.endpoint,
        "anonymous_credentials": True, "models": ["lstm"], "poll": {"initial_seconds": 0.2, "max_seconds": 1.0},
        "sweep": {"model": "lstm", "grid": {"dropout": [0.1, 0.2]}, "parallel": 2},
    })  # fmt: skip
    # an admin sized the shared limit to a quota of one GPU: finsent keeps it, and both runs' trials queue on it
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit_name(cfg), limit=1))
    run_keys = [f"gcl-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    results: dict[str, dict] = {}
    threads = [threading.Thread(target=lambda k=k: results.update({k: trials_only(cfg, f"gs://{gcs_bucket}/{blob.name}",
                                                                               k)})) for k in run_keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=240)
    assert set(results) == set(run_keys)
    assert all(isinstance(outcome, vertex.JobOutcome) for result in results.values() for outcome in result.values())
    jobs = [job for job in vertex_admin.jobs() if job.get("labels", {}).get(LABEL_RUN) in {run_label(k) for k in run_keys}]
    assert len(jobs) == 4 and all(job["state"] == "JOB_STATE_SUCCEEDED" for job in jobs)
    assert most_running_at_once(jobs) == 1, "the shared limit of 1 slot, not each run's parallel 2"
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name(limit_name(cfg)).limit == 1, "never resized"


def test_a_models_single_job_never_reattaches_to_a_trial_of_it(vertex_emulator, vertex_admin):
    """Vertex's list filter matches jobs carrying *at least* the given labels: a trial's job carries the single
    job's identity labels too, so submit must compare the whole identity (a changed config, same run key)."""
    cfg = parse_config({"project": f"sweep-{uuid.uuid4().hex[:8]}", "bucket": "unused-bucket",
                        "vertex_endpoint": vertex_emulator.endpoint, "anonymous_credentials": True})  # fmt: skip
    runner = vertex.JobRunner(cfg, log=lambda line: None)
    run_key = f"reattach-{uuid.uuid4().hex[:8]}"
    try:
        def job(trial: str | None) -> dict:
            request = vertex.JobRequest("lstm", package_uri="gs://unused-bucket/p.tar.gz", data_uri="gs://u/d",
                                        output_uri="gs://unused-bucket/o", run_key=run_key, trial=trial)
            return vertex.build_custom_job(cfg, request)

        trial = runner.submit(job("t0-abcdef"))
        single = runner.submit(job(None))
        assert single.name != trial.name and _creates(vertex_admin) == 2
        assert runner.submit(job("t0-abcdef")).name == trial.name and runner.submit(job(None)).name == single.name
        assert _creates(vertex_admin) == 2, "each reattaches to its own job"
    finally:
        runner.cancel(run_labels(run_key))
