"""The trainer in exactly the software of finsent's training image (trainer/container/requirements.lock), started
the way the image starts it: its entrypoint downloads the flow's sdist from GCS (fake-gcs-server here), installs it
with --no-deps, then runs `python -m trainer.task`.

The venv is Python 3.11 (the Dockerfile's base) with every package of the lock at its locked version and hash,
except the CUDA runtime wheels (nvidia-*, jax-cuda12-*: they need a GPU; JAX then runs on the CPU). It does not see
this checkout's .venv, so a package missing from the lock fails here. Cached in .finsent/image-venv/<key>, keyed
by the lock's bytes and the interpreter. Cold on 2 CPU cores with a warm pip cache: about a minute.

    .venv/bin/python -m pytest tests/trainer/test_container_image.py -q
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer_testkit import REPO, check_metrics_shape

pytestmark = pytest.mark.slow

LOCK = REPO / "trainer" / "container" / "requirements.lock"
ENTRYPOINT = REPO / "trainer" / "container" / "run_package.py"
CACHE = REPO / ".finsent" / "image-venv"
GPU_ONLY = re.compile(r"^(nvidia-|jax-cuda)")
_ENV = {"KERAS_BACKEND": "jax", "WANDB_MODE": "disabled"}  # the Dockerfile sets KERAS_BACKEND=jax


def lock_entries(text: str) -> dict[str, str]:
    """{name: the whole entry (the pin line, its hashes and annotations)} of a hashed lock file."""
    entries: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            name = line.split("==", 1)[0].strip().lower()
            entries[name] = line + "\n"
        elif name and line.startswith((" ", "\t")):
            entries[name] += line + "\n"
    return entries


def locked_versions() -> dict[str, str]:
    return {name: entry.split("==", 1)[1].split()[0] for name, entry in lock_entries(LOCK.read_text()).items()}


def _run(cmd: list[str], timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    # cwd "/": the checkout's root holds finsent.egg-info, which `python -c` would see on its sys.path
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd="/")
    assert result.returncode == 0, f"{' '.join(cmd[:6])} ... failed ({result.returncode}):\n" + \
        (result.stdout + result.stderr)[-4000:]
    return result


def _clean_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | _ENV | (extra or {})


def locked_venv(cache: Path, extra_key: bytes = b"", extra_install=None) -> Path:
    """The image's venv: Python 3.11 (the Dockerfile's base) with the lock less its CUDA wheels, hashes checked, built
    once per lock (and `extra_key`) in `cache/<key>`; `extra_install(pip, lock_args)` adds to it before it is marked
    ready (`pip`: the venv's `pip install` command, `lock_args`: what installs the lock). Returns its python."""
    base = getattr(sys, "_base_executable", sys.executable)
    version = _run([base, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"]).stdout.strip()
    assert version.startswith("3.11."), f"the image runs Python 3.11; this interpreter is {version}"
    key = hashlib.sha256(LOCK.read_bytes() + extra_key + version.encode()).hexdigest()[:16]
    venv, started = cache / key, time.time()
    python = venv / "bin" / "python"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one builder at a time
        if not (venv / "ready.json").exists():
            for stale in cache.iterdir():  # venvs of older locks
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
            _run([base, "-m", "venv", str(venv)])
            cpu_lock = venv / "requirements.cpu.lock"
            cpu_lock.write_text("".join(entry for name, entry in lock_entries(LOCK.read_text()).items()
                                        if not GPU_ONLY.match(name)))
            # pip ships with the venv; the Dockerfile's base image has its own. The lock is what is installed.
            pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            lock_args = ["--no-deps", "--require-hashes", "-r", str(cpu_lock)]
            _run(pip + lock_args, env=_clean_env())
            if extra_install is not None:
                extra_install(pip, lock_args)
            (venv / "ready.json").write_text(json.dumps({"python": version, "seconds": round(time.time() - started)}))
    print(f"\nvenv {venv}: ready in {time.time() - started:.0f} s")
    return python


@pytest.fixture(scope="module")
def image_python() -> Path:
    return locked_venv(CACHE)


def test_the_venv_is_exactly_the_lock(image_python):
    installed = json.loads(_run([str(image_python), "-c", "import importlib.metadata as m, json; print(json.dumps("
                                 "{d.metadata['Name'].lower().replace('_', '-'): d.version for d in m.distributions()}))"],
                                env=_clean_env()).stdout)
    installed.pop("pip", None)
    expected = {name.replace("_", "-"): v for name, v in locked_versions().items() if not GPU_ONLY.match(name)}
    assert installed == expected
    # What pip check reports is only what the lock leaves out on purpose: keras-hub's tensorflow-text (TensorFlow;
    # the image runs JAX) and its kagglesdk pin (the tests run kagglehub's newer one).
    check = subprocess.run([str(image_python), "-m", "pip", "check"], capture_output=True, text=True,
                           env=_clean_env(), cwd="/")
    problems = [line for line in check.stdout.splitlines() if line.strip()]
    assert problems, check.stdout
    assert all(line.startswith(f"keras-hub {expected['keras-hub']} ") and
               ("requires tensorflow-text," in line or "has requirement kagglesdk==" in line)
               for line in problems), problems


def _upload_sdist(bucket, tmp_path) -> str:
    from tasks.packaging import build_trainer_sdist

    package = build_trainer_sdist(REPO / "trainer", tmp_path / "sdist")
    name = f"packages/{package.sha256}/{package.filename}"
    bucket.blob(name).upload_from_filename(str(package.path))
    return f"gs://{bucket.name}/{name}"


def _entrypoint(python: Path, package_uri: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Start the image the way Vertex does: its ENTRYPOINT with the job's args and containerSpec.env."""
    env = _clean_env({"FINSENT_PACKAGE_URIS": package_uri})
    return subprocess.run([str(python), str(ENTRYPOINT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd="/")


def test_bert_trains_from_gcs_through_the_image_entrypoint(image_python, gcs_inputs, tmp_path):
    bucket, inputs = gcs_inputs
    gs = f"gs://{bucket.name}"
    proc = _entrypoint(image_python, _upload_sdist(bucket, tmp_path), "--model", "bert", *inputs,
                       "--output-dir", f"{gs}/model", "--checkpoint-dir", f"{gs}/checkpoints", "--epochs", "2",
                       "--batch-size", "16", "--max-seq-len", "64", "--learning-rate", "5e-3")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "finsent image: downloading gs://" in proc.stdout
    m = json.loads(bucket.blob("model/metrics.json").download_as_bytes())
    check_metrics_shape(m, "bert", n_test=60)
    versions, lock = m["environment"]["versions"], locked_versions()
    assert versions["keras"] == lock["keras"] and versions["keras_hub"] == lock["keras-hub"], versions
    assert versions["python"].startswith("3.11."), versions
    assert m["train"]["epochs_run"] == 2
    assert {b.name for b in bucket.list_blobs(prefix="model/")} >= {"model/model.keras", "model/vocab.txt",
                                                                    "model/labels.json", "model/metrics.json"}
    assert json.loads(bucket.blob("checkpoints/state.json").download_as_bytes())["epoch"] == 2


def test_lstm_resumes_after_a_kill_through_the_image_entrypoint(image_python, gcs_inputs, tmp_path):
    """Killed after epoch 1 (exit 75, as after a preemption) and started again the way Vertex restarts a job:
    the entrypoint installs the sdist again and the trainer resumes from the checkpoint in GCS."""
    bucket, inputs = gcs_inputs
    gs, package = f"gs://{bucket.name}", _upload_sdist(bucket, tmp_path)
    args = ["--model", "lstm", *inputs, "--lstm-embeddings", "frozen", "--class-weights", "sqrt", "--epochs", "3",
            "--patience", "5", "--batch-size", "16", "--max-seq-len", "64", "--output-dir", f"{gs}/lstm",
            "--checkpoint-dir", f"{gs}/lstm-ck"]
    killed = _entrypoint(image_python, package, *args, "--stop-after-epochs", "1")
    assert killed.returncode == 75, killed.stdout[-4000:] + killed.stderr[-2000:]
    assert not bucket.blob("lstm/metrics.json").exists()
    resumed = _entrypoint(image_python, package, *args)
    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-2000:]
    m = json.loads(bucket.blob("lstm/metrics.json").download_as_bytes())
    check_metrics_shape(m, "lstm", n_test=60)
    assert m["train"]["epochs_run"] == 3 and m["train"]["resumed_from_epoch"] == 1
    history = json.loads(bucket.blob("lstm/history.json").download_as_bytes())
    assert all(math.isfinite(e["loss"]) for e in history["epochs"]), history["epochs"]


def test_a_bad_package_uri_fails_the_start_with_one_line(image_python):
    proc = _entrypoint(image_python, "https://example.com/trainer.tar.gz", "--help")
    assert proc.returncode != 0
    assert "FINSENT_PACKAGE_URIS entry 'https://example.com/trainer.tar.gz' is not gs://BUCKET/OBJECT" in proc.stderr
