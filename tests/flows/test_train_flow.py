"""The flow `train` end to end: Prefect + fake-gcs-server + the Vertex emulator running real training jobs."""

from __future__ import annotations

import json

import pytest
from google.cloud import storage

from flows.train import train
from tasks.config import parse_config
from tasks.errors import ConfigError
from tasks.layout import BucketLayout
from tasks.run_identity import LABEL_FLOW_RUN, LABEL_RUN, run_label

pytestmark = pytest.mark.usefixtures("prefect_server")


def _champion_blob(bucket: str) -> storage.Blob:
    name = BucketLayout(bucket, "finsent").champion.removeprefix(f"gs://{bucket}/")
    return storage.Client(project="t").bucket(bucket).blob(name)


def _champion(bucket: str) -> dict | None:
    blob = _champion_blob(bucket)
    return json.loads(blob.download_as_bytes()) if blob.exists() else None


def _creates(admin) -> int:
    return sum(1 for r in admin.requests() if r["method"] == "create")


def _artifact_keys(flow_run_id) -> set[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    import anyio

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )

    return {a.key for a in anyio.run(read)}


def test_trains_both_models_reports_and_skips_an_unchanged_rerun(flow_config, vertex_admin, gcs_bucket):
    state = train(config=parse_config(flow_config), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert not result["skipped"]
    rows = {row["model"]: row for row in result["metrics"]}
    assert set(rows) == {"bert", "lstm"}
    for row in rows.values():
        assert 0.0 <= row["test_macro_f1"] <= 1.0 and row["epochs"] == 1
    assert result["bytes_uploaded"] > 0
    assert _creates(vertex_admin) == 2, "exactly one Vertex job per model"
    flow_run_id = str(state.state_details.flow_run_id)
    # the run key defaults to the flow run id; its label carries a digest of it (tasks/run_identity.py)
    jobs = [job for job in vertex_admin.jobs() if job.get("labels", {}).get(LABEL_RUN) == run_label(flow_run_id)]
    assert sorted(job["labels"]["finsent-model"] for job in jobs) == ["bert", "lstm"]
    assert all(job["labels"][LABEL_FLOW_RUN] == flow_run_id for job in jobs), "the orphan reaper's handle"
    assert all(job["state"] == "JOB_STATE_SUCCEEDED" for job in jobs)

    assert {"finsent-metrics", "finsent-confusion-bert", "finsent-confusion-lstm", "finsent-summary"} <= (
        _artifact_keys(state.state_details.flow_run_id)
    )
    champion = _champion(gcs_bucket)
    assert champion["model"] == result["winner"] and result["champion_promoted"]
    assert champion["test_macro_f1"] == pytest.approx(max(r["test_macro_f1"] for r in rows.values()), abs=1e-4)

    # Same data, trainer and settings: nothing uploaded, no job, and the run says why.
    again = train(config=parse_config(flow_config), return_state=True).result()
    assert again["skipped"] and again["inputs_key"] == result["inputs_key"]
    assert _creates(vertex_admin) == 2

    # Forced: trains again, uploads nothing (content-addressed), and a better champion is kept.
    better = dict(champion, test_macro_f1=0.999, model="lstm")
    _champion_blob(gcs_bucket).upload_from_string(json.dumps(better))
    forced = train(config=parse_config(flow_config), force=True, return_state=True).result()
    assert not forced["skipped"] and forced["bytes_uploaded"] == 0
    assert not forced["champion_promoted"] and "champion kept" in forced["verdict"]
    assert _champion(gcs_bucket)["test_macro_f1"] == 0.999
    assert _creates(vertex_admin) == 4


def test_missing_bucket_fails_before_any_upload_or_job(flow_config, vertex_admin):
    state = train(config=parse_config(flow_config | {"bucket": "no-such-bucket-here"}), return_state=True)
    assert state.is_failed()
    with pytest.raises(ConfigError, match=r"bucket gs://no-such-bucket-here does not exist"):
        state.result()
    assert _creates(vertex_admin) == 0
