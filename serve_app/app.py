"""The HTTP API: a FastAPI app (one router per resource, serve_app/routes/) served by a Ray
Serve deployment, the ingress.

Request path: BodyLimit (413 past BODY_BYTES_MAX) -> router -> route (authenticate, parse
strictly, build a typed command) -> ShardClient -> shard actor -> `Outcome` -> the one
renderer (serve_app/problems.py). Every error, raised anywhere below a route, becomes a
problem here, in the exception handlers, through the same renderer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import psycopg
import ray
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi_offline import FastAPIOffline
from psycopg_pool import PoolTimeout
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.metrics import HttpMetrics
from actors.placement import CODE_VERSION_ENV
from domain.errors import Code, PointsError
from domain.limits import BODY_BYTES_MAX
from serve_app import openapi, webconsole, wiring
from serve_app.http import InvalidBody
from serve_app.problems import RETRY_AFTER_S, JsonResponse, problem_response
from serve_app.routes import ROUTERS
from serve_app.settings import INGRESS_QUEUED_MAX

log = logging.getLogger("points.api")

VALIDATION_ERRORS_SHOWN_MAX = 20
# Statuses Starlette raises itself (no route, wrong method), as codes.
STARLETTE_CODES = {404: Code.NOT_FOUND, 405: Code.METHOD_NOT_ALLOWED}


class BodyLimit:
    """Refuse bodies over BODY_BYTES_MAX with 413, by Content-Length or by counting."""

    def __init__(self, app: ASGIApp, limit_bytes: int = BODY_BYTES_MAX) -> None:
        self.app = app
        self.limit_bytes = limit_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.limit_bytes):
                await self._refuse(scope, receive, send)
                return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            Code.PAYLOAD_TOO_LARGE, f"request body is limited to {self.limit_bytes} bytes"
        )
        await response(scope, receive, send)


class _TooLarge(Exception):
    pass


class RequestMetrics:
    """Count every answer by route template, method and status, and time it
    (`points_http_requests_total`, `points_http_request_duration_seconds`: docs/metrics.md).
    Outermost, so refusals by the middlewares inside it count too. The route is the
    template the router matched (FastAPI puts it in the scope), never the path itself,
    which holds member ids; a path no route matched counts as `unmatched`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.metrics = HttpMetrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            self.metrics.answered(
                getattr(route, "path", "unmatched"),
                scope.get("method", ""),
                status,
                time.perf_counter() - started,
            )


def validation_problem(raw_errors: Sequence[Any]) -> Response:
    """422 problem listing what failed (400 when the body is not JSON at all)."""
    errors = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type")}
        for e in raw_errors
    ]
    if any(e["type"] == "json_invalid" for e in errors):
        return problem_response(Code.BAD_REQUEST, "request body is not valid JSON")
    return problem_response(
        Code.VALIDATION_ERROR,
        "request failed validation",
        errors=errors[:VALIDATION_ERRORS_SHOWN_MAX],
    )


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods of the route templates this path belongs to (for 405's Allow). Where a
    literal segment and a parameter both match (`/events/batch`, `/events/{event_id}`),
    the path belongs to the template with fewer parameters, as the document says."""
    matching: dict[int, set[str]] = {}
    for candidate in app.router.routes:
        regex = getattr(candidate, "path_regex", None)
        methods = getattr(candidate, "methods", None)
        if regex is not None and methods and regex.match(path):
            parameters = len(getattr(candidate, "param_convertors", {}))
            matching.setdefault(parameters, set()).update(methods)
    return sorted(matching[min(matching)]) if matching else []


def create_app() -> FastAPI:
    created = FastAPIOffline(
        title="Points",
        version="0.1.0",
        description="Loyalty points: an exact, append-only ledger served by sharded Ray actors. "
        "Authorize with an API key (Bearer).",
        openapi_url="/openapi.json",
        default_response_class=JsonResponse,
        swagger_ui_parameters={"persistAuthorization": True},
    )
    created.add_middleware(BodyLimit)
    created.add_middleware(RequestMetrics)
    # The routers' routes go straight into the app's route list: FastAPI >= 0.16x wraps an
    # included router in another routing layer, which cost ~15 us per request here
    # (measured in-process: 58 vs 43 us for a trivial route), on every debit.
    for router in ROUTERS:
        created.router.routes.extend(router.routes)
    webconsole.mount(created)  # after the API's routes: /v1 is matched first

    def document() -> dict[str, Any]:
        if created.openapi_schema is None:
            created.openapi_schema = openapi.finish(
                get_openapi(
                    title=created.title,
                    version=created.version,
                    openapi_version=created.openapi_version,
                    description=created.description,
                    routes=created.routes,
                )
            )
        return created.openapi_schema

    created.openapi = document  # type: ignore[method-assign]

    @created.exception_handler(PointsError)
    async def _points_error(request: Request, exc: PointsError) -> Response:
        return problem_response(exc.code, exc.detail, headers=exc.hints, **exc.extra)

    @created.exception_handler(InvalidBody)
    async def _invalid_body(request: Request, exc: InvalidBody) -> Response:
        return validation_problem(exc.errors)

    @created.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return validation_problem(exc.errors())

    @created.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = STARLETTE_CODES.get(exc.status_code)
        if code is None:  # nothing else is raised by Starlette for our routes
            log.warning("unexpected HTTP exception %s: %s", exc.status_code, exc.detail)
            code = Code.BAD_REQUEST
        headers = None
        if code is Code.METHOD_NOT_ALLOWED:
            headers = {"Allow": ", ".join(allowed_methods(created, request.url.path))}
        return problem_response(code, str(exc.detail), headers=headers)

    @created.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        if isinstance(exc, psycopg.OperationalError | PoolTimeout):
            # The database is down or overloaded: retryable, not a bug.
            log.warning("database unavailable: %r", exc)
            return problem_response(Code.UNAVAILABLE, "database unavailable, retry")
        log.exception("unexpected error")
        return problem_response(Code.INTERNAL, "internal error")

    return created


app = create_app()


# Ingress autoscaling (settings: replicas .. max_replicas). The target of requests in flight
# per replica is the most at which one replica still answered spread debits with p99 under
# 100 ms (`python -m loadtests.scale_bench --sweep`, one run, 2-core machine: p99 57 ms at 32
# in flight, 152 ms at 64; docs/scaling.md). Throughput per replica still grows past it
# (899 req/s at 32, 1,149 at 64, 1,490 at 128: bigger group commits), so above the target
# Serve adds a replica, which helps where there are cores to run it.
TARGET_ONGOING_REQUESTS = 32
# Scale up after load has stayed high this long; down only after a longer quiet spell
# (a replica takes seconds to start: do not flap on a burst).
UPSCALE_DELAY_S = 10.0
DOWNSCALE_DELAY_S = 120.0


# Replicas ask for no CPU: on a small machine they share it with the shards.
REPLICA_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0}


@serve.deployment(
    name="PointsIngress",
    max_ongoing_requests=2000,
    ray_actor_options=REPLICA_ACTOR_OPTIONS,
    health_check_period_s=5,
    # Per-request access logs cost more CPU than a debit; metrics cover request counts.
    logging_config={"enable_access_log": False},
)
@serve.ingress(app)
class PointsIngress:
    def __init__(
        self, dsn: str, redis_url: str | None, shards: int, shard_config: dict[str, Any]
    ) -> None:
        # The routes find the replica's wiring through serve_app/http.py: backend().
        wiring.install(wiring.Backend(dsn, redis_url, shards, shard_config))


def replica_options(replicas: int, max_replicas: int | None) -> dict[str, Any]:
    """A fixed number of ingress replicas, or Serve autoscaling between the two."""
    assert replicas >= 1
    if max_replicas is None or max_replicas <= replicas:
        return {"num_replicas": replicas}
    return {
        "autoscaling_config": {
            "min_replicas": replicas,
            "max_replicas": max_replicas,
            "target_ongoing_requests": TARGET_ONGOING_REQUESTS,
            "upscale_delay_s": UPSCALE_DELAY_S,
            "downscale_delay_s": DOWNSCALE_DELAY_S,
        }
    }


def queue_options(queued_max: int) -> dict[str, Any]:
    """Bounded: past `queued_max` requests waiting for a replica (all its
    max_ongoing_requests slots taken), Serve answers 503 at once, with our Retry-After and
    its own text body. Both serve profiles: the "fast" profile's direct ingress enforces it
    in the replica, the default profile's proxy in its router."""
    assert queued_max >= 1
    return {
        "max_queued_requests": queued_max,
        "backpressure_config": {"status_code": 503, "retry_after_s": RETRY_AFTER_S},
    }


def build_app(
    dsn: str,
    redis_url: str | None,
    shards: int,
    shard_config: dict[str, Any],
    replicas: int = 1,
    max_replicas: int | None = None,
    code_version: str | None = None,
) -> Any:
    """The Serve application `points up` (and the e2e tests) deploy. `code_version` names
    the release in the replicas' environment (a changed one makes Serve roll the replicas)."""
    assert ray.is_initialized()
    options = {
        **replica_options(replicas, max_replicas),
        **queue_options(int(shard_config.get("ingress_queued_max", INGRESS_QUEUED_MAX))),
    }
    if code_version is not None:
        options["ray_actor_options"] = {
            **REPLICA_ACTOR_OPTIONS,
            "runtime_env": {"env_vars": {CODE_VERSION_ENV: code_version}},
        }
    if shard_config.get("log_format") == "json":
        # Serve's own lines as JSON too, each with its request id.
        options["logging_config"] = {"enable_access_log": False, "encoding": "JSON"}
    # A Deployment, made by @serve.deployment: mypy ignores class decorators' return types.
    deployment = PointsIngress.options(**options)  # type: ignore[attr-defined]
    return deployment.bind(dsn, redis_url, shards, shard_config)
