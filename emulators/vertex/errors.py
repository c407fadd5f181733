"""Domain errors raised by the emulator's service and driver; `routes.py` turns them into Google's JSON error envelope.

Each maps to a google.rpc.Code and an HTTP status the way Google APIs do, so the real client raises the matching
`google.api_core.exceptions` class (InvalidArgument, NotFound, FailedPrecondition, ServiceUnavailable, ...).
"""

from __future__ import annotations


class ApiError(Exception):
    """An error answered to the client as `{"error": {"code": http, "message": ..., "status": STATUS}}`."""

    http_status = 500
    status = "INTERNAL"
    rpc_code = 13

    def __init__(self, message: str, details: list[dict] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def to_json(self) -> dict:
        error = {"code": self.http_status, "message": self.message, "status": self.status}
        if self.details:
            error["details"] = self.details
        return {"error": error}


class InvalidArgument(ApiError):
    """HTTP 400. Note: the REST client maps by HTTP status, so callers see google.api_core's `BadRequest`
    (the parent of `InvalidArgument`, which only the gRPC transport raises); `status` tells them apart."""

    http_status, status, rpc_code = 400, "INVALID_ARGUMENT", 3


def bad_request_details(violations: list[tuple[str, str]]) -> list[dict]:
    """google.rpc.BadRequest details, as Google APIs attach to INVALID_ARGUMENT errors."""
    return [{"@type": "type.googleapis.com/google.rpc.BadRequest",
             "fieldViolations": [{"field": f, "description": d} for f, d in violations]}]


class FailedPrecondition(ApiError):
    http_status, status, rpc_code = 400, "FAILED_PRECONDITION", 9


class NotFound(ApiError):
    http_status, status, rpc_code = 404, "NOT_FOUND", 5


#: HTTP status -> google.rpc status name, for injected faults and anything else answered with a bare status.
HTTP_TO_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_body(http_status: int, message: str) -> dict:
    """The Google JSON error envelope for an arbitrary HTTP status."""
    return {"error": {"code": http_status, "message": message, "status": HTTP_TO_STATUS.get(http_status, "UNKNOWN")}}


class JobSetupError(Exception):
    """The runner could not prepare a job (package download or install failed): the job ends FAILED."""
