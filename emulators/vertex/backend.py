"""The CustomJob service: create/get/list/cancel/delete, and one driver thread per job that moves it through
QUEUED -> PENDING -> RUNNING -> SUCCEEDED | FAILED | CANCELLING -> CANCELLED using a Runner.

Raises the domain errors of `errors.py`; knows nothing about HTTP.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import random
import threading
import time
import traceback
from collections import deque
from pathlib import Path

from emulators.vertex.errors import FailedPrecondition, InvalidArgument, JobSetupError, NotFound
from emulators.vertex.faults import Faults
from emulators.vertex.filters import parse_filter
from emulators.vertex.runner import BASE_ENV, ReplicaProcess, Runner, kill_process_group, proc_start_ticks
from emulators.vertex.spec import active_pools, normalize_custom_job, parse_duration, replica_count, validate_custom_job
from emulators.vertex.state import JobRecord, JobState, JobStore, ReplicaInfo, now_rfc3339

S = JobState
#: google.rpc.Code values used in job errors.
CODE_CANCELLED, CODE_INVALID_ARGUMENT, CODE_DEADLINE_EXCEEDED, CODE_INTERNAL, CODE_UNAVAILABLE = 1, 3, 4, 13, 14
TF_TASK_TYPES = ("chief", "worker", "ps", "evaluator")


def _tail(path: Path, lines: int = 10) -> str:
    try:
        with open(path, "rb") as f:
            text = deque(f, maxlen=lines)
    except OSError:
        return ""
    return b"".join(text).decode("utf-8", "replace").rstrip()


class JobService:
    """In-process CustomJob backend.

    Args:
        store: where job records live (persistent with a state dir).
        runner: runs replicas (SubprocessRunner or InstantRunner).
        faults: shared fault configuration (preemption is applied here).
        data_dir: per-job work directories and logs (`work/<job id>/`).
        base_url: this server's URL, for the log links put in `webAccessUris`.
        tick: seconds each quick state (QUEUED, PENDING, CANCELLING) lasts at least, so polls can observe it.
        kill_grace: seconds between SIGTERM and SIGKILL when killing a replica's process group.
        max_running: jobs running at once, like a regional GPU quota; the others wait in PENDING. None: no limit.
    """

    def __init__(self, store: JobStore, runner: Runner, faults: Faults, data_dir: Path, base_url: str,
                 tick: float = 0.2, kill_grace: float = 2.0, max_running: int | None = None) -> None:
        self.store = store
        self.runner = runner
        self.faults = faults
        self.data_dir = Path(data_dir)
        self.base_url = base_url.rstrip("/")
        self.tick = tick
        self.kill_grace = kill_grace
        self._wake: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._shutdown = threading.Event()
        self._capacity = threading.Semaphore(max_running) if max_running else None

    # ---- API methods -------------------------------------------------------------------------------------------

    def create(self, project: str, location: str, body: object) -> JobRecord:
        job = normalize_custom_job(body)
        validate_custom_job(job, location)
        job_id = str(random.randint(10**18, 9 * 10**18))
        stamp = now_rfc3339()
        for _, pool in active_pools(job):
            pool.setdefault("replicaCount", "1")
            pool.setdefault("diskSpec", {"bootDiskType": "pd-ssd", "bootDiskSizeGb": 100})
        job.update({
            "name": f"projects/{project}/locations/{location}/customJobs/{job_id}",
            "state": S.JOB_STATE_QUEUED.name,
            "createTime": stamp,
            "updateTime": stamp,
            # Labels cannot hold a URL (charset limits), so the log link goes here. Real Vertex fills this map only
            # with enableWebAccess (keys "workerpool0-0"); the key "emulator-log" cannot clash with those.
            "webAccessUris": {"emulator-log": f"{self.base_url}/emulator/v1/jobs/{job_id}/log"},
        })
        record = JobRecord(resource=job, job_id=job_id)
        self.store.add(record)
        self._log_event(record, f"Job created: {job.get('displayName')!r}")
        self._start_driver(record)
        return record

    def get(self, name: str) -> JobRecord:
        job_id = name.rsplit("/", 1)[-1]
        record = self.store.get(job_id)
        if record is None or record.name != name:
            raise NotFound(f'The CustomJob "{name}" does not exist.')
        return record

    def list(self, project: str, location: str, filter_text: str | None, page_size: int | None,
             page_token: str | None) -> tuple[list[dict], str | None]:
        predicate = parse_filter(filter_text)
        prefix = f"projects/{project}/locations/{location}/customJobs/"
        with self.store.lock:
            jobs = [copy.deepcopy(r.resource) for r in self.store.all() if r.name.startswith(prefix)]
        jobs = [j for j in jobs if predicate(j)]
        jobs.sort(key=lambda j: (j["createTime"], j["name"]), reverse=True)
        offset = 0
        if page_token:
            try:
                offset = int(base64.urlsafe_b64decode(page_token.encode()).decode())
            except ValueError:
                raise InvalidArgument(f"Invalid page token {page_token!r}.") from None
        size = page_size if page_size and page_size > 0 else 100
        page = jobs[offset:offset + size]
        next_token = None
        if offset + size < len(jobs):
            next_token = base64.urlsafe_b64encode(str(offset + size).encode()).decode()
        return page, next_token

    def cancel(self, name: str) -> None:
        record = self.get(name)
        with self.store.lock:
            state = record.state
            if state in (S.JOB_STATE_CANCELLING,):
                return
            if state.terminal:
                raise FailedPrecondition(f"Cannot cancel CustomJob \"{name}\" because it is in state {state.name}.")
            record.cancel_requested = True
            record.transition(S.JOB_STATE_CANCELLING)
            self.store.save(record)
        self._log_event(record, "Cancel requested")
        self._wake_driver(record.job_id)

    def delete(self, name: str) -> dict:
        record = self.get(name)
        with self.store.lock:
            if not record.state.terminal:
                raise FailedPrecondition(
                    f"CustomJob \"{name}\" is in state {record.state.name} and cannot be deleted; cancel it first."
                )
            self.store.remove(record.job_id)
        stamp = now_rfc3339()
        return {
            "name": f"{name}/operations/{random.randint(10**18, 9 * 10**18)}",
            "metadata": {
                "@type": "type.googleapis.com/google.cloud.aiplatform.v1.DeleteOperationMetadata",
                "genericMetadata": {"createTime": stamp, "updateTime": stamp},
            },
            "done": True,
            "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
        }

    # ---- admin ------------------------------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        return self.data_dir / "work" / job_id

    def job_log(self, job_id: str, replica: str | None = None) -> str:
        if self.store.get(job_id) is None and not self.job_dir(job_id).exists():
            raise NotFound(f"No job with id {job_id}.")
        directory = self.job_dir(job_id)
        if replica:
            return (directory / f"{replica}.log").read_text(errors="replace") if (directory / f"{replica}.log").exists() else ""
        parts = []
        events = directory / "emulator.log"
        if events.exists():
            parts.append(events.read_text(errors="replace"))
        for path in sorted(directory.glob("workerpool*.log")):
            parts.extend(f"[{path.stem}] {line}\n" for line in path.read_text(errors="replace").splitlines())
        return "".join(parts)

    def admin_jobs(self) -> list[dict]:
        with self.store.lock:
            return [self.admin_view(r) for r in self.store.all()]

    def admin_view(self, record: JobRecord) -> dict:
        view = copy.deepcopy(record.resource)
        view["emulator"] = {
            "jobId": record.job_id,
            "createResponseDropped": record.create_response_dropped,
            "cancelRequested": record.cancel_requested,
            "preemptions": record.preemptions,
            "replicas": [vars(r).copy() for r in record.replicas],
            "logUrl": f"{self.base_url}/emulator/v1/jobs/{record.job_id}/log",
            "workDir": str(self.job_dir(record.job_id)),
        }
        return view

    def forget_all_jobs(self) -> None:
        """Cancel every live job and drop all records (admin reset)."""
        for record in self.store.all():
            if not record.state.terminal:
                try:
                    self.cancel(record.name)
                except FailedPrecondition:
                    pass
        for job_id, thread in list(self._threads.items()):
            thread.join(timeout=self.kill_grace + 5)
        for record in self.store.all():
            self.store.remove(record.job_id)

    # ---- lifecycle --------------------------------------------------------------------------------------------

    def recover(self) -> None:
        """After a restart with a state dir: kill leftover replicas, then resume, restart or fail unfinished jobs.

        QUEUED/PENDING jobs start over. RUNNING jobs restart when `scheduling.restartJobOnWorkerRestart` is set,
        otherwise they end FAILED (code 13, an infrastructure error). CANCELLING jobs end CANCELLED.
        """
        for record in self.store.all():
            if record.state.terminal:
                continue
            for replica in record.replicas:
                if replica.pid and replica.exit_code is None and proc_start_ticks(replica.pid) == replica.start_ticks:
                    kill_process_group(replica.pid, self.kill_grace)
            state = record.state
            if state == S.JOB_STATE_CANCELLING:
                self._finish(record, S.JOB_STATE_CANCELLED, {"code": CODE_CANCELLED, "message": "CANCELED"})
            elif state in (S.JOB_STATE_QUEUED, S.JOB_STATE_PENDING):
                if state == S.JOB_STATE_PENDING:
                    record.transition(S.JOB_STATE_QUEUED)
                    self.store.save(record)
                self._log_event(record, "Emulator restarted: job queued again")
                self._start_driver(record)
            elif state == S.JOB_STATE_RUNNING and self._restart_on_worker_restart(record):
                self._log_event(record, "Emulator restarted: restarting replicas (restartJobOnWorkerRestart)")
                self._start_driver(record)
            else:
                self._finish(record, S.JOB_STATE_FAILED, {
                    "code": CODE_INTERNAL,
                    "message": "The job was interrupted by an infrastructure failure: the emulator restarted while "
                               "its replicas were running. Set scheduling.restartJobOnWorkerRestart to restart "
                               "the job instead.",
                })

    def shutdown(self) -> None:
        """Stop driving jobs and kill every replica; RUNNING jobs stay RUNNING on disk for `recover`."""
        self._shutdown.set()
        for event in list(self._wake.values()):
            event.set()
        for thread in list(self._threads.values()):
            thread.join(timeout=self.kill_grace + 5)

    # ---- driver -----------------------------------------------------------------------------------------------

    def _start_driver(self, record: JobRecord) -> None:
        self._wake[record.job_id] = threading.Event()
        thread = threading.Thread(target=self._drive, args=(record,), name=f"job-{record.job_id}", daemon=True)
        self._threads[record.job_id] = thread
        thread.start()

    def _wake_driver(self, job_id: str) -> None:
        event = self._wake.get(job_id)
        if event is not None:
            event.set()

    def _sleep(self, record: JobRecord, seconds: float) -> None:
        event = self._wake.get(record.job_id)
        if event is not None and seconds > 0:
            event.wait(seconds)

    def _restart_on_worker_restart(self, record: JobRecord) -> bool:
        scheduling = record.resource.get("jobSpec", {}).get("scheduling") or {}
        return bool(scheduling.get("restartJobOnWorkerRestart"))

    def _log_event(self, record: JobRecord, message: str) -> None:
        directory = self.job_dir(record.job_id)
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / "emulator.log", "a") as f:
            f.write(f"{now_rfc3339()} [emulator] {message}\n")

    def _transition(self, record: JobRecord, new: JobState, error: dict | None = None) -> None:
        with self.store.lock:
            record.transition(new, error)
            self.store.save(record)
        self._log_event(record, f"State {new.name}" + (f": {error['message'].splitlines()[0]}" if error else ""))

    def _finish(self, record: JobRecord, new: JobState, error: dict | None = None) -> None:
        with self.store.lock:
            if record.state.terminal:
                return
            if record.state == S.JOB_STATE_CANCELLING and new != S.JOB_STATE_CANCELLED:
                # A cancel raced with the job's own end: Vertex reports the cancel.
                new, error = S.JOB_STATE_CANCELLED, {"code": CODE_CANCELLED, "message": "CANCELED"}
            if new == S.JOB_STATE_CANCELLED and record.state != S.JOB_STATE_CANCELLING:
                record.transition(S.JOB_STATE_CANCELLING)
        self._transition(record, new, error)

    def _stopping(self, record: JobRecord) -> bool:
        return record.cancel_requested or self._shutdown.is_set()

    def _finish_cancel(self, record: JobRecord, cancel_started: float) -> None:
        # Keep CANCELLING visible for at least one tick, like Vertex's asynchronous cancel.
        time.sleep(max(0.0, self.tick - (time.monotonic() - cancel_started)))
        self._finish(record, S.JOB_STATE_CANCELLED, {"code": CODE_CANCELLED, "message": "CANCELED"})

    def _drive(self, record: JobRecord) -> None:
        try:
            self._drive_inner(record)
        except Exception as exc:  # an emulator bug must not leave a job hanging in a live state
            self._log_event(record, "Internal error:\n" + traceback.format_exc())
            if not record.state.terminal and not self._shutdown.is_set():
                try:
                    self._finish(record, S.JOB_STATE_FAILED,
                                 {"code": CODE_INTERNAL, "message": f"Internal emulator error: {exc!r}"})
                except Exception:
                    self._log_event(record, "Could not fail the job:\n" + traceback.format_exc())

    def _drive_inner(self, record: JobRecord) -> None:
        started = time.monotonic()
        resume = record.state == S.JOB_STATE_RUNNING
        if not resume:
            self._sleep(record, self.tick)
            if self._shutdown.is_set():
                return
            if record.cancel_requested:
                return self._finish_cancel(record, started)
            self._transition(record, S.JOB_STATE_PENDING)
        pending_started = time.monotonic()
        workdir = self.job_dir(record.job_id)
        try:
            prepared = self.runner.prepare(record.resource, workdir, lambda m: self._log_event(record, m))
        except JobSetupError as exc:
            if record.cancel_requested:
                return self._finish_cancel(record, started)
            if self._shutdown.is_set():
                return
            return self._finish(record, S.JOB_STATE_FAILED, {"code": CODE_INVALID_ARGUMENT, "message": str(exc)})
        if not resume:
            self._sleep(record, self.tick - (time.monotonic() - pending_started))
        if self._shutdown.is_set():
            return
        if record.cancel_requested:
            return self._finish_cancel(record, time.monotonic())
        if not self._acquire_capacity(record):
            return
        try:
            procs = self._start_replicas(record, prepared)
            if not resume:
                self._transition(record, S.JOB_STATE_RUNNING)
            self._monitor(record, prepared, procs)
        finally:
            if self._capacity is not None:
                self._capacity.release()

    def _acquire_capacity(self, record: JobRecord) -> bool:
        """Wait in PENDING for a free slot (no limit: at once). False when cancelled or shutting down meanwhile."""
        if self._capacity is None:
            return True
        while not self._capacity.acquire(timeout=self.tick):
            if self._shutdown.is_set():
                return False
            if record.cancel_requested:
                self._finish_cancel(record, time.monotonic())
                return False
        return True

    def _start_replicas(self, record: JobRecord, prepared) -> dict[str, ReplicaProcess]:
        job = record.resource
        pools = active_pools(job)
        workdir = self.job_dir(record.job_id)
        cluster = {f"workerpool{i}": [f"127.0.0.1:{22220 + 10 * i + r}" for r in range(replica_count(p))] for i, p in pools}
        total = sum(len(v) for v in cluster.values())
        procs: dict[str, ReplicaProcess] = {}
        previous = {r.replica: r for r in record.replicas}
        replicas: list[ReplicaInfo] = []
        for i, pool in pools:
            for r in range(replica_count(pool)):
                replica = f"workerpool{i}-{r}"
                env = self._replica_env(record, pool, i, r, cluster, total)
                proc = self.runner.start(prepared, pool, env, workdir / f"{replica}.log")
                info = previous.get(replica) or ReplicaInfo(replica=replica)
                if replica in previous:
                    info.restarts += 1
                info.pid, info.exit_code = proc.pid, None
                info.start_ticks = proc_start_ticks(proc.pid) if proc.pid else None
                replicas.append(info)
                procs[replica] = proc
                self._log_event(record, f"Started replica {replica} (pid {proc.pid})")
        with self.store.lock:
            record.replicas = replicas
            self.store.save(record)
        return procs

    def _replica_env(self, record: JobRecord, pool: dict, pool_index: int, replica_index: int,
                     cluster: dict, total: int) -> dict[str, str]:
        env = {k: os.environ[k] for k in BASE_ENV if k in os.environ}
        env["PYTHONUNBUFFERED"] = "1"  # so the log (and the error's last lines) is complete when a replica dies
        spec = pool.get("pythonPackageSpec") or pool.get("containerSpec") or {}
        for item in spec.get("env", []):
            env[item["name"]] = item.get("value", "")
        job_spec = record.resource.get("jobSpec", {})
        base = (job_spec.get("baseOutputDirectory") or {}).get("outputUriPrefix")
        if base:
            base = base.rstrip("/")
            env["AIP_MODEL_DIR"] = f"{base}/model/"
            env["AIP_CHECKPOINT_DIR"] = f"{base}/checkpoints/"
            env["AIP_TENSORBOARD_LOG_DIR"] = f"{base}/logs/"
        env["CLOUD_ML_JOB_ID"] = record.job_id
        task_type = f"workerpool{pool_index}"
        env["CLUSTER_SPEC"] = json.dumps({
            "cluster": cluster,
            "environment": "cloud",
            "task": {"type": task_type, "index": replica_index},
            "job": json.dumps(job_spec),
        })
        if total > 1:
            tf_cluster = {TF_TASK_TYPES[int(k[len('workerpool'):])]: v for k, v in cluster.items() if int(k[len('workerpool'):]) < 4}
            env["TF_CONFIG"] = json.dumps({
                "cluster": tf_cluster,
                "task": {"type": TF_TASK_TYPES[min(pool_index, 3)], "index": replica_index},
                "environment": "cloud",
            })
        return env

    def _kill_all(self, record: JobRecord, procs: dict[str, ReplicaProcess], grace: float) -> None:
        threads = [threading.Thread(target=p.kill, args=(grace,)) for p in procs.values() if p.poll() is None]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Leftover children of replicas that already exited die with the container on Vertex.
        for proc in procs.values():
            if proc.pid:
                kill_process_group(proc.pid, 0)
        self._record_exits(record, procs)

    def _record_exits(self, record: JobRecord, procs: dict[str, ReplicaProcess]) -> None:
        with self.store.lock:
            for info in record.replicas:
                proc = procs.get(info.replica)
                if proc is not None:
                    info.exit_code = proc.poll()
            self.store.save(record)

    def _monitor(self, record: JobRecord, prepared, procs: dict[str, ReplicaProcess]) -> None:
        scheduling = record.resource.get("jobSpec", {}).get("scheduling") or {}
        timeout = parse_duration(scheduling["timeout"]) if scheduling.get("timeout") else None
        job_started = time.monotonic()
        replicas_started = job_started
        while True:
            if self._shutdown.is_set():
                self._kill_all(record, procs, min(self.kill_grace, 1.0))
                return
            if record.cancel_requested:
                cancel_started = time.monotonic()
                self._kill_all(record, procs, self.kill_grace)
                self._log_event(record, "Replicas killed (cancel)")
                return self._finish_cancel(record, cancel_started)
            if timeout is not None and time.monotonic() - job_started > timeout:
                self._kill_all(record, procs, self.kill_grace)
                return self._finish(record, S.JOB_STATE_FAILED, {
                    "code": CODE_DEADLINE_EXCEEDED,
                    "message": f"The job ran past its timeout of {scheduling['timeout']} (scheduling.timeout) "
                               "and was terminated.",
                })
            if self.faults.take_preempt(time.monotonic() - replicas_started):
                record.preemptions += 1
                self._log_event(record, "Preempting replicas (spot VM reclaimed)")
                self._kill_all(record, procs, self.kill_grace)
                if self._restart_on_worker_restart(record):
                    self._log_event(record, "Restarting replicas (scheduling.restartJobOnWorkerRestart)")
                    procs = self._start_replicas(record, prepared)
                    replicas_started = time.monotonic()
                    continue
                return self._finish(record, S.JOB_STATE_FAILED, {
                    "code": CODE_UNAVAILABLE,
                    "message": "The replica workerpool0-0 was preempted: its spot VM was reclaimed. "
                               "Set scheduling.restartJobOnWorkerRestart to restart the job after a preemption.",
                })
            codes = {name: proc.poll() for name, proc in procs.items()}
            failed = [(n, c) for n, c in codes.items() if c not in (None, 0)]
            if failed:
                name, code = failed[0]
                self._kill_all(record, procs, self.kill_grace)
                tail = _tail(self.job_dir(record.job_id) / f"{name}.log")
                log_url = f"{self.base_url}/emulator/v1/jobs/{record.job_id}/log"
                message = (f"The replica {name} exited with a non-zero status of {code}. Termination reason: Error.\n"
                           f"Last log lines of {name}:\n{tail}\n"
                           f"To find out more about why your job exited please check the logs: {log_url}")
                return self._finish(record, S.JOB_STATE_FAILED, {"code": CODE_INVALID_ARGUMENT, "message": message})
            if all(c == 0 for c in codes.values()):
                self._kill_all(record, procs, 0)
                return self._finish(record, S.JOB_STATE_SUCCEEDED)
            time.sleep(0.05)
