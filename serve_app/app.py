"""The HTTP API: a FastAPI app served by a Ray Serve deployment (the ingress).

The ingress validates, authenticates and routes. Credits, debits and member reads go to the
AccountShard that owns the member's slot; programs and history are read from PostgreSQL.
"""

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import orjson
import psycopg
import ray
import redis.asyncio
from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from psycopg_pool import PoolTimeout
from pydantic import BaseModel, ValidationError
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actors.account_shard import AccountShard
from actors.earning import EventApplier, ShardApplierFactory, event_command
from actors.event_consumer import EventConsumer
from actors.protocol import (
    Cancel,
    Confirm,
    Credit,
    Debit,
    PutReward,
    Redeem,
    Restock,
    Reverse,
)
from actors.reward_shard import RewardShard
from actors.routing import NAMESPACE, reward_shard_name, shard_name
from actors.shard_client import ACTOR_ERRORS, ShardClient
from db.api_repo import ApiRepo, decode_cursor, decode_reward_cursor
from domain.errors import Code, PointsError
from domain.idempotency import request_hash
from domain.limits import (
    BODY_BYTES_MAX,
    EVENTS_PER_BATCH_MAX,
    ID_LENGTH_MAX,
    ID_PATTERN,
    IDEMPOTENCY_KEY_RE,
    PAGE_SIZE_DEFAULT,
    PAGE_SIZE_MAX,
)
from domain.policy import parse_policy, policy_to_json
from domain.rewards import redemption_view
from domain.rules import compile_rule_set, rule_set_to_json
from serve_app.auth import KEY_LENGTH_MAX, KeyCache, hash_key
from serve_app.problems import (
    HTTP_STATUS,
    JsonResponse,
    outcome_entry,
    outcome_response,
    problem_body,
    problem_response,
)
from serve_app.schemas import (
    CreditIn,
    DebitIn,
    ProgramPut,
    RedemptionIn,
    RestockIn,
    ReverseIn,
    RewardPut,
    RulesPut,
)

log = logging.getLogger("points.api")

ProgramId = Annotated[str, Path(pattern=ID_PATTERN, max_length=ID_LENGTH_MAX)]
MemberId = Annotated[str, Path(pattern=ID_PATTERN, max_length=ID_LENGTH_MAX)]
RewardId = Annotated[str, Path(pattern=ID_PATTERN, max_length=ID_LENGTH_MAX)]
# Reward shards are pinged this often: a restarted one resumes its recovery pass.
REWARD_KEEPER_INTERVAL_S = 5.0
REWARD_CALLS_IN_FLIGHT = 1
EVENT_CONSUMER_NAME = "points-event-consumer"


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


app = FastAPI(
    title="Points",
    version="0.1.0",
    description="Loyalty points: an exact, append-only ledger served by sharded Ray actors.",
    docs_url="/docs",
    openapi_url="/openapi.json",
    default_response_class=JsonResponse,
)
app.add_middleware(BodyLimit)


@app.exception_handler(PointsError)
async def _points_error(request: Request, exc: PointsError) -> Response:
    return problem_response(exc.code, exc.detail)


def validation_problem(raw_errors: Sequence[Any]) -> Response:
    """422 problem listing what failed (400 when the body is not JSON at all)."""
    errors = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type")}
        for e in raw_errors
    ]
    malformed = any(e["type"] == "json_invalid" for e in errors)
    body = problem_body(
        Code.VALIDATION_ERROR,
        "request body is not valid JSON" if malformed else "request failed validation",
        errors=errors[:20],
    )
    body["status"] = 400 if malformed else HTTP_STATUS[Code.VALIDATION_ERROR]
    return Response(
        orjson.dumps(body, default=str),
        status_code=body["status"],
        media_type="application/problem+json",
    )


@app.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    return validation_problem(exc.errors())


@app.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    code = {404: Code.NOT_FOUND, 401: Code.UNAUTHORIZED, 403: Code.FORBIDDEN}.get(
        exc.status_code, Code.VALIDATION_ERROR
    )
    body = problem_body(code, str(exc.detail))
    body["status"] = exc.status_code
    return Response(
        orjson.dumps(body), status_code=exc.status_code, media_type="application/problem+json"
    )


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> Response:
    if isinstance(exc, psycopg.OperationalError | PoolTimeout):
        # The database is down or overloaded: retryable, not a bug.
        log.warning("database unavailable: %r", exc)
        return problem_response(Code.UNAVAILABLE, "database unavailable, retry")
    log.exception("unexpected error")
    return problem_response(Code.INTERNAL, "internal error")


BodyT = TypeVar("BodyT", bound=BaseModel)


def _write_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a write that parses its own body: the body schema and the key header."""
    return {
        "parameters": [
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": True,
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                "description": "Scoped to program and member; a retry with the same key and "
                "body returns the original answer.",
            },
            {
                "name": "Authorization",
                "in": "header",
                "required": True,
                "schema": {"type": "string"},
            },
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        },
    }


def _bad_request(detail: str) -> Response:
    body = problem_body(Code.VALIDATION_ERROR, detail)
    body["status"] = 400
    return Response(orjson.dumps(body), status_code=400, media_type="application/problem+json")


def _program_view(program: dict[str, Any]) -> dict[str, Any]:
    """The program with its policy in full (defaults filled in)."""
    return {**program, "policy": policy_to_json(parse_policy(program.get("policy") or None))}


@serve.deployment(
    name="PointsIngress",
    max_ongoing_requests=2000,
    ray_actor_options={"num_cpus": 0},
    health_check_period_s=5,
    # Per-request access logs cost more CPU than a debit; metrics cover request counts.
    logging_config={"enable_access_log": False},
)
@serve.ingress(app)
class PointsIngress:
    def __init__(
        self, dsn: str, redis_url: str | None, shards: int, shard_config: dict[str, Any]
    ) -> None:
        assert shards > 0
        self.repo = ApiRepo(dsn)
        self.redis = (
            redis.asyncio.Redis.from_url(redis_url, socket_timeout=2) if redis_url else None
        )
        self.keys = KeyCache()
        self.shard_count = shards
        self.shards = [
            AccountShard.options(
                name=shard_name(i), namespace=NAMESPACE, get_if_exists=True, lifetime="detached"
            ).remote(i, dsn, shard_config)
            for i in range(shards)
        ]
        self.client = ShardClient(self.shards)
        self.applier = EventApplier(self.client)
        reward_shards = shard_config.get("reward_shards", 1)
        reward_config = {**shard_config, "shards": shards}
        self.reward_shards = [
            RewardShard.options(
                name=reward_shard_name(i),
                namespace=NAMESPACE,
                get_if_exists=True,
                lifetime="detached",
            ).remote(i, reward_shards, dsn, reward_config)
            for i in range(reward_shards)
        ]
        # One call in flight per reward shard: requests queue meanwhile and go as one bigger
        # call. Measured (flash_bench, one run each): 1 in flight gave 2,178 flash-sale req/s,
        # 2 gave 1,988 and 4 gave 1,607; whole sagas 678 / 633 / 634 req/s. Ray's per-call
        # cost in the ingress outweighs the overlap more calls would give.
        self.rewards = ShardClient(
            self.reward_shards, route_field="reward_id", calls_in_flight=REWARD_CALLS_IN_FLIGHT
        )
        # The Redis stream consumer (async earning): one per deployment, found by name.
        self.event_consumer = None
        stream = shard_config.get("event_stream")
        if redis_url and stream:
            self.event_consumer = EventConsumer.options(
                name=EVENT_CONSUMER_NAME,
                namespace=NAMESPACE,
                get_if_exists=True,
                lifetime="detached",
            ).remote(
                redis_url,
                ShardApplierFactory(shards),
                EVENT_CONSUMER_NAME,
                {"stream": stream, "dead_letter_stream": f"{stream}:dead"},
            )
        self._keeper: asyncio.Task[None] | None = None
        self._opened = False

    async def _keep_reward_shards(self) -> None:
        """Ping reward shards now and then: a restarted shard starts its recovery pass on
        its first call, even when no redemption arrives for it."""
        while True:
            for handle in self.reward_shards:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(handle.ping.remote(), 5)
            if self.event_consumer is not None:
                # Idempotent: (re)starts the consumer loop after an actor restart.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.event_consumer.start.remote(), 5)
            await asyncio.sleep(REWARD_KEEPER_INTERVAL_S)

    async def _repo(self) -> ApiRepo:
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.get_running_loop().create_task(self._keep_reward_shards())
        if not self._opened:
            await self.repo.open()
            self._opened = True
        return self.repo

    async def _authenticate(self, authorization: str | None) -> str:
        if not authorization or not authorization.startswith("Bearer "):
            raise PointsError(Code.UNAUTHORIZED, "send Authorization: Bearer <api key>")
        key = authorization[len("Bearer ") :].strip()
        if not key or len(key) > KEY_LENGTH_MAX:
            raise PointsError(Code.UNAUTHORIZED, "invalid API key")
        key_hash = hash_key(key)
        known, role = self.keys.get(key_hash)
        if not known:
            role = await (await self._repo()).role_for_key_hash(key_hash)
            self.keys.put(key_hash, role)
        if role is None:
            raise PointsError(Code.UNAUTHORIZED, "invalid API key")
        return role

    async def _shard_call(self, program_id: str, member_id: str, method: str, *args: Any) -> Any:
        try:
            return await self.client.call(program_id, member_id, method, *args)
        except ACTOR_ERRORS as exc:
            raise PointsError(
                Code.UNAVAILABLE, f"account shard unavailable: {type(exc).__name__}"
            ) from exc
        except TimeoutError as exc:
            raise PointsError(Code.UNAVAILABLE, "account shard timed out") from exc
        except Exception as exc:  # the shard's database read failed: retryable
            log.warning("shard %s failed: %r", method, exc)
            raise PointsError(Code.UNAVAILABLE, "account shard could not read, retry") from exc

    # ------------------------------------------------------------------ health

    @app.get("/healthz", tags=["health"])
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(self) -> Response:
        try:
            await asyncio.wait_for((await self._repo()).ping(), 3)
            pings = await asyncio.wait_for(
                asyncio.gather(*(s.ping.remote() for s in self.shards + self.reward_shards)), 5
            )
            shards, reward_shards = pings[: len(self.shards)], pings[len(self.shards) :]
            consumer = None
            if self.event_consumer is not None:
                consumer = await asyncio.wait_for(self.event_consumer.start.remote(), 5)
        except Exception as exc:
            return problem_response(Code.UNAVAILABLE, f"not ready: {type(exc).__name__}: {exc}")
        redis_state = "not configured"
        if self.redis is not None:
            try:  # reported, not required: no write path depends on Redis yet
                await asyncio.wait_for(self.redis.ping(), 2)
                redis_state = "ok"
            except Exception as exc:
                redis_state = f"down: {type(exc).__name__}"
        return JsonResponse(
            {
                "status": "ready",
                "database": "ok",
                "redis": redis_state,
                "shards": shards,
                "reward_shards": reward_shards,
                "event_consumer": consumer,
            }
        )

    # ------------------------------------------------------------------ programs

    @app.put("/v1/programs/{program_id}", tags=["programs"])
    async def put_program(
        self,
        program_id: ProgramId,
        body: ProgramPut,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        await self._authenticate(authorization)
        policy = None if body.policy is None else policy_to_json(parse_policy(body.policy))
        created, program = await (await self._repo()).put_program(program_id, body.name, policy)
        if policy is not None:
            await self._forget_program(program_id)
        return JsonResponse(_program_view(program), status_code=201 if created else 200)

    async def _forget_program(self, program_id: str) -> None:
        """Tell every account shard to read the program's policy and rules again (each also
        re-reads them within PROGRAM_CONFIG_TTL_S on its own)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(*(s.forget_program.remote(program_id) for s in self.shards)), 5
            )

    # ------------------------------------------------------------------ rules

    @app.put("/v1/programs/{program_id}/rules", tags=["rules"], status_code=201)
    async def put_rules(
        self,
        program_id: ProgramId,
        body: RulesPut,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        """A new version of the program's rule set (it never edits an old version)."""
        await self._authenticate(authorization)
        compiled = compile_rule_set(body.rules, 1)  # validates; raises validation_error
        rule_set = await (await self._repo()).add_rule_set(
            program_id, rule_set_to_json(compiled), body.effective_from
        )
        if rule_set is None:
            raise PointsError(Code.NOT_FOUND, f"program {program_id} not found")
        await self._forget_program(program_id)
        return JsonResponse(rule_set, status_code=201)

    @app.get("/v1/programs/{program_id}/rules", tags=["rules"])
    async def list_rules(
        self,
        program_id: ProgramId,
        limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Rule set versions, newest first (a version may start later: effective_from)."""
        await self._authenticate(authorization)
        repo = await self._repo()
        if await repo.get_program(program_id) is None:
            raise PointsError(Code.NOT_FOUND, f"program {program_id} not found")
        return JsonResponse({"items": await repo.list_rule_sets(program_id, limit)})

    # ------------------------------------------------------------------ events

    async def _json_body(self, request: Request) -> Any:
        try:
            return orjson.loads(await request.body())
        except orjson.JSONDecodeError as exc:
            raise PointsError(Code.VALIDATION_ERROR, f"the body is not valid JSON: {exc}") from exc

    @app.post("/v1/programs/{program_id}/events", tags=["events"], status_code=201)
    async def post_event(
        self,
        program_id: ProgramId,
        request: Request,
        dry_run: Annotated[bool, Query()] = False,
    ) -> Response:
        """Apply one business event: the program's rules decide the points (and say why).
        `?dry_run=true` answers the same without writing anything."""
        await self._authenticate(request.headers.get("authorization"))
        raw = await self._json_body(request)
        command = event_command(program_id, raw, dry_run, datetime.now(UTC))
        return outcome_response(await self.client.submit(command))

    @app.post("/v1/programs/{program_id}/events/batch", tags=["events"])
    async def post_events(
        self,
        program_id: ProgramId,
        request: Request,
        dry_run: Annotated[bool, Query()] = False,
    ) -> Response:
        """Up to EVENTS_PER_BATCH_MAX events; one result per event, in order."""
        await self._authenticate(request.headers.get("authorization"))
        body = await self._json_body(request)
        events = body.get("events") if isinstance(body, dict) else None
        if not isinstance(events, list) or not 1 <= len(events) <= EVENTS_PER_BATCH_MAX:
            raise PointsError(
                Code.VALIDATION_ERROR,
                f'the body must be {{"events": [...]}} with 1..{EVENTS_PER_BATCH_MAX} events',
            )
        answers = await self.applier(program_id, events, dry_run)
        return JsonResponse({"results": [outcome_entry(answer) for answer in answers]})

    @app.get("/v1/programs/{program_id}/events/{event_id}", tags=["events"])
    async def get_event(
        self,
        program_id: ProgramId,
        event_id: Annotated[str, Path(pattern=ID_PATTERN, max_length=ID_LENGTH_MAX)],
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        """An applied event: the points it earned, why, and what was reversed."""
        await self._authenticate(authorization)
        event = await (await self._repo()).get_event(program_id, event_id)
        if event is None:
            raise PointsError(Code.NOT_FOUND, f"event {event_id} not found")
        return JsonResponse(event)

    @app.post("/v1/programs/{program_id}/events/{event_id}/confirm", tags=["events"])
    async def confirm_event(
        self,
        program_id: ProgramId,
        event_id: Annotated[str, Path(pattern=ID_PATTERN, max_length=ID_LENGTH_MAX)],
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        """Release the points an event holds until confirmation (policy pending
        `until_confirmed`): spendable from now, expiring by the policy from now. Safe to
        repeat: it is keyed by the event id."""
        await self._authenticate(authorization)
        member_id = await (await self._repo()).event_member(program_id, event_id)
        if member_id is None:
            raise PointsError(Code.NOT_FOUND, f"event {event_id} not found")
        fields = {"program_id": program_id, "member_id": member_id, "event_id": event_id}
        command = Confirm(
            program_id=program_id,
            member_id=member_id,
            event_id=event_id,
            # A space: never equal to a client Idempotency-Key (no spaces allowed there).
            key=f"confirm {event_id}",
            request_hash=request_hash("confirm", fields),
        )
        return outcome_response(await self.client.submit(command))

    @app.post(
        "/v1/programs/{program_id}/events/{event_id}/reverse",
        tags=["events"],
        status_code=201,
        openapi_extra=_write_openapi(ReverseIn),
    )
    async def reverse_event(
        self,
        program_id: ProgramId,
        event_id: Annotated[str, Path(pattern=ID_PATTERN, max_length=ID_LENGTH_MAX)],
        request: Request,
    ) -> Response:
        """Claw back what an event earned (refund, cancelled order), in proportion to the
        `amount` reversed (omitted: all); never more than it earned, however often."""
        await self._authenticate(request.headers.get("authorization"))
        body = await self._parse(request, ReverseIn)
        if isinstance(body, Response):
            return body
        if request.headers.get("idempotency-key") is None:
            return _bad_request("the Idempotency-Key header is required for this request")
        member_id = await (await self._repo()).event_member(program_id, event_id)
        if member_id is None:
            raise PointsError(Code.NOT_FOUND, f"event {event_id} not found")
        amount = None if body.amount is None else str(body.amount)
        fields = {"event_id": event_id, "amount": amount}
        return await self._move("reverse", program_id, member_id, fields, request)

    @app.get("/v1/programs/{program_id}", tags=["programs"])
    async def get_program(
        self, program_id: ProgramId, authorization: Annotated[str | None, Header()] = None
    ) -> Response:
        await self._authenticate(authorization)
        program = await (await self._repo()).get_program(program_id)
        if program is None:
            raise PointsError(Code.NOT_FOUND, f"program {program_id} not found")
        return JsonResponse(_program_view(program))

    # ------------------------------------------------------------------ members

    async def _move(
        self,
        kind: str,
        program_id: str,
        member_id: str,
        fields: dict[str, Any],
        http_request: Request,
    ) -> Response:
        idempotency_key = http_request.headers.get("idempotency-key")
        if idempotency_key is None:
            return _bad_request("the Idempotency-Key header is required for this request")
        if IDEMPOTENCY_KEY_RE.fullmatch(idempotency_key) is None:
            return _bad_request("Idempotency-Key must be 1..255 visible ASCII characters")
        digest = request_hash(kind, {"program_id": program_id, "member_id": member_id, **fields})
        command_type = {"credit": Credit, "debit": Debit, "reverse": Reverse}[kind]
        command = command_type(
            program_id=program_id,
            member_id=member_id,
            key=idempotency_key,
            request_hash=digest,
            **fields,
        )
        return outcome_response(await self.client.submit(command))

    # Credits and debits are the hot path: the body and headers are read here rather than
    # through FastAPI's dependency injection, which cost ~15% of the replica's CPU per debit.
    # The OpenAPI document still describes both (openapi_extra).

    async def _parse(self, request: Request, model: type[BodyT]) -> BodyT | Response:
        try:
            return model.model_validate_json(await request.body())
        except ValidationError as exc:
            return validation_problem([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()])

    @app.post(
        "/v1/programs/{program_id}/members/{member_id}/credits",
        tags=["members"],
        status_code=201,
        openapi_extra=_write_openapi(CreditIn),
    )
    async def credit(
        self, program_id: ProgramId, member_id: MemberId, request: Request
    ) -> Response:
        await self._authenticate(request.headers.get("authorization"))
        body = await self._parse(request, CreditIn)
        if isinstance(body, Response):
            return body
        fields = {"points": body.points, "reason": body.reason, "expires_at": body.expires_at}
        return await self._move("credit", program_id, member_id, fields, request)

    @app.post(
        "/v1/programs/{program_id}/members/{member_id}/debits",
        tags=["members"],
        status_code=201,
        openapi_extra=_write_openapi(DebitIn),
    )
    async def debit(self, program_id: ProgramId, member_id: MemberId, request: Request) -> Response:
        await self._authenticate(request.headers.get("authorization"))
        body = await self._parse(request, DebitIn)
        if isinstance(body, Response):
            return body
        fields = {"points": body.points, "reason": body.reason}
        return await self._move("debit", program_id, member_id, fields, request)

    @app.get("/v1/programs/{program_id}/members/{member_id}", tags=["members"])
    async def get_member(
        self,
        program_id: ProgramId,
        member_id: MemberId,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        await self._authenticate(authorization)
        view = await self._shard_call(program_id, member_id, "get_account", program_id, member_id)
        if view is None:
            raise PointsError(Code.NOT_FOUND, f"member {member_id} not found")
        return JsonResponse(view)

    @app.get("/v1/programs/{program_id}/members/{member_id}/tier-changes", tags=["members"])
    async def list_tier_changes(
        self,
        program_id: ProgramId,
        member_id: MemberId,
        limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        """The member's tier changes, newest first, each with its reason."""
        await self._authenticate(authorization)
        repo = await self._repo()
        if not await repo.account_exists(program_id, member_id):
            raise PointsError(Code.NOT_FOUND, f"member {member_id} not found")
        return JsonResponse({"items": await repo.tier_changes(program_id, member_id, limit)})

    @app.get("/v1/programs/{program_id}/members/{member_id}/transactions", tags=["members"])
    async def list_transactions(
        self,
        program_id: ProgramId,
        member_id: MemberId,
        type: Annotated[
            str | None, Query(pattern="^(credit|debit|refund|expire|reversal)$")
        ] = None,
        since: Annotated[datetime | None, Query()] = None,
        until: Annotated[datetime | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        await self._authenticate(authorization)
        for name, moment in (("since", since), ("until", until)):
            if moment is not None and moment.tzinfo is None:
                raise PointsError(Code.VALIDATION_ERROR, f"{name} needs a time zone (e.g. Z)")
        position = None
        if cursor is not None:
            try:
                position = decode_cursor(cursor)
            except (ValueError, UnicodeDecodeError) as exc:
                raise PointsError(Code.VALIDATION_ERROR, "invalid cursor") from exc
        repo = await self._repo()
        items, next_cursor = await repo.list_transactions(
            program_id,
            member_id,
            kind=type,
            since=since,
            until=until,
            limit=limit,
            cursor=position,
        )
        # An empty page is either an unknown member (404) or a filter that matched nothing.
        if not items and not await repo.account_exists(program_id, member_id):
            raise PointsError(Code.NOT_FOUND, f"member {member_id} not found")
        return JsonResponse({"items": items, "next_cursor": next_cursor})

    # ------------------------------------------------------------------ rewards

    def _key(self, request: Request) -> str | Response:
        idempotency_key = request.headers.get("idempotency-key")
        if idempotency_key is None:
            return _bad_request("the Idempotency-Key header is required for this request")
        if IDEMPOTENCY_KEY_RE.fullmatch(idempotency_key) is None:
            return _bad_request("Idempotency-Key must be 1..255 visible ASCII characters")
        return idempotency_key

    @app.put("/v1/programs/{program_id}/rewards/{reward_id}", tags=["rewards"])
    async def put_reward(
        self,
        program_id: ProgramId,
        reward_id: RewardId,
        body: RewardPut,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        await self._authenticate(authorization)
        command = PutReward(
            program_id=program_id, reward_id=reward_id, **body.model_dump(mode="json")
        )
        return outcome_response(await self.rewards.submit(command))

    @app.get("/v1/programs/{program_id}/rewards", tags=["rewards"])
    async def list_rewards(
        self,
        program_id: ProgramId,
        limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        await self._authenticate(authorization)
        after = None
        if cursor is not None:
            try:
                after = decode_reward_cursor(cursor)
            except (ValueError, UnicodeDecodeError) as exc:
                raise PointsError(Code.VALIDATION_ERROR, "invalid cursor") from exc
        repo = await self._repo()
        items, next_cursor = await repo.list_rewards(program_id, limit=limit, after=after)
        if not items and cursor is None and await repo.get_program(program_id) is None:
            raise PointsError(Code.NOT_FOUND, f"program {program_id} not found")
        return JsonResponse({"items": items, "next_cursor": next_cursor})

    @app.get("/v1/programs/{program_id}/rewards/{reward_id}", tags=["rewards"])
    async def get_reward(
        self,
        program_id: ProgramId,
        reward_id: RewardId,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        await self._authenticate(authorization)
        reward = await (await self._repo()).get_reward(program_id, reward_id)
        if reward is None:
            raise PointsError(Code.NOT_FOUND, f"reward {reward_id} not found")
        return JsonResponse(reward)

    @app.post(
        "/v1/programs/{program_id}/rewards/{reward_id}/restock",
        tags=["rewards"],
        status_code=201,
        openapi_extra=_write_openapi(RestockIn),
    )
    async def restock(
        self, program_id: ProgramId, reward_id: RewardId, request: Request
    ) -> Response:
        await self._authenticate(request.headers.get("authorization"))
        body = await self._parse(request, RestockIn)
        if isinstance(body, Response):
            return body
        key = self._key(request)
        if isinstance(key, Response):
            return key
        fields = {"program_id": program_id, "reward_id": reward_id, "quantity": body.quantity}
        command = Restock(**fields, key=key, request_hash=request_hash("restock", fields))
        return outcome_response(await self.rewards.submit(command))

    # ------------------------------------------------------------------ redemptions

    @app.post(
        "/v1/programs/{program_id}/redemptions",
        tags=["redemptions"],
        status_code=201,
        openapi_extra=_write_openapi(RedemptionIn),
    )
    async def redeem(self, program_id: ProgramId, request: Request) -> Response:
        await self._authenticate(request.headers.get("authorization"))
        body = await self._parse(request, RedemptionIn)
        if isinstance(body, Response):
            return body
        key = self._key(request)
        if isinstance(key, Response):
            return key
        fields = {"program_id": program_id, **body.model_dump()}
        command = Redeem(**fields, key=key, request_hash=request_hash("redeem", fields))
        return outcome_response(await self.rewards.submit(command))

    @app.get("/v1/programs/{program_id}/redemptions/{redemption_id}", tags=["redemptions"])
    async def get_redemption(
        self,
        program_id: ProgramId,
        redemption_id: uuid.UUID,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        await self._authenticate(authorization)
        redemption = await (await self._repo()).get_redemption(program_id, redemption_id)
        if redemption is None:
            raise PointsError(Code.NOT_FOUND, f"redemption {redemption_id} not found")
        return JsonResponse(redemption_view(redemption))

    @app.post("/v1/programs/{program_id}/redemptions/{redemption_id}/cancel", tags=["redemptions"])
    async def cancel_redemption(
        self,
        program_id: ProgramId,
        redemption_id: uuid.UUID,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        await self._authenticate(authorization)
        redemption = await (await self._repo()).get_redemption(program_id, redemption_id)
        if redemption is None:
            raise PointsError(Code.NOT_FOUND, f"redemption {redemption_id} not found")
        command = Cancel(
            program_id=program_id, reward_id=redemption.reward_id, redemption_id=redemption_id
        )
        return outcome_response(await self.rewards.submit(command))

    @app.get("/v1/programs/{program_id}/members/{member_id}/redemptions", tags=["redemptions"])
    async def list_member_redemptions(
        self,
        program_id: ProgramId,
        member_id: MemberId,
        limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        authorization: Annotated[str | None, Header()] = None,
    ) -> Response:
        await self._authenticate(authorization)
        position = None
        if cursor is not None:
            try:
                position = decode_cursor(cursor)
            except (ValueError, UnicodeDecodeError) as exc:
                raise PointsError(Code.VALIDATION_ERROR, "invalid cursor") from exc
        repo = await self._repo()
        items, next_cursor = await repo.list_member_redemptions(
            program_id, member_id, limit=limit, cursor=position
        )
        if not items and not await repo.account_exists(program_id, member_id):
            raise PointsError(Code.NOT_FOUND, f"member {member_id} not found")
        return JsonResponse({"items": items, "next_cursor": next_cursor})


def build_app(
    dsn: str, redis_url: str | None, shards: int, shard_config: dict[str, Any], replicas: int = 1
) -> Any:
    """The Serve application `points up` (and the e2e tests) deploy."""
    assert ray.is_initialized()
    return PointsIngress.options(num_replicas=replicas).bind(dsn, redis_url, shards, shard_config)
