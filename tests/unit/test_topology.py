"""Slot ownership as each side sees it (actors/topology.py), the move planner, and a
ShardClient that follows a moving map (held requests, `moved` answers resent)."""

import asyncio
from typing import Any

import pytest

from actors.mover import CHUNK_SLOTS, plan, slots_to_move, target
from actors.protocol import Debit, Outcome, Wire, command_from_wire, outcome_to_wire
from actors.routing import SLOTS, slot_of
from actors.shard_client import ShardClient
from actors.topology import EverythingOwned, Ownership, SlotMap
from db.topology_repo import SlotRow
from domain.errors import Code
from tests.unit.test_shard_client import _Method


def rows_of(owners: list[int], moving: dict[int, int] | None = None) -> list[SlotRow]:
    moving = moving or {}
    return [SlotRow(slot, owner, 1, moving.get(slot)) for slot, owner in enumerate(owners)]


def test_a_map_holds_the_slots_being_handed_off() -> None:
    seeded = SlotMap.modulo(3, SLOTS)
    assert [seeded.owner(s) for s in range(6)] == [0, 1, 2, 0, 1, 2]
    assert seeded.shards() == [0, 1, 2]
    moving = SlotMap(2, seeded.owners, frozenset({4}))
    assert moving.owner(4) is None and moving.owner(5) == 2
    with pytest.raises(AssertionError):
        SlotMap(1, (0, 1), frozenset({2}))


def test_the_plan_moves_only_slots_whose_owner_changes_and_finishes_half_way_first() -> None:
    rows = rows_of([s % 2 for s in range(SLOTS)])
    steps = plan(rows, target(2))
    assert steps == []
    up = plan(rows, target(4))
    # From 2 to 4 shards: slots 2 and 3 (mod 4) change hands, half of all.
    assert slots_to_move(rows, 4) == SLOTS // 2
    assert all(len(slots) <= CHUNK_SLOTS for _, _, slots in up)
    assert all(slot % 4 == new and slot % 2 == old for old, new, slots in up for slot in slots)
    # A hand-off left half-way (slot 6 marked moving from 0 to 2) is finished first.
    half_way = rows_of([s % 2 for s in range(SLOTS)], moving={6: 2})
    assert plan(half_way, target(4))[0] == (0, 2, [6])
    assert 6 not in [slot for _, _, slots in plan(half_way, target(4))[1:] for slot in slots]
    down = plan(rows_of([s % 4 for s in range(SLOTS)]), target(1))
    assert sum(len(s) for _, _, s in down) == SLOTS * 3 // 4


async def test_ownership_loads_releases_and_ignores_a_load_older_than_a_release() -> None:
    owned = {1: 3, 2: 1}
    loads = 0
    gate = asyncio.Event()

    async def load() -> dict[int, int]:
        nonlocal loads
        loads += 1
        if loads == 2:
            await gate.wait()  # a slow read, overtaken by a release
        return dict(owned)

    now = [0.0]
    ownership = Ownership("account", 0, load, lambda p, m: int(m), clock=lambda: now[0])
    lost: list[set[int]] = []
    ownership.on_lost = lost.append
    await ownership.ensure([])
    assert ownership.slots == [1, 2] and ownership.epoch(1) == 3 and ownership.owns("p", "2")
    assert ownership.fence([2, 1, 2]).slots == [1, 2]
    assert ownership.fence([2, 1]).epochs == [3, 1]
    # Known slots, recent load: no read.
    await ownership.ensure([1])
    assert loads == 1
    slow = asyncio.create_task(ownership.refresh(force=True))
    await asyncio.sleep(0)
    assert ownership.release([2, 9]) == [2]
    gate.set()
    await slow
    # The slow read started before the release: discarded, read again; the map in the
    # database still says slot 2 is ours in this stand-in, so it comes back only by a load
    # that started after the release.
    assert loads == 3 and ownership.slots == [1, 2]
    owned.pop(2)
    now[0] += 1.0
    await ownership.ensure([7])  # unknown slot: read again
    assert ownership.slots == [1] and lost == [{2}]


def test_a_test_shard_owns_everything_unfenced() -> None:
    everything = EverythingOwned("reward", slot_of)
    assert everything.owns("p", "r") and everything.epoch(5) == 1
    assert everything.release([1]) == [] and everything.fence([1]).slots == []
    assert len(everything.slots) == SLOTS


class StandInShard:
    """Answers `moved` for the slots it does not own, like a shard after a hand-off."""

    def __init__(self, index: int, router: "MovingRouter") -> None:
        self.index = index
        self.router = router
        self.applied: list[str] = []
        self.submit_many = _Method(self._submit_many)

    async def _submit_many(self, wires: list[Wire]) -> list[Wire]:
        answers = []
        for wire in wires:
            command = command_from_wire(wire)
            slot = slot_of(command.program_id, command.member_id)
            if self.router.truth[slot] != self.index:
                answers.append(outcome_to_wire(Outcome.refused(Code.MOVED, "not mine")))
            else:
                self.applied.append(command.key)
                answers.append(outcome_to_wire(Outcome.created({"shard": self.index})))
        return answers


class MovingRouter:
    """A router whose map lags the truth until it is told the map is stale."""

    def __init__(self) -> None:
        self.truth = [0] * SLOTS
        self.seen = [0] * SLOTS
        self.moving: set[int] = set()
        self.shards = [StandInShard(0, self), StandInShard(1, self)]
        self.stale_calls = 0

    def owner(self, slot: int) -> int | None:
        return None if slot in self.moving else self.seen[slot]

    def handle(self, shard: int) -> Any:
        return self.shards[shard]

    def forget_handle(self, shard: int) -> None:
        return None

    def stale(self) -> None:
        self.stale_calls += 1
        self.seen = list(self.truth)

    def shard_list(self) -> list[int]:
        return [0, 1]


def debit(member: str, key: str) -> Debit:
    return Debit(program_id="p", member_id=member, points=1, reason="r", key=key, request_hash="h")


async def test_the_client_holds_a_moving_slot_and_resends_what_was_answered_moved() -> None:
    router = MovingRouter()
    client = ShardClient(router)  # type: ignore[arg-type]  # a stand-in router
    slot = slot_of("p", "alice")
    # The slot is being handed off: the request waits...
    router.moving.add(slot)
    held = client.enqueue(debit("alice", "k1"))
    await asyncio.sleep(0.1)
    assert not held.done()
    # ...until the hand-off ends; the router's map still names the old owner, which
    # answers `moved`: the client asks the map again and resends to the new owner.
    router.truth[slot] = 1
    router.moving.clear()
    outcome = await asyncio.wait_for(held, 5)
    assert outcome.code is Code.CREATED and outcome.body == {"shard": 1}
    assert router.stale_calls >= 1
    assert router.shards[1].applied == ["k1"] and router.shards[0].applied == []


def test_a_new_shard_goes_to_the_node_holding_fewest() -> None:
    from actors.fleet import least_loaded

    placed = {("account", 0): "a", ("account", 1): "a", ("reward", 0): "b", ("account", 2): "b"}
    # Same kind first: b holds one account shard, a two; c (just added) none.
    assert least_loaded("account", ["a", "b", "c"], placed) == "c"
    assert least_loaded("account", ["a", "b"], placed) == "b"
    # Ties on the kind go to the node holding fewer shards in all.
    assert least_loaded("reward", ["a", "c"], placed) == "c"
    assert least_loaded("reward", ["a", "b"], {("account", 0): "a"}) == "b"
    assert least_loaded("account", [], placed) is None
