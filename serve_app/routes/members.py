"""Members: credits and debits (the hot path), the member view, history, tier changes, list."""

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from actors.protocol import Credit, Debit
from db.api_repo import decode_cursor
from domain.errors import Code
from serve_app.auth import KeyRecord, Role
from serve_app.http import (
    audit,
    authenticate,
    backend,
    body_of,
    cursor_errors,
    cursor_of,
    idempotency_key,
    keyed_account_write,
    not_found,
)
from serve_app.openapi import route
from serve_app.problems import JsonResponse
from serve_app.responses import (
    HeldTransaction,
    Member,
    MemberPage,
    TierChanges,
    Transaction,
    TransactionPage,
)
from serve_app.routes.params import LIMIT_DEFAULT, Cursor, Limit, MemberId, Moment, ProgramId
from serve_app.schemas import CreditIn, DebitIn

router = APIRouter(tags=["members"])
TRANSACTION_TYPES = "^(credit|debit|refund|expire|reversal|activate|hold|release)$"
TIER_PATTERN = "^[A-Za-z0-9_.-]{1,64}$"

# Credits and debits are the hot path: the body and headers are read by hand rather than
# through FastAPI's dependency injection (which cost ~15% of the replica's CPU per debit).


async def _manual(
    request: Request,
    caller: KeyRecord,
    action: str,
    program_id: str,
    member_id: str,
    command_type: type[Credit | Debit],
    fields: dict[str, Any],
) -> Response:
    """A credit or debit; made by an admin or operator key (a manual one), also audited."""
    if caller.role is Role.SERVICE:
        # A service's credits count against the program's service_credit_points_per_day.
        by_service = {"by_service": True} if command_type is Credit else None
        return await keyed_account_write(
            request, command_type, program_id, member_id, fields, unhashed=by_service
        )
    key = idempotency_key(request)
    answer = await keyed_account_write(request, command_type, program_id, member_id, fields, key)
    return await audit(request, caller, action, program_id, member_id, answer, request_key=key)


@router.post(
    "/v1/programs/{program_id}/members/{member_id}/credits",
    response_model=Transaction,
    status_code=201,
    openapi_extra=route(
        Code.NOT_FOUND, Code.IDEMPOTENCY_CONFLICT, Code.LIMIT_EXCEEDED, body=CreditIn, keyed=True
    ),
)
async def credit(program_id: ProgramId, member_id: MemberId, request: Request) -> Response:
    """Add points (a new lot, expiring at `expires_at` or by the program's policy). The
    member is created on their first credit."""
    caller = await authenticate(request)
    body = await body_of(request, CreditIn)
    fields = {"points": body.points, "reason": body.reason, "expires_at": body.expires_at}
    return await _manual(request, caller, "member.credit", program_id, member_id, Credit, fields)


@router.post(
    "/v1/programs/{program_id}/members/{member_id}/debits",
    response_model=HeldTransaction,
    status_code=201,
    openapi_extra=route(
        Code.NOT_FOUND,
        Code.INSUFFICIENT_POINTS,
        Code.IDEMPOTENCY_CONFLICT,
        Code.LIMIT_EXCEEDED,
        body=DebitIn,
        keyed=True,
    ),
)
async def debit(program_id: ProgramId, member_id: MemberId, request: Request) -> Response:
    """Spend points, from the lots that expire soonest. Above the program's review
    threshold the points are held instead (a `hold` transaction, `status`
    pending_review, `review_id`) until an operator approves or rejects the review. Over
    a velocity limit: 409 limit_exceeded naming the `limit`."""
    caller = await authenticate(request)
    body = await body_of(request, DebitIn)
    fields = {"points": body.points, "reason": body.reason}
    return await _manual(request, caller, "member.debit", program_id, member_id, Debit, fields)


@router.get(
    "/v1/programs/{program_id}/members",
    response_model=MemberPage,
    openapi_extra=route(),
)
async def list_members(
    program_id: ProgramId,
    request: Request,
    tier: Annotated[str | None, Query(pattern=TIER_PATTERN)] = None,
    limit: Limit = LIMIT_DEFAULT,
    cursor: Cursor = None,
) -> Response:
    """The program's members by id (only those in `tier` if given), keyset-paginated."""
    await authenticate(request)
    repo = await backend(request).repo()
    with cursor_errors():  # the repository decodes the cursor
        items, next_cursor = await repo.list_members(
            program_id, tier=tier, limit=limit, cursor=cursor
        )
    return JsonResponse({"items": items, "next_cursor": next_cursor})


@router.get(
    "/v1/programs/{program_id}/members/{member_id}",
    response_model=Member,
    openapi_extra=route(Code.NOT_FOUND),
)
async def get_member(program_id: ProgramId, member_id: MemberId, request: Request) -> Response:
    """Available, pending and total points, what expires soon, lots, tier."""
    await authenticate(request)
    view = await backend(request).shard_call(
        program_id, member_id, "get_account", program_id, member_id
    )
    if view is None:
        raise not_found("member", member_id)
    return JsonResponse(view)


@router.get(
    "/v1/programs/{program_id}/members/{member_id}/tier-changes",
    response_model=TierChanges,
    openapi_extra=route(Code.NOT_FOUND),
)
async def list_tier_changes(
    program_id: ProgramId, member_id: MemberId, request: Request, limit: Limit = LIMIT_DEFAULT
) -> Response:
    """The member's tier changes, newest first, each with its reason."""
    await authenticate(request)
    repo = await backend(request).repo()
    if not await repo.account_exists(program_id, member_id):
        raise not_found("member", member_id)
    return JsonResponse({"items": await repo.tier_changes(program_id, member_id, limit)})


@router.get(
    "/v1/programs/{program_id}/members/{member_id}/transactions",
    response_model=TransactionPage,
    openapi_extra=route(Code.NOT_FOUND),
)
async def list_transactions(
    program_id: ProgramId,
    member_id: MemberId,
    request: Request,
    type: Annotated[str | None, Query(pattern=TRANSACTION_TYPES)] = None,
    since: Moment = None,
    until: Moment = None,
    limit: Limit = LIMIT_DEFAULT,
    cursor: Cursor = None,
) -> Response:
    """The member's history, newest first, keyset-paginated; filter by type and time."""
    await authenticate(request)
    position = cursor_of(cursor, decode_cursor)
    repo = await backend(request).repo()
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
        raise not_found("member", member_id)
    return JsonResponse({"items": items, "next_cursor": next_cursor})
