"""Moves of the topology: change how many account and reward shards own the slots, live.

Contract: a move is a row of `topology_moves` (state `running`, at most one). The
coordinator (one named, detached actor) runs it to the end: for each kind, the target
shards are created, then every slot whose owner changes (slot % target) is handed off in
chunks, following actors/topology.py (mark moving, old owner releases, epoch moves, new
owner told), and shards left owning nothing are retired. Then the row says `done`.

Why it can be interrupted anywhere: every step is idempotent and its state is in
PostgreSQL. A coordinator that restarts (or the next one, after a crash of the node it ran
on) reads the running move and the map, finishes the hand-offs left half-way (slots marked
moving), and plans the rest from the map as it is. A shard that crashed in the middle of a
release lost its memory anyway; one that does not answer its release in time is restarted
by force, and the epoch fence refuses its commits either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import ray

from actors import fleet
from actors.placement import CODE_VERSION_ENV
from actors.routing import NAMESPACE, SLOTS
from db.topology_repo import ROLLING_BACK, Kind, Move, SlotRow, TopologyRepo

log = logging.getLogger("points.mover")

COORDINATOR_NAME = "points-topology"
# Slots handed off together: their requests are held for one hand-off (tens of ms).
CHUNK_SLOTS = 64
RELEASE_TIMEOUT_S = 20.0
TELL_TIMEOUT_S = 5.0
# How long a new shard may take to start (a new runtime environment: a new worker process).
READY_TIMEOUT_S = 60.0
# Where shards run is asked of each before a move; one that does not answer this soon is
# left out of the count.
PLACEMENT_PING_S = 5.0
# A move that failed on a step (the database away, say) is tried again after this.
RETRY_DELAY_S = 1.0


def target(count: int, base: int = 0) -> Callable[[int], int]:
    """Where each slot goes: shard base + slot % count."""
    assert 0 < count <= SLOTS and base >= 0
    return lambda slot: base + slot % count


def plan(rows: list[SlotRow], target_of: Callable[[int], int]) -> list[tuple[int, int, list[int]]]:
    """The hand-offs that bring `rows` to `target_of`: (old, new, slots) in chunks, those
    already marked moving first (left half-way by an interrupted move)."""
    half_way: dict[tuple[int, int], list[int]] = defaultdict(list)
    to_do: dict[tuple[int, int], list[int]] = defaultdict(list)
    for row in rows:
        if row.moving_to is not None:
            half_way[(row.owner, row.moving_to)].append(row.slot)
        elif row.owner != target_of(row.slot):
            to_do[(row.owner, target_of(row.slot))].append(row.slot)
    steps = []
    for groups in (half_way, to_do):
        for (old, new), slots in sorted(groups.items()):
            for start in range(0, len(slots), CHUNK_SLOTS):
                steps.append((old, new, slots[start : start + CHUNK_SLOTS]))
    return steps


def slots_to_move(rows: list[SlotRow], count: int, base: int = 0) -> int:
    return sum(len(slots) for _, _, slots in plan(rows, target(count, base)))


def code_env(move: Move) -> dict[str, Any] | None:
    """The runtime environment of the shards a move creates: the one it was started with
    (the new release's), naming its version for the shards' pings."""
    if move.code_version is None:
        return move.runtime_env
    env = dict(move.runtime_env or {})
    env["env_vars"] = {**env.get("env_vars", {}), CODE_VERSION_ENV: move.code_version}
    return env


class Mover:
    """Runs one move against the database and the shard actors (`actor(kind, index)`)."""

    def __init__(
        self,
        repo: TopologyRepo,
        actor: Callable[[Kind, int, dict[str, Any] | None, str | None], Any],
        retire: Callable[[Kind, int], bool] = fleet.retire,
        restart: Callable[[Any], None] = fleet.restart,
        nodes: Callable[[], list[str]] = fleet.alive_nodes,
    ) -> None:
        self.repo = repo
        self._actor = actor
        self._retire = retire
        self._restart = restart
        self._nodes = nodes
        # Where each shard runs, as its pings said: new shards go to the emptiest node.
        self._placed: dict[tuple[Kind, int], str] = {}

    async def run(self, move: Move) -> None:
        """Bring both kinds to the move's targets, then mark it done. With `canary_slots`,
        stop after that many slots of each kind (state canary: promote or roll back).
        Raises on a failed step (the move stays running: run it again)."""
        kinds: tuple[tuple[Kind, int, int], ...] = (
            ("account", move.account_to, move.account_base),
            ("reward", move.reward_to, move.reward_base),
        )
        await self._learn_placement()
        if move.canary_slots is not None:
            for kind, count, base in kinds:
                await self._move_kind(move, kind, count, base, budget=move.canary_slots)
            await self.repo.pause_for_canary(move.move_id)
            log.info("move %s paused for its canary", move.move_id)
            return
        for kind, count, base in kinds:
            await self._move_kind(move, kind, count, base)
            await self._retire_extra(kind, count, base)
        state = "rolled_back" if move.detail == ROLLING_BACK else "done"
        await self.repo.finish_move(move, state, move.detail)
        log.info("move %s %s", move.move_id, state)

    async def _move_kind(
        self, move: Move, kind: Kind, count: int, base: int, budget: int | None = None
    ) -> None:
        """Hand off the kind's slots to `target(count, base)`; at most `budget` slots
        (counting those already with a shard of the target generation that is new)."""
        assert 0 < count <= SLOTS
        indexes = range(base, base + count)
        await self.repo.add_shards(kind, indexes, move.code_version or "", code_env(move))
        # Each shard in the code it was added with (a shard that runs already is found).
        envs = {row.shard: row.runtime_env for row in await self.repo.shard_rows(kind)}
        handles = {index: await self._ready(kind, index, envs.get(index)) for index in indexes}
        _, rows = await self.repo.slots(kind)
        moved_total = 0
        if budget is not None:  # a canary resumed after a crash: count what it moved
            moved_total = sum(1 for r in rows if r.owner in handles and r.moving_to is None)
        for old, new, slots in plan(rows, target(count, base)):
            if budget is not None:
                if moved_total >= budget:
                    break
                slots = slots[: budget - moved_total]
            await self.repo.begin_handoff(kind, old, new, slots)
            await self._release(kind, old, slots, envs.get(old))
            moved = await self.repo.finish_handoff(kind, old, slots)
            moved_total += moved
            await self.repo.progress(move.move_id, moved)
            await self._tell(handles.get(new) or self._actor(kind, new, envs.get(new), None))

    async def _learn_placement(self) -> None:
        """Ask every shard in the topology where it runs (those that do not answer soon
        are left out: they do not count on any node)."""
        self._placed.clear()
        rows = [
            (kind, row.shard, row.runtime_env)
            for kind in ("account", "reward")
            for row in await self.repo.shard_rows(kind)
        ]

        async def where(kind: Kind, index: int, env: dict[str, Any] | None) -> None:
            with contextlib.suppress(Exception):
                handle = self._actor(kind, index, env, None)
                ping = await asyncio.wait_for(handle.ping.remote(), PLACEMENT_PING_S)
                self._placed[(kind, index)] = ping["node_id"]

        await asyncio.gather(*(where(kind, index, env) for kind, index, env in rows))  # type: ignore[arg-type]

    async def _ready(self, kind: Kind, index: int, env: dict[str, Any] | None) -> Any:
        """The shard's handle once it answers: a new owner must be up before it is given
        slots (its requests would wait for it). A shard not running yet is created on the
        node holding fewest shards. A handle to an actor that died (a name Ray had not
        released yet) is replaced by a new actor."""
        deadline = asyncio.get_running_loop().time() + READY_TIMEOUT_S
        while True:
            node = None
            if (kind, index) not in self._placed:
                node = fleet.least_loaded(kind, self._nodes(), self._placed)
            handle = self._actor(kind, index, env, node)
            try:
                ping = await asyncio.wait_for(handle.ping.remote(), READY_TIMEOUT_S)
                self._placed[(kind, index)] = ping["node_id"]
                return handle
            except Exception as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"{kind} shard {index} does not start: {exc!r}") from exc
                log.warning("%s shard %d not ready (%r); again", kind, index, exc)
                await asyncio.sleep(RETRY_DELAY_S)

    async def _retire_extra(self, kind: Kind, count: int, base: int) -> None:
        extra = [i for i in await self.repo.shards(kind) if not base <= i < base + count]
        for index in await self.repo.retire_shards(kind, extra):
            self._retire(kind, index)

    async def _release(
        self, kind: Kind, old: int, slots: list[int], env: dict[str, Any] | None
    ) -> None:
        try:
            handle = self._actor(kind, old, env, None)
        except Exception:  # not running at all: nothing to release
            return
        try:
            await asyncio.wait_for(handle.release.remote(slots), RELEASE_TIMEOUT_S)
        except Exception as exc:
            # It did not confirm: make sure it forgets, by restarting it (it reads the map
            # again when it comes back, without the slots marked moving).
            log.warning(
                "%s shard %d did not release %d slots (%r): restarting it",
                kind,
                old,
                len(slots),
                exc,
            )
            self._restart(handle)

    @staticmethod
    async def _tell(handle: Any) -> None:
        """Best effort: the new owner also reads the map on the first request it gets."""
        try:
            await asyncio.wait_for(handle.refresh_ownership.remote(), TELL_TIMEOUT_S)
        except Exception as exc:
            log.warning("new owner not told of its slots: %r", exc)


@ray.remote(max_restarts=-1, max_task_retries=0, num_cpus=0)
class TopologyCoordinator:
    """The one actor that runs moves. `kick()` makes sure a running move is being run."""

    def __init__(self, dsn: str, config: dict[str, Any]) -> None:
        self.repo = TopologyRepo(dsn)
        self.mover = Mover(
            self.repo,
            lambda kind, index, env, node: fleet.shard_actor(kind, index, dsn, config, env, node),
        )
        self._task: asyncio.Task[None] | None = None

    async def kick(self) -> bool:
        """Run the running move, if any, unless already at it. True when one is running."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return not self._task.done()

    async def _run(self) -> None:
        while True:
            try:
                move = await self.repo.running_move()
                if move is None or move.state != "running":  # none, or a paused canary
                    return
                await self.mover.run(move)
            except Exception:
                log.exception("move failed on a step; trying again")
                await asyncio.sleep(RETRY_DELAY_S)


def coordinator(dsn: str, config: dict[str, Any]) -> Any:
    return TopologyCoordinator.options(  # type: ignore[attr-defined]  # an ActorClass
        name=COORDINATOR_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote(dsn, config)
