"""What every route shares, written once: the backend, authentication, the Idempotency-Key
header, strict JSON bodies, cursors.

Routes read the request directly (no FastAPI dependency injection on the hot path: it
cost ~15% of a replica's CPU per debit); the OpenAPI document still describes headers,
bodies and security (serve_app/openapi.py).

Strict input: a body is JSON only when it says so (`Content-Type: application/json`, or a
`+json` type), and is parsed by `domain.jsontext` (a key twice or NaN refused, 27.0 is
27), the same parser the event stream uses; every refusal is a problem with a stable code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from actors.protocol import Credit, Debit, Reverse
from db.access_repo import AuditEntry
from domain import jsontext
from domain.errors import Code, PointsError
from domain.idempotency import request_hash
from domain.limits import IDEMPOTENCY_KEY_RE
from serve_app import access, wiring
from serve_app.auth import KeyRecord, Refusal
from serve_app.problems import outcome_response
from serve_app.ratelimit import client_address

BodyT = TypeVar("BodyT", bound=BaseModel)
T = TypeVar("T")

BEARER_PREFIX = "Bearer "
JSON_MEDIA_TYPE = "application/json"


class InvalidBody(Exception):
    """A body that parsed as JSON but failed its model: rendered as a 422 problem listing
    each error (`errors`), like FastAPI's own validation errors."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} validation errors")
        self.errors = errors


def backend(request: Request) -> wiring.Backend:
    """The replica's wiring (repository, shard clients), installed by the ingress."""
    return wiring.current()


async def authenticate(request: Request, limit: bool = True) -> KeyRecord:
    """The request's key, allowed on the matched route (serve_app/access.py) and for its
    program, and within its rate limits; otherwise the problem: 401 (no or invalid key,
    429 after repeated failures from one address), 404 (a program the key is not limited
    to), 403 (a role without the right), 429 (over a rate limit).

    Writes to a member whose id is in the body rather than the path pass `limit=False` and
    call `admit` once they know the member (one rate-limit round trip either way)."""
    wiring = backend(request)
    authorization = request.headers.get("authorization")
    if not authorization or not authorization.startswith(BEARER_PREFIX):
        await wiring.refuse(None, "send Authorization: Bearer <api key>")
    peer = request.client.host if request.client else None
    client = client_address(peer, request.headers.get("x-forwarded-for"))
    found = await wiring.verify(authorization[len(BEARER_PREFIX) :].strip(), client)
    if isinstance(found, Refusal):
        await wiring.refuse(
            client, "API key expired" if found is Refusal.EXPIRED else "invalid API key"
        )
    route = request.scope.get("route")
    path = getattr(route, "path_format", "")
    roles = access.allowed(request.method, path)
    params = request.path_params
    program_id = params.get("program_id")
    if program_id is not None and not found.sees(program_id):
        raise not_found("program", program_id)
    if found.programs is not None and access.spans_programs(request.method, path):
        raise PointsError(
            Code.FORBIDDEN, "a key limited to programs may not act on the whole service"
        )
    if roles is None or found.role not in roles:
        raise PointsError(
            Code.FORBIDDEN, f"a {found.role.value} key may not {request.method} this route"
        )
    if limit:
        member = params.get("member_id") if request.method != "GET" else None
        await wiring.admit(found, program_id, member)
    return found


async def admit(request: Request, key: KeyRecord, program_id: str, member_id: str | None) -> None:
    """The rate limits of a write to a member named in its body (see authenticate)."""
    await backend(request).admit(key, program_id, member_id)


def audit_entry(
    key: KeyRecord,
    action: str,
    program_id: str | None,
    target: str | None,
    *,
    before: Any = None,
    after: Any = None,
    request_key: str | None = None,
) -> AuditEntry:
    return AuditEntry(
        key_id=key.key_id,
        role=key.role.value,
        action=action,
        program_id=program_id,
        target=target,
        before=before,
        after=after,
        request_key=request_key,
    )


async def audit(
    request: Request,
    key: KeyRecord,
    action: str,
    program_id: str | None,
    target: str | None,
    response: Response,
    *,
    before: Any = None,
    request_key: str | None = None,
) -> Response:
    """Record an administrative change the shards made (its answer is `response`): only
    when it succeeded; a keyed write once however often it is replayed. The entry is written
    after the change committed; a retry of a request whose entry was lost records it."""
    if response.status_code < 300:
        after = orjson.loads(bytes(response.body)) if response.body else None
        entry = audit_entry(
            key, action, program_id, target, before=before, after=after, request_key=request_key
        )
        await backend(request).audit(entry)
    return response


def idempotency_key(request: Request) -> str:
    """The request's Idempotency-Key header (required on writes that move points)."""
    key = request.headers.get("idempotency-key")
    if key is None:
        raise PointsError(Code.BAD_REQUEST, "the Idempotency-Key header is required")
    if IDEMPOTENCY_KEY_RE.fullmatch(key) is None:
        raise PointsError(Code.BAD_REQUEST, "Idempotency-Key must be 1..255 visible ASCII")
    return key


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == JSON_MEDIA_TYPE or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def parse_json(raw: bytes, content_type: str | None) -> Any:
    """A JSON body, strictly: declared as JSON, valid UTF-8 JSON, no key twice, no NaN."""
    if not _is_json(content_type or ""):
        raise PointsError(
            Code.UNSUPPORTED_MEDIA_TYPE,
            f"send the body as {JSON_MEDIA_TYPE} (got {content_type or 'no Content-Type'})",
        )
    return jsontext.loads(raw)


async def json_body(request: Request) -> Any:
    return parse_json(await request.body(), request.headers.get("content-type"))


async def body_of(request: Request, model: type[BodyT]) -> BodyT:
    """The request body as `model` (strict JSON first, then the model's own rules)."""
    value = await json_body(request)
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        raise InvalidBody(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from exc


@contextmanager
def cursor_errors() -> Iterator[None]:
    """A cursor this API did not produce (decoding raised) is a validation error."""
    try:
        yield
    except (ValueError, UnicodeDecodeError) as exc:
        raise PointsError(Code.VALIDATION_ERROR, "invalid cursor") from exc


def cursor_of(cursor: str | None, decode: Callable[[str], T]) -> T | None:
    """A `cursor` query parameter decoded, or a validation error for one we did not make."""
    if cursor is None:
        return None
    with cursor_errors():
        return decode(cursor)


def not_found(what: str, ident: object) -> PointsError:
    return PointsError(Code.NOT_FOUND, f"{what} {ident} not found")


async def keyed_account_write(
    request: Request,
    command_type: type[Credit | Debit | Reverse],
    program_id: str,
    member_id: str,
    fields: dict[str, Any],
    key: str | None = None,
    unhashed: dict[str, Any] | None = None,
) -> Response:
    """A write that moves a member's points under the request's Idempotency-Key: hash the
    canonical request, send the typed command to the member's shard, render its outcome.

    `unhashed`: command fields that are not part of the request (who calls: a credit's
    `by_service`), so not in its hash: a retry by another key of the same role replays."""
    key = idempotency_key(request) if key is None else key
    digest = request_hash(
        command_type.kind, {"program_id": program_id, "member_id": member_id, **fields}
    )
    command = command_type(
        program_id=program_id,
        member_id=member_id,
        key=key,
        request_hash=digest,
        **fields,
        **(unhashed or {}),
    )
    return outcome_response(await backend(request).client.submit(command))
