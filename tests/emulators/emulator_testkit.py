"""Helpers for the emulator tests (a uniquely named module, so it cannot clash with other test dirs)."""

from __future__ import annotations

import time

from google.auth.credentials import AnonymousCredentials
from trainer.storage import parse_gs_uri

PROJECT, LOCATION = "finsent-test", "us-central1"
PARENT = f"projects/{PROJECT}/locations/{LOCATION}"
#: finsent's image: the emulator runs its entrypoint (trainer/container/run_package.py) on the host's Python.
IMAGE = f"{LOCATION}-docker.pkg.dev/{PROJECT}/finsent/finsent-trainer:test"


def image_spec(package_uri: str, module: str, args: list[str] | None = None, env: dict[str, str] | None = None) -> dict:
    """A containerSpec (snake_case) of finsent's image that installs `package_uri` and runs `module`."""
    env = {"FINSENT_PACKAGE_URIS": package_uri, "FINSENT_PYTHON_MODULE": module} | (env or {})
    return {"image_uri": IMAGE, "args": list(args or []), "env": [{"name": k, "value": v} for k, v in env.items()]}


def make_client(endpoint: str):
    from google.cloud import aiplatform_v1

    return aiplatform_v1.JobServiceClient(
        transport="rest", credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
    )


def gcs_client():
    """A storage client for the GCS emulator (STORAGE_EMULATOR_HOST), with no credentials."""
    from google.cloud import storage

    return storage.Client(credentials=AnonymousCredentials(), project="emulator")


def read_gcs_text(uri: str) -> str | None:
    """The text of the object at gs:// `uri`, or None if there is none."""
    bucket, name = parse_gs_uri(uri)
    blob = gcs_client().bucket(bucket).blob(name)
    return blob.download_as_text() if blob.exists() else None


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs; a zombie counts as dead (it only waits for its parent to reap it)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for_state(client, name: str, states: set[str], timeout: float = 60.0):
    """Poll get_custom_job until the state name is in `states`; raise with the last state on timeout."""
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        job = client.get_custom_job(name=name)
        if job.state.name in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"{name} did not reach {states} in {timeout} s; last state "
                         f"{job.state.name if job else None}, error {job.error if job else None}")
