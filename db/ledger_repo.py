"""The shard's repository: load accounts and keys, and commit one batch in one transaction.

This is the hot path, so it speaks psycopg 3 directly (async, one connection per shard,
set-based statements over `unnest` arrays: a batch of N operations is a fixed handful of
statements whatever N is). Every write is fenced: an account row is only updated where its
version is still the version the shard loaded; otherwise the whole batch rolls back with
`FencedError` and the shard reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from domain.errors import Code
from domain.idempotency import StoredResponse
from domain.ledger import MEMBER_ACCOUNTS, Account, Lot, Transaction

AccountKey = tuple[str, str]
IdemKey = tuple[str, str, str]


class FencedError(Exception):
    """Another owner committed first: this shard's view of an account is stale."""


class EventsTaken(Exception):
    """Event ids of the batch are already recorded (for another member: same program)."""

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        super().__init__(f"{len(keys)} event ids already recorded")
        self.keys = keys


class KeysExist(Exception):
    """Idempotency keys of the batch are already in the database (committed earlier)."""

    def __init__(self, keys: list[IdemKey]) -> None:
        super().__init__(f"{len(keys)} idempotency keys already committed")
        self.keys = keys


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


@dataclass(slots=True)
class BatchWrite:
    """Everything one group commit writes. Filled by the shard, written by `commit_batch`."""

    new_accounts: list[Account] = field(default_factory=list)
    # (final state, version it was loaded with); the row gets version + 1.
    updated_accounts: list[tuple[Account, int]] = field(default_factory=list)
    transactions: list[tuple[Transaction, str | None]] = field(default_factory=list)
    # lot_id -> points taken by debits in this batch (negative: given back by refunds)
    lot_deltas: dict[uuid.UUID, int] = field(default_factory=lambda: defaultdict(int))
    idempotency: list[tuple[IdemKey, StoredResponse]] = field(default_factory=list)
    # Events applied (the first time): one row each in `events`.
    events: list[EventRow] = field(default_factory=list)
    # Reversals: (program_id, event_id) -> (reversed amount as decimal text, points so far)
    event_reversals: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    # Lots whose availability, expiry or activation changed (activated, confirmed lots).
    lot_states: list[Lot] = field(default_factory=list)
    # (program_id, member_id, from_tier, to_tier, reason)
    tier_changes: list[tuple[str, str, str | None, str, str]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.new_accounts or self.updated_accounts or self.idempotency)


@dataclass(slots=True)
class EventRow:
    program_id: str
    event_id: str
    member_id: str
    type: str
    occurred_at: datetime
    attributes: dict[str, Any]
    rule_version: int | None
    points: int
    explanation: list[dict[str, Any]]
    txn_id: uuid.UUID | None


@dataclass(slots=True)
class StoredEvent:
    """An applied event as stored: what a reversal needs."""

    program_id: str
    event_id: str
    member_id: str
    attributes: dict[str, Any]
    points: int
    reversed_amount: str
    reversed_points: int


@dataclass(slots=True)
class ProgramConfig:
    """A program's policy (JSON) and its rule sets (version, effective_from, rules JSON)."""

    program_id: str
    policy_version: int
    policy: dict[str, Any]
    rule_sets: list[tuple[int, datetime, list[dict[str, Any]]]]


@dataclass(slots=True)
class RefundSource:
    """A transaction a refund refers to, as stored."""

    txn_id: uuid.UUID
    program_id: str
    member_id: str
    kind: str
    allocations: list[tuple[uuid.UUID, int]]
    refunded: bool
    lots: dict[uuid.UUID, Lot] = field(default_factory=dict)


class LedgerRepo:
    """One dedicated connection; the shard runs one batch at a time."""

    def __init__(self, dsn: str, connect_timeout_s: int = 5, *, autocommit: bool = False) -> None:
        assert dsn
        self._dsn = dsn
        # autocommit: for a reader shared by concurrent coroutines (single statements only).
        self._autocommit = autocommit
        self._connect_timeout_s = connect_timeout_s
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._connect_lock: asyncio.Lock | None = None

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:  # concurrent readers share one new connection
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = await psycopg.AsyncConnection.connect(
                    self._dsn,
                    connect_timeout=self._connect_timeout_s,
                    # Bounded waits: a stuck statement fails its batch (503, retry) instead
                    # of holding the shard's batch loop forever.
                    options="-c synchronous_commit=on -c statement_timeout=15000"
                    " -c idle_in_transaction_session_timeout=60000",
                    autocommit=self._autocommit,
                )
            return self._conn

    def reader(self) -> LedgerRepo:
        """A second repository on its own connection, for reads outside the batch loop.

        The batch loop owns this repository's connection (one transaction at a time); reads
        and pings from other coroutines must never open a transaction on it.
        """
        return LedgerRepo(self._dsn, self._connect_timeout_s, autocommit=True)

    def _transaction(self, conn: psycopg.AsyncConnection[Any]) -> Any:
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
        conn = await self._connection()
        async with self._transaction(conn):
            await conn.execute("SELECT 1")

    async def existing_programs(self, program_ids: list[str]) -> set[str]:
        if not program_ids:
            return set()
        conn = await self._connection()
        async with conn.transaction():
            cur = await conn.execute(
                "SELECT program_id FROM programs WHERE program_id = ANY(%s)", (program_ids,)
            )
            return {row[0] for row in await cur.fetchall()}

    async def load_accounts(self, keys: list[AccountKey]) -> dict[AccountKey, Account]:
        """Accounts and their open lots; keys that do not exist are absent from the result.

        One statement, so one snapshot: an account row and its lots always agree, even while
        the shard's batch loop commits on its own connection.
        """
        if not keys:
            return {}
        conn = await self._connection()
        async with self._transaction(conn):
            cur = await conn.execute(
                """
                SELECT a.program_id, a.member_id, a.version, a.balance,
                       a.lifetime_earned, a.lifetime_spent,
                       l.lot_id, l.original, l.remaining, l.expires_at, l.created_at,
                       l.available_at, l.event_id, a.earning, a.debt, l.active, a.pending
                FROM unnest(%b::text[], %b::text[]) AS k(program_id, member_id)
                JOIN accounts a ON a.program_id = k.program_id AND a.member_id = k.member_id
                LEFT JOIN lots l ON l.program_id = a.program_id AND l.member_id = a.member_id
                                AND l.remaining > 0
                ORDER BY l.created_at, l.lot_id
                """,
                ([k[0] for k in keys], [k[1] for k in keys]),
            )
            rows = await cur.fetchall()
        found: dict[AccountKey, Account] = {}
        for row in rows:
            key = (row[0], row[1])
            account = found.get(key)
            if account is None:
                account = found[key] = Account(
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    row[4],
                    row[5],
                    [],
                    row[13] or {},
                    row[14],
                    row[16],
                )
            if row[6] is not None:
                account.lots.append(
                    Lot(row[6], row[7], row[8], row[9], row[10], row[11], row[12], row[15])
                )
        for account in found.values():
            account.check()
        return found

    async def load_refund_sources(self, txn_ids: list[uuid.UUID]) -> dict[uuid.UUID, RefundSource]:
        """The debits that refunds of this batch give back, with the lots they took from."""
        if not txn_ids:
            return {}
        conn = await self._connection()
        async with self._transaction(conn):
            cur = await conn.execute(
                """
                SELECT t.txn_id, t.program_id, t.member_id, t.kind, t.allocations,
                       EXISTS (SELECT 1 FROM transactions r
                               WHERE r.refers_to = t.txn_id AND r.kind = 'refund'),
                       l.lot_id, l.original, l.remaining, l.expires_at, l.created_at,
                       l.available_at, l.event_id, l.active
                FROM transactions t
                LEFT JOIN LATERAL jsonb_array_elements(t.allocations) AS a(pair) ON true
                LEFT JOIN lots l ON l.lot_id = (a.pair->>0)::uuid
                WHERE t.txn_id = ANY(%b::uuid[])
                """,
                (txn_ids,),
            )
            rows = await cur.fetchall()
        found: dict[uuid.UUID, RefundSource] = {}
        for row in rows:
            source = found.get(row[0])
            if source is None:
                source = found[row[0]] = RefundSource(
                    row[0],
                    row[1],
                    row[2],
                    row[3],
                    [(uuid.UUID(lot), int(points)) for lot, points in row[4]],
                    bool(row[5]),
                )
            if row[6] is not None:
                source.lots[row[6]] = Lot(
                    row[6], row[7], row[8], row[9], row[10], row[11], row[12], row[13]
                )
        return found

    async def lookup_idempotency(self, keys: list[IdemKey]) -> dict[IdemKey, StoredResponse]:
        if not keys:
            return {}
        conn = await self._connection()
        async with conn.transaction():
            cur = await conn.execute(
                """
                SELECT i.program_id, i.member_id, i.key, i.request_hash, i.code, i.response
                FROM idempotency_keys i
                JOIN unnest(%b::text[], %b::text[], %b::text[]) AS k(program_id, member_id, key)
                  ON i.program_id = k.program_id AND i.member_id = k.member_id AND i.key = k.key
                """,
                ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]),
            )
            return {
                (row[0], row[1], row[2]): StoredResponse(row[3], Code(row[4]), row[5])
                for row in await cur.fetchall()
            }

    async def commit_batch(self, batch: BatchWrite, now: datetime) -> None:
        """Write the batch in one transaction, or raise (FencedError or a database error)."""
        if batch.empty:
            return
        conn = await self._connection()
        # Pipeline mode: every statement of the batch goes out before any answer comes back,
        # so a group commit costs about one round trip plus the COMMIT's fsync.
        async with conn.pipeline() as pipeline, conn.transaction():
            checks, idem_cur, events_cur = await self._write(conn, batch, now)
            try:
                await pipeline.sync()
            except psycopg.errors.IntegrityError as exc:
                # The shard checked every operation against its own state, so a constraint
                # can only fail when that state was stale: another owner moved the account.
                raise FencedError(f"constraint failed, state was stale: {exc}") from exc
            for cur, expected, message in checks:
                if cur.rowcount != expected:
                    raise FencedError(message)
            if batch.idempotency:
                written = {tuple(row) for row in await idem_cur.fetchall()}
                missing = [key for key, _ in batch.idempotency if key not in written]
                if missing:
                    raise KeysExist(missing)
            if batch.events:
                recorded = {tuple(row) for row in await events_cur.fetchall()}
                taken = [
                    (e.program_id, e.event_id)
                    for e in batch.events
                    if (e.program_id, e.event_id) not in recorded
                ]
                if taken:
                    raise EventsTaken(taken)

    async def _write(
        self, conn: psycopg.AsyncConnection[Any], batch: BatchWrite, now: datetime
    ) -> tuple[list[tuple[Any, int, str]], Any, Any]:
        checks: list[tuple[Any, int, str]] = []
        events_cur = None
        # Keys first: a key already in the database (not in this shard's cache, e.g. after a
        # restart) makes the batch roll back and re-run with the stored answer.
        idem_cur = None
        if batch.idempotency:
            rows = batch.idempotency
            cur = await conn.execute(
                """
                INSERT INTO idempotency_keys (program_id, member_id, key, request_hash, code,
                                              response, created_at)
                SELECT p, m, k, h, c, r, %s
                FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[],
                            %b::jsonb[]) AS v(p, m, k, h, c, r)
                ON CONFLICT DO NOTHING
                RETURNING program_id, member_id, key
                """,
                (
                    now,
                    [k[0] for k, _ in rows],
                    [k[1] for k, _ in rows],
                    [k[2] for k, _ in rows],
                    [r.request_hash for _, r in rows],
                    [r.code.value for _, r in rows],
                    [Jsonb(r.body, dumps=_dumps) for _, r in rows],
                ),
            )
            idem_cur = cur

        if batch.new_accounts:
            new = batch.new_accounts
            cur = await conn.execute(
                """
                INSERT INTO accounts (program_id, member_id, balance, version,
                                      lifetime_earned, lifetime_spent, created_at, updated_at,
                                      earning, tier, debt, pending)
                SELECT p, m, b, 1, e, s, %s, %s, g, t, d, n
                FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::bigint[],
                            %b::jsonb[], %b::text[], %b::bigint[], %b::bigint[])
                     AS v(p, m, b, e, s, g, t, d, n)
                ON CONFLICT DO NOTHING
                """,
                (
                    now,
                    now,
                    [a.program_id for a in new],
                    [a.member_id for a in new],
                    [a.balance for a in new],
                    [a.lifetime_earned for a in new],
                    [a.lifetime_spent for a in new],
                    [Jsonb(a.earning, dumps=_dumps) for a in new],
                    [a.earning.get("tier") for a in new],
                    [a.debt for a in new],
                    [a.pending for a in new],
                ),
            )
            checks.append((cur, len(new), "an account this shard created already exists"))

        if batch.updated_accounts:
            upd = batch.updated_accounts
            cur = await conn.execute(
                """
                UPDATE accounts a
                SET balance = v.b, lifetime_earned = v.e, lifetime_spent = v.s,
                    version = v.old + 1, updated_at = %s, earning = v.g, tier = v.t, debt = v.d,
                    pending = v.n
                FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::bigint[],
                            %b::bigint[], %b::jsonb[], %b::text[], %b::bigint[], %b::bigint[])
                     AS v(p, m, b, e, s, old, g, t, d, n)
                WHERE a.program_id = v.p AND a.member_id = v.m AND a.version = v.old
                """,
                (
                    now,
                    [a.program_id for a, _ in upd],
                    [a.member_id for a, _ in upd],
                    [a.balance for a, _ in upd],
                    [a.lifetime_earned for a, _ in upd],
                    [a.lifetime_spent for a, _ in upd],
                    [old for _, old in upd],
                    [Jsonb(a.earning, dumps=_dumps) for a, _ in upd],
                    [a.earning.get("tier") for a, _ in upd],
                    [a.debt for a, _ in upd],
                    [a.pending for a, _ in upd],
                ),
            )
            checks.append((cur, len(upd), "an account changed under this shard (stale version)"))

        if batch.transactions:
            txns = [t for t, _ in batch.transactions]
            await conn.execute(
                """
                INSERT INTO transactions (txn_id, program_id, member_id, kind, points, reason,
                                          balance_after, created_at, idempotency_key,
                                          expires_at, allocations, refers_to, event_id)
                SELECT * FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::text[],
                                     %b::bigint[], %b::text[], %b::bigint[],
                                     %b::timestamptz[], %b::text[], %b::timestamptz[],
                                     %b::jsonb[], %b::uuid[], %b::text[])
                """,
                (
                    [t.txn_id for t in txns],
                    [t.program_id for t in txns],
                    [t.member_id for t in txns],
                    [t.kind for t in txns],
                    [t.points for t in txns],
                    [t.reason for t in txns],
                    [t.balance_after for t in txns],
                    [t.created_at for t in txns],
                    [key for _, key in batch.transactions],
                    [t.new_lot.expires_at if t.new_lot else None for t in txns],
                    [
                        Jsonb([[str(lot), pts] for lot, pts in t.allocations], dumps=_dumps)
                        for t in txns
                    ],
                    [t.refers_to for t in txns],
                    [t.event_id for t in txns],
                ),
            )
            legs = [(t, e) for t in txns for e in t.entries]
            await conn.execute(
                """
                INSERT INTO ledger_entries (txn_id, program_id, account, member_id, amount,
                                            created_at)
                SELECT * FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::text[],
                                     %b::bigint[], %b::timestamptz[])
                """,
                (
                    [t.txn_id for t, _ in legs],
                    [t.program_id for t, _ in legs],
                    [e.account for _, e in legs],
                    [t.member_id if e.account in MEMBER_ACCOUNTS else None for t, e in legs],
                    [e.amount for _, e in legs],
                    [t.created_at for t, _ in legs],
                ),
            )
            new_lots = [(t, t.new_lot) for t in txns if t.new_lot is not None]
            if new_lots:
                await conn.execute(
                    """
                    INSERT INTO lots (lot_id, program_id, member_id, txn_id, original,
                                      remaining, expires_at, created_at, available_at, event_id,
                                      active)
                    SELECT l, p, m, t, o, o, x, c, a, e, y
                    FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::uuid[], %b::bigint[],
                                %b::timestamptz[], %b::timestamptz[], %b::timestamptz[],
                                %b::text[], %b::bool[]) AS v(l, p, m, t, o, x, c, a, e, y)
                    """,
                    (
                        [lot.lot_id for _, lot in new_lots],
                        [t.program_id for t, _ in new_lots],
                        [t.member_id for t, _ in new_lots],
                        [t.txn_id for t, _ in new_lots],
                        [lot.original for _, lot in new_lots],
                        [lot.expires_at for _, lot in new_lots],
                        [lot.created_at for _, lot in new_lots],
                        [lot.available_at for _, lot in new_lots],
                        [lot.event_id for _, lot in new_lots],
                        [lot.active for _, lot in new_lots],
                    ),
                )

        if batch.lot_deltas:
            lot_ids = list(batch.lot_deltas)
            cur = await conn.execute(
                """
                UPDATE lots SET remaining = remaining - v.taken
                FROM unnest(%b::uuid[], %b::bigint[]) AS v(lot_id, taken)
                WHERE lots.lot_id = v.lot_id
                """,
                (lot_ids, [batch.lot_deltas[i] for i in lot_ids]),
            )
            checks.append((cur, len(lot_ids), "a lot this shard debited is missing"))

        if batch.lot_states:
            states = batch.lot_states
            cur = await conn.execute(
                """
                UPDATE lots SET available_at = v.a, expires_at = v.x, active = v.y
                FROM unnest(%b::uuid[], %b::timestamptz[], %b::timestamptz[], %b::bool[])
                     AS v(l, a, x, y)
                WHERE lots.lot_id = v.l
                """,
                (
                    [lot.lot_id for lot in states],
                    [lot.available_at for lot in states],
                    [lot.expires_at for lot in states],
                    [lot.active for lot in states],
                ),
            )
            checks.append((cur, len(states), "a lot this shard confirmed is missing"))

        if batch.events:
            evs = batch.events
            cur = await conn.execute(
                """
                INSERT INTO events (program_id, event_id, member_id, type, occurred_at,
                                    attributes, rule_version, points, explanation, txn_id,
                                    created_at)
                SELECT p, e, m, t, o, a, v, n, x, i, %s
                FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::timestamptz[],
                            %b::jsonb[], %b::int[], %b::bigint[], %b::jsonb[], %b::uuid[])
                     AS r(p, e, m, t, o, a, v, n, x, i)
                ON CONFLICT DO NOTHING
                RETURNING program_id, event_id
                """,
                (
                    now,
                    [e.program_id for e in evs],
                    [e.event_id for e in evs],
                    [e.member_id for e in evs],
                    [e.type for e in evs],
                    [e.occurred_at for e in evs],
                    [Jsonb(e.attributes, dumps=_dumps) for e in evs],
                    [e.rule_version for e in evs],
                    [e.points for e in evs],
                    [Jsonb(e.explanation, dumps=_dumps) for e in evs],
                    [e.txn_id for e in evs],
                ),
            )
            # An event id recorded first for another member: EventsTaken after the sync.
            events_cur = cur

        if batch.event_reversals:
            keys = list(batch.event_reversals)
            cur = await conn.execute(
                """
                UPDATE events SET reversed_amount = v.amount, reversed_points = v.points
                FROM unnest(%b::text[], %b::text[], %b::text[], %b::bigint[])
                     AS v(p, e, amount, points)
                WHERE events.program_id = v.p AND events.event_id = v.e
                """,
                (
                    [k[0] for k in keys],
                    [k[1] for k in keys],
                    [batch.event_reversals[k][0] for k in keys],
                    [batch.event_reversals[k][1] for k in keys],
                ),
            )
            checks.append((cur, len(keys), "a reversed event is missing"))

        if batch.tier_changes:
            changes = batch.tier_changes
            await conn.execute(
                """
                INSERT INTO tier_changes (program_id, member_id, from_tier, to_tier, reason,
                                          changed_at)
                SELECT p, m, f, t, r, %s
                FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[])
                     AS v(p, m, f, t, r)
                """,
                (
                    now,
                    [c[0] for c in changes],
                    [c[1] for c in changes],
                    [c[2] for c in changes],
                    [c[3] for c in changes],
                    [c[4] for c in changes],
                ),
            )
        return checks, idem_cur, events_cur

    # ----------------------------------------------------------------- earning programs

    async def load_program_configs(self, program_ids: list[str]) -> dict[str, ProgramConfig]:
        """Policies and rule sets of these programs (absent: no such program)."""
        if not program_ids:
            return {}
        conn = await self._connection()
        async with self._transaction(conn):
            cur = await conn.execute(
                """
                SELECT p.program_id, p.policy_version, p.policy,
                       r.version, r.effective_from, r.rules
                FROM programs p
                LEFT JOIN rule_sets r ON r.program_id = p.program_id
                WHERE p.program_id = ANY(%s)
                ORDER BY p.program_id, r.version
                """,
                (program_ids,),
            )
            rows = await cur.fetchall()
        found: dict[str, ProgramConfig] = {}
        for row in rows:
            config = found.get(row[0])
            if config is None:
                config = found[row[0]] = ProgramConfig(row[0], row[1], row[2] or {}, [])
            if row[3] is not None:
                config.rule_sets.append((row[3], row[4], row[5]))
        return found

    async def load_events(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], StoredEvent]:
        """Applied events by (program_id, event_id)."""
        if not keys:
            return {}
        conn = await self._connection()
        async with self._transaction(conn):
            cur = await conn.execute(
                """
                SELECT e.program_id, e.event_id, e.member_id, e.attributes, e.points,
                       e.reversed_amount, e.reversed_points
                FROM unnest(%b::text[], %b::text[]) AS k(p, e)
                JOIN events e ON e.program_id = k.p AND e.event_id = k.e
                """,
                ([k[0] for k in keys], [k[1] for k in keys]),
            )
            rows = await cur.fetchall()
        return {(r[0], r[1]): StoredEvent(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows}

    async def tiered_accounts(self, after: AccountKey, limit: int) -> list[AccountKey]:
        """Accounts holding a tier, in key order after `after` (a cursor over all of them)."""
        assert limit > 0
        conn = await self._connection()
        async with self._transaction(conn):
            cur = await conn.execute(
                """
                SELECT program_id, member_id FROM accounts
                WHERE tier IS NOT NULL AND (program_id, member_id) > (%s, %s)
                ORDER BY program_id, member_id LIMIT %s
                """,
                (after[0], after[1], limit),
            )
            rows = await cur.fetchall()
        return [(r[0], r[1]) for r in rows]

    async def due_expiries(self, now: datetime, limit: int) -> list[AccountKey]:
        """Accounts holding points past expiry, or pending points whose date has come
        (about `limit` of each, oldest first).

        Every shard reads the same candidates and keeps those it owns: the slot of an
        account is a stable hash PostgreSQL does not compute.
        """
        assert limit > 0
        conn = await self._connection()
        async with self._transaction(conn):
            cur = await conn.execute(
                """
                SELECT DISTINCT program_id, member_id FROM (
                    (SELECT program_id, member_id FROM lots
                     WHERE remaining > 0 AND expires_at IS NOT NULL AND expires_at <= %s
                     ORDER BY expires_at LIMIT %s)
                    UNION ALL
                    (SELECT program_id, member_id FROM lots
                     WHERE NOT active AND remaining > 0 AND available_at <= %s
                     ORDER BY available_at LIMIT %s)
                ) due
                """,
                (now, limit * 4, now, limit * 4),
            )
            rows = await cur.fetchall()
        return [(r[0], r[1]) for r in rows]
