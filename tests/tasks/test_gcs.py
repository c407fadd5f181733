"""tasks/gcs.py against fake-gcs-server: create-only uploads, conditional writes, error mapping, credentials."""

from __future__ import annotations

import pytest

from tasks import gcs
from tasks.config import PipelineConfig
from tasks.errors import ConfigError, StorageError


class TestUris:
    @pytest.mark.parametrize("uri", ["s3://b/x", "/local/path", "gs:///x"])
    def test_a_malformed_uri_is_a_config_error(self, storage, uri):
        with pytest.raises(ConfigError, match=r"gs://BUCKET/PATH"):
            gcs.read_json(storage, uri)

    def test_a_bucket_is_not_an_object(self, storage):
        with pytest.raises(ConfigError, match=r"'gs://b/' names a bucket, not an object"):
            gcs.exists(storage, "gs://b/")


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
    def test_existing_bucket(self, storage, gcs_bucket):
        gcs.check_bucket(storage, gcs_bucket)

    def test_missing_bucket(self, storage):
        with pytest.raises(
            ConfigError,
            match=r"bucket gs://finsent-nope does not exist \(or is not visible to these credentials\): "
            r"create it with `gcloud storage buckets create gs://finsent-nope --location europe-west4`",
        ):
            gcs.check_bucket(storage, "finsent-nope", region="europe-west4")


class TestUploads:
    def test_upload_if_absent(self, storage, gcs_bucket, tmp_path):
        local = tmp_path / "a.txt"
        local.write_text("first")
        uri = f"gs://{gcs_bucket}/x/a.txt"
        assert gcs.upload_if_absent(storage, local, uri) is True
        local.write_text("second")
        assert gcs.upload_if_absent(storage, local, uri) is False
        assert gcs.download_bytes(storage, uri) == b"first"

    def test_concurrent_writer_loses_quietly(self, storage, gcs_bucket, tmp_path, monkeypatch):
        """Both writers saw 'absent'; the second create gets 412 and counts as already there."""
        from google.cloud.storage import Blob

        uri = f"gs://{gcs_bucket}/race.txt"
        storage.bucket(gcs_bucket).blob("race.txt").upload_from_string(b"winner")
        monkeypatch.setattr(Blob, "exists", lambda self, *a, **k: False)
        local = tmp_path / "race.txt"
        local.write_bytes(b"loser")
        assert gcs.upload_if_absent(storage, local, uri) is False
        monkeypatch.undo()
        assert gcs.download_bytes(storage, uri) == b"winner"


class TestJsonAndDownload:
    def test_read_json_absent(self, storage, gcs_bucket):
        assert gcs.read_json(storage, f"gs://{gcs_bucket}/nothing.json") is None
        assert gcs.exists(storage, f"gs://{gcs_bucket}/nothing.json") is False

    def test_compare_and_swap(self, storage, gcs_bucket):
        uri = f"gs://{gcs_bucket}/doc.json"
        generation = gcs.write_json(storage, uri, {"model": "bert", "macro_f1": 0.8}, if_generation_match=0)
        with pytest.raises(gcs.GenerationMismatchError, match=r"doc.json changed while being updated"):
            gcs.write_json(storage, uri, {"model": "lstm"}, if_generation_match=0)
        doc, seen = gcs.read_json_versioned(storage, uri)
        assert doc == {"model": "bert", "macro_f1": 0.8} and seen == generation
        gcs.write_json(storage, uri, {"model": "lstm"}, if_generation_match=seen)
        with pytest.raises(gcs.GenerationMismatchError):
            gcs.write_json(storage, uri, {"model": "stale"}, if_generation_match=seen)
        assert gcs.read_json(storage, uri) == {"model": "lstm"}

    def test_invalid_json(self, storage, gcs_bucket):
        storage.bucket(gcs_bucket).blob("bad.json").upload_from_string(b"{nope")
        with pytest.raises(StorageError, match=r"is not valid JSON"):
            gcs.read_json(storage, f"gs://{gcs_bucket}/bad.json")
