"""Routers: which shard actor takes a slot's requests, as seen by one process.

Contract: `owner(slot)` answers the shard index to send the slot's requests to, or None
while the slot is being handed off (or the map is not read yet): the caller holds the
request and asks again shortly. `handle(shard)` is that shard's actor handle. `stale()`
says a shard answered `moved`: read the map again now, not at the next poll.

`TopologyRouter` follows the map in PostgreSQL (db/topology_repo.py): it polls the kind's
version row every REFRESH_INTERVAL_S and reloads the map when it changed, so a process
follows a move within a second. `StaticRouter` is a fixed list of shards (slot % n), for
tests that have no topology in a database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Protocol

from actors.routing import NAMESPACE, SLOTS
from actors.topology import SlotMap
from db.topology_repo import Kind, TopologyRepo

log = logging.getLogger("points.routers")

# How often a router looks whether the map changed (one single-row query).
REFRESH_INTERVAL_S = 0.25


class Router(Protocol):
    def owner(self, slot: int) -> int | None: ...

    def handle(self, shard: int) -> Any: ...

    def forget_handle(self, shard: int) -> None: ...

    def stale(self) -> None: ...

    def shards(self) -> list[int]: ...


class StaticRouter:
    """Shards 0..n-1 own slot % n, for ever."""

    def __init__(self, handles: list[Any]) -> None:
        assert handles
        self._handles = handles
        self._map = SlotMap.modulo(len(handles), SLOTS)

    def owner(self, slot: int) -> int | None:
        return self._map.owner(slot)

    def handle(self, shard: int) -> Any:
        return self._handles[shard]

    def forget_handle(self, shard: int) -> None:
        return None

    def stale(self) -> None:
        return None

    def shards(self) -> list[int]:
        return list(range(len(self._handles)))


class TopologyRouter:
    """Follows one kind's map in PostgreSQL; finds shard actors by name (`name_of`)."""

    def __init__(self, kind: Kind, dsn: str, name_of: Callable[[int], str]) -> None:
        self.kind: Kind = kind
        self._repo = TopologyRepo(dsn)
        self._name_of = name_of
        self._map: SlotMap | None = None
        self._handles: dict[int, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None

    @property
    def map(self) -> SlotMap | None:
        return self._map

    def owner(self, slot: int) -> int | None:
        self._ensure_polling()
        return None if self._map is None else self._map.owner(slot)

    def shards(self) -> list[int]:
        self._ensure_polling()
        return [] if self._map is None else self._map.shards()

    def handle(self, shard: int) -> Any:
        found = self._handles.get(shard)
        if found is None:
            import ray  # here: this module is imported by tests that refuse Ray

            found = ray.get_actor(self._name_of(shard), namespace=NAMESPACE)
            self._handles[shard] = found
        return found

    def forget_handle(self, shard: int) -> None:
        """The handle failed (the actor was retired, and may be created again)."""
        self._handles.pop(shard, None)

    def stale(self) -> None:
        self._ensure_polling()
        if self._wakeup is not None:
            self._wakeup.set()

    async def load(self) -> SlotMap:
        """Read the map now (and start following it)."""
        self._ensure_polling()
        await self._reload()
        assert self._map is not None
        return self._map

    def _ensure_polling(self) -> None:
        if self._task is None or self._task.done():
            with contextlib.suppress(RuntimeError):  # no running loop: the next call starts it
                loop = asyncio.get_running_loop()
                self._wakeup = asyncio.Event()
                self._task = loop.create_task(self._poll())

    async def _reload(self) -> None:
        version, rows = await self._repo.slots(self.kind)
        if not rows:
            return
        owners = tuple(row.owner for row in rows)
        moving = frozenset(row.slot for row in rows if row.moving_to is not None)
        self._map = SlotMap(version, owners, moving)

    async def _poll(self) -> None:
        wakeup = self._wakeup
        assert wakeup is not None
        while True:
            try:
                version = await self._repo.version(self.kind)
                if self._map is None or version != self._map.version:
                    await self._reload()
            except Exception as exc:  # the database is away: keep the map we have
                log.warning("topology poll failed: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), REFRESH_INTERVAL_S)
            wakeup.clear()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self._repo.close()
