"""The flow side of a running job's progress (tasks/progress.py), the curves (tasks/curves.py) and the cost of the
results (tasks/report.py): the pure functions, and the watcher against fake-gcs-server."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from google.cloud import storage

from tasks import progress as P
from tasks.config import parse_config
from tasks.curves import curves_markdown, curves_svg, sparkline
from tasks.layout import BucketLayout
from tasks.report import cost_markdown, epoch_rows, job_cost, results_rows

HISTORY = [{"epoch": 1, "loss": 1.05, "val_accuracy": 0.61, "val_macro_f1": 0.58, "seconds": 3.14},
           {"epoch": 2, "loss": 0.81, "val_accuracy": 0.70, "val_macro_f1": 0.68, "seconds": 3.06}]


def _record(**fields) -> dict:
    return {"model": "lstm", "epoch": 2, "epochs": 2, "step": 5, "steps_per_epoch": 10, "loss": 0.9, "percent": 75.0,
            "eta_seconds": 125, "val_macro_f1": 0.58, "samples_per_second": 321.0, "finished": False,
            "resumed_from_epoch": 0, "history": HISTORY[:1]} | fields


# --- pure -----------------------------------------------------------------------------------------------------------
def test_the_epoch_line_says_what_a_person_reads_in_the_log():
    assert P.epoch_line("lstm", HISTORY[1], 2) == "[lstm] epoch 2/2: loss 0.8100 val acc 0.7000 macro-F1 0.6800 (3.1s)"
    assert P.epoch_line("bert", {"epoch": 1}, 3) == "[bert] epoch 1/3: loss n/a val acc n/a macro-F1 n/a (n/as)"


def test_percent_from_the_record_clamped_or_derived():
    assert P.record_percent(_record()) == 75.0
    assert P.record_percent(_record(percent=140)) == 100.0 and P.record_percent(_record(percent=-3)) == 0.0
    assert P.record_percent(_record(percent=None)) == 75.0  # epoch 2 of 2, 5 of 10 steps
    assert P.record_percent(_record(percent="nan")) == 75.0
    assert P.record_percent({}) == 0.0


def test_the_description_gives_epoch_loss_f1_and_eta():
    text = P.progress_description("lstm", _record())
    assert text == ("**lstm**: epoch 2/2, step 5/10 · loss 0.9000 · val macro-F1 0.5800 · 321.0 samples/s · "
                    "ETA 2m 05s")
    done = P.progress_description("lstm", _record(finished=True, history=HISTORY, resumed_from_epoch=1))
    assert done.startswith("**lstm**: trained 2/2 epochs") and "ETA" not in done and "resumed after epoch 1" in done
    assert [P.format_eta(s) for s in (7, 3725, None)] == ["7s", "1h 02m", "?"]


def test_only_epochs_not_yet_logged_come_back_in_order():
    record = _record(history=[HISTORY[1], HISTORY[0]])
    assert [e["epoch"] for e in P.new_epochs(record, 0)] == [1, 2]
    assert [e["epoch"] for e in P.new_epochs(record, 1)] == [2]
    assert P.new_epochs(record, 2) == [] and P.new_epochs({}, 0) == []


def test_artifact_keys_are_what_prefect_accepts():
    assert P.artifact_key("lstm") == "finsent-progress-lstm"
    assert P.artifact_key("lstm/t0-F95009") == "finsent-progress-lstm-t0-f95009"


def test_sparklines_and_the_svg_chart_show_every_epoch():
    assert sparkline([1.0, 0.5, 0.0]) == "█▅▁" and sparkline([0.7, 0.7]) == "▅▅"
    assert sparkline([0.2, None, 0.9], 0.0, 1.0)[1] == " " and sparkline([]) == ""
    svg = curves_svg(HISTORY, "lstm <curves>")
    assert svg.startswith("<svg") and svg.endswith("</svg>") and "lstm &lt;curves&gt;" in svg
    assert svg.count("<polyline") == 3 and svg.count("<circle") == 6  # three series, two epochs each
    one = curves_svg(HISTORY[:1], "one epoch")
    assert one.count("<polyline") == 0 and one.count("<circle") == 3
    markdown = curves_markdown("lstm", HISTORY, "gs://b/runs/x/lstm/model/curves.svg")
    assert "](data:image/svg+xml;base64," in markdown and "| val macro-F1 |" in markdown
    assert "0.5800 → 0.6800" in markdown and "gs://b/runs/x/lstm/model/curves.svg" in markdown


def test_the_epoch_table_comes_from_train_history():
    rows = epoch_rows({"train": {"history": HISTORY}})
    assert rows == [{"epoch": 1, "train_loss": 1.05, "val_accuracy": 0.61, "val_macro_f1": 0.58, "seconds": 3.1},
                    {"epoch": 2, "train_loss": 0.81, "val_accuracy": 0.7, "val_macro_f1": 0.68, "seconds": 3.1}]
    assert epoch_rows({"train": {}}) == []  # metrics.json of a trainer before train.history


def _cfg(**fields):
    return parse_config({"project": "p", "region": "us-central1", "bucket": "bkt-test", "anonymous_credentials": True}
                        | fields)


def test_cost_is_running_time_times_the_list_price_or_says_why_not():
    priced = _cfg(machine_type="n1-standard-4", accelerator_type=None, accelerator_count=0)
    usd, note = job_cost(priced, 3600.0)
    assert usd == pytest.approx(0.21849885) and note.startswith("$0.2185 (3600s RUNNING at $0.2185/h")
    usd, note = job_cost(priced.model_copy(update={"scheduling_strategy": "SPOT"}), 3600.0)
    assert usd is None and note.startswith("not priced (") and "SPOT" in note
    usd, note = job_cost(_cfg(), 60.0)  # the default n1-standard-8 + T4 has no sourced price
    assert usd is None and "n1-standard-8" in note and "tasks/pricing.py" in note
    section, total = cost_markdown({"bert": (0.5, "$0.5000 (...)"), "lstm": (0.25, "$0.2500 (...)")})
    assert total == 0.75 and "**total**: $0.7500" in section
    section, total = cost_markdown({"bert": (None, "not priced (x)"), "lstm": (0.25, "$0.2500 (...)")})
    assert total is None and "not priced (1 of 2 job(s) have no price)" in section
    metrics = {"test": {"accuracy": 0.7, "macro_f1": 0.6}, "validation": {"macro_f1": 0.5}, "train": {}}
    assert results_rows({"lstm": metrics}, {"lstm": 0.01})[0]["cost_usd"] == 0.01
    assert results_rows({"lstm": metrics})[0]["cost_usd"] is None


# --- the watcher against fake-gcs-server ----------------------------------------------------------------------------
def _job(state: str):
    return SimpleNamespace(state=SimpleNamespace(name=state))


class CountingClient:
    """A real storage client that counts the requests the watcher makes through its blobs."""

    def __init__(self):
        self.client = storage.Client(project="t")
        self.downloads = 0

    def bucket(self, name):
        bucket = self.client.bucket(name)
        original = bucket.blob

        def blob(*args, **kwargs):
            made = original(*args, **kwargs)
            download = made.download_as_bytes

            def counted(*a, **k):
                self.downloads += 1
                return download(*a, **k)

            made.download_as_bytes = counted
            return made

        bucket.blob = blob
        return bucket


def test_the_watcher_reads_once_per_started_poll_and_logs_each_epoch_once(gcs_bucket):
    output_uri = f"gs://{gcs_bucket}/runs/r1/lstm"
    blob = storage.Client(project="t").bucket(gcs_bucket).blob(
        BucketLayout.progress(output_uri).removeprefix(f"gs://{gcs_bucket}/"))
    lines: list[str] = []
    client = CountingClient()
    watcher = P.ProgressWatcher(_cfg(bucket=gcs_bucket), "lstm", output_uri, lines.append, client=client,
                                artifacts=False)
    watcher(_job("JOB_STATE_PENDING"))
    assert client.downloads == 0, "no read before the job runs"
    watcher(_job("JOB_STATE_RUNNING"))  # not written yet: a 404, quietly
    blob.upload_from_string(json.dumps(_record(epoch=1, step=3, percent=15.0, history=[])))
    watcher(_job("JOB_STATE_RUNNING"))
    watcher(_job("JOB_STATE_RUNNING"))  # unchanged: nothing new shown
    blob.upload_from_string(json.dumps(_record(epoch=2, step=0, percent=50.0, history=HISTORY[:1])))
    watcher(_job("JOB_STATE_RUNNING"))
    # a resumed job's first record: below the high-water mark, with the history it resumed from
    blob.upload_from_string(json.dumps(_record(epoch=2, step=0, percent=40.0, history=HISTORY[:1])))
    assert watcher(_job("JOB_STATE_RUNNING")) is False, "training not finished: the watch keeps its schedule"
    blob.upload_from_string(json.dumps(_record(percent=100.0, finished=True, history=HISTORY)))
    assert watcher(_job("JOB_STATE_SUCCEEDED")) is True, "finished: the watch is told its job's end is near"
    assert client.downloads == 6 and watcher.reads == 6, "one request per poll once the job runs"
    assert watcher.percents == [15.0, 50.0, 50.0, 100.0], "shown once per change, never backwards"
    assert lines == ["[lstm] epoch 1/2: loss 1.0500 val acc 0.6100 macro-F1 0.5800 (3.1s)",
                     "[lstm] epoch 2/2: loss 0.8100 val acc 0.7000 macro-F1 0.6800 (3.1s)"]


def test_the_watcher_never_raises_and_warns_once(gcs_bucket):
    warnings: list[str] = []
    output_uri = f"gs://{gcs_bucket}/runs/r2/lstm"
    broken = SimpleNamespace(bucket=lambda name: (_ for _ in ()).throw(ConnectionError("network down")))
    watcher = P.ProgressWatcher(_cfg(bucket=gcs_bucket), "lstm", output_uri, print, client=broken,
                                artifacts=False, warn=warnings.append)
    for _ in range(3):
        watcher(_job("JOB_STATE_RUNNING"))
    assert len(warnings) == 1 and "cannot read the progress record" in warnings[0] and "network down" in warnings[0]
    blob = storage.Client(project="t").bucket(gcs_bucket).blob(
        BucketLayout.progress(output_uri).removeprefix(f"gs://{gcs_bucket}/"))
    blob.upload_from_string(b"{not json")
    watcher.client = storage.Client(project="t")
    watcher(_job("JOB_STATE_RUNNING"))
    watcher(_job("no state at all"))
    assert len(warnings) == 2 and "is not JSON" in warnings[1]
    watcher(None)  # whatever the watch hands it: no exception
