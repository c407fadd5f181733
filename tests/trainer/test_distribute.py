"""Data-parallel training (trainer/src/trainer/distribute.py): the cluster Vertex describes, and the proof that
two devices train the same model as one with the same global batch (JAX's virtual CPU devices stand in for GPUs).

The multi-machine proof (two replicas through the Vertex emulator) is tests/emulators/test_multi_replica.py.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from trainer import distribute as D
from trainer.errors import ConfigError

from emulators.vertex.replica_env import cluster_addresses, replica_env
from trainer_testkit import make_sentences, run_trainer, write_csv

# Two virtual CPU devices; XLA reads the flag when JAX starts, so it only works in a fresh process.
TWO_DEVICES = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
# The 2-device run matches the 1-device run to float32 round-off: the all-reduce sums the two halves' gradients in
# another order than one device's reduction does.
LOSS_RTOL, WEIGHT_ATOL = 1e-4, 1e-4


# --------------------------------------------------------------------------------------------- the cluster (pure)


def _two_replica_job(workers: int = 1) -> dict:
    pool = {"machineSpec": {"machineType": "n1-standard-4"}, "replicaCount": "1", "containerSpec": {"imageUri": "i"}}
    return {"jobSpec": {"workerPoolSpecs": [pool, dict(pool, replicaCount=str(workers))]}}


def test_the_cluster_spec_vertex_gives_each_replica():
    """The emulator writes CLUSTER_SPEC as Vertex documents it (emulators/vertex/replica_env.py); each replica
    finds itself, the chief first, and the chief's address is the coordinator."""
    job = _two_replica_job(workers=2)
    cluster = cluster_addresses(job)
    seen = []
    for pool, replica in ((0, 0), (1, 0), (1, 1)):
        env = replica_env(job, "123", pool, replica, cluster, {})
        c = D.cluster_from_env(env)
        seen.append((c.process_id, c.is_chief, D.is_chief(env)))
        assert c.num_processes == 3 and c.coordinator == cluster["workerpool0"][0]
        assert c.addresses == tuple(cluster["workerpool0"] + cluster["workerpool1"])
    assert seen == [(0, True, True), (1, False, False), (2, False, False)]


def test_vertex_documented_spec_and_a_process_outside_vertex():
    # The shape of https://cloud.google.com/vertex-ai/docs/training/distributed-training ("CLUSTER_SPEC format").
    spec = {"cluster": {"workerpool0": ["cmle-training-workerpool0-ab-0:2222"],
                        "workerpool1": ["cmle-training-workerpool1-ab-0:2222", "cmle-training-workerpool1-ab-1:2222"]},
            "environment": "cloud", "task": {"type": "workerpool1", "index": 1}, "job": "{}"}
    c = D.parse_cluster_spec(json.dumps(spec))
    assert (c.process_id, c.num_processes, c.coordinator) == (2, 3, "cmle-training-workerpool0-ab-0:2222")
    assert D.parse_cluster_spec(None) == D.Cluster() and D.Cluster().is_chief and D.is_chief({})
    one = {"cluster": {"workerpool0": ["h:2222"]}, "task": {"type": "workerpool0", "index": 0}}
    assert D.parse_cluster_spec(json.dumps(one)).num_processes == 1  # Vertex sets it for one replica too


@pytest.mark.parametrize(("spec", "message"), [
    ({"cluster": {"workerpool0": ["a:1"], "workerpool2": ["ps:1"]}, "task": {"type": "workerpool0", "index": 0}},
     r"worker pool\(s\) workerpool2: finsent trains data-parallel on workerpool0 \(1 chief\) and workerpool1"),
    ({"cluster": {"workerpool0": ["a:1"]}, "task": {"type": "workerpool1", "index": 0}},
     r"this replica \(workerpool1 0\) is not in the cluster"),
    ({"cluster": {"workerpool0": ["a:1", "b:1"]}, "task": {"type": "workerpool0", "index": 0}},
     r"workerpool0 must hold exactly 1 replica, got 2"),
    ("{not json", r"CLUSTER_SPEC is not Vertex's cluster description"),
])
def test_a_cluster_finsent_cannot_train_with_is_one_line(spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        D.parse_cluster_spec(spec if isinstance(spec, str) else json.dumps(spec))
    assert "\n" not in str(info.value)


def test_topology_global_batch_and_what_metrics_json_says():
    assert D.describe(D.Topology()) == {"devices": 1, "replicas": 1, "global_batch_size": 1, "distribution": "none"}
    assert D.Topology(devices=4, global_batch_size=32).distribution == "data_parallel"
    two = [D.Topology(replicas=2, devices=4, global_batch_size=32, process_id=p) for p in (0, 1)]
    assert two[0].distribution == "multi_worker" and two[0].total_devices == 8
    rows = np.arange(32)
    assert [rows[t.rows].tolist() for t in two] == [list(range(16)), list(range(16, 32))]  # together: every row
    D.check_batch(32, 2, 4)
    with pytest.raises(ConfigError, match=r"^--batch-size 30 is the global batch and must divide by the 8 devices "
                                          r"training together \(2 replica\(s\) x 4 device\(s\)\); use 24 or 32$"):
        D.check_batch(30, 2, 4)
    with pytest.raises(ConfigError, match=r"use 4$"):
        D.check_batch(3, 1, 4)


def test_a_worker_store_resumes_but_writes_nothing(tmp_path):
    """Only the chief writes checkpoints: a worker's save returns the state the chief commits, and the directory
    stays untouched."""
    import keras

    from trainer.train import CheckpointStore

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    state = {"epoch": 1, "best_weights": "epoch-0001/model.weights.h5"}
    chief, worker = CheckpointStore(str(tmp_path / "c"), str(tmp_path / "lc")), \
        CheckpointStore(str(tmp_path / "c"), str(tmp_path / "lw"), writer=False)
    assert worker.save(model, 1, state, {"epoch": 1}) == chief.save(model, 1, state, {"epoch": 1})
    worker.put(str(tmp_path / "c" / "state.json"), "vocab.txt")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["epoch-0001", "epochs.jsonl", "state.json"]
    assert worker.load_state()["epoch"] == 1  # ... and reads the chief's checkpoint to resume


# --------------------------------------------------------------------------------------------- two devices


@pytest.fixture(scope="module")
def tiny_splits(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("dp-data")
    return {"train": write_csv(d / "train.csv", make_sentences(64, 11)),
            "validation": write_csv(d / "validation.csv", make_sentences(24, 12)),
            "test": write_csv(d / "test.csv", make_sentences(24, 13))}


def _args(splits: dict, vocab_from, out, *extra: str) -> list:
    """A tiny BiLSTM with learned embeddings on the tiny checkpoint's vocab: a WordPiece vocab learned from so few
    sentences can differ between two processes (tied merges; trainer.data.train_wordpiece_vocab), which would make
    the runs differ for a reason that has nothing to do with the devices."""
    return ["--model", "lstm", "--pretrained", str(vocab_from), "--lstm-embeddings", "learned",
            "--train-data", str(splits["train"]),
            "--validation-data", str(splits["validation"]), "--test-data", str(splits["test"]),
            "--output-dir", str(out), "--batch-size", "8", "--max-seq-len", "32", "--buckets", "16",
            "--lstm-units", "8", "--lstm-embedding-dim", "8", "--lstm-vocab-size", "200", "--learning-rate", "0.03",
            "--dropout", "0.2",
            "--epochs", "3", "--patience", "5", *extra]


def _exported_weights(out) -> list:
    import keras

    return keras.saving.load_model(str(out / "model.keras")).get_weights()


def kill_and_resume(make_args, envs: dict, **run) -> None:
    """Run each topology (`envs`: name -> environment; one process each, side by side) killed after epoch 1, then
    resumed from its checkpoint, as a preempted job is. `make_args(name, *extra)`: that run's trainer arguments."""
    def leg(*extra: str) -> list:
        with ThreadPoolExecutor(len(envs)) as pool:
            runs = {name: pool.submit(run_trainer, *make_args(name, *extra), extra_env=env, **run)
                    for name, env in envs.items()}
        return [runs[name].result() for name in envs]

    for killed in leg("--stop-after-epochs", "1"):
        assert killed.returncode == 75, killed.stdout[-3000:] + killed.stderr
    for resumed in leg():
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr
        assert "resuming from" in resumed.stdout


def test_two_devices_train_the_one_device_model_and_resume(tiny_splits, tiny_bert, tmp_path):
    """The same global batch of 8 on 1 device and on 2 (4 rows each), each run killed after epoch 1 and resumed from
    its checkpoint (as a preempted job is): the same loss every epoch, the same validation figures and, after every
    step of 3 epochs, the same weights. (Both legs run side by side, one process per topology.)"""
    kill_and_resume(lambda name, *extra: [*_args(tiny_splits, tiny_bert, tmp_path / name, "--checkpoint-dir",
                                                 str(tmp_path / f"ck-{name}")), *extra],
                    {"one": {}, "two": TWO_DEVICES})

    one, two = tmp_path / "one", tmp_path / "two"
    m1, m2 = (json.loads((o / "metrics.json").read_text()) for o in (one, two))
    assert {k: m1["environment"][k] for k in ("devices", "replicas", "global_batch_size", "distribution")} == {
        "devices": 1, "replicas": 1, "global_batch_size": 8, "distribution": "none"}
    assert {k: m2["environment"][k] for k in ("devices", "replicas", "global_batch_size", "distribution")} == {
        "devices": 2, "replicas": 1, "global_batch_size": 8, "distribution": "data_parallel"}
    assert m1["train"]["resumed_from_epoch"] == m2["train"]["resumed_from_epoch"] == 1
    h1, h2 = (json.loads((o / "history.json").read_text())["epochs"] for o in (one, two))
    assert [e["epoch"] for e in h2] == [1, 2, 3]
    np.testing.assert_allclose([e["loss"] for e in h2], [e["loss"] for e in h1], rtol=LOSS_RTOL)
    assert h1[0]["loss"] > h1[-1]["loss"], "the model must learn, or matching losses prove little"
    assert [e["val_macro_f1"] for e in h2] == pytest.approx([e["val_macro_f1"] for e in h1], abs=1e-6)
    assert m2["test"]["confusion_matrix"] == m1["test"]["confusion_matrix"]
    for a, b in zip(_exported_weights(one), _exported_weights(two)):
        np.testing.assert_allclose(b, a, atol=WEIGHT_ATOL)


def test_a_batch_that_does_not_split_over_the_devices_is_one_line(tiny_splits, tiny_bert, tmp_path):
    proc = run_trainer(*_args(tiny_splits, tiny_bert, tmp_path / "o", "--batch-size", "7"), extra_env=TWO_DEVICES)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr
    assert proc.stderr.strip() == ("finsent-trainer: error: --batch-size 7 is the global batch and must divide by "
                                   "the 2 devices training together (1 replica(s) x 2 device(s)); use 6 or 8")
    assert not (tmp_path / "o").exists()


def test_several_replicas_on_another_backend_are_refused_in_one_line_before_joining():
    """docs/scaling.md "TensorFlow": MultiWorkerMirroredStrategy is not wired (one machine's devices are:
    tests/trainer/test_distribute_tf.py), so a TensorFlow (or PyTorch) trainer with replicas must stop with the way
    out rather than train independent copies."""
    spec = {"cluster": {"workerpool0": ["a:1"], "workerpool1": ["b:1"]}, "task": {"type": "workerpool1", "index": 0}}
    cluster = D.parse_cluster_spec(json.dumps(spec))
    with pytest.raises(ConfigError, match=r"2 replicas: multi-machine training runs on the JAX backend only, not "
                                          r"tensorflow; set KERAS_BACKEND=jax") as info:
        D.join(cluster, "tensorflow")
    assert "\n" not in str(info.value)
