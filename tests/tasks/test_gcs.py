"""tasks/gcs.py against fake-gcs-server: content-addressed uploads, conditional writes, credentials errors."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from google.api_core import exceptions as gexc

from tasks import gcs
from tasks.config import DataConfig, PipelineConfig
from tasks.dataset import prepare_dataset
from tasks.errors import ConfigError, StorageError
from tasks.packaging import TrainerPackage
from tests.tasks.conftest import phrasebank_zip


@pytest.fixture
def client(gcs_emulator, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    return gcs.storage_client_from_env("test-project")


@pytest.fixture
def prepared(tmp_path):
    source = tmp_path / "pb.zip"
    source.write_bytes(phrasebank_zip())
    return prepare_dataset(DataConfig(uri=str(source)), tmp_path / "work")


@pytest.fixture
def package(tmp_path) -> TrainerPackage:
    path = tmp_path / "finsent_trainer-0.1.0.tar.gz"
    path.write_bytes(b"not really a tarball, but bytes are bytes" * 10)
    return TrainerPackage(path=path, sha256="ab" * 32, filename=path.name)


def object_names(client, bucket: str) -> list[str]:
    return sorted(blob.name for blob in client.list_blobs(bucket))


class TestUris:
    @pytest.mark.parametrize(
        ("uri", "expected"),
        [("gs://b/a/b.csv", ("b", "a/b.csv")), ("gs://b", ("b", "")), ("gs://b/", ("b", ""))],
    )
    def test_parse(self, uri, expected):
        assert gcs.parse_gs_uri(uri) == expected

    @pytest.mark.parametrize("uri", ["s3://b/x", "/local/path", "gs:///x"])
    def test_parse_refuses(self, uri):
        with pytest.raises(ConfigError, match=r"gs://BUCKET/PATH"):
            gcs.parse_gs_uri(uri)


class TestCredentials:
    def test_emulator_means_anonymous(self, gcs_emulator, monkeypatch):
        from google.auth.credentials import AnonymousCredentials

        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
        client = gcs.storage_client(PipelineConfig(project="p", bucket="some-bucket"))
        assert isinstance(client._credentials, AnonymousCredentials)

    def test_missing_credentials(self, monkeypatch, tmp_path):
        for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud ADC file here
        monkeypatch.setenv("NO_GCE_CHECK", "True")  # not on a GCE VM: don't wait for the metadata server
        with pytest.raises(ConfigError, match=r"no GCP credentials: run `gcloud auth application-default login`, set GOOGLE_APPLICATION_CREDENTIALS"):
            gcs.storage_client(PipelineConfig(project="p", bucket="some-bucket"))

    def test_missing_credentials_block(self, monkeypatch, prefect_server):
        """The block is looked up on a real Prefect server, where none of that name exists."""
        monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
        with pytest.raises(ConfigError, match=r"no GcpCredentials block named 'prod-sa'"):
            gcs.storage_client(PipelineConfig(project="p", bucket="some-bucket", gcp_credentials_block="prod-sa"))


class TestBucket:
    def test_existing_bucket(self, client, gcs_bucket):
        gcs.check_bucket(client, gcs_bucket)

    def test_missing_bucket(self, client):
        with pytest.raises(
            ConfigError,
            match=r"bucket gs://finsent-nope does not exist \(or is not visible to these credentials\): "
            r"create it with `gcloud storage buckets create gs://finsent-nope --location europe-west4`",
        ):
            gcs.check_bucket(client, "finsent-nope", region="europe-west4")


class TestUploads:
    def test_upload_if_absent(self, client, gcs_bucket, tmp_path):
        local = tmp_path / "a.txt"
        local.write_text("first")
        uri = f"gs://{gcs_bucket}/x/a.txt"
        assert gcs.upload_if_absent(client, local, uri) is True
        local.write_text("second")
        assert gcs.upload_if_absent(client, local, uri) is False
        assert gcs.download_bytes(client, uri) == b"first"

    def test_concurrent_writer_loses_quietly(self, client, gcs_bucket, tmp_path, monkeypatch):
        """Both writers saw 'absent'; the second create gets 412 and counts as already there."""
        from google.cloud import storage

        uri = f"gs://{gcs_bucket}/race.txt"
        client.bucket(gcs_bucket).blob("race.txt").upload_from_string(b"winner")
        monkeypatch.setattr(storage.Blob, "exists", lambda self, *a, **k: False)
        local = tmp_path / "race.txt"
        local.write_bytes(b"loser")
        assert gcs.upload_if_absent(client, local, uri) is False
        monkeypatch.undo()
        assert gcs.download_bytes(client, uri) == b"winner"

    def test_dataset_is_content_addressed_and_uploaded_once(self, client, gcs_bucket, prepared):
        base = f"gs://{gcs_bucket}/finsent"
        folder, uploaded = gcs.upload_dataset(client, prepared, base)
        assert folder == f"{base}/data/{prepared.fingerprint}"
        assert uploaded == sum(p.stat().st_size for p in prepared.files)
        prefix = f"finsent/data/{prepared.fingerprint}/"
        assert object_names(client, gcs_bucket) == sorted(prefix + n for n in ("manifest.json", "test.csv", "train.csv", "validation.csv"))
        assert gcs.upload_dataset(client, prepared, base) == (folder, 0)
        assert gcs.read_json(client, f"{folder}/manifest.json") == prepared.manifest

    def test_manifest_goes_last_and_a_partial_upload_completes(self, client, gcs_bucket, prepared, monkeypatch):
        base = f"gs://{gcs_bucket}/p"
        real = gcs.upload_if_absent
        order = []

        def fail_on_manifest(c, local, uri):
            order.append(Path(uri).name)
            if uri.endswith("manifest.json"):
                raise gexc.ServiceUnavailable("injected")
            return real(c, local, uri)

        monkeypatch.setattr(gcs, "upload_if_absent", fail_on_manifest)
        with pytest.raises(gexc.ServiceUnavailable):
            gcs.upload_dataset(client, prepared, base)
        assert order == ["train.csv", "validation.csv", "test.csv", "manifest.json"]
        folder = f"{base}/data/{prepared.fingerprint}"
        assert not gcs.exists(client, f"{folder}/manifest.json")  # incomplete: not a data set yet
        monkeypatch.setattr(gcs, "upload_if_absent", real)
        _, uploaded = gcs.upload_dataset(client, prepared, base)
        assert uploaded == (prepared.directory / "manifest.json").stat().st_size

    def test_package(self, client, gcs_bucket, package):
        base = f"gs://{gcs_bucket}/finsent"
        uri, uploaded = gcs.upload_package(client, package, base)
        assert uri == f"{base}/packages/abababababababab/finsent_trainer-0.1.0.tar.gz"
        assert uploaded == package.path.stat().st_size
        assert gcs.upload_package(client, package, base) == (uri, 0)

    def test_upload_inputs_task_second_run_uploads_nothing(self, gcs_emulator, gcs_bucket, prepared, package, monkeypatch):
        from prefect.logging import disable_run_logger

        monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
        cfg = PipelineConfig(project="p", bucket=gcs_bucket, prefix="runs/")
        with disable_run_logger():
            first = gcs.upload_inputs.fn(cfg, prepared, package)
            second = gcs.upload_inputs.fn(cfg, prepared, package)
        assert first.bytes_uploaded > 0 and second.bytes_uploaded == 0
        assert second.data_uri == f"gs://{gcs_bucket}/runs/data/{prepared.fingerprint}"
        assert second.split_uri("train") == f"{second.data_uri}/train.csv"
        assert gcs.upload_inputs.name == "upload-inputs"


class TestJsonAndDownload:
    def test_read_json_absent(self, client, gcs_bucket):
        assert gcs.read_json(client, f"gs://{gcs_bucket}/nothing.json") is None
        assert gcs.exists(client, f"gs://{gcs_bucket}/nothing.json") is False

    def test_compare_and_swap(self, client, gcs_bucket):
        uri = f"gs://{gcs_bucket}/champion.json"
        generation = gcs.write_json(client, uri, {"model": "bert", "macro_f1": 0.8}, if_generation_match=0)
        with pytest.raises(gcs.GenerationMismatchError, match=r"champion.json changed while being updated"):
            gcs.write_json(client, uri, {"model": "lstm"}, if_generation_match=0)
        doc, seen = gcs.read_json_versioned(client, uri)
        assert doc == {"model": "bert", "macro_f1": 0.8} and seen == generation
        gcs.write_json(client, uri, {"model": "lstm"}, if_generation_match=seen)
        with pytest.raises(gcs.GenerationMismatchError):
            gcs.write_json(client, uri, {"model": "stale"}, if_generation_match=seen)
        assert gcs.read_json(client, uri) == {"model": "lstm"}

    def test_invalid_json(self, client, gcs_bucket):
        client.bucket(gcs_bucket).blob("bad.json").upload_from_string(b"{nope")
        with pytest.raises(StorageError, match=r"is not valid JSON"):
            gcs.read_json(client, f"gs://{gcs_bucket}/bad.json")


@pytest.mark.parametrize(
    ("error", "retry"),
    [(gexc.ServiceUnavailable("503"), True), (ConnectionResetError(), True), (ConfigError("no bucket"), False), (StorageError("403"), False)],
)
def test_retry_only_transient(error, retry):
    def result():
        raise error

    assert gcs._retry_transient(None, None, SimpleNamespace(result=result)) is retry
