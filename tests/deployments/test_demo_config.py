"""A user's settings merged over the demo's: `make demo CONFIG=my.json` / FINSENT_DEMO_CONFIG, and FINSENT_CONFIG's
`base.json:mine.json` for serve and prefect.yaml's build step (one merge, deployments/serve.py `read_config_files`)."""

from __future__ import annotations

import json
import os

import pytest

from deployments import demo, demo_worker
from deployments.demo import DEMO_CONFIG, demo_settings
from deployments.serve import config_from_env, merge_config
from deployments.validate import deployment_settings
from tasks.errors import ConfigError

LABELS_012 = {"0": "negative", "1": "neutral", "2": "positive"}  # README's example: a CSV with labels 0/1/2


def test_objects_merge_key_by_key_and_lists_and_values_are_replaced():
    base = {"models": ["bert", "lstm"], "params": {"lstm": {"epochs": 15, "batch_size": 32}}, "bucket": "b",
            "data": {"uri": "a.zip"}}
    override = {"models": ["lstm"], "params": {"lstm": {"epochs": 2, "pretrained": None}}, "data": "replaced"}
    merged = merge_config(base, override)
    assert merged == {"models": ["lstm"], "params": {"lstm": {"epochs": 2, "batch_size": 32, "pretrained": None}},
                      "bucket": "b", "data": "replaced"}
    merged["params"]["lstm"]["epochs"] = 99
    assert base["params"]["lstm"]["epochs"] == 15 and override["params"]["lstm"]["epochs"] == 2  # copies


@pytest.fixture
def user_csv(tmp_path):
    path = tmp_path / "my.csv"
    path.write_text("text,label\nProfit rose.,2\nSales fell.,0\nThe meeting is Monday.,1\n")
    return path


def write(path, settings) -> str:
    path.write_text(json.dumps(settings))
    return str(path)


def test_the_readme_example_keeps_the_demos_settings_and_reads_the_users_csv(tmp_path, user_csv):
    mine = write(tmp_path / "my.json", {"data": {"uri": "my.csv", "label_map": LABELS_012}})
    settings, cfg = demo_settings({"FINSENT_DEMO_CONFIG": mine, "FINSENT_DATA_URI": "/the/makefiles/shared.zip"})
    assert cfg.data.label_map == LABELS_012
    assert cfg.data.uri == str(user_csv)  # relative to my.json's folder; the Makefile's FINSENT_DATA_URI lost
    demo_defaults = json.loads(DEMO_CONFIG.read_text())
    assert cfg.bucket == demo_defaults["bucket"] and list(cfg.models) == demo_defaults["models"]
    assert cfg.params["lstm"].epochs == demo_defaults["params"]["lstm"]["epochs"]
    assert settings["FINSENT_CONFIG"] == f"{DEMO_CONFIG}{os.pathsep}{mine}"


def test_without_a_user_file_the_demo_runs_its_own_settings_on_the_makefiles_data(user_csv):
    settings, cfg = demo_settings({"FINSENT_DATA_URI": str(user_csv)})
    assert settings == {"FINSENT_CONFIG": str(DEMO_CONFIG)}
    assert cfg.data.uri == str(user_csv) and cfg.data.label_map == {}


def test_serve_and_the_build_step_read_the_same_merge(tmp_path, user_csv):
    mine = write(tmp_path / "my.json", {"data": {"label_map": LABELS_012}, "params": {"lstm": {"epochs": 2}}})
    env = {"FINSENT_CONFIG": f"{DEMO_CONFIG}{os.pathsep}{mine}", "FINSENT_DATA_URI": str(user_csv)}
    served = config_from_env(env)
    assert served.data.label_map == LABELS_012 and served.params["lstm"].epochs == 2
    assert served.params["bert"].epochs == json.loads(DEMO_CONFIG.read_text())["params"]["bert"]["epochs"]
    deployed = deployment_settings(env, variable=lambda name: None)["config"]
    assert deployed == served.model_dump(mode="json")
    assert demo_settings({"FINSENT_DEMO_CONFIG": mine, "FINSENT_DATA_URI": str(user_csv)})[1] == served


@pytest.mark.parametrize("content, expected", [
    ("{not json", r"^FINSENT_CONFIG=.*my\.json: cannot read it as JSON"),
    ("[1, 2]", r"^FINSENT_CONFIG=.*my\.json: must hold a JSON object of PipelineConfig fields, not list$"),
    (json.dumps({"data": {"label_map": {"0": "bullish"}}}),
     r"^.*my\.json \(merged over deployments/emulators\.json\): invalid finsent config: data\.label_map\.0: "),
    (json.dumps({"data": {"uri": "missing.csv"}}), r"^data\.uri of .*my\.json: .*missing\.csv does not exist$"),
])
def test_a_bad_user_file_is_one_line_naming_it(tmp_path, content, expected):
    (tmp_path / "my.json").write_text(content)
    with pytest.raises(ConfigError, match=expected) as refused:
        demo_settings({"FINSENT_DEMO_CONFIG": str(tmp_path / "my.json")})
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("module", [demo, demo_worker], ids=["make demo", "make demo-worker"])
def test_a_bad_user_file_stops_the_demo_before_any_service_starts(module, tmp_path, monkeypatch, capsys):
    def must_not_start(*args, **kwargs):
        raise AssertionError("a service was started for a refused config")

    monkeypatch.setattr(module, "FakeGcs", must_not_start)
    monkeypatch.setenv("FINSENT_DEMO_CONFIG", write(tmp_path / "my.json", {"region": "us-central9"}))
    assert module.main() == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("finsent: error: ") and "my.json" in line and "region" in line
