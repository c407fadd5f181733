"""The job driver: one thread per job moves it QUEUED -> PENDING -> RUNNING -> SUCCEEDED | FAILED |
CANCELLING -> CANCELLED (and, with the `hold` fault, RUNNING -> PAUSED -> QUEUED -> PENDING -> RUNNING or RUNNING ->
UPDATING -> RUNNING), starting, watching and killing its replicas with a Runner; and restart recovery.

The API (`service.py`) only records what the client asked (a new job, a cancel) and wakes the driver.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback

from emulators._proc import free_port, kill_group, signal_group
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
CHIEF_REPLICA = "workerpool0-0"


def cancelled_error() -> dict:
    """The `error` of a CANCELLED job (a fresh dict: it becomes part of the job's resource)."""
    return {"code": CODE_CANCELLED, "message": "CANCELED"}


def preempted_error(hint: str = "") -> dict:
    """The `error` of a job whose spot VM was reclaimed: code 14 (UNAVAILABLE), a message that looks retryable."""
    return {"code": CODE_UNAVAILABLE, "message": "The replica workerpool0-0 was preempted: its spot VM was reclaimed."
                                                 + (f" {hint}" if hint else "")}


def cancel_end(record: JobRecord) -> tuple[JobState, dict | None]:
    """How a CANCELLING job ends: CANCELLED, or what its claimed `cancel_outcome` says (a cancel that lost the race:
    SUCCEEDED, or FAILED with a preemption error, so tests can prove a cancelled job is never resubmitted)."""
    outcome = record.faults.get("cancel_outcome")
    if outcome is None:
        return S.JOB_STATE_CANCELLED, cancelled_error()
    if outcome["state"] == S.JOB_STATE_SUCCEEDED.name:
        return S.JOB_STATE_SUCCEEDED, None
    return S.JOB_STATE_FAILED, preempted_error()


def restarts_on_worker_restart(record: JobRecord) -> bool:
    """`jobSpec.scheduling.restartJobOnWorkerRestart`: replicas restart after a preemption or emulator restart."""
    scheduling = record.resource.get("jobSpec", {}).get("scheduling") or {}
    return bool(scheduling.get("restartJobOnWorkerRestart"))


def chief_succeeded(codes: dict[str, int | None]) -> bool:
    """Whether the job's replicas, by exit code (None: running), make it SUCCEEDED: its primary replica exited 0.
    Vertex's distributed-training page: the primary replica "manages the others and reports status for the job as
    a whole" (https://cloud.google.com/vertex-ai/docs/training/distributed-training), so workers still running are
    stopped then. A replica's non-zero exit fails the job (checked first, in `_monitor`): Vertex restarts such a
    worker in place, but a permanent error "shuts down the entire job" ("Understand the custom training service"
    page, https://cloud.google.com/vertex-ai/docs/training/understanding-training-service); the in-place restart is
    not emulated (a restarted JAX worker cannot rejoin its running cluster either)."""
    return codes.get(CHIEF_REPLICA) == 0 or all(c == 0 for c in codes.values())


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
        max_running: jobs running at once, like a regional GPU quota; the others wait in QUEUED, as Vertex keeps a
            job queued until there is quota for it. None: no limit.
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

        QUEUED/PENDING/PAUSED jobs start over. RUNNING/UPDATING jobs restart when
        `scheduling.restartJobOnWorkerRestart` is set, otherwise they end FAILED (code 13, an infrastructure error).
        CANCELLING jobs end as their cancel would have (CANCELLED, or their `cancel_outcome`).
        """
        for record in self.store.all():
            if record.state.terminal:
                continue
            for replica in record.replicas:
                if replica.pid and replica.exit_code is None and proc_start_ticks(replica.pid) == replica.start_ticks:
                    kill_group(replica.pid, self.kill_grace)
            state = record.state
            if state == S.JOB_STATE_CANCELLING:
                self._finish(record, *cancel_end(record))
            elif state in (S.JOB_STATE_QUEUED, S.JOB_STATE_PENDING, S.JOB_STATE_PAUSED):
                if state != S.JOB_STATE_QUEUED:
                    self._transition(record, S.JOB_STATE_QUEUED)
                self.files.log_event(record.job_id, "Emulator restarted: job queued again")
                self.start(record)
            elif state in (S.JOB_STATE_RUNNING, S.JOB_STATE_UPDATING) and restarts_on_worker_restart(record):
                if state == S.JOB_STATE_UPDATING:
                    self._transition(record, S.JOB_STATE_RUNNING)
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

    def _advance(self, record: JobRecord, new: JobState) -> bool:
        """Move a live job on to `new` unless a cancel came first (atomic with `JobService.cancel`)."""
        with self.store.lock:
            if record.cancel_requested or record.state.terminal:
                return False
            self._transition(record, new)
        return True

    def _finish(self, record: JobRecord, new: JobState, error: dict | None = None) -> None:
        with self.store.lock:
            if record.state.terminal:
                return
            if record.state == S.JOB_STATE_CANCELLING:
                # A cancel raced with the job's own end: Vertex reports the cancel (or the claimed cancel_outcome).
                new, error = cancel_end(record)
            elif new == S.JOB_STATE_CANCELLED:
                record.transition(S.JOB_STATE_CANCELLING)
            self._transition(record, new, error)

    def _finish_cancel(self, record: JobRecord, cancel_seen: float | None = None) -> None:
        # Keep CANCELLING visible for at least one tick, like Vertex's asynchronous cancel.
        since = time.monotonic() if cancel_seen is None else cancel_seen
        time.sleep(max(0.0, self.tick - (time.monotonic() - since)))
        self._finish(record, *cancel_end(record))

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
        resume = record.state == S.JOB_STATE_RUNNING
        if not resume:
            self._sleep(record, self.tick)
            hold = record.faults.get("hold")
            if hold and hold["state"] == "QUEUED" and not record.cancel_requested and not self._shutdown.is_set():
                self.files.log_event(record.job_id, f"Held QUEUED for {hold['seconds']} s (hold fault: a quota wait)")
                self._sleep(record, hold["seconds"])
        if not self._acquire_capacity(record):
            return
        try:
            self._prepare_and_run(record, resume)
        finally:
            if self._capacity is not None:
                self._capacity.release()

    def _acquire_capacity(self, record: JobRecord) -> bool:
        """Wait for a free slot in the job's state (QUEUED; RUNNING when resuming after a restart): "if your project
        does not have sufficient remaining custom training quotas for your job, then Vertex AI keeps the job queued
        until you have sufficient quotas" (docs: "Understand the training service"). False when shutting down, or
        cancelled meanwhile (the job is then finished)."""
        while True:
            if self._shutdown.is_set():
                return False
            if record.cancel_requested:
                self._finish_cancel(record)
                return False
            if self._capacity is None or self._capacity.acquire(timeout=self.tick):
                return True

    def _prepare_and_run(self, record: JobRecord, resume: bool) -> None:
        if not resume and not self._advance(record, S.JOB_STATE_PENDING):
            return self._finish_cancel(record)
        pending_started = time.monotonic()
        try:
            prepared = self.runner.prepare(record.resource, self.files.dir(record.job_id),
                                           lambda m: self.files.log_event(record.job_id, m))
        except JobSetupError as exc:
            if record.cancel_requested:
                return self._finish_cancel(record)
            if self._shutdown.is_set():
                return
            return self._finish(record, S.JOB_STATE_FAILED, {"code": CODE_INVALID_ARGUMENT, "message": str(exc)})
        if not resume:
            self._sleep(record, self.tick - (time.monotonic() - pending_started))
        if self._shutdown.is_set():
            return
        if record.cancel_requested:
            return self._finish_cancel(record)
        procs = self._start_replicas(record, prepared)
        if not resume:
            self._advance(record, S.JOB_STATE_RUNNING)  # a cancel meanwhile: `_monitor` kills and finishes
        self._monitor(record, prepared, procs)

    def _start_replicas(self, record: JobRecord, prepared: Prepared) -> dict[str, ReplicaProcess]:
        job = record.resource
        cluster = cluster_addresses(job, free_port)  # ports of this start: concurrent jobs never share one
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

    def _signal_all(self, procs: dict[str, ReplicaProcess], sig: int) -> None:
        for proc in procs.values():
            if proc.pid and proc.poll() is None:
                signal_group(proc.pid, sig)

    def _kill_all(self, record: JobRecord, procs: dict[str, ReplicaProcess], grace: float) -> None:
        self._signal_all(procs, signal.SIGCONT)  # a PAUSED (stopped) replica handles SIGTERM only once continued
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
        fail = record.faults.get("fail")
        hold = record.faults.get("hold")
        hold = hold if hold and hold["state"] != "QUEUED" else None
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
            running = time.monotonic() - job_started
            codes = {name: proc.poll() for name, proc in procs.items()}
            ended = any(c not in (None, 0) for c in codes.values()) or chief_succeeded(codes)
            if hold is not None and (running >= self.tick or ended):  # RUNNING visibly first; never skipped
                held = self._hold_running(record, procs, hold)
                hold, job_started, replicas_started = None, job_started + held, replicas_started + held
                continue
            if fail is not None and (running >= fail["after_seconds"] or ended):
                # Whatever the replicas did, the job ends with the error the fault gives, so that the end state
                # does not depend on how fast the job is.
                self.files.log_event(record.job_id, "Killing replicas (fail fault)")
                self._kill_all(record, procs, self.kill_grace)
                return self._finish(record, S.JOB_STATE_FAILED, {"code": fail["code"], "message": fail["message"]})
            if self.faults.take_preempt(time.monotonic() - replicas_started):
                record.preemptions += 1
                self.files.log_event(record.job_id, "Preempting replicas (spot VM reclaimed)")
                self._kill_all(record, procs, self.kill_grace)
                if restarts_on_worker_restart(record):
                    self.files.log_event(record.job_id, "Restarting replicas (scheduling.restartJobOnWorkerRestart)")
                    procs = self._start_replicas(record, prepared)
                    replicas_started = time.monotonic()
                    continue
                return self._finish(record, S.JOB_STATE_FAILED, preempted_error(
                    "Set scheduling.restartJobOnWorkerRestart to restart the job after a preemption."))
            failed = [(n, c) for n, c in codes.items() if c not in (None, 0)]
            if failed:
                name, code = failed[0]
                self._kill_all(record, procs, self.kill_grace)
                message = (f"The replica {name} exited with a non-zero status of {code}. Termination reason: Error.\n"
                           f"Last log lines of {name}:\n{self.files.tail(record.job_id, name)}\n"
                           "To find out more about why your job exited please check the logs: "
                           f"{job_log_url(self.base_url, record.job_id)}")
                return self._finish(record, S.JOB_STATE_FAILED, {"code": CODE_INVALID_ARGUMENT, "message": message})
            if chief_succeeded(codes):
                self._kill_all(record, procs, 0)
                return self._finish(record, S.JOB_STATE_SUCCEEDED)
            time.sleep(0.05)

    def _hold_running(self, record: JobRecord, procs: dict[str, ReplicaProcess], hold: dict) -> float:
        """The `hold` fault on a RUNNING job: PAUSED (replicas stopped with SIGSTOP, then resumed through QUEUED and
        PENDING, as job_state.proto's QUEUED is "just created or resumed") or UPDATING (replicas go on), for
        `seconds` or until a cancel. Returns the seconds it took, which do not count as running time."""
        began = time.monotonic()
        state = S[f"JOB_STATE_{hold['state']}"]
        if state == S.JOB_STATE_PAUSED:  # stopped before the job says PAUSED: a reader never sees PAUSED running
            self._signal_all(procs, signal.SIGSTOP)
        if not self._advance(record, state):
            self._signal_all(procs, signal.SIGCONT)
            return 0.0
        self.files.log_event(record.job_id, f"Held {state.name} for {hold['seconds']} s (hold fault)")
        self._sleep(record, hold["seconds"])
        if state == S.JOB_STATE_PAUSED:
            self._signal_all(procs, signal.SIGCONT)
        back = [S.JOB_STATE_QUEUED, S.JOB_STATE_PENDING] if state == S.JOB_STATE_PAUSED else []
        for step in back:
            if self._shutdown.is_set() or not self._advance(record, step):
                return time.monotonic() - began
            self._sleep(record, self.tick)
        if not self._shutdown.is_set():
            self._advance(record, S.JOB_STATE_RUNNING)
        return time.monotonic() - began
