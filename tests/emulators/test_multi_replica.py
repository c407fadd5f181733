"""Several machines: a `replica_count: 2` job, built by tasks/vertex.py and run by the Vertex emulator as two real
trainer processes on loopback (CLUSTER_SPEC as Vertex gives it), trains one model together.

Proved here: the two processes exchange gradients (the chief's model equals a single-process run with the same
global batch), both step through every epoch, only the chief writes (one metrics.json, an epoch log by the chief's
pid only), and a killed worker fails the job. The per-device proof (virtual CPU devices) is
tests/trainer/test_distribute.py.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from emulator_testkit import PARENT, PROJECT, gcs_client, pid_alive, wait_for_state
from emulators.vertex.driver import chief_succeeded
from tasks.config import parse_config
from tasks.vertex import JobRequest, build_custom_job
from emulators.sample_data import make_sentences

PARAMS = {"epochs": 3, "batch_size": 8, "max_seq_len": 32, "buckets": [16], "learning_rate": 0.03, "dropout": 0.2,
          "pretrained": None, "lstm_embeddings": "learned", "lstm_units": 8, "lstm_embedding_dim": 8,
          "lstm_vocab_size": 200, "patience": 5}
CHIEF, WORKER = "workerpool0-0", "workerpool1-0"
# Two processes sum their gradients in another order than one process does: float32 round-off only.
LOSS_RTOL, WEIGHT_ATOL = 1e-4, 1e-4


REPO = Path(__file__).resolve().parents[2]


def _write_csv(path: Path, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    return path


def _run_trainer(*args: str) -> subprocess.CompletedProcess:
    """One trainer process on this checkout's trainer/src, the way a replica runs it (no CLUSTER_SPEC: alone)."""
    env = {k: v for k, v in os.environ.items() if k not in ("CLUSTER_SPEC", "TF_CONFIG", "WANDB_API_KEY")}
    env.update(PYTHONPATH=str(REPO / "trainer" / "src"), KERAS_BACKEND="jax", WANDB_MODE="disabled")
    return subprocess.run([sys.executable, "-m", "trainer.task", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=str(REPO))


def test_the_job_ends_as_its_primary_replica_does():
    """Vertex: the primary replica "reports status for the job as a whole" (distributed-training page)."""
    assert chief_succeeded({CHIEF: 0, WORKER: None})  # workers still running are stopped
    assert not chief_succeeded({CHIEF: None, WORKER: 0})  # a worker done first: the job goes on
    assert chief_succeeded({CHIEF: 0, WORKER: 0}) and chief_succeeded({CHIEF: 0})


@pytest.fixture(scope="module")
def staged(gcs_emulator, job_bucket, tmp_path_factory) -> dict:
    """The trainer sdist the flow would upload, and tiny splits, in fake GCS."""
    from prefect.logging import disable_run_logger

    from flows.train import TRAINER_DIR
    from tasks.packaging import package_trainer

    work = tmp_path_factory.mktemp("multi-replica")
    with disable_run_logger():
        package = package_trainer.fn(TRAINER_DIR, work)
    prefix = f"multi-replica/{uuid.uuid4().hex[:8]}"
    bucket = gcs_client().bucket(job_bucket)
    bucket.blob(f"{prefix}/{package.filename}").upload_from_filename(str(package.path))
    local = {}
    for split, (n, seed) in {"train": (64, 21), "validation": (24, 22), "test": (24, 23)}.items():
        local[split] = _write_csv(work / f"{split}.csv", make_sentences(n, seed))
        bucket.blob(f"{prefix}/data/{split}.csv").upload_from_filename(str(local[split]))
    gs = f"gs://{job_bucket}/{prefix}"
    return {"package_uri": f"{gs}/{package.filename}", "data_uri": f"{gs}/data", "base": gs, "local": local,
            "work": work}


def _submit(client, endpoint: str, staged: dict, **params) -> tuple[str, str]:
    """Create the job tasks/vertex.py builds for 2 CPU replicas; returns (job name, output folder)."""
    cfg = parse_config({"project": PROJECT, "bucket": "emulator-tests", "vertex_endpoint": endpoint,
                        "anonymous_credentials": True, "models": ["lstm"], "machine_type": "n1-standard-4",
                        "accelerator_type": None, "accelerator_count": 0, "replica_count": 2,
                        "params": {"lstm": PARAMS | params}})
    output = f"{staged['base']}/runs/{uuid.uuid4().hex[:8]}"
    request = JobRequest("lstm", package_uri=staged["package_uri"], data_uri=staged["data_uri"], output_uri=output,
                         run_key=uuid.uuid4().hex[:8], env={"WANDB_MODE": "disabled"})
    job = build_custom_job(cfg, request)
    assert [p["replica_count"] for p in job["job_spec"]["worker_pool_specs"]] == [1, 1]
    return client.create_custom_job(parent=PARENT, custom_job=job).name, output


def _objects(prefix_uri: str) -> dict:
    bucket, prefix = prefix_uri[len("gs://"):].split("/", 1)
    return {b.name[len(prefix) + 1:]: b for b in gcs_client().list_blobs(bucket, prefix=prefix + "/")}


def test_two_replicas_train_one_model_and_only_the_chief_writes(job_client, vertex_emulator, staged, tmp_path):
    admin = vertex_emulator.admin
    name, output = _submit(job_client, vertex_emulator.endpoint, staged)
    job = wait_for_state(job_client, name, {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"}, timeout=300)
    logs = {r: admin.job_log(name, replica=r) for r in (CHIEF, WORKER)}
    assert job.state.name == "JOB_STATE_SUCCEEDED", f"{job.error}\n{logs[CHIEF][-3000:]}\n{logs[WORKER][-3000:]}"

    # Both processes joined one cluster and stepped through every epoch together.
    for replica, text in logs.items():
        assert "distribution multi_worker: 2 replica(s) x 1 device(s), global batch 8 (4 rows per replica)" in text
        assert re.findall(r"epoch (\d)/3: loss", text) == ["1", "2", "3"], replica
    assert "the chief publishes the model" in logs[WORKER] and "metrics.json" not in logs[WORKER]

    # One metrics.json, saying what ran; the checkpoint's epoch log written by the chief's process alone.
    objects = _objects(output)
    assert [k for k in objects if k.endswith("metrics.json")] == ["model/metrics.json"]
    m = json.loads(objects["model/metrics.json"].download_as_text())
    assert {k: m["environment"][k] for k in ("devices", "replicas", "global_batch_size", "distribution")} == {
        "devices": 1, "replicas": 2, "global_batch_size": 8, "distribution": "multi_worker"}
    pids = {r["replica"]: r["pid"] for r in admin.job(name)["emulator"]["replicas"]}
    epoch_log = [json.loads(line) for line in objects["checkpoints/epochs.jsonl"].download_as_text().splitlines()]
    assert [(e["epoch"], e["pid"]) for e in epoch_log] == [(1, pids[CHIEF]), (2, pids[CHIEF]), (3, pids[CHIEF])]

    # The gradients were really exchanged: one process with the same global batch (and the chief's vocab, which
    # the worker received from the chief) trains the same model.
    model_dir = tmp_path / "chief"
    model_dir.mkdir()
    for f in ("model.keras", "vocab.txt", "history.json"):
        objects[f"model/{f}"].download_to_filename(str(model_dir / f))
    vocab_dir = tmp_path / "vocab"
    vocab_dir.mkdir()
    (vocab_dir / "vocab.txt").write_bytes((model_dir / "vocab.txt").read_bytes())
    local = staged["local"]
    single = tmp_path / "single"
    args = ["--model", "lstm", "--train-data", str(local["train"]), "--validation-data", str(local["validation"]),
            "--test-data", str(local["test"]), "--output-dir", str(single),
            *[f for k, v in (PARAMS | {"pretrained": str(vocab_dir)}).items()
              for f in (f"--{k.replace('_', '-')}", ",".join(map(str, v)) if isinstance(v, list) else str(v))]]
    ref = _run_trainer(*args)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr
    h_chief = json.loads((model_dir / "history.json").read_text())["epochs"]
    h_single = json.loads((single / "history.json").read_text())["epochs"]
    np.testing.assert_allclose([e["loss"] for e in h_chief], [e["loss"] for e in h_single], rtol=LOSS_RTOL)
    assert h_single[0]["loss"] > h_single[-1]["loss"], "the model must learn, or matching losses prove little"
    m_single = json.loads((single / "metrics.json").read_text())
    assert m["test"]["confusion_matrix"] == m_single["test"]["confusion_matrix"]
    import keras

    for a, b in zip(keras.saving.load_model(str(single / "model.keras")).get_weights(),
                    keras.saving.load_model(str(model_dir / "model.keras")).get_weights()):
        np.testing.assert_allclose(b, a, atol=WEIGHT_ATOL)


def test_a_killed_worker_fails_the_job(job_client, vertex_emulator, staged):
    """SIGKILL the worker mid-training (as a lost VM would end it): the job FAILED naming the worker, the chief
    stopped, no metrics.json."""
    admin = vertex_emulator.admin
    name, output = _submit(job_client, vertex_emulator.endpoint, staged, epochs=100, patience=100)
    deadline = time.monotonic() + 240
    while "epoch 1/100: loss" not in admin.job_log(name, replica=WORKER):  # the cluster formed and trains
        assert time.monotonic() < deadline, admin.job_log(name, replica=WORKER)[-3000:]
        state = job_client.get_custom_job(name=name).state.name
        assert state in ("JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING"), state
        time.sleep(0.5)
    pids = {r["replica"]: r["pid"] for r in admin.job(name)["emulator"]["replicas"]}
    os.kill(pids[WORKER], signal.SIGKILL)
    job = wait_for_state(job_client, name, {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"}, timeout=60)
    assert job.state.name == "JOB_STATE_FAILED"
    assert job.error.message.startswith(f"The replica {WORKER} exited with a non-zero status of 137.")
    assert not pid_alive(pids[CHIEF])
    assert "model/metrics.json" not in _objects(output)
