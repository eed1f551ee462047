"""The reward catalogue and stock: define, read, list, restock."""

from typing import TypedDict

from fastapi import APIRouter, Request
from starlette.responses import Response

from actors.protocol import PutReward, Restock
from db.api_repo import decode_reward_cursor
from domain.errors import Code
from domain.idempotency import request_hash
from serve_app.http import (
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
from serve_app.responses import RestockDone, Reward, RewardPage
from serve_app.routes.params import LIMIT_DEFAULT, Cursor, Limit, ProgramId, RewardId
from serve_app.schemas import RestockIn, RewardPut

router = APIRouter(tags=["rewards"])


class _RestockFields(TypedDict):
    """What a restock's request hash covers: the Restock command's own fields."""

    program_id: str
    reward_id: str
    quantity: int


@router.put(
    "/v1/programs/{program_id}/rewards/{reward_id}",
    response_model=Reward,
    status_code=201,
    responses={200: {"model": Reward, "description": "the reward existed: updated"}},
    openapi_extra=route(Code.NOT_FOUND, Code.INVALID_STATE, body=RewardPut),
)
async def put_reward(program_id: ProgramId, reward_id: RewardId, request: Request) -> Response:
    """Define a reward (201) or change it (200): cost, stock, per-member limit, fulfilment."""
    caller = await authenticate(request)
    body = await body_of(request, RewardPut)
    command = PutReward(program_id=program_id, reward_id=reward_id, **body.model_dump(mode="json"))
    wiring = backend(request)
    before = await (await wiring.repo()).get_reward(program_id, reward_id)
    answer = outcome_response(await wiring.rewards.submit(command))
    return await audit(request, caller, "reward.put", program_id, reward_id, answer, before=before)


@router.get(
    "/v1/programs/{program_id}/rewards",
    response_model=RewardPage,
    openapi_extra=route(Code.NOT_FOUND),
)
async def list_rewards(
    program_id: ProgramId, request: Request, limit: Limit = LIMIT_DEFAULT, cursor: Cursor = None
) -> Response:
    """The program's rewards by id, keyset-paginated."""
    await authenticate(request)
    after = cursor_of(cursor, decode_reward_cursor)
    repo = await backend(request).repo()
    items, next_cursor = await repo.list_rewards(program_id, limit=limit, after=after)
    if not items and cursor is None and await repo.get_program(program_id) is None:
        raise not_found("program", program_id)
    return JsonResponse({"items": items, "next_cursor": next_cursor})


@router.get(
    "/v1/programs/{program_id}/rewards/{reward_id}",
    response_model=Reward,
    openapi_extra=route(Code.NOT_FOUND),
)
async def get_reward(program_id: ProgramId, reward_id: RewardId, request: Request) -> Response:
    """The reward: stock (units left), reserved (redemptions in flight), redeemed."""
    await authenticate(request)
    reward = await (await backend(request).repo()).get_reward(program_id, reward_id)
    if reward is None:
        raise not_found("reward", reward_id)
    return JsonResponse(reward)


@router.post(
    "/v1/programs/{program_id}/rewards/{reward_id}/restock",
    response_model=RestockDone,
    status_code=201,
    openapi_extra=route(
        Code.NOT_FOUND,
        Code.IDEMPOTENCY_CONFLICT,
        Code.INVALID_STATE,
        Code.LIMIT_EXCEEDED,
        body=RestockIn,
        keyed=True,
    ),
)
async def restock(program_id: ProgramId, reward_id: RewardId, request: Request) -> Response:
    """Add units to a limited reward (idempotent under its key)."""
    caller = await authenticate(request)
    body = await body_of(request, RestockIn)
    key = idempotency_key(request)
    fields = _RestockFields(program_id=program_id, reward_id=reward_id, quantity=body.quantity)
    command = Restock(**fields, key=key, request_hash=request_hash("restock", fields))
    answer = outcome_response(await backend(request).rewards.submit(command))
    return await audit(
        request, caller, "reward.restock", program_id, reward_id, answer, request_key=key
    )
