"""gs:// everywhere (data, pretrained checkpoint, checkpoints, output) against fake-gcs-server."""

import json

from trainer_testkit import run_trainer


def test_bert_all_gcs_with_resume(gcs_inputs):
    bucket, inputs = gcs_inputs
    gs = f"gs://{bucket.name}"
    args = ["--model", "bert", *inputs, "--output-dir", f"{gs}/model", "--checkpoint-dir", f"{gs}/checkpoints",
            "--epochs", "2", "--batch-size", "16", "--max-seq-len", "64", "--learning-rate", "5e-3"]

    killed = run_trainer(*args, "--stop-after-epochs", "1")
    assert killed.returncode == 75, killed.stdout[-3000:] + killed.stderr
    assert not bucket.blob("model/metrics.json").exists()
    assert json.loads(bucket.blob("checkpoints/state.json").download_as_bytes())["epoch"] == 1

    proc = run_trainer(*args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    m = json.loads(bucket.blob("model/metrics.json").download_as_bytes())
    assert m["train"]["resumed_from_epoch"] == 1 and m["train"]["epochs_run"] == 2
    names = {b.name for b in bucket.list_blobs(prefix="model/")}
    assert {"model/model.keras", "model/vocab.txt", "model/labels.json"} <= names
    log = bucket.blob("checkpoints/epochs.jsonl").download_as_bytes().decode().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2]


def test_unreadable_gcs_object(gcs_inputs, splits):
    gs = f"gs://{gcs_inputs[0].name}"
    proc = run_trainer("--model", "lstm", "--train-data", f"{gs}/missing.csv", "--validation-data",
                       str(splits["validation"]), "--test-data", str(splits["test"]), "--output-dir", f"{gs}/out")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("finsent-trainer: error: cannot read gs://"), proc.stderr
