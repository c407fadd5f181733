"""tasks/inputs.py: the upload step uploads nothing for unchanged inputs; the trained marker makes a rerun skip."""

from __future__ import annotations

import pytest
from prefect.logging import disable_run_logger

from tasks.config import DataConfig, PipelineConfig
from tasks.dataset import prepare_dataset
from tasks.inputs import find_trained, inputs_key, mark_trained, upload_inputs
from tasks.packaging import TrainerPackage
from tests.tasks.conftest import phrasebank_zip


@pytest.fixture
def prepared(tmp_path):
    source = tmp_path / "pb.zip"
    source.write_bytes(phrasebank_zip())
    return prepare_dataset(DataConfig(uri=str(source)), tmp_path / "work")


@pytest.fixture
def package(tmp_path) -> TrainerPackage:
    path = tmp_path / "finsent_trainer-0.1.0.tar.gz"
    path.write_bytes(b"sdist bytes" * 10)
    return TrainerPackage(path=path, sha256="cd" * 32, filename=path.name)


def test_second_upload_uploads_nothing(storage, layout, prepared, package):
    with disable_run_logger():
        first = upload_inputs.fn(storage, layout, prepared, package)
        second = upload_inputs.fn(storage, layout, prepared, package)
    assert first.bytes_uploaded > 0 and second.bytes_uploaded == 0
    assert second.data_uri == layout.dataset_dir(prepared.fingerprint)
    assert second.package_uri == layout.package(package.sha256, package.filename)
    assert upload_inputs.name == "upload-inputs"


def test_marker_after_a_finished_run(storage, layout):
    key = inputs_key(PipelineConfig(project="p", bucket="bkt"), "data-fp", "trainer-sha")
    assert find_trained.fn(storage, layout, key) is None
    mark_trained.fn(storage, layout, key, run_key="run-1", metrics=[{"model": "lstm"}])
    assert find_trained.fn(storage, layout, key) == {"run_key": "run-1", "metrics": [{"model": "lstm"}]}


def test_inputs_key_follows_data_trainer_and_settings():
    cfg = PipelineConfig(project="p", bucket="bkt")
    key = inputs_key(cfg, "data-fp", "trainer-sha")
    assert key == inputs_key(PipelineConfig(project="other", bucket="elsewhere"), "data-fp", "trainer-sha")
    assert key != inputs_key(cfg, "data-fp2", "trainer-sha")
    assert key != inputs_key(cfg, "data-fp", "trainer-sha2")
    assert key != inputs_key(cfg.model_copy(update={"models": ["lstm"]}), "data-fp", "trainer-sha")
    # another image is another environment (and so another model); finsent's own is the same in every project
    assert key != inputs_key(cfg.model_copy(update={"container_image_uri": "gcr.io/p/other:1"}), "data-fp", "trainer-sha")
