"""A throwaway training package (`emujob`) built into an sdist in the test, to run inside emulated jobs."""

from __future__ import annotations

import tempfile
import textwrap
from pathlib import Path

from tests.tiny_project import write_tiny_project

MODULES = {
    "__init__.py": "",
    "_gcs.py": '''
        from trainer.storage import parse_gs_uri  # the host's trainer: job venvs see the host's site-packages

        def client():
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage
            return storage.Client(credentials=AnonymousCredentials(), project="emulator")

        def write(uri, text):
            bucket, name = parse_gs_uri(uri)
            client().bucket(bucket).blob(name).upload_from_string(text)

        def read(uri):
            bucket, name = parse_gs_uri(uri)
            blob = client().bucket(bucket).blob(name)
            return blob.download_as_text() if blob.exists() else None
    ''',
    "write.py": '''
        """Write result.json to AIP_MODEL_DIR with the environment Vertex sets."""
        import json, os, sys
        from emujob import _gcs

        keys = ["AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR", "CLOUD_ML_JOB_ID", "CLUSTER_SPEC",
                "TF_CONFIG", "STORAGE_EMULATOR_HOST", "GREETING"]
        payload = {"args": sys.argv[1:], "env": {k: os.environ.get(k) for k in keys}, "module": __file__}
        print("writing result to", os.environ["AIP_MODEL_DIR"])
        _gcs.write(os.environ["AIP_MODEL_DIR"] + "result.json", json.dumps(payload))
        print("done")
    ''',
    "fail.py": '''
        """Print a few lines, then fail with a Python error (exit status 1)."""
        for i in range(3):
            print(f"epoch {i}: loss=nan")
        raise SystemExit("finsent-trainer: error: loss became NaN at epoch 2")
    ''',
    "sleep.py": '''
        """Start a child process (to test tree kill), print both pids, sleep."""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print(f"pid={os.getpid()} child={child.pid}", flush=True)
        time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 600)
    ''',
    "resume.py": '''
        """Resume from AIP_CHECKPOINT_DIR: first run writes a checkpoint and waits (to be preempted); a restarted
        run finds it and finishes, writing AIP_MODEL_DIR/resumed.json."""
        import json, os, sys, time
        from emujob import _gcs

        ckpt = os.environ["AIP_CHECKPOINT_DIR"] + "ckpt.json"
        found = _gcs.read(ckpt)
        if found:
            print("resuming from", ckpt, found, flush=True)
            _gcs.write(os.environ["AIP_MODEL_DIR"] + "resumed.json", json.dumps({"checkpoint": json.loads(found)}))
            sys.exit(0)
        _gcs.write(ckpt, json.dumps({"epoch": 1, "pid": os.getpid()}))
        print("checkpoint written; training on", flush=True)
        time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 60)
    ''',
}


def build_sdist() -> bytes:
    """The `emujob` sdist (tar.gz bytes), built the way the flow builds the trainer's (tasks.packaging)."""
    from tasks.packaging import build_trainer_sdist

    with tempfile.TemporaryDirectory(prefix="emujob-") as tmp:
        modules = {name: textwrap.dedent(source).lstrip() for name, source in MODULES.items()}
        root = write_tiny_project(Path(tmp) / "emujob", "emujob", "0.1.0", "emujob", modules)
        return build_trainer_sdist(root, Path(tmp) / "dist").path.read_bytes()


def run_module(job: dict, module: str, args: list[str] | None = None) -> dict:
    """Make the flow's CustomJob (snake_case) run `module` of the sdists it installs instead of trainer.task: the
    image's entrypoint reads FINSENT_PYTHON_MODULE (trainer/container/run_package.py). Returns the job."""
    from tasks.image import PYTHON_MODULE_ENV

    spec = job["job_spec"]["worker_pool_specs"][0]["container_spec"]
    spec["env"] = [e for e in spec.get("env", []) if e["name"] != PYTHON_MODULE_ENV]
    spec["env"].append({"name": PYTHON_MODULE_ENV, "value": module})
    if args is not None:
        spec["args"] = list(args)
    return job
