"""Named errors: each message says what happened, to which resource, and what to do next.

    FinsentError
    ├── ConfigError        bad settings, caught before any upload or GPU spend
    ├── DataError          the data set cannot be used (encoding, format, labels, classes)
    ├── StorageError       GCS refused or lost something
    ├── JobSubmitError     Vertex refused the CustomJob
    ├── JobFailedError     the CustomJob ended FAILED/CANCELLED/EXPIRED (carries Vertex's message + log tail)
    │   └── RetryableJobError   ...for infrastructure reasons (preemption, stockout): worth resubmitting
    └── JobTimeoutError    the watch outlived its deadline
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

    def __init__(self, message: str, *, job_name: str = "", state: str = "", log_tail: str = ""):
        super().__init__(message)
        self.job_name = job_name
        self.state = state
        self.log_tail = log_tail


class RetryableJobError(JobFailedError):
    """The CustomJob failed for an infrastructure reason (preemption, stockout); resubmitting can help."""


class JobTimeoutError(FinsentError):
    """Waiting for the CustomJob took longer than the configured deadline."""
