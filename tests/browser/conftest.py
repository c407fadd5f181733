"""The Prefect UI in a real browser: Debian's headless `chromium`, a `prefect server start` that serves the UI (the
session's prefect_test_harness server does not: it starts uvicorn with PREFECT_UI_ENABLED=0,
prefect/server/api/server.py SubprocessASGIServer._run_uvicorn_command), and one tiny train run on the emulators."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bench.ui_screenshot import find_chromium
from emulators._proc import free_port, kill_group, wait_http_ready
from emulators.sample_data import KAGGLE_CSV, write_phrasebank_sample
from tests.reliability.conftest import ROOT, lstm_config, subprocess_env

PREFECT = Path(sys.executable).parent / "prefect"


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser's path; the test is skipped, saying how to install it, where there is none."""
    path = find_chromium()
    if path is None:
        pytest.skip("chromium is not installed: apt-get install chromium")
    return path


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory) -> str:
    """`prefect server start` with the UI on a free port and its own SQLite; yields the UI's address."""
    home = tmp_path_factory.mktemp("prefect-ui-home")
    port = free_port()
    env = subprocess_env(f"http://127.0.0.1:{port}/api", PREFECT_HOME=str(home))
    log = home / "server.log"
    server = subprocess.Popen([str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        wait_http_ready(f"http://127.0.0.1:{port}/api/health", server, 120, f"prefect server (log: {log})")
        yield f"http://127.0.0.1:{port}"
    finally:
        kill_group(server)


@pytest.fixture(scope="session")
def finished_run(chromium, ui_server, vertex_emulator, gcs_emulator, tmp_path_factory) -> str:
    """The id of a completed train run (one BiLSTM, 2 epochs, 150 sentences) on `ui_server`."""
    if not KAGGLE_CSV.exists():
        pytest.skip(f"{KAGGLE_CSV} is not there (the data set is read from ../shared, never committed)")
    work = tmp_path_factory.mktemp("ui-run")
    csv = write_phrasebank_sample(work / "small.csv", per_class=50)
    bucket = f"ui-{uuid.uuid4().hex[:10]}"
    gcs_emulator.create_bucket(bucket)
    (work / "config.json").write_text(json.dumps(lstm_config(vertex_emulator.endpoint, bucket, str(csv), epochs=2)))
    run = subprocess.run(
        [sys.executable, "-c", "import json, sys\nfrom flows.train import train\n"
         "state = train(config=json.load(open(sys.argv[1])), return_state=True)\n"
         "print('FLOW_RUN', state.state_details.flow_run_id, state.type.value)", str(work / "config.json")],
        cwd=ROOT, env=subprocess_env(f"{ui_server}/api"), capture_output=True, text=True, timeout=600)
    found = [line.split()[1:] for line in run.stdout.splitlines() if line.startswith("FLOW_RUN ")]
    assert run.returncode == 0 and found and found[0][1] == "COMPLETED", run.stdout[-3000:] + run.stderr[-3000:]
    return found[0][0]
