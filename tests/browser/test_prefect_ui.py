"""A finished train run seen in the Prefect UI as a user sees it: headless Chromium renders the flow run's page and
its artifacts' pages, and the metrics table, the summary, the model's per-epoch table and its progress are in the
rendered text, and the curves chart is drawn.

Routes are those of Prefect 3's default UI (ui-v2, where the server sends `/`): /v2/runs/flow-run/$id?tab=Artifacts
and /v2/artifacts/artifact/$id (the route table of prefect/server/ui-v2's bundle). FINSENT_UI_SCREENSHOT=path.png
also saves the flow run page (docs/img/flow-run.png is one)."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import anyio
import pytest

from bench.ui_screenshot import Chromium, flow_run_url, shoot_flow_run
from tasks.progress import artifact_key

pytestmark = pytest.mark.slow
MODEL = "lstm"  # the tiny run's one model (conftest.finished_run)
REQUIRED = ("finsent-metrics", "finsent-summary", artifact_key(MODEL), f"finsent-epochs-{MODEL}")


def shown(value) -> str:
    """A JSON number as the UI (JavaScript's String) writes it: 2.0 -> '2', 0.3667 -> '0.3667'."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


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

        # Each table (the metrics, the model's per-epoch table) rendered with its column names; the metrics table
        # with each model's figures as the API holds them.
        for key, artifact in artifacts.items():
            if artifact.type == "table":
                rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
                cells = [shown(row[column]) for row in rows for column in ("model", "test_accuracy", "test_macro_f1")
                         if key == "finsent-metrics"]
                artifact_page(key, *rows[0], *cells)

        # The summary, rendered from markdown (its heading's text without the '## ').
        heading = artifacts["finsent-summary"].data.splitlines()[0]
        assert heading.startswith("## ")
        summary = artifact_page("finsent-summary", heading.removeprefix("## "))
        assert heading not in summary

        # The model's progress artifact: its percentage.
        artifact_page(artifact_key(MODEL), f"Progress: {shown(float(artifacts[artifact_key(MODEL)].data))}%")

        # The model's curves: the chart (an SVG data-URI image in the markdown, tasks/curves.py) is drawn, not
        # stripped by the UI's markdown sanitizer, and the sparkline table beside it is there (its "first → last"
        # column is only in a markdown that holds the chart).
        page = artifact_page(f"finsent-curves-{MODEL}", f"{MODEL}: training curves", "first → last")
        # Each SVG image scrolled into view (a lazily loaded image outside the viewport is never fetched) and decoded:
        # its naturalWidth, or why it failed.
        decoded = ("Promise.all(Array.from(document.images).filter(i => i.src.startsWith('data:image/svg')).map(i => "
                   "{ i.scrollIntoView(); return i.decode().then(() => i.naturalWidth, e => 'failed: ' + e); }))")
        deadline = time.monotonic() + 60  # the markdown view loads its renderer lazily (ui-v2's lazy-markdown)
        while True:
            widths = browser.evaluate(decoded, True) or []
            if any(isinstance(w, int) and w > 0 for w in widths) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(widths) == 1 and widths[0] > 0, (
            f"the curves chart is not drawn on its artifact's page: SVG images {widths}; the markdown begins "
            f"{artifacts[f'finsent-curves-{MODEL}'].data[:200]!r}; the page shows {page[:500]!r}")

        if path := os.environ.get("FINSENT_UI_SCREENSHOT"):
            shoot_flow_run(browser, ui_server, finished_run, Path(path), wait_for=tuple(artifacts))
