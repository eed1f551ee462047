"""One shard's dedicated PostgreSQL connection, and the group commit both shard kinds run.

The contract: a shard's batch loop owns one `ShardConnection` and runs one transaction on it
at a time; reads from other coroutines go through `reader()`, a second connection in
autocommit mode that never holds a transaction open. A broken connection is replaced on the
next call (under a lock, so concurrent readers share the new one); `reset()` drops it after
a failure. A reader's statement that fails because the server could not be reached (a
stale connection after a restart, a server still starting up) is run again on a new
connection, at once and then backing off, for up to READ_RETRY_S: a reader only reads, so
running a read again is always safe, and a restart of a second costs a read latency only.

Why a dedicated connection and not a pool: the batch loop is strictly sequential, and the
group commit sends a whole batch in pipeline mode, so one connection is all it can use.

`commit` writes one batch as a list of `TableWriter`s, one set-based statement per table,
all sent before any answer comes back (about one round trip plus the COMMIT's fsync). The
writers' fences and claims are checked inside the transaction, so any failure rolls the
whole batch back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import orjson
import psycopg
from psycopg.abc import Params, QueryNoTemplate
from psycopg.rows import AsyncRowFactory, scalar_row
from psycopg.types.json import Jsonb

from db.errors import AlreadyRecorded, FencedError

Conn = psycopg.AsyncConnection[Any]
Cursor = psycopg.AsyncCursor[Any]
B = TypeVar("B")  # a batch: what one group commit writes
R = TypeVar("R")  # a row, as its row factory makes it

CONNECT_TIMEOUT_S = 5
# A reader's statement is run again for this long while the server cannot be reached
# (within the ingress's and /readyz's own timeouts, 3 s and more), backing off from the
# first to the most delay.
READ_RETRY_S = 2.0
READ_RETRY_FIRST_DELAY_S = 0.05
READ_RETRY_DELAY_MAX_S = 0.5
# Bounded waits: a stuck statement fails its batch (unavailable, retry) instead of holding the
# shard's batch loop forever; a transaction left open by a lost client is ended.
STATEMENT_TIMEOUT_MS = 15_000
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
# synchronous_commit stays on: an acknowledged operation survives any crash (invariant 8).
# READ COMMITTED, whatever the database's default: the slot fence relies on each statement
# of a group commit taking a new snapshot (db/topology_repo.py: slot_fence_writers).
CONNECTION_OPTIONS = (
    r"-c default_transaction_isolation=read\ committed"
    f" -c synchronous_commit=on -c statement_timeout={STATEMENT_TIMEOUT_MS}"
    f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}"
)


async def read_while_unreachable(
    read: Callable[[], Awaitable[R]], drop: Callable[[], Awaitable[None]]
) -> R:
    """Run `read` again while the server cannot be reached, for up to READ_RETRY_S: at once
    after the first failure (a stale connection), then backing off (a server still starting
    up), calling `drop` (let the connection go) before each try. For reads only: running a
    read again is always safe. The last error is raised when the time is up."""
    loop = asyncio.get_running_loop()
    deadline_s = loop.time() + READ_RETRY_S
    delay_s = 0.0
    while True:
        try:
            return await read()
        except (psycopg.OperationalError, psycopg.InterfaceError):
            if loop.time() + delay_s > deadline_s:
                raise
            await drop()
            await asyncio.sleep(delay_s)
            delay_s = min(max(delay_s * 2, READ_RETRY_FIRST_DELAY_S), READ_RETRY_DELAY_MAX_S)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def jsonb(value: Any) -> Jsonb:
    """A jsonb parameter, dumped by orjson (much faster than json on the commit path)."""
    return Jsonb(value, dumps=_dumps)


def unzip(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    """Tuples (keys, small rows) as one list per position: the arrays a statement unnests."""
    assert rows, "unnest needs one array per column: an empty part of a batch writes nothing"
    return [list(column) for column in zip(*rows, strict=True)]


@dataclass(frozen=True, slots=True)
class Claim(Generic[B]):
    """An insert that skips conflicts and returns the keys it wrote: a key of the batch not
    returned was recorded by an earlier commit, and the batch fails with `taken(keys)`."""

    keys: Callable[[B], list[tuple[str, ...]]]  # in RETURNING's column order
    taken: Callable[[list[Any]], AlreadyRecorded[Any]]


@dataclass(frozen=True, slots=True)
class TableWriter(Generic[B]):
    """One table's part of a group commit: one set-based statement over rows of the batch."""

    # The batch's rows for this statement; none, no statement.
    rows: Callable[[B], Collection[object]]
    write: Callable[[Conn, B, datetime], Awaitable[Cursor]]
    # Fenced: the statement must touch every row; fewer means another owner moved one.
    fence: str | None = None
    claim: Claim[B] | None = None

    def check_fence(self, cur: Cursor, batch: B) -> None:
        if self.fence is not None and cur.rowcount != len(self.rows(batch)):
            raise FencedError(self.fence)

    async def check_claim(self, cur: Cursor, batch: B) -> None:
        if self.claim is not None:
            # RETURNING's columns are the key's, in the key's order.
            written = {tuple(row) for row in await cur.fetchall()}
            taken = [key for key in self.claim.keys(batch) if key not in written]
            if taken:
                raise self.claim.taken(taken)


class ShardConnection:
    """The dedicated connection of one shard (or of its reader)."""

    def __init__(
        self,
        dsn: str,
        connect_timeout_s: int = CONNECT_TIMEOUT_S,
        *,
        autocommit: bool = False,
        reads_only: bool = False,
    ) -> None:
        assert dsn
        assert connect_timeout_s > 0
        assert autocommit or not reads_only, "a reader runs single statements"
        self._dsn = dsn
        # autocommit: for a reader shared by concurrent coroutines (single statements only).
        self._autocommit = autocommit
        # Only reads (a `reader()`): a statement that met a stale connection is run again.
        self._reads_only = reads_only
        self._connect_timeout_s = connect_timeout_s
        self._conn: Conn | None = None
        self._connect_lock: asyncio.Lock | None = None

    async def connection(self) -> Conn:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if self._connect_lock is None:  # created here: it binds to the running loop
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:  # concurrent readers share one new connection
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = await psycopg.AsyncConnection.connect(
                    self._dsn,
                    connect_timeout=self._connect_timeout_s,
                    options=CONNECTION_OPTIONS,
                    autocommit=self._autocommit,
                )
            return self._conn

    def reader(self) -> ShardConnection:
        """A second connection, for reads outside the batch loop.

        The batch loop owns this connection (one transaction at a time); reads and pings
        from other coroutines must never open a transaction on it.
        """
        return ShardConnection(self._dsn, self._connect_timeout_s, autocommit=True, reads_only=True)

    def sibling(self) -> ShardConnection:
        """Another connection like this one (transactions allowed), for work beside the
        batch loop that writes (the hash chain's sealing)."""
        return ShardConnection(self._dsn, self._connect_timeout_s)

    def transaction(self, conn: Conn) -> contextlib.AbstractAsyncContextManager[Any]:
        """A transaction, except on a reader (autocommit: each statement stands alone)."""
        return contextlib.nullcontext() if self._autocommit else conn.transaction()

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def reset(self) -> None:
        """Drop the connection after a failure; the next call reconnects."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def ping(self) -> None:
        await self.fetch_all("SELECT 1", None, scalar_row)

    async def fetch_all(
        self, query: QueryNoTemplate, params: Params | None, row_factory: AsyncRowFactory[R]
    ) -> list[R]:
        """One statement's rows, made by `row_factory` (named rows, never positions). On a
        reader, a statement that could not reach the server runs again (module docstring)."""
        if not self._reads_only:  # a statement of a transaction: its caller decides
            return await self._fetch_all(await self.connection(), query, params, row_factory)
        used: list[Conn] = []

        async def read() -> list[R]:
            used[:] = [await self.connection()]
            return await self._fetch_all(used[0], query, params, row_factory)

        async def drop() -> None:
            # Only the connection this read failed on: concurrent readers share it, and
            # another may have replaced it already.
            if used and used[0] is self._conn:
                await self.reset()

        return await read_while_unreachable(read, drop)

    async def _fetch_all(
        self,
        conn: Conn,
        query: QueryNoTemplate,
        params: Params | None,
        row_factory: AsyncRowFactory[R],
    ) -> list[R]:
        async with self.transaction(conn):
            cur = conn.cursor(row_factory=row_factory)
            await cur.execute(query, params)
            return await cur.fetchall()

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Conn]:
        """Several statements that must see one snapshot (REPEATABLE READ), even on a reader."""
        conn = await self.connection()
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            yield conn

    async def commit(self, writers: Sequence[TableWriter[B]], batch: B, now: datetime) -> None:
        """Write `batch` in one transaction, or raise (FencedError, AlreadyRecorded, or a
        database error); the statements go out in the writers' order."""
        conn = await self.connection()
        # Pipeline mode: every statement of the batch goes out before any answer comes back.
        async with conn.pipeline() as pipeline, conn.transaction():
            written = []
            for writer in writers:
                if writer.rows(batch):
                    written.append((writer, await writer.write(conn, batch, now)))
            try:
                await pipeline.sync()
            except psycopg.errors.IntegrityError as exc:
                # The shard checked every operation against its own state, so a constraint
                # can only fail when that state was stale: another owner moved the row.
                raise FencedError(f"constraint failed, state was stale: {exc}") from exc
            # Inside the transaction, so raising rolls the batch back. Fences first: a stale
            # owner must reload before anything else (its claims were judged on stale state).
            for writer, cur in written:
                writer.check_fence(cur, batch)
            for writer, cur in written:
                await writer.check_claim(cur, batch)


class ShardRepo:
    """What both shard repositories share: the ShardConnection they hold (composition: no
    repository inherits another's queries), its lifecycle, and the one read both make."""

    def __init__(
        self,
        dsn: str | ShardConnection,
        connect_timeout_s: int = CONNECT_TIMEOUT_S,
        *,
        autocommit: bool = False,
    ) -> None:
        """`dsn`: a PostgreSQL URL, or the connection to use (a reader's, see `reader()`)."""
        if isinstance(dsn, ShardConnection):
            self._db = dsn
        else:
            self._db = ShardConnection(dsn, connect_timeout_s, autocommit=autocommit)

    async def close(self) -> None:
        await self._db.close()

    async def reset(self) -> None:
        """Drop the connection after a failure; the next call reconnects."""
        await self._db.reset()

    async def ping(self) -> None:
        await self._db.ping()

    async def existing_programs(self, program_ids: list[str]) -> set[str]:
        """Which of these programs exist (both shard kinds refuse operations on the others)."""
        if not program_ids:
            return set()
        return set(
            await self._db.fetch_all(
                "SELECT program_id FROM programs WHERE program_id = ANY(%s)",
                (program_ids,),
                scalar_row,
            )
        )
