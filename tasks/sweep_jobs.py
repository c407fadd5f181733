"""A sweep's trials as Prefect tasks and Vertex jobs, and its winner (the pure side is tasks/sweep.py).

Separate from tasks/sweep.py because tasks/config.py imports that one (the `Sweep` model), while this one needs the
config, the runner and the storage helpers, which all import tasks/config.py.

How many trial jobs run at once, two caps:
- `sweep.parallel` per flow run: `TrialWindow` submits a trial's task only while fewer than `parallel` of the run's
  trials are unfinished (so waiting trials hold no thread and no slot);
- a Prefect global concurrency limit shared by every flow run on the same GPUs (`limit_name`: project, region and
  accelerator, the scope of Vertex's GPU quota): each trial task holds one slot from before its job is created
  until the job has ended. finsent creates the limit with `parallel` slots when it does not exist and never
  changes an existing one, so a limit an admin sized to the quota wins (a smaller one caps every run below its
  `parallel`; a larger one lets two runs share it while each keeps to its own `parallel`).
"""

from __future__ import annotations

import dataclasses

import re
from typing import TYPE_CHECKING

from prefect import get_client, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.futures import PrefectFuture

from tasks import gcs
from tasks.config import PipelineConfig
from tasks.errors import StorageError
from tasks.report import job_cost
from tasks.sweep import Trial, pick_winner, trial_rows
from tasks.training import train_model
from tasks.vertex import JobOutcome

if TYPE_CHECKING:
    from google.cloud.storage import Client as StorageClient

    from tasks.inputs import UploadedInputs
    from tasks.layout import BucketLayout

TRIALS_ARTIFACT = "finsent-trials-{model}"
# A slot's lease outlives a flow process that died by this long (Prefect renews it while the trial runs).
LEASE_SECONDS = 300.0


def limit_name(cfg: PipelineConfig) -> str:
    """The shared concurrency limit of the trials of every run on these GPUs (or this machine type without GPUs):
    Vertex's training quotas are per project and region, one per accelerator type (https://cloud.google.com/
    vertex-ai/docs/quotas: "Custom model training Nvidia T4 GPUs per region", metric
    aiplatform.googleapis.com/custom_model_training_nvidia_t4_gpus; "quotas generally apply at the Google Cloud
    project level")."""
    hardware = cfg.accelerator_type or cfg.machine_type
    return re.sub(r"[^a-z0-9_-]", "-", f"finsent-sweep-{cfg.project}-{cfg.region}-{hardware}".lower())


def ensure_limit(name: str, slots: int) -> int:
    """Create the global concurrency limit `name` with `slots` slots unless it exists; returns its size.
    An existing limit is never changed: an admin's setting wins over any run's `parallel`."""
    with get_client(sync_client=True) as client:
        try:
            existing = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
                return slots
            except ObjectAlreadyExists:  # another run created it meanwhile
                existing = client.read_global_concurrency_limit_by_name(name)
    if not existing.active:
        get_run_logger().warning(f"concurrency limit {name} is inactive: only sweep.parallel caps the trials")
    elif existing.limit == 0:
        get_run_logger().warning(f"concurrency limit {name} has 0 slots: the trials wait until it is raised "
                                 "(Prefect UI: Concurrency, or `prefect gcl update`)")
    return existing.limit


@task(name="train-trial", task_run_name="train-{model}-{trial}")
def train_trial(cfg: PipelineConfig, model: str, trial: str, *, limit: str, output_uri: str, package_uri: str,
                data_uri: str, run_key: str, env: dict[str, str]) -> JobOutcome:  # fmt: skip
    """One trial's job (`cfg` carries the trial's params), holding a slot of `limit` until the job has ended.
    `train_model`'s body, so cancel, reattach and the budget guard are the same as for any model's job."""
    # strict: a limit deleted since `ensure_limit` fails the trial instead of running it unlimited. A lease renewal
    # that fails once (Prefect's API briefly away) must not stop the watch of an hours-long job.
    with concurrency(limit, occupy=1, strict=True, lease_duration=LEASE_SECONDS, raise_on_lease_renewal_failure=False):
        return train_model.fn(cfg, model, package_uri=package_uri, data_uri=data_uri, output_uri=output_uri,
                              run_key=run_key, env=env, trial=trial)  # fmt: skip


def trial_config(cfg: PipelineConfig, trial: Trial) -> PipelineConfig:
    """`cfg` with the swept model's params replaced by the trial's (validated again by the params model)."""
    model = cfg.sweep.model
    params = type(cfg.params[model]).model_validate(trial.params)
    return cfg.model_copy(update={"params": cfg.params.model_copy(update={model: params})})


class TrialWindow:
    """The trials of the run's sweep, submitted as slots of `parallel` free up (see the module docstring).
    `top_up` is called from the flow's wait loop (tasks/training.py): no thread of its own."""

    def __init__(self, cfg: PipelineConfig, layout: BucketLayout, uploads: UploadedInputs, *, run_key: str,
                 env: dict[str, str]):  # fmt: skip
        assert cfg.sweep is not None
        self.cfg, self.model, self.parallel = cfg, cfg.sweep.model, cfg.sweep.parallel
        self.trials = cfg.sweep_trials()
        self.limit = limit_name(cfg)
        self.limit_slots = ensure_limit(self.limit, self.parallel)
        self._queued = list(self.trials)
        self.futures: dict[str, PrefectFuture] = {}
        # ids of the trials whose task has ended, set by the futures' callbacks: `future.state` would ask the
        # Prefect API about every unfinished trial twice a second
        self._ended: set[str] = set()
        self._job = {"package_uri": uploads.package_uri, "data_uri": uploads.data_uri, "run_key": run_key,
                     "env": env}  # fmt: skip
        self._layout = layout
        get_run_logger().info(
            f"[{self.model}] sweep of {len(self.trials)} trials, at most {self.parallel} at once here and "
            f"{self.limit_slots} across runs (concurrency limit {self.limit})"
        )

    @classmethod
    def of(cls, cfg: PipelineConfig, layout: BucketLayout, uploads: UploadedInputs, *, run_key: str,
           env: dict[str, str]) -> TrialWindow | None:  # fmt: skip
        """The run's window, or None when the config has no sweep."""
        return cls(cfg, layout, uploads, run_key=run_key, env=env) if cfg.sweep else None

    def top_up(self) -> list[PrefectFuture]:
        """Submit queued trials while fewer than `parallel` are unfinished; returns the unfinished futures."""
        running = [f for tid, f in self.futures.items() if tid not in self._ended]
        while self._queued and len(running) < self.parallel:
            trial = self._queued.pop(0)
            tid = trial.trial_id
            future = train_trial.submit(
                trial_config(self.cfg, trial), self.model, tid, limit=self.limit,
                output_uri=self._layout.trial_output(self._job["run_key"], self.model, tid), **self._job,
            )  # fmt: skip
            self.futures[tid] = future
            future.add_done_callback(lambda _, tid=tid: self._ended.add(tid))
            running.append(future)
        return running

    @property
    def done(self) -> bool:
        return not self._queued and self._ended >= set(self.futures)

    def results(self) -> dict[str, JobOutcome | BaseException]:
        """Each trial's outcome, or the error it failed with (a failed trial does not fail the sweep)."""
        return {tid: future.result(raise_on_failure=False) for tid, future in self.futures.items()}


@task(name="report-trials", cache_policy=NO_CACHE)
def report_trials(cfg: PipelineConfig, storage: StorageClient, layout: BucketLayout,
                  results: dict[str, JobOutcome | BaseException]) -> JobOutcome:  # fmt: skip
    """Read every succeeded trial's metrics.json, publish the trials table, and return the winner's outcome (best
    validation macro-F1): the model's result for the report and the champion rule. Fails when no trial succeeded."""
    model = cfg.sweep.model
    metrics, errors, seconds = {}, {}, {}
    for tid, result in results.items():
        if isinstance(result, BaseException):
            errors[tid] = str(result).split("\n", 1)[0]
            continue
        uri = layout.metrics(result.output_uri)
        found = gcs.read_json(storage, uri)
        if found is None:
            raise StorageError(f"{model} trial {tid}: the job succeeded but {uri} is missing; see {result.console_url}")
        metrics[tid], seconds[tid] = found, result.seconds
    if not metrics:
        first = next(iter(results.values()))
        raise first if isinstance(first, BaseException) else StorageError(f"{model}: the sweep ran no trial")
    winner = pick_winner(metrics)
    # each trial's RUNNING time x the list price, as the report prices a model's job (None: not priced); a failed
    # trial's time is not known here (its error has no outcome), so the sweep's total covers the succeeded ones
    cost = {tid: job_cost(cfg, result.running_seconds)[0] for tid, result in results.items()
            if not isinstance(result, BaseException)}  # fmt: skip
    total = round(sum(cost.values()), 6) if cost and None not in cost.values() else None
    rows = trial_rows(cfg.sweep_trials(), metrics, winner=winner, seconds_by_trial=seconds, errors=errors,
                      cost_by_trial=cost)  # fmt: skip
    spent = f"${total:.4f} for the succeeded trials" if total is not None else "cost not priced"
    create_table_artifact(
        key=TRIALS_ARTIFACT.format(model=model), table=rows,
        description=f"{model} sweep: the winner has the best validation macro-F1 (test figures for the record "
        f"only); {spent}",
    )  # fmt: skip
    best = metrics[winner]["validation"]["macro_f1"]
    get_run_logger().info(f"[{model}] sweep winner {winner} (validation macro-F1 {best:.4f}) of {len(metrics)} "
                          f"succeeded trials; {spent}" + (f"; failed: {', '.join(errors)}" if errors else ""))
    # The model's cost in the report (metrics table, summary, run total) is the whole sweep's: every succeeded trial
    # was paid for to pick this one (Vertex does not bill a job that failed for a reason other than a cancel).
    succeeded = [result for result in results.values() if not isinstance(result, BaseException)]
    return dataclasses.replace(results[winner], running_seconds=sum(result.running_seconds for result in succeeded))
