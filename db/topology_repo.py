"""Slot ownership in PostgreSQL: the map routers follow, the fence a group commit checks, and
the hand-off steps a move takes (migration 0005 has the tables).

The contract, per kind of shard (`account`, `reward`):

- `topology_slots` says which shard owns each slot, at which epoch, and (`moving_to`) whether
  it is being handed to another shard. `topology.version` changes with every change of the
  map, so a router polls one row and reloads the map only when it changed.
- A shard's group commit starts with `slot_fence_writers`: it takes its own row of
  `topology_shards` FOR SHARE, then checks that it still owns every slot of the batch at the
  epoch it knows. A hand-off (`finish_handoff`) takes the old owner's row FOR NO KEY UPDATE
  before it moves the slots, so it waits for the commit in flight, and every later commit of
  the old owner sees the new epoch and fails (FencedError): a stale owner never commits.
- One move at a time: `start_move` inserts a `running` row under a partial unique index, so
  of two racing starts one fails with `MoveRunning`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import psycopg
from psycopg.rows import dict_row, scalar_row

from db.shard_connection import (
    Conn,
    Cursor,
    ShardConnection,
    TableWriter,
    jsonb,
    read_while_unreachable,
)

Kind = Literal["account", "reward"]
KINDS: tuple[Kind, ...] = ("account", "reward")
B = TypeVar("B")


# `detail` of a canary being rolled back: it ends `rolled_back`, not `done`.
ROLLING_BACK = "rolling back the canary"


@dataclass(frozen=True, slots=True)
class ShardRow:
    shard: int
    code_version: str
    runtime_env: dict[str, Any] | None


class MoveRunning(Exception):
    """Another move of the topology is running (one at a time)."""


@dataclass(frozen=True, slots=True)
class SlotFence:
    """What a batch must still own to commit: these slots at these epochs, as `shard`."""

    kind: Kind
    shard: int
    slots: list[int]
    epochs: list[int]

    def __post_init__(self) -> None:
        assert len(self.slots) == len(self.epochs)
        assert self.shard >= 0


@dataclass(frozen=True, slots=True)
class SlotRow:
    slot: int
    owner: int
    epoch: int
    moving_to: int | None


@dataclass(frozen=True, slots=True)
class Move:
    move_id: uuid.UUID
    account_from: int
    account_to: int
    reward_from: int
    reward_to: int
    account_base: int
    reward_base: int
    code_version: str | None
    runtime_env: dict[str, Any] | None
    canary_slots: int | None
    state: str
    slots_total: int
    slots_moved: int
    detail: str | None
    started_at: datetime
    updated_at: datetime
    finished_at: datetime | None

    def view(self) -> dict[str, Any]:
        return {
            "move_id": str(self.move_id),
            "state": self.state,
            "account_shards": {"from": self.account_from, "to": self.account_to},
            "reward_shards": {"from": self.reward_from, "to": self.reward_to},
            "code_version": self.code_version,
            "canary_slots": self.canary_slots,
            "slots_total": self.slots_total,
            "slots_moved": self.slots_moved,
            "detail": self.detail,
            "started_at": self.started_at.isoformat().replace("+00:00", "Z"),
            "finished_at": (
                None
                if self.finished_at is None
                else self.finished_at.isoformat().replace("+00:00", "Z")
            ),
        }


# ----------------------------------------------------------------- the commit's fence


def slot_fence_writers(fence_of: Callable[[B], SlotFence | None]) -> tuple[TableWriter[B], ...]:
    """The first two statements of a fenced group commit (see the module's docstring)."""

    def lease_rows(batch: B) -> list[int]:
        fence = fence_of(batch)
        return [] if fence is None or not fence.slots else [fence.shard]

    def slot_rows(batch: B) -> list[int]:
        fence = fence_of(batch)
        return [] if fence is None else fence.slots

    async def lock_lease(conn: Conn, batch: B, now: datetime) -> Cursor:
        fence = fence_of(batch)
        assert fence is not None
        return await conn.execute(
            "SELECT 1 FROM topology_shards WHERE kind = %s AND shard = %s FOR SHARE",
            (fence.kind, fence.shard),
        )

    async def check_slots(conn: Conn, batch: B, now: datetime) -> Cursor:
        fence = fence_of(batch)
        assert fence is not None
        return await conn.execute(
            """
            SELECT t.slot FROM topology_slots t
            JOIN unnest(%(slots)s::int[], %(epochs)s::bigint[]) AS b(slot, epoch)
              ON t.slot = b.slot AND t.epoch = b.epoch
            WHERE t.kind = %(kind)s AND t.owner = %(shard)s AND t.slot = ANY(%(slots)s::int[])
            """,
            # slot = ANY(...) lets the primary key find a small batch's slots (measured:
            # 183 µs a round trip for 8 slots, against 365 µs scanning the shard's slots).
            {
                "slots": fence.slots,
                "epochs": fence.epochs,
                "kind": fence.kind,
                "shard": fence.shard,
            },
        )

    return (
        TableWriter(lease_rows, lock_lease, fence="this shard was retired"),
        TableWriter(slot_rows, check_slots, fence="a slot of this batch moved to another shard"),
    )


# ----------------------------------------------------------------- seeding (start-up)


def ensure_topology(dsn: str, shards: dict[Kind, int], slots: int) -> dict[Kind, int]:
    """Seed each kind's map on a new database (slot % shards, epoch 1: the map the versions
    before 0005 computed). A kind already seeded keeps its map: after the first start the
    database, not the configuration, says how many shards there are (`points scale` changes
    it). Returns the shard count each kind has now."""
    assert slots > 0 and all(0 < n <= slots for n in shards.values())
    now = datetime.now(UTC)
    found: dict[Kind, int] = {}
    with psycopg.connect(dsn) as conn, conn.transaction():
        for kind, count in shards.items():
            # Serializes two starts seeding at once (the second sees the first's rows).
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext('points topology ' || %s))", (kind,)
            )
            cur = conn.execute("SELECT count(*) FROM topology_slots WHERE kind = %s", (kind,))
            row = cur.fetchone()
            assert row is not None
            if row[0] == 0:
                conn.execute(
                    "INSERT INTO topology_shards (kind, shard, created_at)"
                    " SELECT %s, s, %s FROM generate_series(0, %s - 1) AS s",
                    (kind, now, count),
                )
                conn.execute(
                    "INSERT INTO topology_slots (kind, slot, owner, epoch)"
                    " SELECT %s, s, s %% %s, 1 FROM generate_series(0, %s - 1) AS s",
                    (kind, count, slots),
                )
                conn.execute(
                    "INSERT INTO topology (kind, version) VALUES (%s, 1)"
                    " ON CONFLICT (kind) DO UPDATE SET version = topology.version + 1",
                    (kind,),
                )
            cur = conn.execute(
                "SELECT count(DISTINCT owner) FROM topology_slots WHERE kind = %s", (kind,)
            )
            row = cur.fetchone()
            assert row is not None
            found[kind] = int(row[0])
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Statistics for the fence's slot check (a join of the batch's slots with this
        # table): without them, where autovacuum is off, PostgreSQL scanned every slot of
        # the shard on every group commit (measured: about 0.7 ms of its CPU per commit;
        # with them, a hash join of about 0.1 ms).
        conn.execute("ANALYZE topology_slots, topology_shards")
    return found


# ----------------------------------------------------------------- reads and moves


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _reconnecting(read: F) -> F:
    """A read that meets a connection the server closed (a restart, a failover) or a server
    still starting up reconnects and reads again, for up to READ_RETRY_S, instead of
    failing the request that found it out. Reads only: a write whose connection broke may
    or may not have committed."""

    @functools.wraps(read)
    async def again(self: TopologyRepo, *args: Any, **kwargs: Any) -> Any:
        return await read_while_unreachable(lambda: read(self, *args, **kwargs), self._db.reset)

    return again  # type: ignore[return-value]


class TopologyRepo:
    """Reads of the map (routers, shards) and the steps of a move (the coordinator)."""

    def __init__(self, dsn: str) -> None:
        self._db = ShardConnection(dsn, autocommit=True)
        self._dsn = dsn
        self._lock: asyncio.Lock | None = None

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self) -> AsyncIterator[None]:
        """One connection, used by concurrent coroutines (an ingress's routes and its
        routers): its multi-statement transactions must not interleave."""
        if self._lock is None:  # created here: it binds to the running loop
            self._lock = asyncio.Lock()
        async with self._lock:
            yield

    async def close(self) -> None:
        await self._db.close()

    @_reconnecting
    async def version(self, kind: Kind) -> int:
        async with self._one_at_a_time():
            rows = await self._db.fetch_all(
                "SELECT version FROM topology WHERE kind = %s", (kind,), scalar_row
            )
            return int(rows[0]) if rows else 0

    @_reconnecting
    async def slots(self, kind: Kind) -> tuple[int, list[SlotRow]]:
        """(version, every slot) in one snapshot."""
        async with self._one_at_a_time():
            async with self._db.snapshot() as conn:
                cur = await conn.execute("SELECT version FROM topology WHERE kind = %s", (kind,))
                row = await cur.fetchone()
                version = int(row[0]) if row else 0
                cur = await conn.execute(
                    "SELECT slot, owner, epoch, moving_to FROM topology_slots"
                    " WHERE kind = %s ORDER BY slot",
                    (kind,),
                )
                rows = [SlotRow(*r) for r in await cur.fetchall()]
            return version, rows

    @_reconnecting
    async def picture(self) -> tuple[dict[Kind, list[SlotRow]], Move | None]:
        """Both kinds' slots and the move in progress, in one snapshot: a view that says
        "no move" never shows the slots of one half-way."""
        async with self._one_at_a_time(), self._db.snapshot() as conn:
            found: dict[Kind, list[SlotRow]] = {}
            for kind in KINDS:
                cur = await conn.execute(
                    "SELECT slot, owner, epoch, moving_to FROM topology_slots"
                    " WHERE kind = %s ORDER BY slot",
                    (kind,),
                )
                found[kind] = [SlotRow(*r) for r in await cur.fetchall()]
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute("SELECT * FROM topology_moves WHERE state IN ('running', 'canary')")
            move = await cur.fetchone()
        return found, None if move is None else Move(**move)

    @_reconnecting
    async def owned(self, kind: Kind, shard: int) -> dict[int, int]:
        """slot -> epoch of the slots `shard` owns and is not handing off."""
        async with self._one_at_a_time():
            rows = await self._db.fetch_all(
                "SELECT slot, epoch FROM topology_slots"
                " WHERE kind = %s AND owner = %s AND moving_to IS NULL",
                (kind, shard),
                dict_row,
            )
            return {int(r["slot"]): int(r["epoch"]) for r in rows}

    @_reconnecting
    async def base(self, kind: Kind) -> int:
        """The first shard index of the kind's current generation."""
        async with self._one_at_a_time():
            rows = await self._db.fetch_all(
                "SELECT base FROM topology WHERE kind = %s", (kind,), scalar_row
            )
        return int(rows[0]) if rows else 0

    @_reconnecting
    async def shard_rows(self, kind: Kind) -> list[ShardRow]:
        async with self._one_at_a_time():
            rows = await self._db.fetch_all(
                "SELECT shard, code_version, runtime_env FROM topology_shards"
                " WHERE kind = %s ORDER BY shard",
                (kind,),
                dict_row,
            )
        return [ShardRow(r["shard"], r["code_version"], r["runtime_env"]) for r in rows]

    @_reconnecting
    async def shards(self, kind: Kind) -> list[int]:
        async with self._one_at_a_time():
            rows = await self._db.fetch_all(
                "SELECT shard FROM topology_shards WHERE kind = %s ORDER BY shard",
                (kind,),
                scalar_row,
            )
            return [int(r) for r in rows]

    async def add_shards(
        self,
        kind: Kind,
        indexes: Sequence[int],
        code_version: str = "",
        runtime_env: dict[str, Any] | None = None,
    ) -> None:
        async with self._one_at_a_time():
            await self._db.fetch_all(
                "INSERT INTO topology_shards (kind, shard, code_version, runtime_env, created_at)"
                " SELECT %s, s, %s, %s, now() FROM unnest(%s::int[]) AS s"
                " ON CONFLICT DO NOTHING RETURNING shard",
                (kind, code_version, _json_or_null(runtime_env), list(indexes)),
                scalar_row,
            )

    async def retire_shards(self, kind: Kind, indexes: Sequence[int]) -> list[int]:
        """Remove shards that own nothing any more; returns those removed."""
        async with self._one_at_a_time():
            rows = await self._db.fetch_all(
                """
                DELETE FROM topology_shards s WHERE s.kind = %s AND s.shard = ANY(%s)
                  AND NOT EXISTS (SELECT 1 FROM topology_slots t WHERE t.kind = s.kind
                                  AND (t.owner = s.shard OR t.moving_to = s.shard))
                RETURNING shard
                """,
                (kind, list(indexes)),
                scalar_row,
            )
            return [int(r) for r in rows]

    async def begin_handoff(self, kind: Kind, old: int, new: int, slots: list[int]) -> None:
        """Mark slots as moving from `old` to `new`: routers hold their requests and `old`
        stops counting them as its own (it is told to release them next)."""
        async with self._one_at_a_time(), self._db.snapshot() as conn:
            await conn.execute(
                "UPDATE topology_slots SET moving_to = %s"
                " WHERE kind = %s AND owner = %s AND slot = ANY(%s)",
                (new, kind, old, slots),
            )
            await self._bump(conn, kind)

    async def finish_handoff(self, kind: Kind, old: int, slots: list[int]) -> int:
        """Give the slots to the shard they are moving to, at a new epoch. Waits for the old
        owner's commit in flight (its row, locked); its later commits are fenced. Returns
        how many slots moved."""
        async with self._one_at_a_time():
            async with self._db.snapshot() as conn:
                await conn.execute(
                    "SELECT 1 FROM topology_shards WHERE kind = %s AND shard = %s"
                    " FOR NO KEY UPDATE",
                    (kind, old),
                )
                cur = await conn.execute(
                    "UPDATE topology_slots"
                    " SET owner = moving_to, epoch = epoch + 1, moving_to = NULL"
                    " WHERE kind = %s AND owner = %s AND slot = ANY(%s) AND moving_to IS NOT NULL",
                    (kind, old, slots),
                )
                moved = cur.rowcount
                await self._bump(conn, kind)
            return moved

    @staticmethod
    async def _bump(conn: Conn, kind: Kind) -> None:
        await conn.execute("UPDATE topology SET version = version + 1 WHERE kind = %s", (kind,))

    async def start_move(
        self,
        accounts: tuple[int, int],
        rewards: tuple[int, int],
        slots_total: int,
        *,
        bases: tuple[int, int] = (0, 0),
        code_version: str | None = None,
        runtime_env: dict[str, Any] | None = None,
        canary_slots: int | None = None,
    ) -> Move:
        async with self._one_at_a_time():
            try:
                rows = await self._db.fetch_all(
                    """
                    INSERT INTO topology_moves (move_id, account_from, account_to, reward_from,
                        reward_to, account_base, reward_base, code_version, runtime_env,
                        canary_slots, state, slots_total, slots_moved, started_at, updated_at)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'running', %s, 0,
                        now(), now())
                    RETURNING *
                    """,
                    (
                        uuid.uuid4(),
                        *accounts,
                        *rewards,
                        *bases,
                        code_version,
                        _json_or_null(runtime_env),
                        canary_slots,
                        slots_total,
                    ),
                    dict_row,
                )
            except psycopg.errors.UniqueViolation as exc:
                raise MoveRunning("another move is running") from exc
        return Move(**rows[0])

    async def resume_move(
        self, move_id: uuid.UUID, *, rollback: tuple[int, int, int, int] | None = None
    ) -> Move | None:
        """A paused canary goes on: to its targets (promote), or back to where it started
        (`rollback`: account count and base, reward count and base). None: no such canary."""
        async with self._one_at_a_time():
            if rollback is None:
                query = (
                    "UPDATE topology_moves SET state = 'running', canary_slots = NULL,"
                    " updated_at = now() WHERE move_id = %s AND state = 'canary' RETURNING *"
                )
                params: tuple[Any, ...] = (move_id,)
            else:
                query = (
                    "UPDATE topology_moves SET state = 'running', canary_slots = NULL,"
                    " account_to = %s, account_base = %s, reward_to = %s, reward_base = %s,"
                    " detail = %s, updated_at = now()"
                    " WHERE move_id = %s AND state = 'canary' RETURNING *"
                )
                params = (*rollback, ROLLING_BACK, move_id)
            rows = await self._db.fetch_all(query, params, dict_row)
        return Move(**rows[0]) if rows else None

    async def pause_for_canary(self, move_id: uuid.UUID) -> None:
        async with self._one_at_a_time():
            await self._db.fetch_all(
                "UPDATE topology_moves SET state = 'canary', updated_at = now()"
                " WHERE move_id = %s AND state = 'running' RETURNING move_id",
                (move_id,),
                scalar_row,
            )

    @_reconnecting
    async def running_move(self) -> Move | None:
        async with self._one_at_a_time():
            rows = await self._db.fetch_all(
                "SELECT * FROM topology_moves WHERE state IN ('running', 'canary')",
                None,
                dict_row,
            )
            return Move(**rows[0]) if rows else None

    @_reconnecting
    async def last_move(self) -> Move | None:
        async with self._one_at_a_time():
            rows = await self._db.fetch_all(
                "SELECT * FROM topology_moves ORDER BY started_at DESC LIMIT 1", None, dict_row
            )
            return Move(**rows[0]) if rows else None

    async def progress(self, move_id: uuid.UUID, moved: int) -> None:
        async with self._one_at_a_time():
            await self._db.fetch_all(
                "UPDATE topology_moves SET slots_moved = slots_moved + %s, updated_at = now()"
                " WHERE move_id = %s RETURNING move_id",
                (moved, move_id),
                scalar_row,
            )

    async def finish_move(self, move: Move, state: str, detail: str | None) -> None:
        """End the move; its targets' bases become the kinds' current generation."""
        assert state in ("done", "failed", "rolled_back")
        async with self._one_at_a_time(), self._db.snapshot() as conn:
            await conn.execute(
                "UPDATE topology_moves SET state = %s, detail = %s, updated_at = now(),"
                " finished_at = now() WHERE move_id = %s",
                (state, detail, move.move_id),
            )
            if state != "failed":
                for kind, base in (("account", move.account_base), ("reward", move.reward_base)):
                    await conn.execute(
                        "UPDATE topology SET base = %s, version = version + 1 WHERE kind = %s",
                        (base, kind),
                    )


def _json_or_null(value: dict[str, Any] | None) -> Any:
    return None if value is None else jsonb(value)


def shard_rows(dsn: str) -> dict[Kind, list[ShardRow]]:
    """The shards of each kind in the topology, with the code each runs (synchronous:
    start-up)."""
    found: dict[Kind, list[ShardRow]] = {kind: [] for kind in KINDS}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for kind, shard, code_version, runtime_env in conn.execute(
            "SELECT kind, shard, code_version, runtime_env FROM topology_shards"
            " ORDER BY kind, shard"
        ).fetchall():
            found[kind].append(ShardRow(int(shard), code_version, runtime_env))
    return found
