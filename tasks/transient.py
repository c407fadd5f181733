"""What a retry can fix: the one predicate the Prefect tasks of the storage and data steps retry on.

Transient means the service or the network, not us: 5xx and 429 from Google APIs, connection resets and timeouts
(the storage client runs on `requests`; google.auth's token refresh has its own transport error), and named
errors that say so by subclassing `TransientError` (an unreachable data source). Everything else fails at once: a
named finsent error (missing bucket, bad data) or a programming error (TypeError) fails the same way again.
"""

from __future__ import annotations

from typing import Any

from google.api_core import exceptions as gexc
from google.auth.exceptions import RefreshError
from google.auth.exceptions import TransportError as AuthTransportError
from requests import exceptions as rexc

# Google API answers that a later attempt can change: 500, 502, 503, 504 and 429 (501 Not Implemented is final).
# The storage layer lets these through unmapped, for the task to retry.
TRANSIENT_API_ERRORS = (
    gexc.InternalServerError,
    gexc.BadGateway,
    gexc.ServiceUnavailable,
    gexc.GatewayTimeout,  # DeadlineExceeded is its subclass
    gexc.TooManyRequests,
)
# One request's worth of trouble: the answer above, or none at all (reset, timeout, token-refresh transport).
# The Vertex runner's api_core Retry retries exactly these; the request may have reached the service.
TRANSIENT_CALL_ERRORS = (
    *TRANSIENT_API_ERRORS,
    ConnectionError,
    TimeoutError,
    rexc.ConnectionError,
    rexc.Timeout,
    AuthTransportError,
)
# What a Prefect task retries: the above, and a client's own retries that ran out of time.
TRANSIENT_ERRORS = (*TRANSIENT_CALL_ERRORS, gexc.RetryError)
# The watch of a running job also polls again after a failed token refresh. On GCE, Cloud Run or Vertex the token
# comes from the metadata server, and google-auth turns a metadata-server TransportError into a plain RefreshError
# (google/auth/compute_engine/credentials.py, Credentials.refresh: `except exceptions.TransportError as caught_exc:
# new_exc = exceptions.RefreshError(caught_exc)`, google-auth 2.63.0; issue 11 item 6). Ending the watch would
# abandon a job that is fine, and the watch's own deadline bounds a refresh that never recovers. Create, list and
# cancel do not retry it: there a broken credential should fail at once.
WATCH_TRANSIENT_ERRORS = (*TRANSIENT_CALL_ERRORS, RefreshError)


class TransientError(Exception):
    """Mixin for a named error that a later attempt can fix (e.g. the data source answered 503)."""


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, (TransientError, *TRANSIENT_ERRORS))


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry the failed task run only when its exception is transient."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classified, not swallowed: the state keeps the exception
        return is_transient(exc)
    return False
