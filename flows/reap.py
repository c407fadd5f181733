"""Flow `reap`: cancel the Vertex jobs that no flow run watches any more (deployment `reap/hourly`).

A `train` run that crashes, or whose process is killed, leaves its jobs running (so that a rerun with the same
run key can reattach); if nobody reruns it they would run, and bill, until their own timeout. This flow cancels
them once their flow run has been finished, crashed or gone for longer than `grace_seconds` (tasks/reaper.py
decides), and says what it did in a table artifact and the log.
"""

from __future__ import annotations

from dataclasses import asdict

from prefect import flow
from prefect.artifacts import create_table_artifact

from tasks.config import PipelineConfig, parse_config
from tasks.reaper import by_action, reap_jobs

ARTIFACT_KEY = "orphan-reaper"


@flow(name="reap", log_prints=True)
def reap(config: PipelineConfig, grace_seconds: int = 900) -> dict:
    """Cancel the orphaned finsent jobs of the config's project and region.

    Args:
        config: the same settings as `train` (project, region, credentials, Vertex endpoint are what is used).
        grace_seconds: how long a job's flow run must have been finished, crashed or gone before its job is
            cancelled (time to rerun a crashed run with the same run key, which reattaches to the job).

    Returns {"cancelled": [...], "left": [...], "reported": [...]}, job names; jobs without a flow-run label
    (created outside a flow run) are reported, never cancelled.
    """
    cfg = parse_config(config)
    rows = reap_jobs(cfg, grace_seconds)
    result = by_action(rows)
    create_table_artifact(
        key=ARTIFACT_KEY,
        table=[asdict(row) for row in rows] or [{"job": "", "action": "", "reason": "no unfinished finsent job"}],
        description=f"Orphan reaper, grace {grace_seconds}s: {len(result['cancelled'])} cancelled, "
        f"{len(result['left'])} left, {len(result['reported'])} reported",
    )
    print(f"Cancelled {len(result['cancelled'])} orphaned job(s): {result['cancelled'] or 'none'}; "
          f"reported {result['reported'] or 'none'}")
    return result
