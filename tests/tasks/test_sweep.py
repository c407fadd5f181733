"""tasks/sweep.py and the pure parts of tasks/sweep_jobs.py: a sweep's trials are a pure, validated function of the
config; each is its own job (labels, name, folder); the winner is chosen on validation macro-F1 only."""

from __future__ import annotations

import math
import re

import pytest

from tasks.config import PipelineConfig, parse_config
from tasks.errors import ConfigError
from tasks.inputs import inputs_key
from tasks.layout import BucketLayout
from tasks.run_identity import LABEL_TRIAL, identity, run_labels
from tasks.sweep import is_log_uniform, pick_winner, sample, trial_rows
from tasks.sweep_jobs import limit_name, trial_config
from tasks.vertex import JobRequest, build_custom_job

BASE = {"project": "p", "bucket": "finsent-test"}
GRID = {"model": "lstm", "grid": {"learning_rate": [1e-3, 2e-3], "dropout": [0.3, 0.5]}, "parallel": 2}
RANDOM = {"model": "bert", "random": {"learning_rate": [1e-5, 1e-4]}, "trials": 8, "seed": 0, "parallel": 4}


def config(sweep: dict, **more) -> PipelineConfig:
    return parse_config(BASE | {"sweep": sweep} | more)


def test_a_grid_is_every_combination_with_stable_ids_whatever_the_key_order():
    trials = config(GRID).sweep_trials()
    assert [t.values for t in trials] == [
        {"dropout": 0.3, "learning_rate": 1e-3}, {"dropout": 0.3, "learning_rate": 2e-3},
        {"dropout": 0.5, "learning_rate": 1e-3}, {"dropout": 0.5, "learning_rate": 2e-3},
    ]  # fmt: skip
    ids = [t.trial_id for t in trials]
    assert [i.split("-")[0] for i in ids] == ["t0", "t1", "t2", "t3"] and len(set(ids)) == 4
    assert all(re.fullmatch(r"t\d+-[0-9a-f]{6}", i) for i in ids)
    reordered = GRID | {"grid": {"dropout": [0.3, 0.5], "learning_rate": [1e-3, 2e-3]}}
    assert [t.trial_id for t in config(reordered).sweep_trials()] == ids
    # each trial is the model's configured params with the swept values, the others untouched
    for trial in trials:
        assert trial.params == PipelineConfig(**BASE).params["lstm"].model_dump() | trial.values
    assert config(GRID, params={"lstm": {"epochs": 3}}).sweep_trials()[0].params["epochs"] == 3


def test_a_changed_value_changes_that_trials_id_so_a_rerun_cannot_reattach_it_to_another_job():
    ids = [t.trial_id for t in config(GRID).sweep_trials()]
    changed = [t.trial_id for t in config(GRID | {"grid": {"learning_rate": [1e-3, 4e-3], "dropout": [0.3, 0.5]}})
               .sweep_trials()]  # fmt: skip
    assert changed[0] == ids[0] and changed[1] != ids[1]


def test_random_trials_are_seeded_and_deterministic():
    first = [t.values for t in config(RANDOM).sweep_trials()]
    assert first == [t.values for t in config(RANDOM).sweep_trials()]
    assert len(first) == 8 and len({v["learning_rate"] for v in first}) == 8
    assert all(1e-5 <= v["learning_rate"] <= 1e-4 for v in first)
    assert first != [t.values for t in config(RANDOM | {"seed": 1}).sweep_trials()]
    assert config(RANDOM | {"seed": None}).sweep_trials()[0].values == first[0], "seed defaults to 0"


def test_a_range_spanning_a_decade_is_sampled_log_uniformly_others_uniformly():
    assert is_log_uniform(1e-5, 1e-4) and is_log_uniform(1, 10) and is_log_uniform(16, 256)
    assert not is_log_uniform(0.1, 0.5) and not is_log_uniform(2, 19) and not is_log_uniform(0.0, 0.5)
    # the median of a log-uniform range is its geometric mean; of a uniform one, its midpoint
    assert sample(1e-5, 1e-3, "float", 0.5) == pytest.approx(1e-4, rel=1e-3)
    assert sample(0.1, 0.5, "float", 0.5) == pytest.approx(0.3)
    values = [t.values["learning_rate"] for t in config(RANDOM | {"trials": 60}).sweep_trials()]
    below_geometric_mean = sum(v < math.sqrt(1e-5 * 1e-4) for v in values)
    assert 20 <= below_geometric_mean <= 40, "about half below the geometric mean (uniform would put ~24% there)"


def test_an_integer_parameter_gets_integers_across_its_whole_range():
    sweep = {"model": "lstm", "random": {"lstm_units": [4, 8]}, "trials": 5, "seed": 3}
    values = sorted(t.values["lstm_units"] for t in config(sweep).sweep_trials())
    assert values == [4, 5, 6, 7, 8] and all(type(v) is int for v in values)
    log_ints = [t.values["lstm_units"] for t in config(sweep | {"random": {"lstm_units": [8, 512]}, "trials": 20})
                .sweep_trials()]  # fmt: skip
    assert all(type(v) is int and 8 <= v <= 512 for v in log_ints)
    # a float parameter keeps 4 significant digits (readable on the command line and in the table)
    assert all(float(f"{v:.4g}") == v for v in (t.values["learning_rate"] for t in config(RANDOM).sweep_trials()))


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        (GRID | {"grid": {"lr": [1e-3]}}, r"^invalid finsent config: sweep.grid.lr: lr is not a hyper-parameter of "
                                          r"lstm \(known: pretrained, "),
        (GRID | {"grid": {"learning_rate": [1e-3, 2.0]}},
         r"sweep.grid.learning_rate: learning_rate must be in \(0, 1\), got 2.0$"),
        (GRID | {"grid": {"pooling": ["cls"]}}, r"sweep.grid.pooling: pooling is not a hyper-parameter of lstm"),
        (GRID | {"grid": {"lstm_pooling": ["mean", "median"]}},
         r"sweep.grid.lstm_pooling: lstm_pooling must be one of mean, mean_max, got 'median'"),
        (GRID | {"grid": {"dropout": [0.3, 0.3]}}, r"sweep.grid.dropout: \[0.3, 0.3\] repeats a value"),
        (GRID | {"grid": {"dropout": []}}, r"sweep.grid.dropout: give at least one value"),
        (GRID | {"grid": {"seed": list(range(101))}}, r"sweep.grid: 101 combinations, more than 100 trials"),
        (GRID | {"trials": 4}, r"sweep.trials applies to random sweeps only"),
        (GRID | {"random": {"dropout": [0.1, 0.5]}}, r"give exactly one of grid .* or random"),
        ({"model": "lstm", "parallel": 2}, r"give exactly one of grid .* or random"),
        (GRID | {"parallel": 0}, r"sweep.parallel: Input should be greater than or equal to 1"),
        (GRID | {"lr": 1}, r"sweep.lr: Extra inputs are not permitted"),
        (RANDOM | {"trials": None}, r"sweep.trials: a random sweep needs the number of trials"),
        (RANDOM | {"random": {"pooling": [0, 1]}}, r"sweep.random.pooling: pooling is a choice parameter; sample "
                                                   r"numbers only \(list its values in a grid instead\)"),
        (RANDOM | {"random": {"learning_rate": [1e-4, 1e-5]}}, r"\[0.0001, 1e-05\] must be \[low, high\] with low < high"),
        (RANDOM | {"random": {"epochs": [1, 4.5]}}, r"sweep.random.epochs: epochs is an integer; give integer bounds"),
        (RANDOM | {"random": {"learning_rate": [1e-5, 1.0]}}, r"sweep.random.learning_rate: learning_rate must be "
                                                              r"in \(0, 1\), got 1.0"),
        (RANDOM | {"random": {"epochs": [1, 3]}, "trials": 5},
         r"sweep.random: only 3 distinct trials in 100 draws, fewer than trials 5; widen the ranges or lower trials"),
        # one value alone is fine, the combination is not: the error names the trial
        ({"model": "lstm", "grid": {"max_seq_len": [16, 64], "buckets": [[32]]}},
         r"sweep.grid: trial t0 \{\"buckets\": \[32\], \"max_seq_len\": 16\}: buckets 32: every length must be in "
         r"\[1, max_seq_len 16\]"),
    ],
)
def test_a_bad_sweep_is_refused_in_one_line_naming_the_field(sweep, message):
    with pytest.raises(ConfigError, match=message) as error:
        config(sweep)
    assert "\n" not in str(error.value)


def test_the_swept_model_must_be_one_of_the_models():
    with pytest.raises(ConfigError, match=r"sweep.model bert is not in models \(lstm\); add it to models$"):
        config(RANDOM, models=["lstm"])
    assert config(GRID, models=["lstm"]).sweep.model == "lstm"


def test_the_winner_is_chosen_on_validation_never_on_test():
    def metrics(validation: float, test: float) -> dict:
        return {"validation": {"macro_f1": validation, "accuracy": 0.5}, "test": {"macro_f1": test, "accuracy": 0.5}}

    assert pick_winner({"t0-a": metrics(0.60, 0.90), "t1-b": metrics(0.70, 0.50)}) == "t1-b"
    assert pick_winner({"t1-b": metrics(0.70, 0.9), "t0-a": metrics(0.70, 0.1), "t2-c": metrics(0.7, 0.5)}) == "t0-a"
    with pytest.raises(ValueError, match="no trial succeeded"):
        pick_winner({})


def test_the_trials_table_has_a_row_per_trial_failed_ones_included():
    trials = config(GRID).sweep_trials()
    ok = {"validation": {"macro_f1": 0.61234, "accuracy": 0.7}, "test": {"macro_f1": 0.5, "accuracy": 0.6},
          "train": {"epochs_run": 3}}  # fmt: skip
    ids = [t.trial_id for t in trials]
    rows = trial_rows(trials, {ids[0]: ok, ids[2]: ok}, winner=ids[0], seconds_by_trial={ids[0]: 12.34},
                      errors={ids[1]: "Vertex job x ended FAILED: out of memory"}, cost_by_trial={ids[0]: 0.01})
    assert [r["trial"] for r in rows] == ids and [r["winner"] for r in rows] == [True, False, False, False]
    assert rows[0] | {} == {"trial": ids[0], "winner": True, "params": "dropout=0.3, learning_rate=0.001",
                            "validation_accuracy": 0.7, "validation_macro_f1": 0.6123, "test_accuracy": 0.6,
                            "test_macro_f1": 0.5, "epochs": 3, "seconds": 12.3, "cost_usd": 0.01,
                            "state": "SUCCEEDED"}  # fmt: skip
    assert rows[1]["state"] == "FAILED: Vertex job x ended FAILED: out of memory"
    assert rows[1]["validation_macro_f1"] is None and rows[3]["state"] == "FAILED: no metrics"


def test_each_trial_is_its_own_job_with_its_params_labels_name_and_folder():
    cfg = config(GRID)
    layout = BucketLayout.of(cfg)
    run_key = "Nightly sweep/" + "x" * 200  # the longest label any run key can give
    jobs = []
    for trial in cfg.sweep_trials():
        request = JobRequest("lstm", package_uri="gs://b/p.tar.gz", data_uri="gs://b/d", run_key=run_key,
                             output_uri=layout.trial_output(run_key, "lstm", trial.trial_id), trial=trial.trial_id)
        jobs.append(build_custom_job(trial_config(cfg, trial), request, attempt=10))
        args = jobs[-1]["job_spec"]["worker_pool_specs"][0]["container_spec"]["args"]
        assert f"--learning-rate={trial.values['learning_rate']!r}" in args
        assert f"--dropout={trial.values['dropout']!r}" in args
    # https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.customJobs: displayName "can
    # be up to 128 characters"; label keys and values "no longer than 64 characters", "lowercase letters, numeric
    # characters, underscores and dashes"
    for job in jobs:
        assert len(job["display_name"]) <= 128
        assert all(re.fullmatch(r"[a-z0-9_-]{1,63}", v) for v in job["labels"].values())
    assert len({job["display_name"] for job in jobs}) == 4
    assert len({frozenset(identity(job["labels"]).items()) for job in jobs}) == 4, "a rerun finds each trial's job"
    assert len({job["job_spec"]["base_output_directory"]["output_uri_prefix"] for job in jobs}) == 4
    assert all(job["labels"][LABEL_TRIAL] in job["display_name"] for job in jobs)
    # the run's label, which the cancel paths (tasks/training.py) and the reaper select by, is on every trial
    assert all(run_labels(run_key).items() <= job["labels"].items() for job in jobs)
    single = build_custom_job(cfg, JobRequest("lstm", package_uri="p", data_uri="d", output_uri="o", run_key=run_key))
    assert LABEL_TRIAL not in single["labels"]


def test_the_inputs_key_follows_the_sweep():
    key = inputs_key(config(GRID), "data", "trainer")
    assert key != inputs_key(PipelineConfig(**BASE), "data", "trainer")
    assert key != inputs_key(config(GRID | {"grid": {"dropout": [0.3, 0.4]}}), "data", "trainer")
    assert key == inputs_key(config(GRID | {"parallel": 3}), "data", "trainer"), "how many at once changes no model"


def test_the_shared_limit_is_named_by_the_scope_of_the_gpu_quota():
    assert limit_name(config(GRID)) == "finsent-sweep-p-us-central1-nvidia_tesla_t4"
    cpu = config(GRID, accelerator_type=None, accelerator_count=0, machine_type="n1-standard-4")
    assert limit_name(cpu) == "finsent-sweep-p-us-central1-n1-standard-4"


def test_a_swept_batch_size_that_does_not_split_over_the_gpus_is_refused_before_upload():
    """2 x T4 train data-parallel (docs/scaling.md): every trial's global batch must divide by the devices."""
    raw = {"project": "p", "region": "us-central1", "bucket": "finsent-b", "models": ["lstm"],
           "machine_type": "n1-standard-8", "accelerator_type": "NVIDIA_TESLA_T4", "accelerator_count": 2,
           "sweep": {"model": "lstm", "grid": {"batch_size": [32, 33]}, "parallel": 2}}
    with pytest.raises(ConfigError, match=r"sweep trial t1-\w+ batch_size 33 .*divide by the 2 devices"):
        parse_config(raw)
    parse_config(raw | {"sweep": {"model": "lstm", "grid": {"batch_size": [32, 64]}, "parallel": 2}})
