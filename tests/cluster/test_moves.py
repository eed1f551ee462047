"""Live moves on a multi-node cluster: a node added takes the shards of the next scale; the
bank workload stays exact while the shard count goes 2 -> 6 -> 3, and while a worker node
dies in the middle of a move; the flash sale stays exact while reward shards move.

These run after tests/cluster/test_cluster.py on the same cluster (which killed one worker
node there): the first test adds a fresh worker node.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import httpx

from actors.routing import SLOTS
from tests.cluster.bank import run_bank, verify, verify_ledger
from tests.cluster.conftest import (
    ClusterService,
    add_worker_node,
    alive_node_ids,
    kill_worker_node,
    node_by_id,
    shard_nodes,
    topology,
    wait_node_dead,
)

MOVE_TIMEOUT_S = 150.0
BANK_MEMBERS = 40
BANK_CLIENTS = 16


async def start_move(service: ClusterService, body: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(headers=service.headers, timeout=30) as http:
        answer = await http.put(f"{service.base_url}/v1/admin/topology", json=body)
    assert answer.status_code == 202, answer.text
    return dict(answer.json())


async def wait_move(service: ClusterService) -> dict[str, Any]:
    """Until no move runs and every shard answers from a live node."""
    deadline = time.monotonic() + MOVE_TIMEOUT_S
    last: Any = None
    while time.monotonic() < deadline:
        try:
            view = await asyncio.to_thread(topology, service)
        except (AssertionError, httpx.HTTPError) as exc:
            last = exc
        else:
            placed = shard_nodes(view)
            alive = await asyncio.to_thread(alive_node_ids)
            if view["move"] is None and all(placed.values()) and set(placed.values()) <= alive:
                return view
            last = view["move"] or placed
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the move did not finish: {last}")


def assert_whole(view: dict[str, Any], accounts: int, rewards: int) -> None:
    assert len(view["account_shards"]) == accounts and len(view["reward_shards"]) == rewards
    for kind in ("account_shards", "reward_shards"):
        assert sum(s["slots"] for s in view[kind]) == SLOTS
        assert all(s["slots"] > 0 for s in view[kind])


async def test_a_new_node_takes_shards_and_the_bank_stays_exact_through_2_6_3(
    points_cluster: ClusterService,
) -> None:
    cluster = points_cluster.cluster
    added = add_worker_node(cluster)  # in the main thread: Ray installs signal handlers
    cluster.wait_for_nodes()
    assert added.node_id in alive_node_ids()
    views: list[dict[str, Any]] = []

    async def scale_up_then_down() -> None:
        await asyncio.sleep(2.0)
        await start_move(points_cluster, {"account_shards": 6, "reward_shards": 3})
        views.append(await wait_move(points_cluster))
        await start_move(points_cluster, {"account_shards": 3, "reward_shards": 2})
        views.append(await wait_move(points_cluster))

    result = await run_bank(
        points_cluster.base_url,
        points_cluster.admin_key,
        members=BANK_MEMBERS,
        clients=BANK_CLIENTS,
        duration_s=8.0,
        during=scale_up_then_down,
        seed=2,
    )
    up, down = views
    placed = shard_nodes(up)
    print(
        f"\n{result.summary()}\nmoves 2 -> 6 -> 3 account shards (2 -> 3 -> 2 reward):"
        f" {up['move'] is None and down['move'] is None}; shards on the added node"
        f" {sorted(k for k, v in placed.items() if v == added.node_id)}"
    )
    assert_whole(up, 6, 3)
    assert_whole(down, 3, 2)
    # The node added before the move took some of the new shards.
    assert added.node_id in placed.values(), placed
    assert len(set(placed.values())) >= 2
    assert not result.unexpected, result.unexpected[:10]
    assert not result.unresolved, result.unresolved[:10]
    await verify(points_cluster.base_url, points_cluster.admin_key, result)
    assert verify_ledger(points_cluster.dsn, result) == []


async def test_bank_stays_exact_when_a_worker_node_dies_during_a_move(
    points_cluster: ClusterService,
) -> None:
    cluster = points_cluster.cluster
    killed: dict[str, Any] = {}

    async def move_and_kill() -> None:
        await asyncio.sleep(2.0)
        before = await asyncio.to_thread(topology, points_cluster)
        placed = shard_nodes(before)
        workers = {node.node_id for node in cluster.worker_nodes}
        victim = max(workers, key=lambda n: list(placed.values()).count(n))
        await start_move(points_cluster, {"account_shards": 6, "reward_shards": 3})
        await asyncio.sleep(0.3)  # the move is handing slots off now
        killed["processes"] = await asyncio.to_thread(
            kill_worker_node, cluster, node_by_id(cluster, victim)
        )
        killed["victim"] = victim
        killed["dead_after_s"] = await asyncio.to_thread(wait_node_dead, victim)
        killed["view"] = await wait_move(points_cluster)

    result = await run_bank(
        points_cluster.base_url,
        points_cluster.admin_key,
        members=BANK_MEMBERS,
        clients=BANK_CLIENTS,
        duration_s=8.0,
        during=move_and_kill,
        seed=3,
    )
    view = killed["view"]
    print(
        f"\n{result.summary()}\nkilled node {killed['victim'][:8]} during a move 3 -> 6"
        f" ({killed['processes']} processes; dead in GCS after {killed['dead_after_s']:.1f} s);"
        f" the move finished: {shard_nodes(view)}"
    )
    assert_whole(view, 6, 3)
    assert killed["victim"] not in shard_nodes(view).values()
    assert not result.unexpected, result.unexpected[:10]
    assert not result.unresolved, result.unresolved[:10]
    await verify(points_cluster.base_url, points_cluster.admin_key, result)
    assert verify_ledger(points_cluster.dsn, result) == []


async def test_the_flash_sale_stays_exact_while_reward_shards_move(
    points_cluster: ClusterService,
) -> None:
    """Members rush one reward while its slot moves between reward shards, back and forth:
    units sold never exceed the stock, each sale debited its points once."""
    stock, members, cost = 150, 400, 10
    program = f"flash-{secrets.token_hex(4)}"
    base, headers = points_cluster.base_url, points_cluster.headers
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60, limits=limits) as http:
        assert (
            await http.put(f"/v1/programs/{program}", json={"name": "Flash"})
        ).status_code == 201
        reward = await http.put(
            f"/v1/programs/{program}/rewards/deal",
            json={"name": "Deal", "cost_points": cost, "stock": stock, "per_member_limit": 1},
        )
        assert reward.status_code == 201, reward.text
        gate = asyncio.Semaphore(32)

        async def retried(method: str, path: str, key: str, body: dict[str, Any]) -> httpx.Response:
            deadline = time.monotonic() + 90
            while True:
                try:
                    answer = await http.request(
                        method, path, json=body, headers={"Idempotency-Key": key}
                    )
                    if answer.status_code < 500:
                        return answer
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"no answer for {path}"
                await asyncio.sleep(0.1)

        async def fund(i: int) -> None:
            async with gate:
                answer = await retried(
                    "POST",
                    f"/v1/programs/{program}/members/f{i}/credits",
                    f"fund-{i}",
                    {"points": cost, "reason": "flash"},
                )
                assert answer.status_code == 201, answer.text

        await asyncio.gather(*(fund(i) for i in range(members)))

        async def redeem(i: int) -> int:
            async with gate:
                answer = await retried(
                    "POST",
                    f"/v1/programs/{program}/redemptions",
                    f"buy-{i}",
                    {"member_id": f"f{i}", "reward_id": "deal", "quantity": 1},
                )
                assert answer.status_code in (201, 409), answer.text
                if answer.status_code == 409:
                    assert answer.json()["code"] == "out_of_stock", answer.text
                return answer.status_code

        async def moves() -> int:
            done = 0
            for rewards in (4, 1, 3):
                await start_move(points_cluster, {"reward_shards": rewards})
                await wait_move(points_cluster)
                done += 1
            return done

        mover = asyncio.create_task(moves())
        await asyncio.sleep(0.2)
        statuses = await asyncio.gather(*(redeem(i) for i in range(members)))
        moved = await mover
        sold = statuses.count(201)
        view = (await http.get(f"/v1/programs/{program}/rewards/deal")).json()
        spent = 0
        for i in range(members):
            member = (await http.get(f"/v1/programs/{program}/members/f{i}")).json()
            spent += cost - member["balance"]["total"]
    print(
        f"\nflash sale during {moved} reward moves: {sold} sold of {stock},"
        f" {statuses.count(409)} out_of_stock; reward {view}"
    )
    assert sold == stock == view["redeemed"] and view["stock"] == 0 and view["reserved"] == 0
    assert spent == sold * cost
    assert moved == 3
