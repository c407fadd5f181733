"""tasks/transient.py: the storage and data tasks retry what the service or network broke, and nothing else."""

from __future__ import annotations

import pytest
from google.api_core import exceptions as gexc
from requests import exceptions as rexc

from tasks.dataset import DataUnavailableError
from tasks.errors import ConfigError, DataError, StorageError
from tasks.transient import retry_if_transient
from tests.tasks.conftest import failed_state


@pytest.mark.parametrize(
    "error",
    [
        gexc.ServiceUnavailable("503"),
        gexc.InternalServerError("500"),
        gexc.TooManyRequests("429"),
        ConnectionResetError(),
        TimeoutError(),
        rexc.ConnectionError("reset by peer"),
        rexc.ReadTimeout("read timed out"),
        DataUnavailableError("https://host/x.zip answered HTTP 503"),
    ],
)
def test_transient_failures_are_retried(error):
    assert retry_if_transient(None, None, failed_state(error)) is True


@pytest.mark.parametrize(
    "error",
    [
        TypeError("unexpected keyword argument"),
        KeyError("fingerprint"),
        ValueError("bad"),
        OSError("disk full"),
        ConfigError("no bucket"),
        StorageError("permission denied"),
        DataError("unknown labels"),
        gexc.Forbidden("403"),
        gexc.NotFound("404"),
        gexc.MethodNotImplemented("501"),  # a 5xx that no later attempt changes
    ],
)
def test_programming_and_named_errors_are_not_retried(error):
    assert retry_if_transient(None, None, failed_state(error)) is False


def test_a_completed_state_is_not_retried():
    class Completed:
        def result(self):
            return 1

    assert retry_if_transient(None, None, Completed()) is False


def test_a_failed_token_refresh_is_transient_for_the_watch_only():
    # google-auth wraps a metadata-server TransportError in a plain RefreshError (compute_engine/credentials.py,
    # Credentials.refresh); a multi-hour watch polls again, while create/list/cancel and the tasks fail at once on
    # what may be a broken credential.
    from google.auth.exceptions import RefreshError, TransportError

    from tasks.transient import WATCH_TRANSIENT_ERRORS
    from tasks.vertex import is_transient as vertex_call_is_transient

    hiccup = RefreshError(TransportError("Failed to retrieve http://metadata.google.internal/...: timed out"))
    assert isinstance(hiccup, WATCH_TRANSIENT_ERRORS)
    assert not vertex_call_is_transient(hiccup)
    assert retry_if_transient(None, None, failed_state(hiccup)) is False
