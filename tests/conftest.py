"""Shared pytest fixtures. Each owner keeps fixtures in a marked block; keep this file importable."""

import os
import tempfile

# Before anything imports prefect: no telemetry (its SQLite writes race the test server), no wandb network.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("KERAS_BACKEND", "jax")
# Built trainer sdists (tasks/packaging.py) go to a cache of the test session, not the user's ~/.cache.
os.environ.setdefault("FINSENT_CACHE_DIR", tempfile.mkdtemp(prefix="finsent-test-cache-"))

# ---- emulators (owner: emulators/; see docs/emulators.md) ------------------------------------------------------
import os as _os
import uuid as _uuid

import pytest


@pytest.fixture(scope="session")
def gcs_emulator():
    """fake-gcs-server on a free port (memory backend), with STORAGE_EMULATOR_HOST set for the session.

    Yields `emulators.gcs.FakeGcs`: `.endpoint`, `.create_bucket(name)`, `.env`.
    """
    from emulators.gcs import FakeGcs

    previous = _os.environ.get("STORAGE_EMULATOR_HOST")
    with FakeGcs() as gcs:
        _os.environ["STORAGE_EMULATOR_HOST"] = gcs.endpoint
        try:
            yield gcs
        finally:
            if previous is None:
                _os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                _os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture(scope="session")
def vertex_emulator(gcs_emulator, tmp_path_factory):
    """The Vertex AI CustomJob emulator in a subprocess, wired to `gcs_emulator`, with a state dir.

    Yields `emulators.vertex.VertexEmulator`: `.endpoint` (the aiplatform `api_endpoint`), `.admin`.
    """
    from emulators.vertex import VertexEmulator

    with VertexEmulator(gcs_endpoint=gcs_emulator.endpoint,
                        state_dir=tmp_path_factory.mktemp("vertex-emulator-state")) as emulator:
        yield emulator


@pytest.fixture
def vertex_admin(vertex_emulator):
    """`vertex_emulator.admin` with faults and the request log cleared before and after the test."""
    admin = vertex_emulator.admin
    admin.reset()
    yield admin
    admin.reset()


@pytest.fixture
def gcs_bucket(gcs_emulator):
    """A fresh, empty bucket name on `gcs_emulator`."""
    name = f"test-{_uuid.uuid4().hex[:12]}"
    gcs_emulator.create_bucket(name)
    return name
# ---- end emulators ---------------------------------------------------------------------------------------------


# ---- Prefect (owner: flow) -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server (subprocess, temporary SQLite database) for the session; yields its API URL, which
    subprocesses (flow processes, deployment runners) need in PREFECT_API_URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield PREFECT_API_URL.value()
# ---- end Prefect -----------------------------------------------------------------------------------------------


# ---- shared builders (owner: flow) -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A tiny HF-format BERT checkpoint (config.json, model.safetensors, vocab.txt) with random weights."""
    from emulators.bert_checkpoint import build_tiny_bert_checkpoint

    return build_tiny_bert_checkpoint(tmp_path_factory.mktemp("tiny_bert"))
# ---- end shared builders ---------------------------------------------------------------------------------------
