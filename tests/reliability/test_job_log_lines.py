"""The trainer's own log lines reach the runner's log (the flow-run log in a flow), tagged with the model, read from
the emulator's Cloud Logging route while the job runs.

Keras prints "Epoch k/N" at the start of each epoch with `fit(verbose=2)` (keras/src/callbacks/progbar_logger.py,
on_epoch_begin: `self._maybe_init_progbar(); if self.verbose and self.epochs > 1: io_utils.print_msg(f"Epoch
{epoch + 1}/{self.epochs}")`), which trainer/src/trainer/train.py uses.
"""

from __future__ import annotations

import uuid

from tasks import vertex
from tasks.config import parse_config
from tests.reliability.conftest import lstm_config


def test_a_tiny_training_s_epoch_line_reaches_the_runner_log_tagged_with_the_model(vertex_emulator, vertex_admin,
                                                                                   staged):
    cfg = parse_config(lstm_config(vertex_emulator.endpoint, staged["bucket"], "unused", epochs=2))
    run_key = f"loglines-{uuid.uuid4().hex[:8]}"
    request = vertex.JobRequest("lstm", package_uri=staged["package_uri"], data_uri=staged["data_uri"],
                                output_uri=f"gs://{staged['bucket']}/rel/{run_key}/lstm", run_key=run_key)
    lines: list[str] = []
    outcome = vertex.JobRunner(cfg, log=lines.append).run(request)

    assert outcome.state == "JOB_STATE_SUCCEEDED"
    assert "[lstm] workerpool0-0: Epoch 2/2" in lines, "\n".join(lines)
    epoch_lines = [line for line in lines if line.startswith("[lstm] workerpool0-0: Epoch ")]
    assert epoch_lines == ["[lstm] workerpool0-0: Epoch 1/2", "[lstm] workerpool0-0: Epoch 2/2"], "once each, in order"
    running = lines.index(next(line for line in lines if "JOB_STATE_RUNNING" in line))
    assert lines.index("[lstm] workerpool0-0: Epoch 2/2") > running
    reads = vertex_admin.requests("list_log_entries")
    gets = vertex_admin.requests("get")
    assert reads and len(reads) <= len(gets), "at most one Logging read per poll: no loop of its own"
