"""The job driver: one thread per job moves it QUEUED -> PENDING -> RUNNING -> SUCCEEDED | FAILED |
CANCELLING -> CANCELLED, starting, watching and killing its replicas with a Runner; and restart recovery.

The API (`service.py`) only records what the client asked (a new job, a cancel) and wakes the driver.
"""

from __future__ import annotations

import os
import threading
import time
import traceback

from emulators._proc import kill_group
from emulators.vertex.errors import JobSetupError
from emulators.vertex.faults import Faults
from emulators.vertex.job_files import JobFiles, job_log_url
from emulators.vertex.replica_env import cluster_addresses, replica_env
from emulators.vertex.runner import Prepared, ReplicaProcess, Runner, proc_start_ticks
from emulators.vertex.spec import active_pools, parse_duration, replica_count
from emulators.vertex.state import JobRecord, JobState, JobStore, ReplicaInfo

S = JobState
#: google.rpc.Code values used in job errors.
CODE_CANCELLED, CODE_INVALID_ARGUMENT, CODE_DEADLINE_EXCEEDED, CODE_INTERNAL, CODE_UNAVAILABLE = 1, 3, 4, 13, 14


def cancelled_error() -> dict:
    """The `error` of a CANCELLED job (a fresh dict: it becomes part of the job's resource)."""
    return {"code": CODE_CANCELLED, "message": "CANCELED"}


def restarts_on_worker_restart(record: JobRecord) -> bool:
    """`jobSpec.scheduling.restartJobOnWorkerRestart`: replicas restart after a preemption or emulator restart."""
    scheduling = record.resource.get("jobSpec", {}).get("scheduling") or {}
    return bool(scheduling.get("restartJobOnWorkerRestart"))


class JobDriver:
    """Runs every job: a thread per job, woken early by a cancel or a shutdown.

    Args:
        store: where job records live (persistent with a state dir).
        runner: runs replicas (SubprocessRunner or InstantRunner).
        faults: shared fault configuration (preemption is applied here).
        files: per-job work directories and logs.
        base_url: this server's URL, for the log link in FAILED messages.
        tick: seconds each quick state (QUEUED, PENDING, CANCELLING) lasts at least, so polls can observe it.
        kill_grace: seconds between SIGTERM and SIGKILL when killing a replica's process group.
        max_running: jobs running at once, like a regional GPU quota; the others wait in PENDING. None: no limit.
    """

    def __init__(self, store: JobStore, runner: Runner, faults: Faults, files: JobFiles, base_url: str,
                 tick: float = 0.2, kill_grace: float = 2.0, max_running: int | None = None) -> None:
        self.store = store
        self.runner = runner
        self.faults = faults
        self.files = files
        self.base_url = base_url
        self.tick = tick
        self.kill_grace = kill_grace
        self._wake: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._shutdown = threading.Event()
        self._capacity = threading.Semaphore(max_running) if max_running else None

    # ---- what the service and the server call -----------------------------------------------------------------

    def start(self, record: JobRecord) -> None:
        """Drive `record` from its current state in a new thread."""
        self._wake[record.job_id] = threading.Event()
        thread = threading.Thread(target=self._drive, args=(record,), name=f"job-{record.job_id}", daemon=True)
        self._threads[record.job_id] = thread
        thread.start()

    def wake(self, job_id: str) -> None:
        """Make the job's thread look at its record now (a cancel was requested)."""
        event = self._wake.get(job_id)
        if event is not None:
            event.set()

    def wait_all(self) -> None:
        """Wait for every job thread to end (after cancelling them all)."""
        for thread in list(self._threads.values()):
            thread.join(timeout=self.kill_grace + 5)

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
                    kill_group(replica.pid, self.kill_grace)
            state = record.state
            if state == S.JOB_STATE_CANCELLING:
                self._finish(record, S.JOB_STATE_CANCELLED, cancelled_error())
            elif state in (S.JOB_STATE_QUEUED, S.JOB_STATE_PENDING):
                if state == S.JOB_STATE_PENDING:
                    record.transition(S.JOB_STATE_QUEUED)
                    self.store.save(record)
                self.files.log_event(record.job_id, "Emulator restarted: job queued again")
                self.start(record)
            elif state == S.JOB_STATE_RUNNING and restarts_on_worker_restart(record):
                self.files.log_event(record.job_id,
                                     "Emulator restarted: restarting replicas (restartJobOnWorkerRestart)")
                self.start(record)
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
        self.wait_all()

    # ---- state changes ----------------------------------------------------------------------------------------

    def _sleep(self, record: JobRecord, seconds: float) -> None:
        event = self._wake.get(record.job_id)
        if event is not None and seconds > 0:
            event.wait(seconds)

    def _transition(self, record: JobRecord, new: JobState, error: dict | None = None) -> None:
        with self.store.lock:
            record.transition(new, error)
            self.store.save(record)
        self.files.log_event(record.job_id,
                             f"State {new.name}" + (f": {error['message'].splitlines()[0]}" if error else ""))

    def _finish(self, record: JobRecord, new: JobState, error: dict | None = None) -> None:
        with self.store.lock:
            if record.state.terminal:
                return
            if record.state == S.JOB_STATE_CANCELLING and new != S.JOB_STATE_CANCELLED:
                # A cancel raced with the job's own end: Vertex reports the cancel.
                new, error = S.JOB_STATE_CANCELLED, cancelled_error()
            if new == S.JOB_STATE_CANCELLED and record.state != S.JOB_STATE_CANCELLING:
                record.transition(S.JOB_STATE_CANCELLING)
        self._transition(record, new, error)

    def _finish_cancel(self, record: JobRecord, cancel_started: float) -> None:
        # Keep CANCELLING visible for at least one tick, like Vertex's asynchronous cancel.
        time.sleep(max(0.0, self.tick - (time.monotonic() - cancel_started)))
        self._finish(record, S.JOB_STATE_CANCELLED, cancelled_error())

    # ---- one job's thread -------------------------------------------------------------------------------------

    def _drive(self, record: JobRecord) -> None:
        try:
            self._drive_inner(record)
        except Exception as exc:  # an emulator bug must not leave a job hanging in a live state
            self.files.log_event(record.job_id, "Internal error:\n" + traceback.format_exc())
            if not record.state.terminal and not self._shutdown.is_set():
                try:
                    self._finish(record, S.JOB_STATE_FAILED,
                                 {"code": CODE_INTERNAL, "message": f"Internal emulator error: {exc!r}"})
                except Exception:
                    self.files.log_event(record.job_id, "Could not fail the job:\n" + traceback.format_exc())

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
        try:
            prepared = self.runner.prepare(record.resource, self.files.dir(record.job_id),
                                           lambda m: self.files.log_event(record.job_id, m))
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

    def _start_replicas(self, record: JobRecord, prepared: Prepared) -> dict[str, ReplicaProcess]:
        job = record.resource
        cluster = cluster_addresses(job)
        procs: dict[str, ReplicaProcess] = {}
        previous = {r.replica: r for r in record.replicas}
        replicas: list[ReplicaInfo] = []
        for i, pool in active_pools(job):
            for r in range(replica_count(pool)):
                replica = f"workerpool{i}-{r}"
                env = replica_env(job, record.job_id, i, r, cluster, os.environ)
                proc = self.runner.start(prepared, pool, env, self.files.replica_log(record.job_id, replica))
                info = previous.get(replica) or ReplicaInfo(replica=replica)
                if replica in previous:
                    info.restarts += 1
                info.pid, info.exit_code = proc.pid, None
                info.start_ticks = proc_start_ticks(proc.pid) if proc.pid else None
                replicas.append(info)
                procs[replica] = proc
                self.files.log_event(record.job_id, f"Started replica {replica} (pid {proc.pid})")
        with self.store.lock:
            record.replicas = replicas
            self.store.save(record)
        return procs

    def _kill_all(self, record: JobRecord, procs: dict[str, ReplicaProcess], grace: float) -> None:
        threads = [threading.Thread(target=p.kill, args=(grace,)) for p in procs.values() if p.poll() is None]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # Leftover children of replicas that already exited die with the container on Vertex.
        for proc in procs.values():
            if proc.pid:
                kill_group(proc.pid, 0)
        with self.store.lock:
            for info in record.replicas:
                proc = procs.get(info.replica)
                if proc is not None:
                    info.exit_code = proc.poll()
            self.store.save(record)

    def _monitor(self, record: JobRecord, prepared: Prepared, procs: dict[str, ReplicaProcess]) -> None:
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
                self.files.log_event(record.job_id, "Replicas killed (cancel)")
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
                self.files.log_event(record.job_id, "Preempting replicas (spot VM reclaimed)")
                self._kill_all(record, procs, self.kill_grace)
                if restarts_on_worker_restart(record):
                    self.files.log_event(record.job_id, "Restarting replicas (scheduling.restartJobOnWorkerRestart)")
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
                message = (f"The replica {name} exited with a non-zero status of {code}. Termination reason: Error.\n"
                           f"Last log lines of {name}:\n{self.files.tail(record.job_id, name)}\n"
                           "To find out more about why your job exited please check the logs: "
                           f"{job_log_url(self.base_url, record.job_id)}")
                return self._finish(record, S.JOB_STATE_FAILED, {"code": CODE_INVALID_ARGUMENT, "message": message})
            if all(c == 0 for c in codes.values()):
                self._kill_all(record, procs, 0)
                return self._finish(record, S.JOB_STATE_SUCCEEDED)
            time.sleep(0.05)
