"""Redemptions: redeem (the saga), read, cancel, a member's redemptions."""

import uuid

from fastapi import APIRouter, Request
from starlette.responses import Response

from actors.protocol import Cancel, Redeem
from db.api_repo import decode_cursor
from domain.errors import Code
from domain.idempotency import request_hash
from domain.rewards import redemption_view
from serve_app.http import (
    admit,
    audit,
    authenticate,
    backend,
    body_of,
    cursor_of,
    idempotency_key,
    not_found,
)
from serve_app.openapi import route
from serve_app.problems import JsonResponse, outcome_response
from serve_app.responses import Redemption, RedemptionPage
from serve_app.routes.params import LIMIT_DEFAULT, Cursor, Limit, MemberId, ProgramId
from serve_app.schemas import RedemptionIn

router = APIRouter(tags=["redemptions"])


@router.post(
    "/v1/programs/{program_id}/redemptions",
    response_model=Redemption,
    status_code=201,
    openapi_extra=route(
        Code.NOT_FOUND,
        Code.OUT_OF_STOCK,
        Code.INSUFFICIENT_POINTS,
        Code.LIMIT_EXCEEDED,
        Code.REWARD_INACTIVE,
        Code.IDEMPOTENCY_CONFLICT,
        body=RedemptionIn,
        keyed=True,
    ),
)
async def redeem(program_id: ProgramId, request: Request) -> Response:
    """Reserve stock, debit the points, complete (or hand to the fulfilment webhook): 201
    `completed` or `pending_fulfillment`; above the program's review threshold, 201
    `pending_review` (points held, units reserved) until its review is decided. Over a
    velocity limit: 409 limit_exceeded naming the `limit`. 503: retry with the same key,
    the saga resumes."""
    caller = await authenticate(request, limit=False)
    body = await body_of(request, RedemptionIn)
    key = idempotency_key(request)
    await admit(request, caller, program_id, body.member_id)
    fields = {"program_id": program_id, **body.model_dump()}
    command = Redeem(**fields, key=key, request_hash=request_hash("redeem", fields))
    return outcome_response(await backend(request).rewards.submit(command))


@router.get(
    "/v1/programs/{program_id}/redemptions/{redemption_id}",
    response_model=Redemption,
    openapi_extra=route(Code.NOT_FOUND),
)
async def get_redemption(
    program_id: ProgramId, redemption_id: uuid.UUID, request: Request
) -> Response:
    await authenticate(request)
    redemption = await (await backend(request).repo()).get_redemption(program_id, redemption_id)
    if redemption is None:
        raise not_found("redemption", redemption_id)
    return JsonResponse(redemption_view(redemption))


@router.post(
    "/v1/programs/{program_id}/redemptions/{redemption_id}/cancel",
    response_model=Redemption,
    openapi_extra=route(Code.NOT_FOUND, Code.INVALID_STATE),
)
async def cancel_redemption(
    program_id: ProgramId, redemption_id: uuid.UUID, request: Request
) -> Response:
    """The points go back into the very lots they came from, the units back into stock.
    Cancelling again changes nothing."""
    caller = await authenticate(request)
    wiring = backend(request)
    redemption = await (await wiring.repo()).get_redemption(program_id, redemption_id)
    if redemption is None:
        raise not_found("redemption", redemption_id)
    command = Cancel(
        program_id=program_id, reward_id=redemption.reward_id, redemption_id=redemption_id
    )
    answer = outcome_response(await wiring.rewards.submit(command))
    # Cancelling again changes nothing: recorded once.
    return await audit(
        request,
        caller,
        "redemption.cancel",
        program_id,
        str(redemption_id),
        answer,
        before=redemption_view(redemption),
        request_key="cancel",
    )


@router.get(
    "/v1/programs/{program_id}/members/{member_id}/redemptions",
    response_model=RedemptionPage,
    openapi_extra=route(Code.NOT_FOUND),
)
async def list_member_redemptions(
    program_id: ProgramId,
    member_id: MemberId,
    request: Request,
    limit: Limit = LIMIT_DEFAULT,
    cursor: Cursor = None,
) -> Response:
    """The member's redemptions, newest first, keyset-paginated."""
    await authenticate(request)
    position = cursor_of(cursor, decode_cursor)
    repo = await backend(request).repo()
    items, next_cursor = await repo.list_member_redemptions(
        program_id, member_id, limit=limit, cursor=position
    )
    if not items and not await repo.account_exists(program_id, member_id):
        raise not_found("member", member_id)
    return JsonResponse({"items": items, "next_cursor": next_cursor})
