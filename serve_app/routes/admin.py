"""Operations: the cluster topology (which shard owns how many slots, and where it runs)."""

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from actors.routing import SLOTS, owned_slots, reward_shard_name, shard_name
from domain.errors import Code, PointsError
from serve_app.http import authenticate, backend
from serve_app.openapi import route
from serve_app.problems import JsonResponse
from serve_app.responses import Topology

router = APIRouter(tags=["admin"])
PING_TIMEOUT_S = 5.0


def _shard_view(name: str, index: int, count: int, ping: dict[str, Any]) -> dict[str, Any]:
    return {
        "index": index,
        "name": name,
        "slots": len(owned_slots(index, count)),
        "node_id": ping["node_id"],
        "node_ip": ping["node_ip"],
        "pid": ping["pid"],
    }


@router.get("/v1/admin/topology", response_model=Topology, openapi_extra=route(validated=False))
async def topology(request: Request) -> Response:
    """The account and reward shards: slots each owns, the node and process each runs on,
    and the nodes with what they hold. `move` is the slot move in progress (none: slots are
    assigned by `slot % shards` at start in this version)."""
    await authenticate(request)
    wiring = backend(request)
    handles = wiring.shards + wiring.reward_shards
    try:
        pings = await asyncio.wait_for(
            asyncio.gather(*(handle.ping.remote() for handle in handles)), PING_TIMEOUT_S
        )
    except Exception as exc:
        raise PointsError(
            Code.UNAVAILABLE, f"a shard did not answer: {type(exc).__name__}"
        ) from exc
    accounts, rewards = len(wiring.shards), len(wiring.reward_shards)
    account_views = [_shard_view(shard_name(i), i, accounts, pings[i]) for i in range(accounts)]
    reward_views = [
        _shard_view(reward_shard_name(i), i, rewards, pings[accounts + i]) for i in range(rewards)
    ]
    nodes: dict[str, dict[str, Any]] = {}
    for kind, views in (("account_shards", account_views), ("reward_shards", reward_views)):
        for view in views:
            node = nodes.setdefault(
                view["node_id"],
                {
                    "node_id": view["node_id"],
                    "node_ip": view["node_ip"],
                    "account_shards": [],
                    "reward_shards": [],
                },
            )
            node[kind].append(view["index"])
    assert sum(v["slots"] for v in account_views) == SLOTS
    return JsonResponse(
        {
            "slots": SLOTS,
            "account_shards": account_views,
            "reward_shards": reward_views,
            "nodes": sorted(nodes.values(), key=lambda n: n["node_id"]),
            "move": None,
        }
    )
