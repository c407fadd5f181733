"""Orchestration benchmark: what the `train` flow costs on top of the Vertex job itself, on the local emulators.

Starts its own fake-gcs-server, Vertex emulator (subprocess runner: jobs really install the sdist and run) and a
temporary Prefect server (prefect_test_harness), then measures:

1. warm-run overhead: a warm-up flow run (lstm, 1 epoch, ~300 sentences, max_seq_len 16) fills the emulator's job
   venv cache and this process's imports; each measured run (force=True, new run_key; 3 runs, the median one is
   detailed) then gives flow wall time minus
   the job's own run time (emulator record: createTime -> endTime, and startTime -> endTime), broken down per task
   (Prefect task runs), the poll lag (job endTime -> the flow's "SUCCEEDED" log line) and the flow's finish (the
   last task's end -> the call's return: Prefect's teardown, its heartbeat thread's join included);
2. bytes uploaded by that forced unchanged re-run (content-addressed: target 0), and that a non-forced unchanged
   re-run skips without creating a job;
3. the progress watch's reads (tasks/progress.py, on the flow's own polls): GCS requests per poll over the measured
   runs, counted by the watchers themselves (each read is one GET of progress.json);
4. polling cost (in a thread, while the Prefect server starts and the flow runs of 1 go): a throwaway sdist whose module sleeps 60 s (not the trainer), submitted through
   `tasks.vertex.JobRunner.submit` + `watch` with the default `PollConfig()`: GETs counted by the emulator's request
   log, and how soon each state change was seen; plus, from the pure `next_poll_delay`, the polls of a one-hour job
   and the largest gap in the first minute.

Prints one JSON object on stdout (everything else goes to stderr). About 2-3 minutes on a 2-core VM:

    cd /work/main && KERAS_BACKEND=jax .venv/bin/python bench/orchestration.py
"""

from __future__ import annotations

import os

# Before prefect is imported: no telemetry, no wandb network, the trainer on JAX.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("KERAS_BACKEND", "jax")

import contextlib
import datetime as dt
import importlib.util
import json
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from emulators.sample_data import write_phrasebank_sample  # noqa: E402

PROJECT, REGION = "finsent-bench", "us-central1"
SLEEP_SECONDS = 60.0
MEASURED_RUNS = 3


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _ts(value) -> float:
    """RFC3339 string (emulator record) or datetime (Prefect) -> POSIX seconds."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.timestamp()


def _emujob_sdist() -> bytes:
    """The emulator tests' throwaway package (its `emujob.sleep` module sleeps argv[1] seconds)."""
    spec = importlib.util.spec_from_file_location("emujob_sdist", ROOT / "tests" / "emulators" / "emujob_sdist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_sdist()


def _poll_schedule(poll) -> dict:
    """Polls of a one-hour job under the pure schedule, and the largest gap between polls in its first minute."""
    from tasks.vertex import poll_schedule

    calls, gap = poll_schedule(poll)
    return {"one_hour_job_polls": calls, "first_minute_max_gap_s": round(gap, 2)}


# --- Prefect read-backs -------------------------------------------------------------------------------------------
def _flow_run_details(flow_run_id, wanted: str) -> tuple[list, list]:
    """Task runs and logs of a flow run; logs reach the server in batches, so flush and wait for `wanted`."""
    import anyio
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    async def read():
        async with get_client() as client:
            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            return tasks, logs

    tasks, logs = [], []
    for _ in range(20):
        APILogHandler().flush()
        tasks, logs = anyio.run(read)
        if any(wanted in rec.message for rec in logs):
            break
        time.sleep(0.5)
    return tasks, logs


def _measure_flow_run(train, cfg, *, force: bool, run_key: str, admin) -> dict:
    """Run the flow once; wall time, the job's times from the emulator, per-task durations and the poll lag."""
    from tasks.run_identity import LABEL_RUN, run_label

    t0 = time.time()
    state = train(config=cfg, force=force, run_key=run_key, return_state=True)
    t1 = time.time()
    if not state.is_completed():
        raise RuntimeError(f"flow run {run_key} ended {state.type}: {state.message}")
    result = state.result()
    out: dict = {
        "wall_s": round(t1 - t0, 3),
        "skipped": result["skipped"],
        "bytes_uploaded": result.get("bytes_uploaded"),
        "jobs_created": sum(1 for j in admin.jobs() if j.get("labels", {}).get(LABEL_RUN) == run_label(run_key)),
    }
    if result["skipped"]:
        return out

    job = next(j for j in admin.jobs() if j.get("labels", {}).get(LABEL_RUN) == run_label(run_key))
    created, started, ended = _ts(job["createTime"]), _ts(job["startTime"]), _ts(job["endTime"])
    task_runs, logs = _flow_run_details(state.state_details.flow_run_id, "SUCCEEDED after")
    steps = {}
    for tr in task_runs:
        name = tr.name.rsplit("-", 1)[0] if tr.name[-4:-3] == "-" else tr.name  # "fetch-dataset-a1b" -> base name
        if tr.start_time and tr.end_time:
            steps[name] = {
                "start_s": round(_ts(tr.start_time) - t0, 3),
                "duration_s": round(_ts(tr.end_time) - _ts(tr.start_time), 3),
            }
    # The flow logs "[lstm] JOB_STATE_SUCCEEDED after Ns" from JobRunner.watch's on_update: when it noticed the end.
    noticed = [_ts(rec.timestamp) for rec in logs if "SUCCEEDED after" in rec.message]
    submitted = [_ts(rec.timestamp) for rec in logs if "Vertex job projects/" in rec.message]
    job_total, job_running = ended - created, ended - started
    out |= {
        "job_name": job["name"],
        "job_create_to_end_s": round(job_total, 3),
        "job_start_to_end_s": round(job_running, 3),
        "job_queued_pending_s": round(started - created, 3),
        "overhead_s": round(out["wall_s"] - job_total, 3),
        "overhead_vs_running_s": round(out["wall_s"] - job_running, 3),
        "before_job_create_s": round(created - t0, 3),
        "after_job_end_s": round(t1 - ended, 3),
        "poll_lag_at_end_s": round(noticed[0] - ended, 3) if noticed else None,
        # The last task's end -> the flow call's return: Prefect's own teardown. Since Prefect 3.9 flows send
        # heartbeats by default (PREFECT_FLOWS_HEARTBEAT_FREQUENCY 180, PrefectHQ/prefect#21058) from a thread that
        # sleeps in 1 s steps, and the sync engine joins it on exit (prefect/flow_engine.py _send_heartbeats,
        # PrefectHQ/prefect#19641): 0-1 s of every flow run's end.
        "flow_finish_s": round(t1 - t0 - max((s["start_s"] + s["duration_s"] for s in steps.values()), default=0), 3),
        "create_to_submit_log_s": round(submitted[0] - created, 3) if submitted else None,
        "steps": steps,
    }
    return out


def _count_progress_watchers() -> list:
    """Every ProgressWatcher the flow's runners make from now on (they count their own polls and GCS reads)."""
    from tasks import progress

    made: list = []
    init = progress.ProgressWatcher.__init__

    def counting_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(self)

    progress.ProgressWatcher.__init__ = counting_init
    return made


# --- part 4: polling a 60 s job -----------------------------------------------------------------------------------
def _poll_sixty_second_job(gcs_endpoint: str, vertex_endpoint: str, bucket: str, admin) -> dict:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from tasks.config import parse_config
    from tasks.image import PACKAGE_URIS_ENV, PYTHON_MODULE_ENV
    from tasks.vertex import JobRunner, JobState

    uri = f"gs://{bucket}/bench/emujob-0.1.0.tar.gz"
    storage.Client(credentials=AnonymousCredentials(), project="bench").bucket(bucket).blob(
        "bench/emujob-0.1.0.tar.gz"
    ).upload_from_string(_emujob_sdist(), content_type="application/gzip")
    runner = JobRunner(parse_config({"project": PROJECT, "region": REGION, "bucket": bucket,
                                     "vertex_endpoint": vertex_endpoint, "anonymous_credentials": True}))
    run = uuid.uuid4().hex[:12]
    job = {
        "display_name": f"bench-sleep-{run}",
        "labels": {"bench-run": run},
        "job_spec": {
            "worker_pool_specs": [{
                "machine_spec": {"machine_type": "n1-standard-4"},
                "replica_count": 1,
                # finsent's image: the emulator runs its entrypoint, which installs `uri` and runs the module
                "container_spec": {
                    "image_uri": runner.cfg.image_uri,
                    "args": [str(SLEEP_SECONDS)],
                    "env": [{"name": PACKAGE_URIS_ENV, "value": uri}, {"name": PYTHON_MODULE_ENV, "value": "emujob.sleep"}],
                },
            }],
            "base_output_directory": {"output_uri_prefix": f"gs://{bucket}/bench/runs/{run}"},
        },
    }  # fmt: skip
    submitted = runner.submit(job)
    seen: dict[str, float] = {}

    def on_update(update, _elapsed: float) -> None:
        seen.setdefault(JobState(update.state).name, time.time())

    done = runner.watch(submitted.name, timeout_seconds=SLEEP_SECONDS + 600, on_update=on_update)  # PollConfig()
    job_id = done.name.rsplit("/", 1)[-1]
    mine = [r for r in admin.requests() if job_id in r.get("path", "") or run in r.get("query", "")
            or (r["method"] == "create" and r.get("job") in (job_id, done.name))]
    gets = sum(1 for r in admin.requests(method="get") if job_id in r.get("path", ""))
    record = admin.job(job_id)
    created, started, ended = _ts(record["createTime"]), _ts(record["startTime"]), _ts(record["endTime"])
    get_times = [_ts(r["time"]) for r in admin.requests(method="get") if job_id in r.get("path", "")]
    running_seen = seen.get("JOB_STATE_RUNNING")
    return {
        "final_state": JobState(done.state).name,
        "job_create_to_end_s": round(ended - created, 3),
        "job_start_to_end_s": round(ended - started, 3),
        "get_calls": gets,
        "get_calls_first_60s_after_create": sum(1 for t in get_times if t < created + 60),
        "max_gap_between_gets_s": round(max(b - a for a, b in zip(get_times, get_times[1:])), 3),
        "all_calls_for_the_job": len(mine),
        "calls_by_method": {m: sum(1 for r in mine if r["method"] == m) for m in sorted({r["method"] for r in mine})},
        "running_noticed_after_s": round(running_seen - started, 3) if running_seen else None,
        "succeeded_noticed_after_s": round(seen["JOB_STATE_SUCCEEDED"] - ended, 3),
        "states_seen": sorted(seen, key=seen.get),
    }


def main() -> dict:
    from prefect.testing.utilities import prefect_test_harness

    from emulators.gcs import FakeGcs
    from emulators.vertex import VertexEmulator
    from tasks.config import PollConfig, parse_config

    work = Path(tempfile.mkdtemp(prefix="finsent-bench-"))
    data = write_phrasebank_sample(work / "sample.csv", per_class=100)
    report: dict = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, python {platform.python_version()}",
        "poll_config": PollConfig().model_dump(),
    }
    # Freeze the trainer source for the whole benchmark (others may be editing trainer/ meanwhile): a changed
    # trainer would change the package hash between runs and defeat the unchanged-re-run measurements.
    import flows.train as train_module

    train_module.TRAINER_DIR = Path(shutil.copytree(train_module.TRAINER_DIR, work / "trainer",
                                                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")))
    with FakeGcs() as gcs:
        os.environ["STORAGE_EMULATOR_HOST"] = gcs.endpoint
        bucket = f"bench-{uuid.uuid4().hex[:10]}"
        gcs.create_bucket(bucket)
        with VertexEmulator(gcs_endpoint=gcs.endpoint, state_dir=work / "vertex-state") as vertex:
            admin = vertex.admin
            # The 60 s job is polled from a thread while the Prefect server starts and the warm-up runs (it only
            # sleeps; this keeps the benchmark under 4 min). Its calls are told apart by job id and label.
            poll_result: dict = {}
            poller = threading.Thread(target=lambda: poll_result.update(
                _poll_sixty_second_job(gcs.endpoint, vertex.endpoint, bucket, admin)), daemon=True)
            _log(f"polling a {SLEEP_SECONDS:.0f} s job with the default PollConfig (background thread)")
            poller.start()
            with prefect_test_harness(server_startup_timeout=60):
                from flows.train import train

                cfg = parse_config({
                    "project": PROJECT, "region": REGION, "bucket": bucket,
                    "vertex_endpoint": vertex.endpoint, "anonymous_credentials": True,
                    "models": ["lstm"],
                    "params": {"lstm": {"epochs": 1, "batch_size": 32, "max_seq_len": 16, "learning_rate": 0.003,
                                        "pretrained": None, "lstm_embeddings": "learned"}},
                    "data": {"uri": str(data)},
                })  # fmt: skip  (poll: the defaults, which is what is measured)
                _log("warm-up flow run")
                warm = _measure_flow_run(train, cfg, force=False, run_key="bench-warmup", admin=admin)
                watchers = _count_progress_watchers()
                runs = []
                for i in range(MEASURED_RUNS):
                    _log(f"warm-up: {warm['wall_s']} s; measured run {i + 1}/{MEASURED_RUNS} (force=True)")
                    runs.append(_measure_flow_run(train, cfg, force=True, run_key=f"bench-measured-{i}", admin=admin))
                measured = sorted(runs, key=lambda r: r["overhead_s"])[len(runs) // 2]  # the median run
                _log(f"overheads {[r['overhead_s'] for r in runs]}; unchanged non-forced re-run")
                skipped = _measure_flow_run(train, cfg, force=False, run_key="bench-skip", admin=admin)
                report["warm_run"] = measured
                report["warm_runs_overhead_s"] = [r["overhead_s"] for r in runs]
                report["warm_runs_poll_lag_at_end_s"] = [r["poll_lag_at_end_s"] for r in runs]
                report["warm_runs_flow_finish_s"] = [r["flow_finish_s"] for r in runs]
                report["warm_runs_overhead_median_s"] = statistics.median(r["overhead_s"] for r in runs)
                polls, reads = sum(w.polls for w in watchers), sum(w.reads for w in watchers)
                report["progress_watch"] = {"polls": polls, "gcs_reads": reads,
                                            "gcs_reads_per_poll": round(reads / polls, 3) if polls else None}
                report["warmup_run_wall_s"] = warm["wall_s"]
                report["unchanged_rerun"] = {
                    "forced_bytes_uploaded": max(r["bytes_uploaded"] for r in runs),
                    "first_run_bytes_uploaded": warm["bytes_uploaded"],
                    "not_forced_skipped": skipped["skipped"],
                    "not_forced_jobs_created": skipped["jobs_created"],
                    "not_forced_wall_s": skipped["wall_s"],
                }
                poller.join(timeout=SLEEP_SECONDS + 120)
                if not poll_result:
                    raise RuntimeError("the 60 s poll measurement did not finish")
            report["poll_60s_job"] = poll_result
            report["poll_schedule"] = _poll_schedule(PollConfig())
    run = report["warm_run"]
    report["targets"] = {
        "overhead_le_2s": report["warm_runs_overhead_median_s"] <= 2.0,
        "forced_rerun_uploads_0_bytes": report["unchanged_rerun"]["forced_bytes_uploaded"] == 0,
        "unforced_rerun_skips": report["unchanged_rerun"]["not_forced_skipped"]
        and report["unchanged_rerun"]["not_forced_jobs_created"] == 0,
        "one_hour_job_lt_120_polls": report["poll_schedule"]["one_hour_job_polls"] < 120,
        "progress_gcs_reads_le_1_per_poll": (report["progress_watch"]["gcs_reads_per_poll"] or 0) <= 1,
        "first_minute_changes_seen_within_10s": report["poll_schedule"]["first_minute_max_gap_s"] <= 10
        and (report["poll_60s_job"]["running_noticed_after_s"] or 0) <= 10,
    }
    return report


if __name__ == "__main__":
    started = time.time()
    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):  # flow prints and logs must not mix with the JSON
        result = main()
    result["bench_wall_s"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=2), file=stdout)
