"""tasks/layout.py: every object path of the bucket, from one object, and the tree it draws."""

from __future__ import annotations

from tasks.config import PipelineConfig
from tasks.layout import BucketLayout

LAYOUT = BucketLayout("bkt", "finsent")


def test_every_path_in_one_place():
    assert LAYOUT.root == "gs://bkt/finsent"
    assert LAYOUT.dataset_dir("f00d") == "gs://bkt/finsent/data/f00d"
    assert LAYOUT.dataset_file("f00d", "train.csv") == "gs://bkt/finsent/data/f00d/train.csv"
    assert LAYOUT.package("ab" * 32, "t-0.1.tar.gz") == "gs://bkt/finsent/packages/abababababababab/t-0.1.tar.gz"
    output = LAYOUT.run_output("Run/Key 1", "bert")
    # The run label: the run key as a GCP label value plus sha256(run key)[:10], like the job labels. Pinned: a new
    # digest would make a rerun after an upgrade miss its jobs and checkpoints.
    assert output == "gs://bkt/finsent/runs/run-key-1-e027b38ede/bert"
    assert LAYOUT.model_dir(output) == "gs://bkt/finsent/runs/run-key-1-e027b38ede/bert/model/"
    assert LAYOUT.metrics(output) == "gs://bkt/finsent/runs/run-key-1-e027b38ede/bert/model/metrics.json"
    assert LAYOUT.checkpoint_dir(output) == "gs://bkt/finsent/runs/run-key-1-e027b38ede/bert/checkpoints/"
    assert LAYOUT.trained_marker("k3y") == "gs://bkt/finsent/trained/k3y.json"
    assert LAYOUT.champion == "gs://bkt/finsent/champion.json"


def test_run_output_is_the_flows_value_before_the_layout():
    cfg = PipelineConfig(project="p", bucket="bkt")
    from tasks.run_identity import run_label

    run_key = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    assert BucketLayout.of(cfg).run_output(run_key, "lstm") == f"{cfg.base_uri}/runs/{run_label(run_key)}/lstm"


def test_prefix_slashes_and_an_empty_prefix():
    assert BucketLayout("bkt", "/a/b/").champion == "gs://bkt/a/b/champion.json"
    assert BucketLayout("bkt", "").champion == "gs://bkt/champion.json"
    assert BucketLayout("bkt").dataset_dir("f") == "gs://bkt/data/f"


def test_tree_names_every_object():
    tree = LAYOUT.tree()
    assert tree.splitlines()[0] == "gs://bkt/finsent/"
    names = [line.strip().split("  ")[0] for line in tree.splitlines()[1:]]
    assert names == [
        "data/<fingerprint>/",
        "data/<fingerprint>/train.csv",
        "data/<fingerprint>/validation.csv",
        "data/<fingerprint>/test.csv",
        "data/<fingerprint>/manifest.json",
        "packages/<sha256[:16]>/<sdist>",
        "runs/<run label>/<model>/",
        "runs/<run label>/<model>/model/",
        "runs/<run label>/<model>/model/metrics.json",
        "runs/<run label>/<model>/model/progress.json",
        "runs/<run label>/<model>/model/curves.svg",
        "runs/<run label>/<model>/checkpoints/",
        "runs/<run label>/<model>/trials/<trial>/",
        "trained/<inputs key>.json",
        "champion.json",
    ]


def test_design_doc_shows_the_tree_the_layout_produces():
    """docs/design.md draws the bucket for a newcomer: it must be the tree these methods produce, not a copy that
    drifts."""
    from pathlib import Path

    design = (Path(__file__).resolve().parents[2] / "docs" / "design.md").read_text(encoding="utf-8")
    assert f"```\n{BucketLayout('BUCKET', 'PREFIX').tree()}\n```" in design
