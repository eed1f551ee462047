"""Business events: apply one or a batch (the program's rules decide the points), read one,
confirm held points, reverse what one earned."""

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from actors.earning import event_command
from actors.protocol import Confirm, Reverse
from domain.errors import Code, PointsError
from domain.idempotency import request_hash
from domain.limits import EVENTS_PER_BATCH_MAX, ID_LENGTH_MAX, ID_RE
from serve_app.http import (
    admit,
    audit,
    authenticate,
    backend,
    body_of,
    idempotency_key,
    json_body,
    keyed_account_write,
    not_found,
)
from serve_app.openapi import route
from serve_app.problems import JsonResponse, outcome_entry, outcome_response
from serve_app.responses import Confirmation, EventBatchResult, EventResult, Reversal, StoredEvent
from serve_app.routes.params import DryRun, EventId, ProgramId
from serve_app.schemas import EventBatchIn, EventBody, ReverseIn

router = APIRouter(tags=["events"])


@router.post(
    "/v1/programs/{program_id}/events",
    response_model=EventResult,
    status_code=201,
    responses={200: {"model": EventResult, "description": "dry run: nothing was written"}},
    openapi_extra=route(
        Code.NOT_FOUND, Code.IDEMPOTENCY_CONFLICT, Code.LIMIT_EXCEEDED, body=EventBody
    ),
)
async def post_event(program_id: ProgramId, request: Request, dry_run: DryRun = False) -> Response:
    """Apply one business event: the program's rules decide the points (and say why). The
    event id deduplicates: the same event again answers the first answer."""
    caller = await authenticate(request, limit=False)
    raw = await json_body(request)
    command = event_command(program_id, raw, dry_run, datetime.now(UTC))
    await admit(request, caller, program_id, None if dry_run else command.member_id)
    return outcome_response(await backend(request).client.submit(command))


@router.post(
    "/v1/programs/{program_id}/events/batch",
    response_model=EventBatchResult,
    openapi_extra=route(body=EventBatchIn),
)
async def post_events(program_id: ProgramId, request: Request, dry_run: DryRun = False) -> Response:
    """Up to 1,000 events; one result per event, in order (each with the status it would
    have answered alone). Rate limits: a token per event from the key's bucket, one from
    each member's; over either, the whole batch is 429."""
    caller = await authenticate(request, limit=False)
    body = await json_body(request)
    events = body.get("events") if isinstance(body, dict) and len(body) == 1 else None
    if not isinstance(events, list) or not 1 <= len(events) <= EVENTS_PER_BATCH_MAX:
        raise PointsError(
            Code.VALIDATION_ERROR,
            f'the body must be {{"events": [...]}} with 1..{EVENTS_PER_BATCH_MAX} events',
        )
    members = [] if dry_run else _members_of(events)
    await backend(request).admit_batch(caller, program_id, members, len(events))
    outcomes = await backend(request).applier(program_id, events, dry_run)
    return JsonResponse({"results": [outcome_entry(outcome) for outcome in outcomes]})


def _members_of(events: list[Any]) -> list[str]:
    """The well-formed member ids of a batch (an event with another is refused on its own)."""
    return [
        member
        for event in events
        if isinstance(event, dict)
        and isinstance(member := event.get("member_id"), str)
        and len(member) <= ID_LENGTH_MAX
        and ID_RE.fullmatch(member)
    ]


@router.get(
    "/v1/programs/{program_id}/events/{event_id}",
    response_model=StoredEvent,
    openapi_extra=route(Code.NOT_FOUND),
)
async def get_event(program_id: ProgramId, event_id: EventId, request: Request) -> Response:
    """An applied event: the points it earned, why, and what was reversed."""
    await authenticate(request)
    event = await (await backend(request).repo()).get_event(program_id, event_id)
    if event is None:
        raise not_found("event", event_id)
    return JsonResponse(event)


@router.post(
    "/v1/programs/{program_id}/events/{event_id}/confirm",
    response_model=Confirmation,
    openapi_extra=route(Code.NOT_FOUND),
)
async def confirm_event(program_id: ProgramId, event_id: EventId, request: Request) -> Response:
    """Release the points an event holds until confirmation: spendable from now, expiring
    by the policy from now. Safe to repeat: it is keyed by the event id."""
    caller = await authenticate(request)
    wiring = backend(request)
    member_id = await (await wiring.repo()).event_member(program_id, event_id)
    if member_id is None:
        raise not_found("event", event_id)
    fields = {"program_id": program_id, "member_id": member_id, "event_id": event_id}
    command = Confirm(
        **fields,
        # A space: never equal to a client Idempotency-Key (no spaces allowed there).
        key=f"confirm {event_id}",
        request_hash=request_hash("confirm", fields),
    )
    answer = outcome_response(await wiring.client.submit(command))
    return await audit(
        request, caller, "event.confirm", program_id, event_id, answer, request_key="confirm"
    )


@router.post(
    "/v1/programs/{program_id}/events/{event_id}/reverse",
    response_model=Reversal,
    status_code=201,
    responses={200: {"model": Reversal, "description": "nothing left to claw back"}},
    openapi_extra=route(Code.NOT_FOUND, Code.IDEMPOTENCY_CONFLICT, body=ReverseIn, keyed=True),
)
async def reverse_event(program_id: ProgramId, event_id: EventId, request: Request) -> Response:
    """Claw back what an event earned (refund, cancelled order), in proportion to the
    `amount` reversed (omitted: all); never more than it earned, however often."""
    caller = await authenticate(request)
    key = idempotency_key(request)
    body = await body_of(request, ReverseIn)
    member_id = await (await backend(request).repo()).event_member(program_id, event_id)
    if member_id is None:
        raise not_found("event", event_id)
    amount = None if body.amount is None else str(body.amount)
    fields = {"event_id": event_id, "amount": amount}
    answer = await keyed_account_write(request, Reverse, program_id, member_id, fields, key)
    return await audit(
        request, caller, "event.reverse", program_id, event_id, answer, request_key=key
    )
