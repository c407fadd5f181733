"""Two tiny flows served for tests/deployments/test_demo_stream.py: `python -m tests.deployments.stream_flows`.

They log what a finsent run logs (a model's lines, a DEBUG line, a traceback) and write a finsent-metrics table, in
a second, so the demo's follower is tested against a real runner and server without a training."""

from __future__ import annotations

import time

from prefect import flow, get_run_logger, serve, task
from prefect.artifacts import create_table_artifact

from tasks.errors import DataError

EPOCHS = 3
ROWS = [{"model": "lstm", "test_accuracy": 0.5, "test_macro_f1": 0.4, "epochs": EPOCHS, "train_seconds": 1.5,
         "cost_usd": 0.0012}]
ERROR = "data.label_map: labels '0', '1', '2' are not negative/neutral/positive; map them, e.g. {'0': 'negative'}"


@task(task_run_name="train-{model}")
def train(model: str) -> None:
    log = get_run_logger()
    for epoch in range(1, EPOCHS + 1):
        log.info("[%s] workerpool0-0: Epoch %d/%d", model, epoch, EPOCHS)
        time.sleep(0.3)  # lines a poll apart
    log.debug("[%s] a DEBUG line the terminal hides", model)


@flow(name="stream-ok")
def ok() -> None:
    train("lstm")
    create_table_artifact(key="finsent-metrics", table=ROWS)


@flow(name="stream-fail")
def fails() -> None:
    get_run_logger().info("reading the data")
    raise DataError(ERROR)


if __name__ == "__main__":
    serve(ok.to_deployment(name="ok"), fails.to_deployment(name="fails"))
