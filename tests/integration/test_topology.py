"""Slot ownership against a real PostgreSQL: the epoch fence inside the group commit, the
hand-off steps, and what a shard answers for a slot it lost (actors/topology.py)."""

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from actors.protocol import Credit
from actors.routing import SLOTS, slot_of
from actors.shard_core import ShardCore
from actors.topology import Ownership, SlotMoved
from db.ledger_repo import LedgerRepo
from db.topology_repo import MoveRunning, TopologyRepo, ensure_topology
from domain.errors import Code
from domain.idempotency import request_hash
from tests.unit.test_shard_client import _Method


@pytest.fixture
async def topology(database_url: str) -> AsyncIterator[TopologyRepo]:
    """A fresh map of two account shards (the tables are the database's, shared by the
    run: this test starts them over)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        for table in ("topology_moves", "topology_slots", "topology_shards", "topology"):
            conn.execute(f"DELETE FROM {table}")
    assert ensure_topology(database_url, {"account": 2, "reward": 1}, SLOTS) == {
        "account": 2,
        "reward": 1,
    }
    repo = TopologyRepo(database_url)
    yield repo
    await repo.close()


@pytest.fixture
async def program(database_url: str) -> str:
    program_id = f"topo-{secrets.token_hex(4)}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO programs (program_id, name) VALUES (%s, 'T')", (program_id,))
    return program_id


def shard(database_url: str, repo: TopologyRepo, index: int) -> ShardCore:
    ownership = Ownership("account", index, lambda: repo.owned("account", index), slot_of)
    return ShardCore(LedgerRepo(database_url), ownership=ownership)


def credit(program: str, member: str, points: int, key: str) -> Credit:
    fields: dict[str, Any] = {"points": points, "reason": "t"}
    return Credit(
        program_id=program,
        member_id=member,
        key=key,
        request_hash=request_hash("credit", {"m": member, **fields}),
        **fields,
    )


def balance(url: str, program: str, member: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT balance FROM accounts WHERE program_id = %s AND member_id = %s",
            (program, member),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_seeding_is_slot_modulo_shards_and_kept_on_the_next_start(
    database_url: str, topology: TopologyRepo
) -> None:
    version, rows = await topology.slots("account")
    assert version >= 1 and len(rows) == SLOTS
    assert all(r.owner == r.slot % 2 and r.epoch == 1 and r.moving_to is None for r in rows)
    # A later start with other counts keeps the map: the database decides from now on.
    assert ensure_topology(database_url, {"account": 5, "reward": 3}, SLOTS)["account"] == 2
    assert await topology.shards("account") == [0, 1]


async def test_a_stale_owner_cannot_commit_and_then_answers_moved(
    database_url: str, topology: TopologyRepo, program: str
) -> None:
    member = "alice"
    slot = slot_of(program, member)
    old, new = slot % 2, 1 - slot % 2
    stale = shard(database_url, topology, old)
    successor = shard(database_url, topology, new)
    try:
        first = await stale.submit(credit(program, member, 10, "k1"))
        assert first.code is Code.CREATED, first
        # The slot moves behind the old owner's back (it is never told: partitioned).
        await topology.begin_handoff("account", old, new, [slot])
        assert await topology.finish_handoff("account", old, [slot]) == 1
        fenced = await stale.submit(credit(program, member, 5, "k2"))
        assert fenced.code is Code.UNAVAILABLE, fenced  # the commit was refused in PostgreSQL
        assert stale.stats["fenced"] == 1
        assert balance(database_url, program, member) == 10
        # It read the map again after the fence: from now on the slot is not its own.
        assert (await stale.submit(credit(program, member, 5, "k3"))).code is Code.MOVED
        with pytest.raises(SlotMoved):
            await stale.get_account(program, member)
        # The new owner learns the slot by itself on its first request (nobody told it).
        moved_on = await successor.submit(credit(program, member, 5, "k2"))
        assert moved_on.code is Code.CREATED and moved_on.body["balance_after"] == 15
        view = await successor.get_account(program, member)
        assert view is not None and view["balance"]["total"] == 15
    finally:
        await stale.close()
        await successor.close()


async def test_release_refuses_at_once_and_forgets_the_cache(
    database_url: str, topology: TopologyRepo, program: str
) -> None:
    member = "bob"
    slot = slot_of(program, member)
    owner = shard(database_url, topology, slot % 2)
    try:
        assert (await owner.submit(credit(program, member, 7, "a"))).code is Code.CREATED
        assert await owner.get_account(program, member) is not None
        await topology.begin_handoff("account", slot % 2, 1 - slot % 2, [slot])
        released = await owner.release([slot], timeout_s=5.0)
        assert released == {"released": 1, "evicted": 1, "settled": 1}
        assert (await owner.submit(credit(program, member, 1, "b"))).code is Code.MOVED
        with pytest.raises(SlotMoved):
            await owner.get_account(program, member)
        # A refresh while the slot is still marked moving does not give it back.
        await owner.ownership.refresh(force=True)
        assert owner.ownership.epoch(slot) is None
        assert balance(database_url, program, member) == 7
    finally:
        await owner.close()


async def test_one_move_at_a_time_and_retired_shards_own_nothing(
    topology: TopologyRepo,
) -> None:
    await topology.start_move((2, 3), (1, 1), 10)
    with pytest.raises(MoveRunning):
        await topology.start_move((2, 4), (1, 1), 10)
    move = await topology.running_move()
    assert move is not None
    slots, seen = await topology.picture()
    assert seen == move and {k: len(v) for k, v in slots.items()} == {
        "account": SLOTS,
        "reward": SLOTS,
    }
    await topology.finish_move(move, "done", None)
    assert await topology.running_move() is None
    assert (await topology.picture())[1] is None
    # A shard that still owns slots is not retired; one that owns none is.
    await topology.add_shards("account", [2])
    assert await topology.retire_shards("account", [1, 2]) == [2]
    assert await topology.shards("account") == [0, 1]


async def test_a_router_follows_the_map_and_holds_moving_slots(
    database_url: str, topology: TopologyRepo
) -> None:
    from actors import routers
    from actors.routers import TopologyRouter

    router = TopologyRouter("account", database_url, lambda i: f"shard-{i}")
    try:
        seen = await router.load()
        assert seen.owner(5) == 1 and router.shards() == [0, 1]
        await topology.add_shards("account", [2])
        await topology.begin_handoff("account", 1, 2, [5])
        router.stale()
        for _ in range(100):  # the poll sees the new version within its interval
            await asyncio.sleep(routers.REFRESH_INTERVAL_S / 5)
            if router.owner(5) is None:
                break
        assert router.owner(5) is None and router.owner(7) == 1
        await topology.finish_handoff("account", 1, [5])
        for _ in range(100):
            await asyncio.sleep(routers.REFRESH_INTERVAL_S / 5)
            if router.owner(5) == 2:
                break
        assert router.owner(5) == 2 and router.shards() == [0, 1, 2]
    finally:
        await router.close()


class InProcessShard:
    """A shard's hand-off methods on a real ShardCore, called the way the mover calls an
    actor (`handle.method.remote(...)`), in this process."""

    def __init__(self, core: ShardCore) -> None:
        self.core = core
        self.release = _Method(lambda slots: core.release(slots, 5.0))
        self.refresh_ownership = _Method(self._refresh)
        self.ping = _Method(self._ping)

    async def _ping(self) -> dict[str, Any]:
        return {"node_id": "in-process", **(await self.core.ping())}

    async def _refresh(self) -> list[int]:
        await self.core.ownership.refresh(force=True)
        return self.core.ownership.slots


async def test_a_move_hands_slots_over_between_live_shards_and_resumes_after_a_crash(
    database_url: str, topology: TopologyRepo, program: str
) -> None:
    from actors.mover import Mover, slots_to_move

    cores: dict[int, ShardCore] = {}

    def actor(kind: str, index: int, env: Any = None, node: Any = None) -> InProcessShard:
        assert kind in ("account", "reward")
        if index not in cores:
            cores[index] = shard(database_url, topology, index)
        return InProcessShard(cores[index])

    retired: list[int] = []
    mover = Mover(
        topology, actor, retire=lambda kind, i: retired.append(i) or True, nodes=lambda: []
    )
    members = [f"m{i}" for i in range(40)]
    try:
        for member in members:
            owner = actor("account", slot_of(program, member) % 2).core
            assert (await owner.submit(credit(program, member, 3, "seed"))).code is Code.CREATED
        _, rows = await topology.slots("account")
        move = await topology.start_move((2, 3), (1, 1), slots_to_move(rows, 3))
        # A coordinator that crashed half-way: one hand-off marked, never finished.
        slot = next(r.slot for r in rows if r.slot % 3 == 2)
        await topology.add_shards("account", [2])
        await topology.begin_handoff("account", slot % 2, 2, [slot])
        await mover.run(move)
        _, after = await topology.slots("account")
        assert all(r.owner == r.slot % 3 and r.moving_to is None for r in after)
        assert {r.epoch for r in after if r.slot % 3 != r.slot % 2} == {2}
        finished = await topology.last_move()
        assert finished is not None and finished.state == "done"
        assert finished.slots_moved == finished.slots_total > 0
        # Every member is served by its new owner, balances intact; old owners say moved.
        for member in members:
            slot = slot_of(program, member)
            owner = cores[slot % 3]
            answer = await owner.submit(credit(program, member, 1, "after"))
            assert answer.code is Code.CREATED and answer.body["balance_after"] == 4, answer
            if slot % 2 != slot % 3:
                stale = cores[slot % 2]
                assert (await stale.submit(credit(program, member, 1, "x"))).code is Code.MOVED
        # Down to one shard: the others are retired once they own nothing.
        down = await topology.start_move((3, 1), (1, 1), 0)
        await mover.run(down)
        assert sorted(retired) == [1, 2] and await topology.shards("account") == [0]
    finally:
        for core in cores.values():
            await core.close()


async def test_a_read_reconnects_after_the_server_closed_the_connection(
    database_url: str, topology: TopologyRepo
) -> None:
    assert await topology.shards("account") == [0, 1]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND application_name = '' AND state = 'idle'"
        )
    assert await topology.shards("account") == [0, 1]
