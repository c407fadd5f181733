"""FakeGcs from Python and the CLI; `python -m emulators up`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from emulator_testkit import gcs_client, pid_alive
from emulators.gcs import FakeGcs

ROOT = Path(__file__).resolve().parents[2]


def _client(endpoint: str, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    return gcs_client()


def test_session_fixture_serves_the_storage_client(gcs_emulator, gcs_bucket):
    client = gcs_client()
    client.bucket(gcs_bucket).blob("a/b.txt").upload_from_string("hello")
    assert [b.name for b in client.list_blobs(gcs_bucket)] == ["a/b.txt"]
    assert os.environ["STORAGE_EMULATOR_HOST"] == gcs_emulator.endpoint


def test_filesystem_backend_persists_across_restarts(tmp_path, monkeypatch):
    with FakeGcs(backend="filesystem", root=tmp_path) as gcs:
        gcs.create_bucket("persisted")
        _client(gcs.endpoint, monkeypatch).bucket("persisted").blob("x.txt").upload_from_string("kept")
        pid = gcs.pid
    assert not pid_alive(pid)
    with FakeGcs(backend="filesystem", root=tmp_path) as gcs:
        assert _client(gcs.endpoint, monkeypatch).bucket("persisted").blob("x.txt").download_as_text() == "kept"


def test_resumable_upload_location_points_at_the_emulator(gcs_emulator, gcs_bucket):
    client = gcs_client()
    blob = client.bucket(gcs_bucket).blob("big.bin", chunk_size=256 * 1024)
    blob.upload_from_string(b"x" * (600 * 1024))  # > chunk_size: a resumable upload
    assert client.bucket(gcs_bucket).get_blob("big.bin").size == 600 * 1024


def test_bad_backend_is_rejected():
    with pytest.raises(ValueError, match="backend"):
        FakeGcs(backend="s3")


def test_gcs_cli_prints_the_endpoint_and_stops_on_sigterm():
    proc = subprocess.Popen([sys.executable, "-m", "emulators.gcs", "--bucket", "cli-bucket"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("export STORAGE_EMULATOR_HOST=http://127.0.0.1:")
        endpoint = line.split("=", 1)[1]
        assert httpx.get(f"{endpoint}/storage/v1/b/cli-bucket").status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{endpoint}/storage/v1/b")


def test_up_starts_both_prints_env_and_leaves_no_process_behind(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "emulators", "up", "--bucket", "demo-bucket",
                             "--state-dir", str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        env = dict(proc.stdout.readline().strip()[len("export "):].split("=", 1) for _ in range(2))
        gcs, vertex = env["STORAGE_EMULATOR_HOST"], env["FINSENT_VERTEX_ENDPOINT"]
        assert httpx.get(f"{gcs}/storage/v1/b/demo-bucket").status_code == 200
        assert httpx.get(f"{vertex}/emulator/v1/health").json() == {"status": "ok"}
        children = subprocess.run(["pgrep", "-f", f"{gcs.rsplit(':', 1)[1]}|emulators.vertex.*{tmp_path}"],
                                  capture_output=True, text=True).stdout.split()
        assert len(children) >= 2
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    deadline = time.monotonic() + 5
    while any(pid_alive(int(pid)) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(int(pid)) for pid in children)
    for url in (f"{gcs}/storage/v1/b", f"{vertex}/emulator/v1/health"):
        with pytest.raises(httpx.ConnectError):
            httpx.get(url)
