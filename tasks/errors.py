"""Named errors: each message says what happened, to which resource, and what to do next.

    FinsentError
    ├── ConfigError        bad settings, caught before any upload or GPU spend
    ├── DataError          the data set cannot be used (encoding, format, labels, classes)
    ├── StorageError       GCS refused or lost something
    ├── JobSubmitError     Vertex refused the CustomJob
    ├── JobFailedError     the CustomJob ended FAILED/CANCELLED/EXPIRED (Vertex's first line, a hint, the log tail)
    │   └── RetryableJobError   ...for infrastructure reasons (preemption, stockout): worth resubmitting
    ├── JobTimeoutError    the watch outlived the job's deadline; the flow cancelled the job
    ├── JobWatchError      the watch stopped on an error; the flow cancelled the job (or says it could not)
    └── JobCancelError     some jobs could not be cancelled (the others were)
"""

from __future__ import annotations


class FinsentError(Exception):
    """Base of every error finsent raises on purpose; the message is one actionable line."""


class ConfigError(FinsentError):
    """A setting is wrong; nothing has been uploaded or launched yet."""


class DataError(FinsentError):
    """The data set is unusable; nothing has been written where it could pass for a good one."""


class StorageError(FinsentError):
    """A GCS operation failed."""


class JobSubmitError(FinsentError):
    """Vertex AI refused to create the CustomJob."""


class JobFailedError(FinsentError):
    """The CustomJob ended without success."""

    def __init__(self, message: str, *, job_name: str = "", state: str = "", log_tail: str = "", reason: str = ""):
        super().__init__(message)
        self.job_name = job_name
        self.state = state
        self.log_tail = log_tail
        self.reason = reason  # tasks.vertex.Failure value: out_of_memory, user_error, preempted, stockout, ...


class RetryableJobError(JobFailedError):
    """The CustomJob failed for an infrastructure reason (preemption, stockout); resubmitting can help."""


class JobTimeoutError(FinsentError):
    """The CustomJob outlived its deadline (queued past max_wait_seconds, or running past timeout_seconds, plus the
    grace); the flow stopped watching and cancelled it, so no job is left running unwatched."""


class JobWatchError(FinsentError):
    """The watch stopped on an error that polling again cannot fix; the flow cancelled the job (or says why not)."""


class JobCancelError(FinsentError):
    """A cancel reached some jobs but not all: `not_cancelled` names the others (each with its error)."""

    def __init__(self, message: str, *, cancelled: list[str], not_cancelled: dict[str, str]):
        super().__init__(message)
        self.cancelled = cancelled
        self.not_cancelled = not_cancelled


class BudgetExceededError(FinsentError):
    """A running job's cost (its RUNNING time over all attempts at tasks/pricing.py's list price) passed
    max_cost_usd: the flow cancelled it, and it is never resubmitted."""

    def __init__(self, message: str, *, job_name: str, cost_usd: float, budget_usd: float):
        super().__init__(message)
        self.job_name = job_name
        self.cost_usd = cost_usd
        self.budget_usd = budget_usd
