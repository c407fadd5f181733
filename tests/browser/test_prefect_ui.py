"""A finished train run seen in the Prefect UI as a user sees it: headless Chromium renders the flow run's page and
its artifacts' pages, and the metrics table, the summary and the progress of each model are in the rendered text.

Routes are those of Prefect 3's default UI (ui-v2, where the server sends `/`): /v2/runs/flow-run/$id?tab=Artifacts
and /v2/artifacts/artifact/$id (the route table of prefect/server/ui-v2's bundle). FINSENT_UI_SCREENSHOT=path.png
also saves the flow run page (docs/img/flow-run.png is one)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import anyio
import pytest

from bench.ui_screenshot import Chromium, flow_run_url, shoot_flow_run

pytestmark = pytest.mark.slow
REQUIRED = ("finsent-metrics", "finsent-summary")


async def _artifacts(api: str, flow_run_id: str) -> list:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with PrefectClient(api) as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(flow_run_id)])))
    return [artifact for artifact in found if artifact.key]


def test_the_finished_runs_page_shows_its_metrics_summary_and_progress(chromium, ui_server, finished_run):
    artifacts = {a.key: a for a in anyio.run(_artifacts, f"{ui_server}/api", finished_run)}
    assert set(REQUIRED) <= set(artifacts), sorted(artifacts)
    with Chromium(chromium) as browser:
        # The flow run's Artifacts tab: a card per keyed artifact (its type and key).
        page = browser.open(flow_run_url(ui_server, finished_run, "Artifacts"), wait_for=tuple(artifacts), timeout=90)
        assert "Completed" in page

        def artifact_page(key: str, *expected: str) -> str:
            return browser.open(f"{ui_server}/v2/artifacts/artifact/{artifacts[key].id}", wait_for=(key, *expected))

        # The metrics table, rendered as a table: each model's row with its figures as the API holds them.
        rows = artifacts["finsent-metrics"].data
        rows = json.loads(rows) if isinstance(rows, str) else rows
        cells = [str(value) for row in rows for value in (row["model"], row["test_accuracy"], row["test_macro_f1"])]
        artifact_page("finsent-metrics", *cells, *rows[0])  # and the column names

        # The summary, rendered from markdown (its heading's text without the '## ').
        heading = artifacts["finsent-summary"].data.splitlines()[0]
        assert heading.startswith("## ")
        summary = artifact_page("finsent-summary", heading.removeprefix("## "))
        assert heading not in summary

        # Each model's progress artifact (finsent-progress-<model>), where the run has one: its percentage.
        for key, artifact in artifacts.items():
            if artifact.type == "progress":
                artifact_page(key, f"Progress: {float(artifact.data):g}%")

        if path := os.environ.get("FINSENT_UI_SCREENSHOT"):
            shoot_flow_run(browser, ui_server, finished_run, Path(path), wait_for=tuple(artifacts))
