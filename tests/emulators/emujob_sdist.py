"""A throwaway training package (`emujob`) built into an sdist in the test, to run inside emulated jobs."""

from __future__ import annotations

import io
import tarfile
import textwrap
import time

MODULES = {
    "__init__.py": "",
    "_gcs.py": '''
        import os

        def client():
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage
            return storage.Client(credentials=AnonymousCredentials(), project="emulator")

        def split(uri):
            bucket, _, name = uri[len("gs://"):].partition("/")
            return bucket, name

        def write(uri, text):
            bucket, name = split(uri)
            client().bucket(bucket).blob(name).upload_from_string(text)

        def read(uri):
            bucket, name = split(uri)
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


def build_sdist(name: str = "emujob", version: str = "0.1.0") -> bytes:
    """A minimal setuptools sdist (tar.gz bytes) holding the `emujob` package."""
    root = f"{name}-{version}"
    files = {
        "pyproject.toml": textwrap.dedent(f'''
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{name}"
            version = "{version}"

            [tool.setuptools]
            packages = ["emujob"]
        '''),
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    }
    files.update({f"emujob/{mod}": textwrap.dedent(src).lstrip() for mod, src in MODULES.items()})
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(f"{root}/{path}")
            info.size, info.mtime, info.mode = len(data), 1_700_000_000, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
