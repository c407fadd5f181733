"""The trainer on the Vertex TensorFlow image's software: Python 3.10, TensorFlow 2.17.1 and the sdist the flow
builds for `tf-gpu.2-17.py310`, installed WITH its dependencies as Vertex installs it (keras-hub 0.25.1,
tensorflow-text 2.17), then trained through the CLI with KERAS_BACKEND=tensorflow.

The venv (Python 3.10 + tensorflow + the sdist's dependencies, ~2.5 GB) is cached in .finsent/vertex-tf-venv/,
keyed by the sdist's requirements.txt (trainer/requirements.txt + the packaging task's pins), the TensorFlow version
and the interpreter; every run reinstalls the trainer itself from a fresh sdist of the working tree. On 2 CPU cores:
cold (new venv, empty pip cache, fast PyPI link) 1 min 46 s, of which 61 s installing; warm 46 s.
Needs a Python 3.10 (FINSENT_PYTHON310, python3.10 on PATH, or pyenv's) and PyPI for a cold venv; without a
Python 3.10 the tests skip, or fail when CI is set.

    .venv/bin/python -m pytest tests/trainer/test_vertex_image.py -q
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import math
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from trainer_testkit import REPO, base_args, check_metrics_shape, run_trainer

pytestmark = pytest.mark.slow

IMAGE_TENSORFLOW = "2.17.1"  # what `tf-gpu.2-17.py310` (tasks.config.DEFAULT_EXECUTOR_IMAGE) ships
IMAGE_KERAS_HUB = "0.25.1"  # trainer/requirements.txt: the last keras-hub for Python 3.10
CACHE = REPO / ".finsent" / "vertex-tf-venv"
_RECIPE = 1  # bump when the way the venv is built changes
_TF_ENV = {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _python310() -> str | None:
    candidates = [os.environ.get("FINSENT_PYTHON310"), shutil.which("python3.10")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python")), reverse=True)
    candidates += sorted(glob.glob("/root/.pyenv/versions/3.10*/bin/python"), reverse=True)
    for python in filter(None, candidates):
        try:
            out = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2] == (3, 10))"],
                                 capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        if out == "True":
            return python
    return None


def _pip(python: Path, *args: str, timeout: int = 600) -> str:
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "--progress-bar", "off",
           *args]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        tail = exc.stdout or ""
        tail = (tail.decode(errors="replace") if isinstance(tail, bytes) else tail)[-3000:]
        raise AssertionError(f"{' '.join(cmd)} did not finish in {timeout} s: pip backtracking through dependency "
                             f"versions? (see the protobuf cap in tasks/packaging.py)\n{tail}") from None
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-4000:]
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{output}")
    return result.stdout


def _in_venv(python: Path, code: str, *args: str, cwd: Path = REPO) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(_TF_ENV)
    result = subprocess.run([str(python), "-c", code, *args], capture_output=True, text=True, timeout=300, env=env,
                            cwd=str(cwd))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result.stdout.strip().splitlines()[-1]


_VERSIONS = ("import importlib.metadata as m, json; print(json.dumps({d: m.version(d) for d in ('tensorflow', "
             "'tensorflow-text', 'keras', 'keras-hub', 'numpy', 'protobuf', 'finsent-trainer')}))")


@pytest.fixture(scope="module")
def image_python(tmp_path_factory) -> Path:
    """Interpreter of the cached venv, with a trainer sdist of the working tree freshly installed."""
    from tasks.config import DEFAULT_EXECUTOR_IMAGE, tf_version_of_image
    from tasks.packaging import build_trainer_sdist

    image_tf = tf_version_of_image(DEFAULT_EXECUTOR_IMAGE)
    assert IMAGE_TENSORFLOW.startswith(f"{image_tf}."), (
        f"the default image now has TensorFlow {image_tf}: update IMAGE_TENSORFLOW in {Path(__file__).name}")
    base = _python310()
    if base is None:
        message = ("no Python 3.10 found (set FINSENT_PYTHON310, or put python3.10 on PATH): the Vertex TF images "
                   "run Python 3.10, so this check needs one")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message)
        pytest.skip(message)

    started = time.time()
    sdist = build_trainer_sdist(REPO / "trainer", tmp_path_factory.mktemp("sdist"), tf_version=image_tf).path
    py_version = subprocess.run([base, "--version"], capture_output=True, text=True).stdout.strip()
    with tarfile.open(sdist) as archive:  # trainer/requirements.txt plus the packaging task's pins for the image
        requirements = archive.extractfile(next(m for m in archive.getmembers()
                                                if m.name.count("/") == 1 and m.name.endswith("/requirements.txt")))
        key_parts = [requirements.read(), IMAGE_TENSORFLOW.encode(), py_version.encode(), str(_RECIPE).encode()]
    key = hashlib.sha256(b"\0".join(key_parts)).hexdigest()[:16]
    venv = CACHE / key
    python = venv / "bin" / "python"
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time
        timings = {}
        if not (venv / "ready.json").exists():
            for stale in CACHE.iterdir():  # venvs of older requirements: ~2.5 GB each
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
            t = time.time()
            subprocess.run([base, "-m", "venv", str(venv)], check=True, timeout=300)
            _pip(python, f"tensorflow=={IMAGE_TENSORFLOW}")  # the image's TensorFlow, there before the job starts
            timings["tensorflow_install_s"] = round(time.time() - t, 1)
            t = time.time()
            _pip(python, str(sdist))  # what Vertex does with the job's package: dependencies included
            timings["sdist_install_with_deps_s"] = round(time.time() - t, 1)
            (venv / "ready.json").write_text(json.dumps({"python": py_version, **timings}, indent=1))
        else:  # same dependencies: only the trainer's code may have changed
            t = time.time()
            _pip(python, "--force-reinstall", "--no-deps", str(sdist))
            timings["trainer_reinstall_s"] = round(time.time() - t, 1)
    timings["venv_ready_s"] = round(time.time() - started, 1)
    print(f"\nvertex image venv {venv}: {timings}")
    return python


def test_sdist_installs_without_replacing_the_image_tensorflow(image_python):
    versions = json.loads(_in_venv(image_python, _VERSIONS))
    assert versions["tensorflow"] == IMAGE_TENSORFLOW, versions  # pip kept the image's TensorFlow
    assert versions["tensorflow-text"].startswith(IMAGE_TENSORFLOW.rsplit(".", 1)[0] + "."), versions
    assert versions["keras-hub"] == IMAGE_KERAS_HUB, versions
    check = subprocess.run([str(image_python), "-m", "pip", "check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # `python -m trainer.task` from the repo root runs the installed package, not trainer/ of the checkout
    where = _in_venv(image_python, "import trainer; print(trainer.__file__)")
    assert "site-packages" in where, where
    proc = run_trainer("--help", python=str(image_python), extra_env=_TF_ENV, timeout=120)
    assert proc.returncode == 0 and "--model" in proc.stdout, proc.stderr


def _check_tensorflow_run(proc, out: Path, model: str, test_csv: Path, python: Path) -> dict:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "finsent-trainer: error" not in proc.stderr, proc.stderr[-2000:]
    m = json.loads((out / "metrics.json").read_text())
    check_metrics_shape(m, model, n_test=60, backend="tensorflow")
    assert m["environment"]["versions"]["tensorflow"] == IMAGE_TENSORFLOW, m["environment"]
    assert m["environment"]["versions"]["keras_hub"] == IMAGE_KERAS_HUB, m["environment"]
    assert m["environment"]["versions"]["python"].startswith("3.10."), m["environment"]
    history = json.loads((out / "history.json").read_text())
    assert all(math.isfinite(e["loss"]) for e in history["epochs"]), history["epochs"]
    # model.keras reloads and predicts in the same TensorFlow environment, with the trainer's test accuracy
    reloaded = json.loads(_in_venv(
        python, "import json, sys; sys.path.insert(0, sys.argv[1]); import keras; "
        "from trainer_testkit import reload_and_score; "
        "print(json.dumps({'backend': keras.backend.backend(), 'accuracy': reload_and_score(*sys.argv[2:])}))",
        str(Path(__file__).parent), str(out), str(test_csv)))
    assert reloaded["backend"] == "tensorflow"
    assert reloaded["accuracy"] == pytest.approx(m["test"]["accuracy"], abs=0.034)
    return m


def test_bert_trains_and_exports_on_tensorflow(image_python, splits, tiny_bert, tmp_path):
    """keras-hub 0.25.1 cannot read the tiny checkpoint's HF names directly: this goes through
    normalize_bert_checkpoint (and two buckets, 32 and 64, through TensorFlow's fixed input signature)."""
    out = tmp_path / "out"
    proc = run_trainer(*base_args(splits, out, "bert", "--pretrained", str(tiny_bert), "--epochs", "2",
                                  "--learning-rate", "5e-3"), python=str(image_python), extra_env=_TF_ENV)
    m = _check_tensorflow_run(proc, out, "bert", splits["test"], image_python)
    assert m["train"]["epochs_run"] == 2


def test_lstm_resumes_after_kill_on_tensorflow(image_python, splits, tiny_bert, tmp_path):
    """The GCP deployment's lstm settings (frozen checkpoint vectors, sqrt class weights), killed after epoch 1
    and restarted: model and optimizer state come back from the checkpoint written by TensorFlow."""
    out, ck = tmp_path / "out", tmp_path / "ck"
    args = base_args(splits, out, "lstm", "--pretrained", str(tiny_bert), "--lstm-embeddings", "frozen",
                     "--class-weights", "sqrt", "--epochs", "3", "--patience", "5", "--checkpoint-dir", str(ck))
    killed = run_trainer(*args, "--stop-after-epochs", "1", python=str(image_python), extra_env=_TF_ENV)
    assert killed.returncode == 75, killed.stdout[-4000:] + killed.stderr[-2000:]
    assert not (out / "metrics.json").exists()
    resumed = run_trainer(*args, python=str(image_python), extra_env=_TF_ENV)
    steps_per_epoch = json.loads((ck / "state.json").read_text())["optimizer_iterations"] // 3
    assert f"optimizer step {steps_per_epoch}" in resumed.stdout, resumed.stdout[-4000:]
    m = _check_tensorflow_run(resumed, out, "lstm", splits["test"], image_python)
    assert m["train"]["epochs_run"] == 3 and m["train"]["resumed_from_epoch"] == 1
    assert [json.loads(line)["epoch"] for line in (ck / "epochs.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_gcs_everywhere_on_tensorflow(image_python, gcs_inputs):
    """gs:// data, checkpoint to fine-tune, per-epoch checkpoints and outputs, with the google-cloud-storage that
    pip resolves next to TF 2.17's protobuf < 5 (fake-gcs-server stands in for GCS)."""
    bucket, inputs = gcs_inputs
    gs = f"gs://{bucket.name}"
    proc = run_trainer("--model", "bert", *inputs, "--output-dir", f"{gs}/model", "--checkpoint-dir",
                       f"{gs}/checkpoints", "--epochs", "1", "--batch-size", "16", "--max-seq-len", "64",
                       "--learning-rate", "5e-3", python=str(image_python), extra_env=_TF_ENV)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    m = json.loads(bucket.blob("model/metrics.json").download_as_bytes())
    assert m["environment"]["backend"] == "tensorflow"
    assert m["environment"]["versions"]["tensorflow"] == IMAGE_TENSORFLOW, m["environment"]
    assert {b.name for b in bucket.list_blobs(prefix="model/")} >= {"model/model.keras", "model/vocab.txt",
                                                                    "model/labels.json", "model/metrics.json"}
    assert json.loads(bucket.blob("checkpoints/state.json").download_as_bytes())["epoch"] == 1
