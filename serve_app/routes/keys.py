"""API keys (admins only): create (the key is shown once), list, read, revoke; and the
audit log of administrative changes."""

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import Response

from db.access_repo import decode_audit_cursor
from db.api_repo import decode_id_cursor, encode_id_cursor
from domain.errors import Code, PointsError
from domain.limits import ID_LENGTH_MAX, ID_PATTERN
from serve_app.auth import KEY_ID_RE, KeyRecord, Role, hash_key, key_prefix, new_key, new_key_id
from serve_app.http import audit_entry, authenticate, backend, body_of, cursor_of, not_found
from serve_app.openapi import route
from serve_app.problems import JsonResponse
from serve_app.responses import ApiKey, ApiKeyCreated, ApiKeyPage, AuditPage
from serve_app.routes.params import LIMIT_DEFAULT, Cursor, Limit, Moment
from serve_app.schemas import KeyIn

router = APIRouter(tags=["keys"])

KeyId = Path(pattern=KEY_ID_RE.pattern, max_length=32)


def _within(scope: frozenset[str] | None, programs: list[str] | None) -> bool:
    """Does a key limited to `scope` (None: unlimited) reach at least as far as `programs`?"""
    return scope is None or (programs is not None and set(programs) <= scope)


@router.post(
    "/v1/keys",
    response_model=ApiKeyCreated,
    status_code=201,
    openapi_extra=route(Code.FORBIDDEN, body=KeyIn),
)
async def create_key(request: Request) -> Response:
    """A new key with a role, optionally limited to programs, expiring, with its own rate
    limit. The key itself is in this answer only: only its hash is kept."""
    caller = await authenticate(request)
    body = await body_of(request, KeyIn)
    programs = None if body.programs is None else sorted(set(body.programs))
    if not _within(caller.programs, programs):
        raise PointsError(
            Code.FORBIDDEN, "a key limited to programs can only make keys limited to them"
        )
    if caller.expires_at is not None and (
        body.expires_at is None or body.expires_at > caller.expires_at
    ):
        raise PointsError(
            Code.FORBIDDEN, "a key that expires can only make keys that expire no later"
        )
    key_id = new_key_id()
    key = new_key(key_id)
    rate = None if body.rate_limit is None else (body.rate_limit.per_s, body.rate_limit.burst)
    await backend(request).repo()
    view = await backend(request).access.create_key(
        key_id=key_id,
        key_hash=hash_key(key),
        role=Role(body.role).value,
        name=body.name,
        prefix=key_prefix(key_id),
        programs=programs,
        expires_at=body.expires_at,
        rate=rate,
        audit=audit_entry(caller, "key.create", None, key_id),
    )
    await backend(request).keys_changed()
    return JsonResponse({**view, "key": key}, status_code=201)


@router.get("/v1/keys", response_model=ApiKeyPage, openapi_extra=route())
async def list_keys(
    request: Request, limit: Limit = LIMIT_DEFAULT, cursor: Cursor = None
) -> Response:
    """Keys by id (never a secret), keyset-paginated; revoked ones included."""
    caller = await authenticate(request)
    after = cursor_of(cursor, decode_id_cursor)
    await backend(request).repo()
    items, last = await backend(request).access.list_keys(
        within=caller.programs, limit=limit, after=after
    )
    return JsonResponse(
        {"items": items, "next_cursor": None if last is None else encode_id_cursor(last)}
    )


async def _key_for(request: Request, caller: KeyRecord, key_id: str) -> dict[str, object]:
    await backend(request).repo()
    found = await backend(request).access.get_key(key_id)
    if found is None or not _within(caller.programs, found["programs"]):
        raise not_found("key", key_id)
    return found


@router.get("/v1/keys/{key_id}", response_model=ApiKey, openapi_extra=route(Code.NOT_FOUND))
async def get_key(request: Request, key_id: str = KeyId) -> Response:
    """One key: role, programs, expiry, rate limit, last use (never the secret)."""
    return JsonResponse(await _key_for(request, await authenticate(request), key_id))


@router.delete(
    "/v1/keys/{key_id}",
    response_model=ApiKey,
    openapi_extra=route(Code.NOT_FOUND, Code.INVALID_STATE),
)
async def revoke_key(request: Request, key_id: str = KeyId) -> Response:
    """Revoke a key: refused on every replica within a few seconds. Idempotent. A key
    cannot revoke itself (409 invalid_state): revoke it with another admin key, so that a
    slip never locks the last admin out."""
    caller = await authenticate(request)
    if key_id == caller.key_id:
        raise PointsError(Code.INVALID_STATE, "a key cannot revoke itself: use another key")
    await _key_for(request, caller, key_id)
    revoked = await backend(request).access.revoke_key(
        key_id, audit_entry(caller, "key.revoke", None, key_id)
    )
    if revoked is None:
        raise not_found("key", key_id)
    await backend(request).keys_changed()  # this replica at once; the others within ~1 s
    return JsonResponse(revoked)


@router.get("/v1/audit", response_model=AuditPage, openapi_extra=route(Code.NOT_FOUND))
async def list_audit(
    request: Request,
    program_id: Annotated[str | None, Query(pattern=ID_PATTERN, max_length=ID_LENGTH_MAX)] = None,
    since: Moment = None,
    limit: Limit = LIMIT_DEFAULT,
    cursor: Cursor = None,
) -> Response:
    """Administrative changes, newest first: who (key, role), when, what, before and
    after. Admins see every entry; operators those of their programs."""
    caller = await authenticate(request)
    if program_id is not None and not caller.sees(program_id):
        raise not_found("program", program_id)
    before_id = cursor_of(cursor, decode_audit_cursor)
    await backend(request).repo()
    items, next_cursor = await backend(request).access.list_audit(
        within=caller.programs,
        programs_only=caller.role is not Role.ADMIN,
        program_id=program_id,
        since=since,
        limit=limit,
        before_id=before_id,
    )
    return JsonResponse({"items": items, "next_cursor": next_cursor})
