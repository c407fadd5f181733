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
