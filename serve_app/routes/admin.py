"""Operations: the cluster topology (which shard owns how many slots, where it runs, the
move in progress) and moves (change the shard counts, live)."""

import asyncio
from collections import Counter
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from actors.fleet import name_of
from actors.mover import slots_to_move
from actors.routing import SLOTS
from db.topology_repo import Kind, MoveRunning
from domain.errors import Code, PointsError
from serve_app.http import authenticate, backend, body_of
from serve_app.openapi import route
from serve_app.problems import JsonResponse
from serve_app.responses import Topology
from serve_app.schemas import TopologyPut
from serve_app.wiring import Backend

router = APIRouter(tags=["admin"])
PING_TIMEOUT_S = 5.0


async def _ping(handle: Any) -> dict[str, Any] | None:
    try:
        found: dict[str, Any] = await asyncio.wait_for(handle.ping.remote(), PING_TIMEOUT_S)
    except Exception:  # restarting, or on a node that went away: shown without a place
        return None
    return found


async def _kind_view(wiring: Backend, kind: Kind) -> list[dict[str, Any]]:
    _, rows = await wiring.topology.slots(kind)
    owned = Counter(row.owner for row in rows)
    handles = await wiring.shard_handles(kind)
    pings = await asyncio.gather(*(_ping(handle) for _, handle in handles))
    views = []
    for (index, _), ping in zip(handles, pings, strict=True):
        views.append(
            {
                "index": index,
                "name": name_of(kind, index),
                "slots": owned.get(index, 0),
                "node_id": None if ping is None else ping["node_id"],
                "node_ip": None if ping is None else ping["node_ip"],
                "pid": None if ping is None else ping["pid"],
            }
        )
    return views


async def topology_view(wiring: Backend) -> dict[str, Any]:
    account_views = await _kind_view(wiring, "account")
    reward_views = await _kind_view(wiring, "reward")
    nodes: dict[str, dict[str, Any]] = {}
    for kind, views in (("account_shards", account_views), ("reward_shards", reward_views)):
        for view in views:
            if view["node_id"] is None:
                continue
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
    move = await wiring.topology.running_move()
    return {
        "slots": SLOTS,
        "account_shards": account_views,
        "reward_shards": reward_views,
        "nodes": sorted(nodes.values(), key=lambda n: n["node_id"]),
        "move": None if move is None else move.view(),
    }


@router.get("/v1/admin/topology", response_model=Topology, openapi_extra=route(validated=False))
async def topology(request: Request) -> Response:
    """The account and reward shards: slots each owns, the node and process each runs on
    (null while it restarts), the nodes with what they hold, and the move in progress."""
    await authenticate(request)
    wiring = backend(request)
    try:
        view = await topology_view(wiring)
    except Exception as exc:
        raise PointsError(Code.UNAVAILABLE, f"topology unavailable: {type(exc).__name__}") from exc
    return JsonResponse(view)


@router.put(
    "/v1/admin/topology",
    response_model=Topology,
    status_code=202,
    openapi_extra=route(Code.INVALID_STATE, body=TopologyPut),
)
async def move_topology(request: Request) -> Response:
    """Start a move to these shard counts (202: the move runs on; watch `move` in
    GET /v1/admin/topology). Requests keep being served; those for a slot being handed
    off wait for it (at worst a 503 with Retry-After, safe to retry with the same key).
    409 invalid_state while another move runs."""
    await authenticate(request)
    body = await body_of(request, TopologyPut)
    wiring = backend(request)
    try:
        _, accounts = await wiring.topology.slots("account")
        _, rewards = await wiring.topology.slots("reward")
    except Exception as exc:
        raise PointsError(Code.UNAVAILABLE, f"topology unavailable: {type(exc).__name__}") from exc
    account_from = len({row.owner for row in accounts})
    reward_from = len({row.owner for row in rewards})
    account_to = body.account_shards or account_from
    reward_to = body.reward_shards or reward_from
    total = slots_to_move(accounts, account_to) + slots_to_move(rewards, reward_to)
    try:
        await wiring.topology.start_move(
            (account_from, account_to), (reward_from, reward_to), total
        )
    except MoveRunning as exc:
        raise PointsError(
            Code.INVALID_STATE, "a move is running; wait for it to finish (GET this resource)"
        ) from exc
    await wiring.coordinator.kick.remote()
    return JsonResponse(await topology_view(wiring), status_code=202)
