"""Liveness and readiness: no key needed."""

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

from actors.placement import code_version
from domain.errors import Code
from serve_app.http import backend
from serve_app.openapi import route
from serve_app.problems import JsonResponse, problem_response
from serve_app.responses import Health, Ready

router = APIRouter(tags=["health"])
DATABASE_PING_TIMEOUT_S = 3.0
SHARD_PING_TIMEOUT_S = 5.0
REDIS_PING_TIMEOUT_S = 2.0


@router.get(
    "/healthz", response_model=Health, openapi_extra=route(authenticated=False, validated=False)
)
async def healthz() -> Response:
    """The process is alive, and which release it runs."""
    return JsonResponse({"status": "ok", "version": code_version()})


@router.get(
    "/readyz", response_model=Ready, openapi_extra=route(authenticated=False, validated=False)
)
async def readyz(request: Request) -> Response:
    """The database and every shard answer (Redis is reported, not required)."""
    wiring = backend(request)
    try:
        await asyncio.wait_for((await wiring.repo()).ping(), DATABASE_PING_TIMEOUT_S)
        accounts = await wiring.shard_handles("account")
        rewards = await wiring.shard_handles("reward")
        pings = await asyncio.gather(
            *(wiring.ping_shard("account", i, SHARD_PING_TIMEOUT_S) for i, _ in accounts),
            *(wiring.ping_shard("reward", i, SHARD_PING_TIMEOUT_S) for i, _ in rewards),
        )
        shards, reward_shards = pings[: len(accounts)], pings[len(accounts) :]
        consumer = None
        if wiring.event_consumer is not None:
            consumer = await asyncio.wait_for(
                wiring.event_consumer.start.remote(), SHARD_PING_TIMEOUT_S
            )
    except Exception as exc:
        return problem_response(Code.UNAVAILABLE, f"not ready: {type(exc).__name__}: {exc}")
    redis_state = "not configured"
    if wiring.redis is not None:
        try:  # reported, not required: no write path depends on Redis yet
            await asyncio.wait_for(wiring.redis.ping(), REDIS_PING_TIMEOUT_S)
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
            "lanes": {
                "queued_peak": max(wiring.client.queued_peak, wiring.rewards.queued_peak),
                "shed": wiring.client.shed + wiring.rewards.shed,
            },
        }
    )
