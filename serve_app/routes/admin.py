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
from db.topology_repo import Kind, MoveRunning, SlotRow
from domain.errors import Code, PointsError
from serve_app.http import audit_entry, authenticate, backend, body_of
from serve_app.openapi import route
from serve_app.problems import JsonResponse
from serve_app.responses import Topology
from serve_app.schemas import TopologyPut
from serve_app.wiring import Backend

router = APIRouter(tags=["admin"])
PING_TIMEOUT_S = 5.0


async def _ping(wiring: Backend, kind: Kind, index: int) -> dict[str, Any] | None:
    try:
        return await wiring.ping_shard(kind, index, PING_TIMEOUT_S)
    except Exception:  # restarting, or on a node that went away: shown without a place
        return None


async def _kind_view(wiring: Backend, kind: Kind, rows: list[SlotRow]) -> list[dict[str, Any]]:
    owned = Counter(row.owner for row in rows)
    handles = await wiring.shard_handles(kind)
    pings = await asyncio.gather(*(_ping(wiring, kind, index) for index, _ in handles))
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
                "version": None if ping is None else ping.get("version"),
                "ops": 0 if ping is None else int(ping.get("ops", 0)),
                "failed": 0 if ping is None else int(ping.get("failed", 0)),
            }
        )
    return views


def versions_view(views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per release: its shards, slots, operations and error rate (side by side during a
    canary). Counts are since each shard started."""
    by_version: dict[str, dict[str, Any]] = {}
    for view in views:
        version = view["version"] or "unknown"
        entry = by_version.setdefault(
            version, {"version": version, "shards": 0, "slots": 0, "ops": 0, "failed": 0}
        )
        entry["shards"] += 1
        entry["slots"] += view["slots"]
        entry["ops"] += view["ops"]
        entry["failed"] += view["failed"]
    for entry in by_version.values():
        answered = entry["ops"] + entry["failed"]
        entry["error_rate"] = round(entry["failed"] / answered, 6) if answered else 0.0
    return sorted(by_version.values(), key=lambda e: e["version"])


async def topology_view(wiring: Backend) -> dict[str, Any]:
    slots, move = await wiring.topology.picture()
    account_views = await _kind_view(wiring, "account", slots["account"])
    reward_views = await _kind_view(wiring, "reward", slots["reward"])
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
    return {
        "slots": SLOTS,
        "account_shards": account_views,
        "reward_shards": reward_views,
        "nodes": sorted(nodes.values(), key=lambda n: n["node_id"]),
        "versions": {
            "account_shards": versions_view(account_views),
            "reward_shards": versions_view(reward_views),
        },
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
    """Start a move (202: it runs on; watch `move` in GET /v1/admin/topology). Requests keep
    being served; those for a slot being handed off wait for it (at worst a 503 with
    Retry-After, safe to retry with the same key).

    - `account_shards` / `reward_shards`: scale to these counts.
    - `version` (with optional counts): upgrade. Every slot moves to a new generation of
      shards running the code of the ingress that takes this request (deploy the new
      release to Serve first), one hand-off at a time. With `canary_slots`, only that many
      slots of each kind move, then the move pauses (state `canary`): compare the two
      versions' error rates in `versions`, then `action` promote or rollback.

    409 invalid_state: another move runs (or, for `action`, no canary is paused)."""
    caller = await authenticate(request)
    body = await body_of(request, TopologyPut)
    wiring = backend(request)
    before = await topology_view(wiring)
    try:
        if body.action is not None:
            await _act_on_canary(wiring, body.action)
        else:
            await _start_move(wiring, body)
    except MoveRunning as exc:
        raise PointsError(
            Code.INVALID_STATE, "a move is running; wait for it to finish (GET this resource)"
        ) from exc
    except PointsError:
        raise
    except Exception as exc:
        raise PointsError(Code.UNAVAILABLE, f"topology unavailable: {type(exc).__name__}") from exc
    await wiring.coordinator.kick.remote()
    after = await topology_view(wiring)
    await wiring.audit(
        audit_entry(
            caller,
            "topology.put",
            None,
            body.action or "move",
            before={"request": body.model_dump(exclude_none=True), "move": before.get("move")},
            after={"move": after.get("move")},
        )
    )
    return JsonResponse(after, status_code=202)


async def _start_move(wiring: Backend, body: TopologyPut) -> None:
    repo = wiring.topology
    accounts = (await repo.slots("account"))[1]
    rewards = (await repo.slots("reward"))[1]
    account_from = len({row.owner for row in accounts})
    reward_from = len({row.owner for row in rewards})
    account_to = body.account_shards or account_from
    reward_to = body.reward_shards or reward_from
    if body.version is None:
        bases = (await repo.base("account"), await repo.base("reward"))
        runtime_env = None
    else:  # a new generation: indexes no shard of either generation uses
        bases = (
            max(await repo.shards("account")) + 1,
            max(await repo.shards("reward")) + 1,
        )
        runtime_env = own_runtime_env()
    total = slots_to_move(accounts, account_to, bases[0]) + slots_to_move(
        rewards, reward_to, bases[1]
    )
    await repo.start_move(
        (account_from, account_to),
        (reward_from, reward_to),
        total,
        bases=bases,
        code_version=body.version,
        runtime_env=runtime_env,
        canary_slots=body.canary_slots,
    )


async def _act_on_canary(wiring: Backend, action: str) -> None:
    repo = wiring.topology
    move = await repo.running_move()
    if move is None or move.state != "canary":
        raise PointsError(
            Code.INVALID_STATE, "no canary is paused: nothing to promote or roll back"
        )
    rollback = None
    if action == "rollback":
        rollback = (
            move.account_from,
            await repo.base("account"),
            move.reward_from,
            await repo.base("reward"),
        )
    if await repo.resume_move(move.move_id, rollback=rollback) is None:
        raise PointsError(Code.INVALID_STATE, "the canary is no longer paused")


def own_runtime_env() -> dict[str, Any]:
    """The Ray runtime environment this ingress replica runs in: the code of the release
    that Serve deployed (its working_dir, py_modules, pip, image), for the new shards."""
    import ray

    env = ray.get_runtime_context().runtime_env
    found: dict[str, Any] = dict(env) if env else {}
    return found
