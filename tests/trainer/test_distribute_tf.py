"""Data-parallel training on the TensorFlow backend (trainer/src/trainer/distribute.py): two logical CPU devices
stand in for two GPUs under tf.distribute.MirroredStrategy, and train the model one device trains with the same
global batch.

The venv is the image's (trainer/container/requirements.lock, built by test_container_image.py's `locked_venv`) plus TensorFlow at trainer/requirements-tensorflow.txt's pin (not in the image, which runs JAX), cached
in .finsent/tf-venv/<key>, keyed by the lock, the pin and the interpreter. The trainer is installed from this
checkout's sdist (the package the flow ships) at every start, so the cache never holds a stale trainer.

    .venv/bin/python -m pytest tests/trainer/test_distribute_tf.py -q
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from test_container_image import GPU_ONLY, _clean_env, _run, locked_venv, locked_versions
from test_distribute import _args, _exported_weights, kill_and_resume, tiny_splits  # noqa: F401  (tiny_splits: a fixture)
from trainer_testkit import REPO, run_trainer

pytestmark = pytest.mark.slow

TF_PIN = REPO / "trainer" / "requirements-tensorflow.txt"
CACHE = REPO / ".finsent" / "tf-venv"
TF = {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}
# Two logical CPU devices, the way Keras' own tf.distribute tests make them (keras/src/backend/tensorflow/
# distribute_test.py): configured before TensorFlow starts its runtime, here by a sitecustomize the test puts on
# PYTHONPATH. TensorFlow reads no environment variable for it; GPUs need nothing of the kind.
TWO_CPUS = """import tensorflow as tf
tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 2)
"""
# The 2-device run matches the 1-device run to float32 round-off (measured: per-epoch loss within 2e-7 relative):
# the 1-device run is XLA-compiled and the 2-device one is not (distribute.xla_allowed), and the two replicas'
# gradients are summed in another order than one device's reduction sums the batch.
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5


@pytest.fixture(scope="module")
def tf_python(tmp_path_factory) -> Path:
    def add_tensorflow(pip: list, lock_args: list) -> None:
        # TensorFlow with what it needs beyond the lock, then the lock again: the image's software wins where
        # TensorFlow's metadata disagrees (tensorflow-cpu 2.21.0 asks for h5py<3.15; the lock has 3.16.0, which
        # Keras' weights files use); test_the_venv_is_the_lock_plus_tensorflow says what pip check reports.
        _run(pip + ["-r", str(TF_PIN)], env=_clean_env())
        _run(pip + lock_args, env=_clean_env())

    started = time.time()
    python = locked_venv(CACHE, TF_PIN.read_bytes(), add_tensorflow)
    from tasks.packaging import build_trainer_sdist

    package = build_trainer_sdist(REPO / "trainer", tmp_path_factory.mktemp("sdist"))
    _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
          "--no-build-isolation", "--force-reinstall", str(package.path)], env=_clean_env())
    print(f"trainer installed, {time.time() - started:.0f} s")
    return python


@pytest.fixture(scope="module")
def two_cpus(tmp_path_factory) -> dict:
    site = tmp_path_factory.mktemp("two-cpus")
    (site / "sitecustomize.py").write_text(TWO_CPUS)
    return {"PYTHONPATH": str(site)}


def test_the_venv_is_the_lock_plus_tensorflow(tf_python):
    installed = json.loads(_run([str(tf_python), "-c", "import importlib.metadata as m, json; print(json.dumps("
                                 "{d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}))"],
                                env=_clean_env()).stdout)
    expected = {name.replace("_", "-"): v for name, v in locked_versions().items() if not GPU_ONLY.match(name)}
    assert {name: installed.get(name) for name in expected} == expected
    pin = TF_PIN.read_text().split("tensorflow-cpu==", 1)[1].split()[0]
    assert installed["tensorflow-cpu"] == pin
    # pip check: the image venv's two (keras-hub's tensorflow-text and kagglesdk pins, test_container_image.py)
    # and TensorFlow's h5py ceiling, which the lock's h5py is over; nothing else.
    check = subprocess.run([str(tf_python), "-m", "pip", "check"], capture_output=True, text=True,
                           env=_clean_env(), cwd="/")
    problems = sorted(line for line in check.stdout.splitlines() if line.strip())
    assert problems == sorted([
        f"keras-hub {expected['keras-hub']} requires tensorflow-text, which is not installed.",
        f"keras-hub {expected['keras-hub']} has requirement kagglesdk==0.1.28, but you have kagglesdk "
        f"{expected['kagglesdk']}.",
        f"tensorflow-cpu {pin} has requirement h5py<3.15.0,>=3.11.0, but you have h5py {expected['h5py']}."]), problems


def _tf_args(splits, vocab_from, out, *extra: str) -> list:
    """test_distribute.py's tiny BiLSTM without dropout: under MirroredStrategy every replica draws its own dropout
    mask for its half of the batch, so with dropout the two topologies train the same model only in distribution
    (measured: epoch-1 loss 0.9896 against 0.9927), not to round-off."""
    return _args(splits, vocab_from, out, "--dropout", "0", "--epochs", "2", *extra)


def test_two_logical_devices_train_the_one_device_model_and_resume(tf_python, two_cpus, tiny_splits, tiny_bert,
                                                                    tmp_path):
    """The same global batch of 8 on 1 device and on 2 logical CPU devices (4 rows each) under MirroredStrategy,
    each killed after epoch 1 and resumed from its checkpoint: the same loss and validation figures every epoch,
    the same test confusion matrix and exported weights; metrics.json says what ran."""
    kill_and_resume(lambda name, *extra: _tf_args(tiny_splits, tiny_bert, tmp_path / name, "--checkpoint-dir",
                                                  str(tmp_path / f"ck-{name}"), *extra),
                    {"one": TF, "two": TF | two_cpus}, python=str(tf_python))

    one, two = tmp_path / "one", tmp_path / "two"
    m1, m2 = (json.loads((o / "metrics.json").read_text()) for o in (one, two))
    keys = ("backend", "devices", "replicas", "global_batch_size", "distribution")
    assert {k: m1["environment"][k] for k in keys} == {
        "backend": "tensorflow", "devices": 1, "replicas": 1, "global_batch_size": 8, "distribution": "none"}
    assert {k: m2["environment"][k] for k in keys} == {
        "backend": "tensorflow", "devices": 2, "replicas": 1, "global_batch_size": 8, "distribution": "data_parallel"}
    assert m2["environment"]["versions"]["tensorflow"] == m1["environment"]["versions"]["tensorflow"]
    assert m1["train"]["resumed_from_epoch"] == m2["train"]["resumed_from_epoch"] == 1
    h1, h2 = (json.loads((o / "history.json").read_text())["epochs"] for o in (one, two))
    assert [e["epoch"] for e in h2] == [1, 2]
    np.testing.assert_allclose([e["loss"] for e in h2], [e["loss"] for e in h1], rtol=LOSS_RTOL)
    assert h1[0]["loss"] > h1[-1]["loss"], "the model must learn, or matching losses prove little"
    for key in ("val_macro_f1", "val_accuracy"):
        assert [e[key] for e in h2] == pytest.approx([e[key] for e in h1], abs=1e-6)
    assert m2["test"]["confusion_matrix"] == m1["test"]["confusion_matrix"]
    assert np.asarray(m2["test"]["confusion_matrix"]).sum() == 24  # one prediction per test row, not per replica
    for a, b in zip(_exported_weights(one), _exported_weights(two)):
        np.testing.assert_allclose(b, a, atol=WEIGHT_ATOL)


def test_bert_trains_on_two_logical_devices(tf_python, two_cpus, tiny_splits, tiny_bert, tmp_path):
    """keras-hub's BertBackbone built in the strategy's scope, both length buckets (16, 32) split over 2 devices: it
    trains, every test row is predicted once, and metrics.json says what ran. (Its own dropout, 0.1 in the tiny
    checkpoint's config, is drawn per replica, so it is not compared with a 1-device run.)"""
    out = tmp_path / "bert"
    proc = run_trainer("--model", "bert", "--pretrained", str(tiny_bert), "--train-data", str(tiny_splits["train"]),
                       "--validation-data", str(tiny_splits["validation"]), "--test-data", str(tiny_splits["test"]),
                       "--output-dir", str(out), "--batch-size", "8", "--max-seq-len", "32", "--buckets", "16",
                       "--epochs", "1", "--learning-rate", "5e-3", python=str(tf_python), extra_env=TF | two_cpus)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert {k: m["environment"][k] for k in ("backend", "devices", "distribution", "global_batch_size")} == {
        "backend": "tensorflow", "devices": 2, "distribution": "data_parallel", "global_batch_size": 8}
    assert np.isfinite(m["train"]["history"][0]["loss"])
    assert np.asarray(m["test"]["confusion_matrix"]).sum() == 24  # one prediction per test row, not per replica


def test_a_batch_that_does_not_split_over_the_logical_devices_is_one_line(tf_python, two_cpus, tiny_splits,
                                                                          tiny_bert, tmp_path):
    proc = run_trainer(*_tf_args(tiny_splits, tiny_bert, tmp_path / "o", "--batch-size", "7"), python=str(tf_python),
                       extra_env=TF | two_cpus)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr
    # TensorFlow 2.21's C++ start-up lines ("oneDNN custom operations are on", absl INFO written before
    # absl::InitializeLog, which TF_CPP_MIN_LOG_LEVEL does not silence) come first; the error is the last line.
    assert proc.stderr.strip().splitlines()[-1] == (
        "finsent-trainer: error: --batch-size 7 is the global batch and must divide by the 2 devices training "
        "together (1 replica(s) x 2 device(s)); use 6 or 8")
    assert "finsent-trainer: error:" not in "".join(proc.stderr.strip().splitlines()[:-1])
    assert not (tmp_path / "o").exists()
