"""HTTP only: map Vertex v1 REST paths and the `/emulator/v1/` admin API to the JobService, speak Google's JSON.

Requests: `?$alt=json;enum-encoding=int` (the REST client's default): enums may arrive as integers or names,
int64 as strings. Responses: enum NAMES, int64 as strings (the client parses both). Errors: the Google envelope
`{"error": {"code": 404, "message": "...", "status": "NOT_FOUND"}}`, which google.api_core maps to its exceptions.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from emulators.vertex.errors import ApiError, InvalidArgument, NotFound, error_body
from emulators.vertex.faults import Faults, quota_exceeded_message
from emulators.vertex.logging_api import list_log_entries
from emulators.vertex.service import JobService
from emulators.vertex.spec import normalize_custom_job

_JOBS = r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/customJobs"
#: (HTTP method, path regex under /v1/, API method name = the `_Handlers` method that serves it)
API_ROUTES = [
    ("POST", re.compile(rf"^{_JOBS}$"), "create"),
    ("GET", re.compile(rf"^{_JOBS}$"), "list"),
    ("GET", re.compile(rf"^{_JOBS}/(?P<job>[^/:]+)$"), "get"),
    ("DELETE", re.compile(rf"^{_JOBS}/(?P<job>[^/:]+)$"), "delete"),
    ("POST", re.compile(rf"^{_JOBS}/(?P<job>[^/:]+):cancel$"), "cancel"),
]
#: The same, under /v2/: Cloud Logging's entries:list over the jobs' replica output (emulators/vertex/logging_api.py).
LOGGING_ROUTES = [("POST", re.compile(r"^entries:list$"), "list_log_entries")]

#: Default texts of injected error statuses. A 429 on create says instead what Vertex says for a quota refusal
#: (`faults.quota_exceeded_message`).
FAULT_MESSAGES = {
    429: "Resource has been exhausted (e.g. check quota).",
    500: "Internal error encountered.",
    503: "The service is currently unavailable.",
    504: "The request timed out. Please try again.",
}


def _json(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status)


class RequestLog:
    """Every API call received (admin calls excluded), for tests that count creates and polls."""

    def __init__(self, limit: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._entries: list[dict] = []
        self._limit = limit

    def add(self, entry: dict) -> None:
        with self._lock:
            self._entries.append(entry)
            del self._entries[: -self._limit]

    def entries(self, method: str | None = None) -> list[dict]:
        with self._lock:
            return [dict(e) for e in self._entries if method is None or e["method"] == method]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _check_alt(request: Request) -> None:
    alt = request.query_params.get("$alt")
    if alt is not None and not alt.split(";")[0] == "json":
        raise InvalidArgument(f"Unsupported $alt={alt!r}: the emulator speaks JSON only.")


class _Handlers:
    """One handler per route. API handlers take the path's groups and the parsed body and return the JSON answer;
    `api` around them parses, applies injected faults, turns ApiErrors into the error envelope and logs the call."""

    def __init__(self, service: JobService, faults: Faults, request_log: RequestLog) -> None:
        self.service = service
        self.faults = faults
        self.request_log = request_log

    # ---- Vertex v1 CustomJob API ------------------------------------------------------------------------------

    def create(self, path: dict, request: Request, body: Any) -> dict:
        return self.service.create(path["project"], path["location"], body).resource

    def list(self, path: dict, request: Request, body: Any) -> dict:
        q = request.query_params
        try:
            size = int(q["pageSize"]) if q.get("pageSize") else None
        except ValueError:
            raise InvalidArgument(f"Invalid pageSize {q['pageSize']!r}.") from None
        jobs, token = self.service.list(path["project"], path["location"], q.get("filter"), size, q.get("pageToken"))
        return {"customJobs": jobs, **({"nextPageToken": token} if token else {})}

    def get(self, path: dict, request: Request, body: Any) -> dict:
        return self.service.get(_job_name(path)).resource

    def cancel(self, path: dict, request: Request, body: Any) -> dict:
        self.service.cancel(_job_name(path))
        return {}

    def delete(self, path: dict, request: Request, body: Any) -> dict:
        return self.service.delete(_job_name(path))

    # ---- Cloud Logging v2 ---------------------------------------------------------------------------------------

    def list_log_entries(self, path: dict, request: Request, body: Any) -> dict:
        return list_log_entries(self.service.store, self.service.files, body)

    async def api(self, request: Request) -> Response:
        started = time.monotonic()
        path = request.path_params["path"]
        raw = await request.body()
        extras: dict = {"method": _match_api_route(request.method, path, _routes_of(request))[0]}
        try:
            status, body, extras = await run_in_threadpool(self._serve_api, request.method, path, request, raw)
        except ApiError as exc:
            status, body = exc.http_status, exc.to_json()
        self.request_log.add({
            "method": extras.get("method"),
            "http_method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "status": status,
            "time": dt.datetime.now(dt.timezone.utc).isoformat(),
            "duration_ms": round((time.monotonic() - started) * 1000, 1),
            **{k: v for k, v in extras.items() if k != "method"},
        })
        return _json(body, status)

    def _serve_api(self, http_method: str, path: str, request: Request, raw: bytes) -> tuple[int, dict, dict]:
        """Returns (status, body, log extras). Runs in a worker thread (faults may sleep)."""
        method, match = _match_api_route(http_method, path, _routes_of(request))
        if match is None:
            raise NotFound(f"The requested URL {request.url.path} ({http_method}) was not found on this server.")
        handler = getattr(self, method)
        groups = match.groupdict()
        extras: dict = {"method": method}
        _check_alt(request)
        body: Any = None
        if http_method == "POST":
            try:
                body = json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError as exc:
                raise InvalidArgument(f"Invalid JSON payload received. {exc}") from None
        rule = self.faults.take(method)
        if rule is not None:
            extras["fault"] = {k: v for k, v in vars(rule).items() if k != "used"}
            if rule.delay_seconds:
                time.sleep(rule.delay_seconds)
            if rule.status is not None:
                message = rule.message or _fault_message(method, rule.status, body)
                if rule.commit_then_drop:
                    resource = handler(groups, request, body)
                    self.service.mark_create_response_dropped(resource["name"])
                    extras["job"] = resource["name"]
                return rule.status, error_body(rule.status, message), extras
        result = handler(groups, request, body)
        if method == "create":
            extras["job"] = result["name"]
        elif "job" in groups:
            extras["job"] = match.group(0).split(":")[0]
        return 200, result, extras

    # ---- admin API --------------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return _json({"status": "ok"})

    async def show_faults(self, request: Request) -> Response:
        return _json(self.faults.snapshot())

    async def add_faults(self, request: Request) -> Response:
        try:
            self.faults.configure(json.loads(await request.body() or b"{}"))
        except (ApiError, ValueError, TypeError) as exc:
            message = exc.message if isinstance(exc, ApiError) else str(exc)
            return _json(error_body(400, message), 400)
        return _json(self.faults.snapshot())

    async def clear_faults(self, request: Request) -> Response:
        self.faults.clear()
        return _json({})

    async def show_requests(self, request: Request) -> Response:
        return _json({"requests": self.request_log.entries(request.query_params.get("method"))})

    async def clear_requests(self, request: Request) -> Response:
        self.request_log.clear()
        return _json({})

    async def show_jobs(self, request: Request) -> Response:
        return _json({"jobs": await run_in_threadpool(self.service.admin_jobs)})

    async def show_job(self, request: Request) -> Response:
        try:
            return _json(self.service.admin_job(request.path_params["job_id"]))
        except ApiError as exc:
            return _json(exc.to_json(), exc.http_status)

    async def show_job_log(self, request: Request) -> Response:
        try:
            text = await run_in_threadpool(self.service.job_log, request.path_params["job_id"],
                                           request.query_params.get("replica"))
        except ApiError as exc:
            return _json(exc.to_json(), exc.http_status)
        return PlainTextResponse(text)

    async def reset(self, request: Request) -> Response:
        raw = await request.body()
        options = json.loads(raw) if raw.strip() else {}
        self.faults.clear()
        self.request_log.clear()
        if options.get("jobs"):
            await run_in_threadpool(self.service.forget_all_jobs)
        return _json({})


def _fault_message(method: str, status: int, body: Any) -> str:
    """The default message of an injected error status; a 429 on create carries Vertex's quota text."""
    if method == "create" and status == 429:
        try:
            return quota_exceeded_message(normalize_custom_job(body))
        except InvalidArgument:
            pass  # a body the create would refuse anyway: no GPU to name
    return FAULT_MESSAGES.get(status, f"Injected fault (HTTP {status}).")


def _job_name(path: dict) -> str:
    return f"projects/{path['project']}/locations/{path['location']}/customJobs/{path['job']}"


def _routes_of(request: Request) -> list:
    return LOGGING_ROUTES if request.url.path.startswith("/v2/") else API_ROUTES


def _match_api_route(http_method: str, path: str, routes: list = API_ROUTES) -> tuple[str | None, re.Match | None]:
    """(API method name, match) of the route in `routes` serving `http_method /v1/path` (or /v2/ for
    LOGGING_ROUTES); (None, None) when there is none."""
    for verb, pattern, method in routes:
        match = pattern.match(path)
        if verb == http_method and match:
            return method, match
    return None, None


def build_app(service: JobService, faults: Faults, request_log: RequestLog) -> Starlette:
    """The ASGI app: Vertex v1 CustomJob routes plus the admin API."""
    h = _Handlers(service, faults, request_log)
    admin = "/emulator/v1"
    return Starlette(routes=[
        Route("/v1/{path:path}", h.api, methods=["GET", "POST", "DELETE", "PATCH"]),  # dispatched by API_ROUTES
        Route("/v2/{path:path}", h.api, methods=["GET", "POST"]),  # dispatched by LOGGING_ROUTES
        Route(f"{admin}/health", h.health, methods=["GET"]),
        Route(f"{admin}/faults", h.show_faults, methods=["GET"]),
        Route(f"{admin}/faults", h.add_faults, methods=["POST"]),
        Route(f"{admin}/faults", h.clear_faults, methods=["DELETE"]),
        Route(f"{admin}/requests", h.show_requests, methods=["GET"]),
        Route(f"{admin}/requests", h.clear_requests, methods=["DELETE"]),
        Route(f"{admin}/jobs", h.show_jobs, methods=["GET"]),
        Route(f"{admin}/jobs/{{job_id}}", h.show_job, methods=["GET"]),
        Route(f"{admin}/jobs/{{job_id}}/log", h.show_job_log, methods=["GET"]),
        Route(f"{admin}/reset", h.reset, methods=["POST"]),
    ])
