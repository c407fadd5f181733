"""The CustomJob API: create/get/list/cancel/delete, plus the admin views of jobs and their logs.

Records what the client asks and hands jobs to the `JobDriver`, which runs them. Raises the domain errors of
`errors.py`; knows nothing about HTTP.
"""

from __future__ import annotations

import base64
import copy
import random

from emulators.vertex.driver import JobDriver
from emulators.vertex.errors import FailedPrecondition, InvalidArgument, NotFound
from emulators.vertex.filters import parse_filter
from emulators.vertex.job_files import JobFiles, job_log_url
from emulators.vertex.spec import active_pools, normalize_custom_job, validate_custom_job
from emulators.vertex.state import JobRecord, JobState, JobStore, now_rfc3339

S = JobState


def _new_id() -> str:
    return str(random.randint(10**18, 9 * 10**18))


class JobService:
    """The CustomJob API, in process.

    Args:
        store: where job records live (persistent with a state dir).
        driver: runs the jobs created here and is woken by cancels; its `faults` are claimed here (`fail` and
            `hold` by each create, `cancel_outcome` by each accepted cancel).
        files: per-job work directories and logs (for the admin log view).
        base_url: this server's URL, for the log links put in `webAccessUris`.
    """

    def __init__(self, store: JobStore, driver: JobDriver, files: JobFiles, base_url: str) -> None:
        self.store = store
        self.driver = driver
        self.files = files
        self.base_url = base_url.rstrip("/")
        self.faults = driver.faults

    # ---- API methods -------------------------------------------------------------------------------------------

    def create(self, project: str, location: str, body: object) -> JobRecord:
        job = normalize_custom_job(body)
        validate_custom_job(job, location)
        job_id = _new_id()
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
            "webAccessUris": {"emulator-log": job_log_url(self.base_url, job_id)},
        })
        record = JobRecord(resource=job, job_id=job_id, history=[{"state": S.JOB_STATE_QUEUED.name, "time": stamp}],
                           faults=self.faults.claim_for_new_job())
        self.store.add(record)
        self.files.log_event(job_id, f"Job created: {job.get('displayName')!r}")
        if record.faults:
            self.files.log_event(job_id, f"Injected faults claimed: {record.faults}")
        self.driver.start(record)
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
            outcome = self.faults.claim_cancel_outcome()
            if outcome is not None:
                record.faults["cancel_outcome"] = outcome
            record.transition(S.JOB_STATE_CANCELLING)
            self.store.save(record)
        self.files.log_event(record.job_id, "Cancel requested" + (f" (it will lose the race: {outcome['state']})"
                                                                   if outcome else ""))
        self.driver.wake(record.job_id)

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
            "name": f"{name}/operations/{_new_id()}",
            "metadata": {
                "@type": "type.googleapis.com/google.cloud.aiplatform.v1.DeleteOperationMetadata",
                "genericMetadata": {"createTime": stamp, "updateTime": stamp},
            },
            "done": True,
            "response": {"@type": "type.googleapis.com/google.protobuf.Empty"},
        }

    def mark_create_response_dropped(self, name: str) -> None:
        """The `commit_then_drop` fault: the job exists, but its create answer is lost (shown in admin views)."""
        record = self.store.get(name.rsplit("/", 1)[-1])
        if record is not None:
            record.create_response_dropped = True
            self.store.save(record)

    # ---- admin ------------------------------------------------------------------------------------------------

    def job_log(self, job_id: str, replica: str | None = None) -> str:
        if self.store.get(job_id) is None and not self.files.exists(job_id):
            raise NotFound(f"No job with id {job_id}.")
        return self.files.read(job_id, replica)

    def admin_jobs(self) -> list[dict]:
        with self.store.lock:
            return [self._admin_view(r) for r in self.store.all()]

    def admin_job(self, job_id: str) -> dict:
        record = self.store.get(job_id)
        if record is None:
            raise NotFound(f"No job with id {job_id}.")
        return self._admin_view(record)

    def _admin_view(self, record: JobRecord) -> dict:
        view = copy.deepcopy(record.resource)
        view["emulator"] = {
            "jobId": record.job_id,
            "createResponseDropped": record.create_response_dropped,
            "cancelRequested": record.cancel_requested,
            "preemptions": record.preemptions,
            "stateHistory": [dict(h) for h in record.history],
            "faults": copy.deepcopy(record.faults),
            "replicas": [vars(r).copy() for r in record.replicas],
            "logUrl": job_log_url(self.base_url, record.job_id),
            "workDir": str(self.files.dir(record.job_id)),
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
        self.driver.wait_all()
        for record in self.store.all():
            self.store.remove(record.job_id)
