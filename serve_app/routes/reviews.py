"""Reviews: debits and redemptions above the program's review threshold, held until an
operator approves or rejects them (list, read, approve, reject)."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from actors.protocol import DecideReview, Resume
from db.api_repo import decode_cursor
from domain.errors import Code
from domain.reviews import APPROVE, REJECT, ReviewKind, review_view
from serve_app.http import audit, authenticate, backend, body_of, cursor_of, not_found
from serve_app.openapi import route
from serve_app.problems import JsonResponse, outcome_response
from serve_app.responses import Review, ReviewPage
from serve_app.routes.params import LIMIT_DEFAULT, Cursor, Limit, ProgramId
from serve_app.schemas import ReviewDecisionIn

router = APIRouter(tags=["reviews"])
REVIEW_STATUSES = "^(pending|approved|rejected)$"


@router.get(
    "/v1/programs/{program_id}/reviews",
    response_model=ReviewPage,
    openapi_extra=route(Code.NOT_FOUND),
)
async def list_reviews(
    program_id: ProgramId,
    request: Request,
    status: Annotated[str | None, Query(pattern=REVIEW_STATUSES)] = None,
    limit: Limit = LIMIT_DEFAULT,
    cursor: Cursor = None,
) -> Response:
    """The program's reviews, newest first (only those in `status` if given),
    keyset-paginated."""
    await authenticate(request)
    position = cursor_of(cursor, decode_cursor)
    repo = await backend(request).repo()
    items, next_cursor = await repo.list_reviews(
        program_id, status=status, limit=limit, cursor=position
    )
    if not items and cursor is None and await repo.get_program(program_id) is None:
        raise not_found("program", program_id)
    return JsonResponse({"items": items, "next_cursor": next_cursor})


@router.get(
    "/v1/programs/{program_id}/reviews/{review_id}",
    response_model=Review,
    openapi_extra=route(Code.NOT_FOUND),
)
async def get_review(program_id: ProgramId, review_id: uuid.UUID, request: Request) -> Response:
    await authenticate(request)
    review = await (await backend(request).repo()).get_review(program_id, review_id)
    if review is None:
        raise not_found("review", review_id)
    return JsonResponse(review_view(review))


async def _decide(
    program_id: str, review_id: uuid.UUID, decision: str, request: Request
) -> Response:
    """Decide on the member's shard (serialized with the member's other operations), then,
    for a redemption, drive its saga on before answering: approved, on to fulfilment;
    rejected, its units back into stock. A retry decides nothing twice (and is audited
    once)."""
    caller = await authenticate(request)
    body = await body_of(request, ReviewDecisionIn)
    wiring = backend(request)
    review = await (await wiring.repo()).get_review(program_id, review_id)
    if review is None:
        raise not_found("review", review_id)
    command = DecideReview(
        program_id=program_id,
        member_id=review.member_id,
        review_id=review_id,
        decision=decision,
        reason=body.reason,
    )
    outcome = await wiring.client.submit(command)
    # Audited once decided, before the saga goes on (which may answer 503 and be retried).
    decided = await audit(
        request,
        caller,
        f"review.{decision}",
        program_id,
        str(review_id),
        outcome_response(outcome),
        before=review_view(review),
        request_key=decision,
    )
    if outcome.succeeded and review.kind is ReviewKind.REDEMPTION:
        assert review.reward_id is not None and review.redemption_id is not None
        resumed = await wiring.rewards.submit(
            Resume(
                program_id=program_id,
                reward_id=review.reward_id,
                redemption_id=review.redemption_id,
            )
        )
        if resumed.code is Code.UNAVAILABLE:
            # Decided; the saga goes on by the reward shard's recovery pass, or on a retry.
            return outcome_response(resumed)
    return decided


@router.post(
    "/v1/programs/{program_id}/reviews/{review_id}/approve",
    response_model=Review,
    openapi_extra=route(Code.NOT_FOUND, Code.INVALID_STATE, body=ReviewDecisionIn),
)
async def approve_review(program_id: ProgramId, review_id: uuid.UUID, request: Request) -> Response:
    """Spend the held points (a debit of them); a redemption goes on to fulfilment.
    Approving again answers the approval as it was made; after a rejection: 409
    invalid_state."""
    return await _decide(program_id, review_id, APPROVE, request)


@router.post(
    "/v1/programs/{program_id}/reviews/{review_id}/reject",
    response_model=Review,
    openapi_extra=route(Code.NOT_FOUND, Code.INVALID_STATE, body=ReviewDecisionIn),
)
async def reject_review(program_id: ProgramId, review_id: uuid.UUID, request: Request) -> Response:
    """Give the held points back into the lots they came from; a redemption's units go
    back into stock. Rejecting again answers the rejection as it was made; after an
    approval: 409 invalid_state."""
    return await _decide(program_id, review_id, REJECT, request)
