"""Who owns which slot, as each side sees it: a shard (`Ownership`) and a router (`SlotMap`).

The slot -> shard map is data in PostgreSQL (db/topology_repo.py), changed only by a move
(actors/mover.py), one slot hand-off at a time:

1. the slot is marked moving: routers hold its requests (`SlotMap.owner` is None);
2. the old owner releases it (`Ownership.release`): from then on it answers `moved` for
   the slot, finishes the batch in flight and forgets the slot's accounts;
3. the epoch moves and the new shard owns the slot: its commits are fenced by that epoch,
   and the old owner's are refused by PostgreSQL even if step 2 never reached it;
4. the new owner learns the slot (told, or by reading the map when a request for a slot it
   does not know arrives) and loads its accounts lazily; routers send it the held requests.

A request that reaches a shard that does not own its slot gets `moved` (never applied, so
resending it is safe) and its router reads the map again. Nothing here talks to Ray or to
PostgreSQL: the loaders are injected, so this module is tested on its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from actors.protocol import Outcome
from actors.routing import SLOTS
from db.topology_repo import Kind, SlotFence
from domain.errors import Code

# A shard that gets a request for a slot it does not own reads the map again at most this
# often (a stream of misrouted requests after a move costs one query, not one each).
OWNERSHIP_REFRESH_MIN_S = 0.2


T = TypeVar("T")


def moved_outcome(slot: int) -> Outcome:
    """The answer to an operation whose slot this shard does not own (nothing applied)."""
    return Outcome.refused(Code.MOVED, f"slot {slot} is not owned by this shard")


class SlotMoved(Exception):
    """Raised by a shard's read for a slot it does not own: ask the map again."""


@dataclass(frozen=True, slots=True)
class SlotMap:
    """A router's picture of one kind's map: owner per slot, and the slots being handed off
    (their requests wait)."""

    version: int
    owners: tuple[int, ...]
    moving: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        assert self.owners and all(owner >= 0 for owner in self.owners)
        assert all(0 <= slot < len(self.owners) for slot in self.moving)

    @staticmethod
    def modulo(shards: int, slots: int, version: int = 0) -> SlotMap:
        """The map of `shards` shards dealt round-robin (slot % shards): the seed."""
        assert 0 < shards <= slots
        return SlotMap(version, tuple(slot % shards for slot in range(slots)))

    def owner(self, slot: int) -> int | None:
        """The shard to send the slot's requests to; None while the slot is handed off."""
        return None if slot in self.moving else self.owners[slot]

    def shards(self) -> list[int]:
        return sorted(set(self.owners))


class Ownership:
    """The slots one shard owns (slot -> epoch), kept in step with the map in PostgreSQL.

    `load()` reads the slots this shard owns and is not handing off. A shard reads it on its
    first request and again (at most every OWNERSHIP_REFRESH_MIN_S) when a request arrives
    for a slot it does not know, which is how a new owner learns a slot if the move's
    coordinator died before telling it. A `release` makes the shard forget slots at once;
    a load that was already running when a release happened is discarded (it may predate
    the hand-off's first step), so a released slot cannot come back from a stale read.
    """

    def __init__(
        self,
        kind: Kind,
        shard: int,
        load: Callable[[], Awaitable[dict[int, int]]],
        slot_of: Callable[[str, str], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert shard >= 0
        self.kind: Kind = kind
        self.shard = shard
        self.slot_of = slot_of
        self._load = load
        self._clock = clock
        self._epochs: dict[int, int] = {}
        self._loaded = False
        self._loaded_at = -1e18
        self._generation = 0
        self._lock: asyncio.Lock | None = None
        # Told of slots a refresh found gone (a move that did not reach this shard): the
        # shard forgets what it cached for them.
        self.on_lost: Callable[[set[int]], None] | None = None

    def epoch(self, slot: int) -> int | None:
        """The epoch this shard owns `slot` at, or None when it does not own it."""
        return self._epochs.get(slot)

    def owns(self, program_id: str, key: str) -> bool:
        return self.slot_of(program_id, key) in self._epochs

    @property
    def slots(self) -> list[int]:
        return sorted(self._epochs)

    async def refresh(self, *, force: bool = False) -> None:
        """Read the owned slots again (first use; else only when `force` or not too soon)."""
        if self._loaded and not force and self._clock() - self._loaded_at < OWNERSHIP_REFRESH_MIN_S:
            return
        if self._lock is None:  # created here: it binds to the running loop
            self._lock = asyncio.Lock()
        async with self._lock:
            for _attempt in range(3):
                generation = self._generation
                owned = await self._load()
                if generation == self._generation:  # no release meanwhile
                    lost = set(self._epochs) - set(owned)
                    self._epochs = owned
                    if lost and self.on_lost is not None:
                        self.on_lost(lost)
                    self._loaded = True
                    self._loaded_at = self._clock()
                    return
            # Releases kept arriving: keep what we have (it only ever shrank).

    async def ensure(self, slots: Iterable[int]) -> None:
        """Before a batch: make sure the map was read, and read it again if the batch has a
        slot this shard does not know (it may have just been given it)."""
        if not self._loaded or any(slot not in self._epochs for slot in slots):
            await self.refresh()

    async def keep_owned(
        self, batch: list[T], slot: Callable[[T], int], moved: Callable[[T], bool]
    ) -> list[T]:
        """The operations of a batch whose slot this shard owns, after reading the map if
        the batch has a slot it does not know; `moved(op)` answers each of the others
        (and says whether it did). Raises when the map cannot be read."""
        await self.ensure({slot(op) for op in batch})
        return [op for op in batch if not moved(op)]

    def release(self, slots: Iterable[int]) -> list[int]:
        """Forget these slots now (no await): requests for them get `moved` from here on.
        Returns the ones it owned."""
        self._generation += 1
        released = [slot for slot in slots if self._epochs.pop(slot, None) is not None]
        return released

    def fence(self, slots: Iterable[int]) -> SlotFence:
        """The fence of a batch that writes these (owned) slots."""
        ordered = sorted(set(slots))
        epochs = [self._epochs[slot] for slot in ordered]
        return SlotFence(self.kind, self.shard, ordered, epochs)


class EverythingOwned(Ownership):
    """A shard that owns every slot, unfenced: for tests of a single shard's logic that
    run without a topology in the database. Production shards never use it."""

    def __init__(self, kind: Kind, slot_of: Callable[[str, str], int]) -> None:
        async def nothing() -> dict[int, int]:
            return {}

        super().__init__(kind, 0, nothing, slot_of)
        self._loaded = True

    def epoch(self, slot: int) -> int | None:
        return 1

    def owns(self, program_id: str, key: str) -> bool:
        return True

    @property
    def slots(self) -> list[int]:
        return list(range(SLOTS))

    async def refresh(self, *, force: bool = False) -> None:
        return None

    async def ensure(self, slots: Iterable[int]) -> None:
        return None

    def release(self, slots: Iterable[int]) -> list[int]:
        return []

    def fence(self, slots: Iterable[int]) -> SlotFence:
        return SlotFence(self.kind, 0, [], [])
