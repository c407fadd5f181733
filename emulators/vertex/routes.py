"""HTTP only: map Vertex v1 REST paths and the `/emulator/v1/` admin API to the backend, speak Google's JSON.

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

from emulators.vertex.backend import JobService
from emulators.vertex.errors import ApiError, InvalidArgument, NotFound, error_body
from emulators.vertex.faults import Faults

_JOBS = r"projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)/customJobs"
#: (HTTP method, path regex under /v1/, API method name)
API_ROUTES = [
    ("POST", re.compile(rf"^{_JOBS}$"), "create"),
    ("GET", re.compile(rf"^{_JOBS}$"), "list"),
    ("GET", re.compile(rf"^{_JOBS}/(?P<job>[^/:]+)$"), "get"),
    ("DELETE", re.compile(rf"^{_JOBS}/(?P<job>[^/:]+)$"), "delete"),
    ("POST", re.compile(rf"^{_JOBS}/(?P<job>[^/:]+):cancel$"), "cancel"),
]

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


def build_app(service: JobService, faults: Faults, request_log: RequestLog) -> Starlette:
    """The ASGI app: Vertex v1 CustomJob routes plus the admin API."""

    def call_api(method: str, match: re.Match, request: Request, body: Any) -> dict:
        g = match.groupdict()
        name = f"projects/{g['project']}/locations/{g['location']}/customJobs/{g.get('job')}"
        if method == "create":
            return service.create(g["project"], g["location"], body).resource
        if method == "get":
            return service.get(name).resource
        if method == "list":
            q = request.query_params
            try:
                size = int(q["pageSize"]) if q.get("pageSize") else None
            except ValueError:
                raise InvalidArgument(f"Invalid pageSize {q['pageSize']!r}.") from None
            jobs, token = service.list(g["project"], g["location"], q.get("filter"), size, q.get("pageToken"))
            out: dict = {"customJobs": jobs}
            if token:
                out["nextPageToken"] = token
            return out
        if method == "cancel":
            service.cancel(name)
            return {}
        if method == "delete":
            return service.delete(name)
        raise AssertionError(method)

    def serve_api(http_method: str, path: str, request: Request, raw: bytes) -> tuple[int, dict, dict]:
        """Returns (status, body, log extras). Runs in a worker thread (faults may sleep)."""
        for verb, pattern, method in API_ROUTES:
            match = pattern.match(path)
            if verb == http_method and match:
                break
        else:
            raise NotFound(f"The requested URL /v1/{path} ({http_method}) was not found on this server.")
        extras: dict = {"method": method}
        _check_alt(request)
        body: Any = None
        if http_method == "POST":
            try:
                body = json.loads(raw) if raw.strip() else {}
            except json.JSONDecodeError as exc:
                raise InvalidArgument(f"Invalid JSON payload received. {exc}") from None
        rule = faults.take(method)
        if rule is not None:
            extras["fault"] = {k: v for k, v in vars(rule).items() if k != "used"}
            if rule.delay_seconds:
                time.sleep(rule.delay_seconds)
            if rule.status is not None:
                message = rule.message or FAULT_MESSAGES.get(rule.status, f"Injected fault (HTTP {rule.status}).")
                if rule.commit_then_drop:
                    resource = call_api(method, match, request, body)
                    record = service.store.get(resource["name"].rsplit("/", 1)[-1])
                    if record is not None:
                        record.create_response_dropped = True
                        service.store.save(record)
                    extras["job"] = resource["name"]
                return rule.status, error_body(rule.status, message), extras
        result = call_api(method, match, request, body)
        if method == "create":
            extras["job"] = result["name"]
        elif "job" in match.groupdict():
            extras["job"] = match.group(0).split(":")[0]
        return 200, result, extras

    async def api(request: Request) -> Response:
        started = time.monotonic()
        path = request.path_params["path"]
        raw = await request.body()
        extras: dict = {"method": next((m for v, p, m in API_ROUTES if v == request.method and p.match(path)), None)}
        try:
            status, body, extras = await run_in_threadpool(serve_api, request.method, path, request, raw)
        except ApiError as exc:
            status, body = exc.http_status, exc.to_json()
        request_log.add({
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

    # ---- admin ------------------------------------------------------------------------------------------------

    async def health(request: Request) -> Response:
        return _json({"status": "ok"})

    async def faults_route(request: Request) -> Response:
        if request.method == "GET":
            return _json(faults.snapshot())
        if request.method == "DELETE":
            faults.clear()
            return _json({})
        try:
            faults.configure(json.loads(await request.body() or b"{}"))
        except (ApiError, ValueError, TypeError) as exc:
            message = exc.message if isinstance(exc, ApiError) else str(exc)
            return _json(error_body(400, message), 400)
        return _json(faults.snapshot())

    async def requests_route(request: Request) -> Response:
        if request.method == "DELETE":
            request_log.clear()
            return _json({})
        return _json({"requests": request_log.entries(request.query_params.get("method"))})

    async def jobs_route(request: Request) -> Response:
        return _json({"jobs": await run_in_threadpool(service.admin_jobs)})

    async def job_route(request: Request) -> Response:
        record = service.store.get(request.path_params["job_id"])
        if record is None:
            return _json(NotFound(f"No job with id {request.path_params['job_id']}.").to_json(), 404)
        return _json(service.admin_view(record))

    async def log_route(request: Request) -> Response:
        try:
            text = await run_in_threadpool(service.job_log, request.path_params["job_id"],
                                           request.query_params.get("replica"))
        except ApiError as exc:
            return _json(exc.to_json(), exc.http_status)
        return PlainTextResponse(text)

    async def reset_route(request: Request) -> Response:
        raw = await request.body()
        options = json.loads(raw) if raw.strip() else {}
        faults.clear()
        request_log.clear()
        if options.get("jobs"):
            await run_in_threadpool(service.forget_all_jobs)
        return _json({})

    routes = [
        Route("/v1/{path:path}", api, methods=["GET", "POST", "DELETE", "PATCH"]),
        Route("/emulator/v1/health", health, methods=["GET"]),
        Route("/emulator/v1/faults", faults_route, methods=["GET", "POST", "DELETE"]),
        Route("/emulator/v1/requests", requests_route, methods=["GET", "DELETE"]),
        Route("/emulator/v1/jobs", jobs_route, methods=["GET"]),
        Route("/emulator/v1/jobs/{job_id}", job_route, methods=["GET"]),
        Route("/emulator/v1/jobs/{job_id}/log", log_route, methods=["GET"]),
        Route("/emulator/v1/reset", reset_route, methods=["POST"]),
    ]
    return Starlette(routes=routes)
