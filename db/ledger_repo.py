"""The account shard's repository: load accounts and keys, and commit one batch in one
transaction.

This is the hot path, so it speaks psycopg 3 directly (async, one connection per shard,
set-based statements over `unnest` arrays with binary parameters: a batch of N operations is a
fixed handful of statements whatever N is, sent in pipeline mode). Every write is fenced: an
account row is only updated where its version is still the version the shard loaded;
otherwise the whole batch rolls back with `FencedError` and the shard reloads.

The commit is a list of writers, one short function per table (`LEDGER_WRITERS`); rows are
read by column name (psycopg row factories), never by position.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg.rows import class_row, dict_row

from db.errors import EventKey, EventsTaken, FencedError, IdemKey, KeysExist
from db.ledger_chain import (
    ADD_PENDING,
    APPEND_LINK,
    DROP_PENDING,
    SEAL_PENDING_ROWS_MAX,
    TAKE_PENDING,
    ChainError,
    sealed_ids,
)
from db.shard_connection import (
    Claim,
    Conn,
    Cursor,
    ShardRepo,
    TableWriter,
    jsonb,
    unzip,
)
from db.topology_repo import SlotFence, slot_fence_writers
from domain.errors import Code
from domain.idempotency import StoredResponse
from domain.ledger import EXPIRE, MEMBER_ACCOUNTS, REVERSAL, Account, Hold, Lot, Transaction
from domain.reviews import Review, ReviewKind, ReviewStatus

# Callers import these from here (actors/shard_core.py).
__all__ = [
    "AccountKey",
    "BatchWrite",
    "EventRow",
    "EventsTaken",
    "FencedError",
    "IdemKey",
    "KeysExist",
    "LedgerRepo",
    "ProgramConfig",
    "RefundSource",
    "StoredEvent",
]

AccountKey = tuple[str, str]


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
    event_reversals: dict[EventKey, tuple[str, int]] = field(default_factory=dict)
    # Lots whose availability, expiry or activation changed (activated, confirmed lots).
    lot_states: list[Lot] = field(default_factory=list)
    # (program_id, member_id, from_tier, to_tier, reason)
    tier_changes: list[tuple[str, str, str | None, str, str]] = field(default_factory=list)
    # Members an experiment's arm scored: (program_id, experiment_id, member_id, arm).
    assignments: list[tuple[str, str, str, str]] = field(default_factory=list)
    # Reviews opened by holds of this batch, and reviews it decided.
    new_reviews: list[Review] = field(default_factory=list)
    decided_reviews: list[Review] = field(default_factory=list)
    # The slots (at their epochs) the shard must still own for this batch to commit.
    fence: SlotFence | None = None
    # The hash chain the batch's transactions are linked into (db/ledger_chain.py:
    # chain_of); required when the batch writes transactions.
    chain: str = ""

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
    # Experiments not ended: (experiment_id, arms, starts_at, ends_at).
    experiments: list[tuple[str, list[dict[str, Any]], datetime, datetime]] = field(
        default_factory=list
    )


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


class LedgerRepo(ShardRepo):
    """The account shard's repository, on its own dedicated connection (ShardRepo); the
    shard runs one batch at a time on it."""

    def reader(self) -> LedgerRepo:
        """A second repository on its own connection, for reads outside the batch loop."""
        return LedgerRepo(self._db.reader())

    async def load_accounts(self, keys: list[AccountKey]) -> dict[AccountKey, Account]:
        """Accounts and their open lots; keys that do not exist are absent from the result.

        One statement, so one snapshot: an account row and its lots always agree, even while
        the shard's batch loop commits on its own connection.
        """
        if not keys:
            return {}
        rows = await self._db.fetch_all(
            f"""
            SELECT a.program_id, a.member_id, a.version, a.balance, a.lifetime_earned,
                   a.lifetime_spent, a.earning, a.debt, a.pending, a.held, a.velocity,
                   {_HOLDS_OF_ACCOUNT}, {_LOT_COLUMNS}
            FROM unnest(%b::text[], %b::text[]) AS k(program_id, member_id)
            JOIN accounts a ON a.program_id = k.program_id AND a.member_id = k.member_id
            LEFT JOIN lots l ON l.program_id = a.program_id AND l.member_id = a.member_id
                            AND l.remaining > 0
            ORDER BY l.created_at, l.lot_id
            """,
            unzip(keys),
            dict_row,
        )
        found: dict[AccountKey, Account] = {}
        for row in rows:
            key = (row["program_id"], row["member_id"])
            account = found.get(key)
            if account is None:
                account = found[key] = Account(
                    program_id=row["program_id"],
                    member_id=row["member_id"],
                    version=row["version"],
                    balance=row["balance"],
                    lifetime_earned=row["lifetime_earned"],
                    lifetime_spent=row["lifetime_spent"],
                    lots=[],
                    earning=row["earning"] or {},
                    debt=row["debt"],
                    pending=row["pending"],
                    held=row["held"],
                    holds=_holds(row["holds"]),
                    velocity=row["velocity"] or {},
                )
            if row["lot_id"] is not None:
                account.lots.append(_lot(row))
        for account in found.values():
            account.check()
        return found

    async def load_refund_sources(self, txn_ids: list[uuid.UUID]) -> dict[uuid.UUID, RefundSource]:
        """The debits that refunds of this batch give back, with the lots they took from."""
        if not txn_ids:
            return {}
        rows = await self._db.fetch_all(
            f"""
            SELECT t.txn_id, t.program_id, t.member_id, t.kind, t.allocations,
                   EXISTS (SELECT 1 FROM transactions r
                           WHERE r.refers_to = t.txn_id AND r.kind = 'refund') AS refunded,
                   {_LOT_COLUMNS}
            FROM transactions t
            LEFT JOIN LATERAL jsonb_array_elements(t.allocations) AS a(pair) ON true
            LEFT JOIN lots l ON l.lot_id = (a.pair->>0)::uuid
            WHERE t.txn_id = ANY(%b::uuid[])
            """,
            (txn_ids,),
            dict_row,
        )
        found: dict[uuid.UUID, RefundSource] = {}
        for row in rows:
            source = found.get(row["txn_id"])
            if source is None:
                source = found[row["txn_id"]] = RefundSource(
                    txn_id=row["txn_id"],
                    program_id=row["program_id"],
                    member_id=row["member_id"],
                    kind=row["kind"],
                    allocations=[
                        (uuid.UUID(lot), int(points)) for lot, points in row["allocations"]
                    ],
                    refunded=bool(row["refunded"]),
                )
            if row["lot_id"] is not None:
                source.lots[row["lot_id"]] = _lot(row)
        return found

    async def load_reviews(self, review_ids: list[uuid.UUID]) -> dict[uuid.UUID, Review]:
        """Reviews by id, as committed (what a decision needs besides the held points)."""
        if not review_ids:
            return {}
        rows = await self._db.fetch_all(
            f"SELECT {REVIEW_COLUMNS} FROM reviews WHERE review_id = ANY(%b::uuid[])",
            (review_ids,),
            dict_row,
        )
        return {row["review_id"]: review_from_row(row) for row in rows}

    async def lookup_idempotency(self, keys: list[IdemKey]) -> dict[IdemKey, StoredResponse]:
        """Stored answers of these keys (absent: not used yet)."""
        if not keys:
            return {}
        rows = await self._db.fetch_all(
            f"""
            SELECT i.program_id, i.member_id, i.key, {_ANSWER_NAMES}
            FROM idempotency_keys i
            JOIN unnest(%b::text[], %b::text[], %b::text[]) AS k(program_id, member_id, key)
              ON i.program_id = k.program_id AND i.member_id = k.member_id AND i.key = k.key
            """,
            unzip(keys),
            dict_row,
        )
        return {(row["program_id"], row["member_id"], row["key"]): _answer(row) for row in rows}

    def sealer(self) -> LedgerRepo:
        """A repository on its own connection, for sealing the hash chain beside the batch
        loop (`seal_chain`)."""
        return LedgerRepo(self._db.sibling())

    async def seal_chain(self, chain: str, now: datetime) -> int:
        """Seal what `chain` has pending into links (db/ledger_chain.py), one transaction
        per link; returns the transactions linked. Another sealer of the chain at work (the
        row lock) or first (the link's key) ends this one quietly: it seals next time."""
        linked = 0
        conn = await self._db.connection()
        while True:
            try:
                async with conn.transaction():
                    cur = await conn.execute(
                        TAKE_PENDING, {"chain": chain, "rows": SEAL_PENDING_ROWS_MAX}
                    )
                    pending = await cur.fetchall()
                    if not pending:
                        return linked
                    ids, txns = sealed_ids([(row[0], row[1]) for row in pending])
                    cur = await conn.execute(
                        APPEND_LINK, {"chain": chain, "txn_ids": txns, "at": now}
                    )
                    if cur.rowcount != 1:
                        raise ChainError(f"{chain}: pending transactions are missing: {ids}")
                    await conn.execute(DROP_PENDING, {"ids": ids})
            except (psycopg.errors.LockNotAvailable, psycopg.errors.UniqueViolation):
                return linked
            linked += len(txns)

    async def commit_batch(self, batch: BatchWrite, now: datetime) -> None:
        """Write the batch in one transaction, or raise (FencedError, KeysExist, EventsTaken
        or a database error)."""
        if batch.empty:
            return
        await self._db.commit(LEDGER_WRITERS, batch, now)

    # ----------------------------------------------------------------- earning programs

    async def load_program_configs(self, program_ids: list[str]) -> dict[str, ProgramConfig]:
        """Policies and rule sets of these programs (absent: no such program)."""
        if not program_ids:
            return {}
        rows = await self._db.fetch_all(
            """
            SELECT p.program_id, p.policy_version, p.policy,
                   r.version, r.effective_from, r.rules
            FROM programs p
            LEFT JOIN rule_sets r ON r.program_id = p.program_id
            WHERE p.program_id = ANY(%s)
            ORDER BY p.program_id, r.version
            """,
            (program_ids,),
            dict_row,
        )
        found: dict[str, ProgramConfig] = {}
        for row in rows:
            config = found.get(row["program_id"])
            if config is None:
                config = found[row["program_id"]] = ProgramConfig(
                    row["program_id"], row["policy_version"], row["policy"] or {}, []
                )
            if row["version"] is not None:
                config.rule_sets.append((row["version"], row["effective_from"], row["rules"]))
        if found:
            for row in await self._db.fetch_all(
                """
                SELECT program_id, experiment_id, arms, starts_at, ends_at FROM experiments
                WHERE program_id = ANY(%s) AND ended_at IS NULL
                ORDER BY program_id, starts_at, experiment_id
                """,
                (list(found),),
                dict_row,
            ):
                found[row["program_id"]].experiments.append(
                    (row["experiment_id"], row["arms"], row["starts_at"], row["ends_at"])
                )
        return found

    async def load_events(self, keys: list[EventKey]) -> dict[EventKey, StoredEvent]:
        """Applied events by (program_id, event_id)."""
        if not keys:
            return {}
        events = await self._db.fetch_all(
            """
            SELECT e.program_id, e.event_id, e.member_id, e.attributes, e.points,
                   e.reversed_amount, e.reversed_points
            FROM unnest(%b::text[], %b::text[]) AS k(p, e)
            JOIN events e ON e.program_id = k.p AND e.event_id = k.e
            """,
            unzip(keys),
            class_row(StoredEvent),
        )
        return {(e.program_id, e.event_id): e for e in events}

    async def tiered_accounts(self, after: AccountKey, limit: int) -> list[AccountKey]:
        """Accounts holding a tier, in key order after `after` (a cursor over all of them)."""
        assert limit > 0
        rows = await self._db.fetch_all(
            """
            SELECT program_id, member_id FROM accounts
            WHERE tier IS NOT NULL AND (program_id, member_id) > (%s, %s)
            ORDER BY program_id, member_id LIMIT %s
            """,
            (*after, limit),
            dict_row,
        )
        return [(row["program_id"], row["member_id"]) for row in rows]

    async def due_expiries(self, now: datetime, limit: int) -> list[AccountKey]:
        """Accounts holding points past expiry, or pending points whose date has come
        (about `limit` of each, oldest first).

        Every shard reads the same candidates and keeps those it owns: the slot of an
        account is a stable hash PostgreSQL does not compute.
        """
        assert limit > 0
        rows = await self._db.fetch_all(
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
            (now, limit * DUE_CANDIDATES_PER_ACCOUNT, now, limit * DUE_CANDIDATES_PER_ACCOUNT),
            dict_row,
        )
        return [(row["program_id"], row["member_id"]) for row in rows]


# The pending reviews of an account with points held (none otherwise: most accounts cost
# nothing), each with the lots its hold took from, as JSON: loaded in the same statement
# (one snapshot) as the account. See `_holds`.
_HOLDS_OF_ACCOUNT = """
    CASE WHEN a.held > 0 THEN (
      SELECT jsonb_agg(jsonb_build_object(
               'review_id', r.review_id, 'txn_id', r.hold_txn_id, 'points', r.points,
               'allocations', t.allocations,
               'lots', (SELECT jsonb_agg(jsonb_build_object(
                                 'lot_id', hl.lot_id, 'original', hl.original,
                                 'remaining', hl.remaining, 'expires_at', hl.expires_at,
                                 'created_at', hl.created_at, 'available_at', hl.available_at,
                                 'event_id', hl.event_id, 'active', hl.active))
                        FROM jsonb_array_elements(t.allocations) AS p(pair)
                        JOIN lots hl ON hl.lot_id = (p.pair->>0)::uuid)))
      FROM reviews r JOIN transactions t ON t.txn_id = r.hold_txn_id
      WHERE r.program_id = a.program_id AND r.member_id = a.member_id
        AND r.status = 'pending')
    END AS holds"""


def _moment(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _holds(raw: list[dict[str, Any]] | None) -> dict[uuid.UUID, Hold]:
    """The `holds` column of load_accounts: an account's pending reviews' holds."""
    result: dict[uuid.UUID, Hold] = {}
    for item in raw or []:
        lots = {}
        for lot in item["lots"] or []:
            created_at = _moment(lot["created_at"])
            assert created_at is not None
            lots[uuid.UUID(lot["lot_id"])] = Lot(
                lot_id=uuid.UUID(lot["lot_id"]),
                original=lot["original"],
                remaining=lot["remaining"],
                expires_at=_moment(lot["expires_at"]),
                created_at=created_at,
                available_at=_moment(lot["available_at"]),
                event_id=lot["event_id"],
                active=lot["active"],
            )
        hold = Hold(
            review_id=uuid.UUID(item["review_id"]),
            txn_id=uuid.UUID(item["txn_id"]),
            points=item["points"],
            allocations=tuple((uuid.UUID(lot), int(taken)) for lot, taken in item["allocations"]),
            lots=lots,
        )
        hold.check()
        result[hold.review_id] = hold
    return result


# A member may hold several due lots: read this many lots per account asked for, so that
# about `limit` distinct accounts come back.
DUE_CANDIDATES_PER_ACCOUNT = 4

# lots, as load_accounts and load_refund_sources read them (alias l); see `_lot`.
_LOT_COLUMNS = """l.lot_id, l.original, l.remaining, l.expires_at, l.created_at,
                   l.available_at, l.event_id, l.active"""


def _lot(row: dict[str, Any]) -> Lot:
    return Lot(
        lot_id=row["lot_id"],
        original=row["original"],
        remaining=row["remaining"],
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        available_at=row["available_at"],
        event_id=row["event_id"],
        active=row["active"],
    )


# ----------------------------------------------------------------- idempotency keys
# How idempotency_keys stores a StoredResponse: its columns and their array types, in the
# order of StoredResponse's fields, and (`_answer_arrays`) the value of each. The commit's
# insert and lookup_idempotency name the answer's columns nowhere else.
_ANSWER_COLUMNS = (("request_hash", "text"), ("code", "text"), ("response", "jsonb"))
_ANSWER_NAMES = ", ".join(column for column, _ in _ANSWER_COLUMNS)
_ANSWER_ARRAYS = ", ".join(f"%b::{kind}[]" for _, kind in _ANSWER_COLUMNS)


def _answer_arrays(answers: list[StoredResponse]) -> list[list[Any]]:
    return [
        [a.request_hash for a in answers],
        [a.code.value for a in answers],
        [jsonb(a.body) for a in answers],
    ]


def _answer(row: dict[str, Any]) -> StoredResponse:
    return StoredResponse(row["request_hash"], Code(row["code"]), row["response"])


async def _insert_idempotency_keys(conn: Conn, batch: BatchWrite, now: datetime) -> Cursor:
    # First: a key already in the database (not in this shard's cache, e.g. after a restart)
    # makes the batch roll back and re-run with the stored answer (KeysExist).
    return await conn.execute(
        f"""
        INSERT INTO idempotency_keys (program_id, member_id, key, {_ANSWER_NAMES}, created_at)
        SELECT *, %s FROM unnest(%b::text[], %b::text[], %b::text[], {_ANSWER_ARRAYS})
        ON CONFLICT DO NOTHING
        RETURNING program_id, member_id, key
        """,
        (
            now,
            *unzip([key for key, _ in batch.idempotency]),
            *_answer_arrays([answer for _, answer in batch.idempotency]),
        ),
    )


# ----------------------------------------------------------------- accounts
# The columns a commit sets on an account row (insert and update), in `_account_arrays` order.
_ACCOUNT_ARRAYS = """%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::bigint[],
                     %b::jsonb[], %b::text[], %b::bigint[], %b::bigint[], %b::bigint[],
                     %b::jsonb[]"""


def _account_arrays(accounts: list[Account]) -> list[list[Any]]:
    """program_id, member_id, balance, lifetime_earned, lifetime_spent, earning, tier, debt,
    pending, held, velocity: one array each."""
    return [
        [a.program_id for a in accounts],
        [a.member_id for a in accounts],
        [a.balance for a in accounts],
        [a.lifetime_earned for a in accounts],
        [a.lifetime_spent for a in accounts],
        [jsonb(a.earning) for a in accounts],
        [a.earning.get("tier") for a in accounts],
        [a.debt for a in accounts],
        [a.pending for a in accounts],
        [a.held for a in accounts],
        [jsonb(a.velocity) for a in accounts],
    ]


async def _insert_new_accounts(conn: Conn, batch: BatchWrite, now: datetime) -> Cursor:
    return await conn.execute(
        f"""
        INSERT INTO accounts (program_id, member_id, balance, lifetime_earned, lifetime_spent,
                              earning, tier, debt, pending, held, velocity, version,
                              created_at, updated_at)
        SELECT *, 1, %s, %s FROM unnest({_ACCOUNT_ARRAYS})
        ON CONFLICT DO NOTHING
        """,
        (now, now, *_account_arrays(batch.new_accounts)),
    )


async def _update_accounts(conn: Conn, batch: BatchWrite, now: datetime) -> Cursor:
    # Fenced by version: a row another owner changed is not updated, and the batch fails.
    updated = batch.updated_accounts
    return await conn.execute(
        f"""
        UPDATE accounts a
        SET balance = v.b, lifetime_earned = v.e, lifetime_spent = v.s, earning = v.g,
            tier = v.t, debt = v.d, pending = v.n, held = v.h, velocity = v.r,
            version = v.old + 1, updated_at = %s
        FROM unnest({_ACCOUNT_ARRAYS}, %b::bigint[]) AS v(p, m, b, e, s, g, t, d, n, h, r, old)
        WHERE a.program_id = v.p AND a.member_id = v.m AND a.version = v.old
        """,
        (
            now,
            *_account_arrays([account for account, _ in updated]),
            [loaded_version for _, loaded_version in updated],
        ),
    )


# ----------------------------------------------------------------- ledger


async def _insert_transactions(conn: Conn, batch: BatchWrite, now: datetime) -> Cursor:
    txns = [txn for txn, _ in batch.transactions]
    return await conn.execute(
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
            [jsonb([[str(lot), points] for lot, points in t.allocations]) for t in txns],
            [t.refers_to for t in txns],
            [t.event_id for t in txns],
        ),
    )


async def _insert_ledger_entries(conn: Conn, batch: BatchWrite, now: datetime) -> Cursor:
    legs = [(txn, entry) for txn, _ in batch.transactions for entry in txn.entries]
    return await conn.execute(
        """
        INSERT INTO ledger_entries (txn_id, program_id, account, member_id, amount, created_at)
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


def _chain_link(batch: BatchWrite) -> list[str]:
    """The chain that gets one link: only a batch with transactions appends one."""
    if not batch.transactions:
        return []
    assert batch.chain, "a batch that writes transactions names its chain"
    return [batch.chain]


async def _add_chain_pending(conn: Conn, batch: BatchWrite, now: datetime) -> Cursor:
    # The batch's transactions, pending for the shard's chain: sealed into a link moments
    # later, off the commit's path (db/ledger_chain.py).
    return await conn.execute(
        ADD_PENDING,
        {
            "chain": batch.chain,
            "txn_ids": sorted(txn.txn_id for txn, _ in batch.transactions),
            "at": now,
        },
    )


# ----------------------------------------------------------------- experiments


async def _insert_assignments(conn: Conn, batch: BatchWrite, now: datetime) -> Cursor:
    # Stable (a hash decides the arm), so a member's later events find the row there.
    return await conn.execute(
        """
        INSERT INTO experiment_assignments (program_id, experiment_id, member_id, arm,
                                            assigned_at)
        SELECT k.p, k.e, k.m, k.a, %b FROM unnest(%b::text[], %b::text[], %b::text[],
                                                  %b::text[]) AS k(p, e, m, a)
        ON CONFLICT DO NOTHING
        """,
        [now, *unzip(batch.assignments)],
    )


# ----------------------------------------------------------------- lots


def _new_lots(batch: BatchWrite) -> list[tuple[Transaction, Lot]]:
    """The lots credits of this batch created, with their transaction."""
    return [(txn, txn.new_lot) for txn, _ in batch.transactions if txn.new_lot is not None]


async def _insert_lots(conn: Conn, batch: BatchWrite, now: datetime) -> Cursor:
    new = _new_lots(batch)
    return await conn.execute(
        """
        INSERT INTO lots (lot_id, program_id, member_id, txn_id, original, remaining,
                          expires_at, created_at, available_at, event_id, active)
        SELECT l, p, m, t, o, o, x, c, a, e, y
        FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::uuid[], %b::bigint[],
                    %b::timestamptz[], %b::timestamptz[], %b::timestamptz[],
                    %b::text[], %b::bool[]) AS v(l, p, m, t, o, x, c, a, e, y)
        """,
        (
            [lot.lot_id for _, lot in new],
            [t.program_id for t, _ in new],
            [t.member_id for t, _ in new],
            [t.txn_id for t, _ in new],
            [lot.original for _, lot in new],
            [lot.expires_at for _, lot in new],
            [lot.created_at for _, lot in new],
            [lot.available_at for _, lot in new],
            [lot.event_id for _, lot in new],
            [lot.active for _, lot in new],
        ),
    )


async def _update_lot_deltas(conn: Conn, batch: BatchWrite, now: datetime) -> Cursor:
    deltas = batch.lot_deltas
    return await conn.execute(
        """
        UPDATE lots SET remaining = remaining - v.taken
        FROM unnest(%b::uuid[], %b::bigint[]) AS v(lot_id, taken)
        WHERE lots.lot_id = v.lot_id
        """,
        (list(deltas), list(deltas.values())),
    )


async def _update_lot_states(conn: Conn, batch: BatchWrite, now: datetime) -> Cursor:
    states = batch.lot_states
    return await conn.execute(
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


# ----------------------------------------------------------------- report rollups
# The daily rollups the reports read (migration 0009, db/reports_repo.py), kept here, in the
# transaction that writes the rows they sum, so they are exact and as fresh as the ledger.
# Each shard adds to its own chain's rows: no two shards ever wait on one rollup row.


def _daily_flows(batch: BatchWrite) -> dict[tuple[str, date, str], list[int]]:
    """(program, UTC day, kind) -> [points, transactions] of this batch."""
    sums: dict[tuple[str, date, str], list[int]] = defaultdict(lambda: [0, 0])
    for txn, _ in batch.transactions:
        day = txn.created_at.astimezone(UTC).date()
        cell = sums[(txn.program_id, day, txn.kind)]
        cell[0] += txn.points
        cell[1] += 1
    return sums


async def _upsert_daily_flows(conn: Conn, batch: BatchWrite, now: datetime) -> Cursor:
    sums = _daily_flows(batch)
    keys = sorted(sums)
    return await conn.execute(
        """
        INSERT INTO report_daily_flows AS r (program_id, day, kind, chain, points, txns)
        SELECT p, d, k, %b, n, c
        FROM unnest(%b::text[], %b::date[], %b::text[], %b::bigint[], %b::bigint[])
             AS v(p, d, k, n, c)
        ON CONFLICT (program_id, day, kind, chain)
        DO UPDATE SET points = r.points + EXCLUDED.points, txns = r.txns + EXCLUDED.txns
        """,
        (
            batch.chain,
            *unzip(keys),
            [sums[key][0] for key in keys],
            [sums[key][1] for key in keys],
        ),
    )


_TAKEN_BY = {EXPIRE: 1, REVERSAL: 2}  # which column of _lot_changes a kind's takings go to


def _new_lot_sums(batch: BatchWrite) -> dict[tuple[str, date], int]:
    """(program, UTC day) -> points issued into the lots this batch created (their cohort
    is known here: no need to read it back)."""
    sums: dict[tuple[str, date], int] = defaultdict(int)
    for txn, lot in _new_lots(batch):
        sums[(txn.program_id, lot.created_at.astimezone(UTC).date())] += lot.original
    return sums


def _lot_changes(batch: BatchWrite) -> dict[uuid.UUID, list[int]]:
    """lot_id -> [remaining change, expired, reversed] of lots this batch took from or gave
    back to (lots of any age: their cohort is read from the lots table)."""
    changes: dict[uuid.UUID, list[int]] = defaultdict(lambda: [0, 0, 0])
    for lot_id, taken in batch.lot_deltas.items():
        changes[lot_id][0] -= taken
    for txn, _ in batch.transactions:
        column = _TAKEN_BY.get(txn.kind)
        if column is not None:
            for lot_id, taken in txn.allocations:
                changes[lot_id][column] += taken
    return {lot_id: change for lot_id, change in changes.items() if any(change)}


def _lot_rollup_inputs(batch: BatchWrite) -> list[object]:
    """What the lots rollup statement reads: new lots' cohorts and lots changed."""
    return [*_new_lot_sums(batch), *_lot_changes(batch)]


async def _upsert_daily_lots(conn: Conn, batch: BatchWrite, now: datetime) -> Cursor:
    # New lots: their sums by cohort from the batch. Lots taken from or given back to: by
    # the cohort the lots table names (a debit takes from lots of any age, and the batch
    # holds only their ids).
    issued = _new_lot_sums(batch)
    changes = _lot_changes(batch)
    keys = sorted(issued)
    return await conn.execute(
        """
        INSERT INTO report_daily_lots AS r
               (program_id, day, chain, issued, remaining, expired, reversed)
        SELECT p, d, %b, sum(i), sum(n), sum(e), sum(x)
        FROM (
            SELECT p, d, i, i AS n, 0 AS e, 0 AS x
            FROM unnest(%b::text[], %b::date[], %b::bigint[]) AS new(p, d, i)
            UNION ALL
            SELECT l.program_id, (l.created_at AT TIME ZONE 'UTC')::date, 0, v.n, v.e, v.x
            FROM unnest(%b::uuid[], %b::bigint[], %b::bigint[], %b::bigint[])
                 AS v(lot_id, n, e, x)
            JOIN lots l ON l.lot_id = v.lot_id
        ) AS s(p, d, i, n, e, x)
        GROUP BY p, d
        ON CONFLICT (program_id, day, chain)
        DO UPDATE SET issued = r.issued + EXCLUDED.issued,
                      remaining = r.remaining + EXCLUDED.remaining,
                      expired = r.expired + EXCLUDED.expired,
                      reversed = r.reversed + EXCLUDED.reversed
        """,
        (
            batch.chain,
            [program for program, _ in keys],
            [day for _, day in keys],
            [issued[key] for key in keys],
            list(changes),
            *([list(column) for column in zip(*changes.values(), strict=True)] or [[], [], []]),
        ),
    )


# ----------------------------------------------------------------- events and tiers


async def _insert_events(conn: Conn, batch: BatchWrite, now: datetime) -> Cursor:
    # An event id recorded first (for another member): EventsTaken after the sync.
    evs = batch.events
    return await conn.execute(
        """
        INSERT INTO events (program_id, event_id, member_id, type, occurred_at, attributes,
                            rule_version, points, explanation, txn_id, created_at)
        SELECT *, %s
        FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::timestamptz[],
                    %b::jsonb[], %b::int[], %b::bigint[], %b::jsonb[], %b::uuid[])
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
            [jsonb(e.attributes) for e in evs],
            [e.rule_version for e in evs],
            [e.points for e in evs],
            [jsonb(e.explanation) for e in evs],
            [e.txn_id for e in evs],
        ),
    )


async def _update_event_reversals(conn: Conn, batch: BatchWrite, now: datetime) -> Cursor:
    reversals = batch.event_reversals
    return await conn.execute(
        """
        UPDATE events SET reversed_amount = v.amount, reversed_points = v.points
        FROM unnest(%b::text[], %b::text[], %b::text[], %b::bigint[])
             AS v(p, e, amount, points)
        WHERE events.program_id = v.p AND events.event_id = v.e
        """,
        (*unzip(list(reversals)), *unzip(list(reversals.values()))),
    )


async def _insert_tier_changes(conn: Conn, batch: BatchWrite, now: datetime) -> Cursor:
    return await conn.execute(
        """
        INSERT INTO tier_changes (program_id, member_id, from_tier, to_tier, reason, changed_at)
        SELECT *, %s FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[])
        """,
        (now, *unzip(batch.tier_changes)),
    )


# ----------------------------------------------------------------- reviews
# reviews: each column, its array type, and its value in a Review. The insert and every read
# (REVIEW_COLUMNS) follow this one list; a decision updates the last four.
_REVIEW_FIELDS: tuple[tuple[str, str, Any], ...] = (
    ("review_id", "uuid", lambda r: r.review_id),
    ("program_id", "text", lambda r: r.program_id),
    ("member_id", "text", lambda r: r.member_id),
    ("kind", "text", lambda r: str(r.kind)),
    ("points", "bigint", lambda r: r.points),
    ("reason", "text", lambda r: r.reason),
    ("status", "text", lambda r: str(r.status)),
    ("hold_txn_id", "uuid", lambda r: r.hold_txn_id),
    ("idempotency_key", "text", lambda r: r.key),
    ("redemption_id", "uuid", lambda r: r.redemption_id),
    ("reward_id", "text", lambda r: r.reward_id),
    ("created_at", "timestamptz", lambda r: r.created_at),
    ("decision_txn_id", "uuid", lambda r: r.decision_txn_id),
    ("decision_reason", "text", lambda r: r.decision_reason),
    ("decided_at", "timestamptz", lambda r: r.decided_at),
)
REVIEW_COLUMNS = ", ".join(column for column, _, _ in _REVIEW_FIELDS)
_REVIEW_DECISION = ("status", "decision_txn_id", "decision_reason", "decided_at")


def review_from_row(row: dict[str, Any]) -> Review:
    """A row of REVIEW_COLUMNS (a dict_row cursor)."""
    review = Review(
        review_id=row["review_id"],
        program_id=row["program_id"],
        member_id=row["member_id"],
        kind=ReviewKind(row["kind"]),
        points=row["points"],
        reason=row["reason"],
        status=ReviewStatus(row["status"]),
        hold_txn_id=row["hold_txn_id"],
        key=row["idempotency_key"],
        created_at=row["created_at"],
        redemption_id=row["redemption_id"],
        reward_id=row["reward_id"],
        decision_txn_id=row["decision_txn_id"],
        decision_reason=row["decision_reason"],
        decided_at=row["decided_at"],
    )
    review.check()
    return review


def _review_arrays(columns: tuple[str, ...], reviews: list[Review]) -> list[list[Any]]:
    values = {column: value for column, _, value in _REVIEW_FIELDS}
    return [[values[column](r) for r in reviews] for column in columns]


def _review_types(columns: tuple[str, ...]) -> str:
    kinds = {column: kind for column, kind, _ in _REVIEW_FIELDS}
    return ", ".join(f"%b::{kinds[column]}[]" for column in columns)


_REVIEW_NAMES = tuple(column for column, _, _ in _REVIEW_FIELDS)


async def _insert_reviews(conn: Conn, batch: BatchWrite, now: datetime) -> Cursor:
    return await conn.execute(
        f"INSERT INTO reviews ({REVIEW_COLUMNS})"
        f" SELECT * FROM unnest({_review_types(_REVIEW_NAMES)})",
        _review_arrays(_REVIEW_NAMES, batch.new_reviews),
    )


async def _decide_reviews(conn: Conn, batch: BatchWrite, now: datetime) -> Cursor:
    # Only a pending review is decided: one decided already (by a stale owner) fences.
    columns = ("review_id", *_REVIEW_DECISION)
    return await conn.execute(
        f"""
        UPDATE reviews r
        SET {", ".join(f"{column} = v.{column}" for column in _REVIEW_DECISION)}
        FROM unnest({_review_types(columns)}) AS v({", ".join(columns)})
        WHERE r.review_id = v.review_id AND r.status = 'pending'
        """,
        _review_arrays(columns, batch.decided_reviews),
    )


# The group commit: one statement per table, in this order (keys first; transactions before
# the rows that refer to them; new lots before the debits that take from them).
LEDGER_WRITERS: tuple[TableWriter[BatchWrite], ...] = (
    # First: the batch's slots must still be this shard's (db/topology_repo.py).
    *slot_fence_writers(lambda b: b.fence),
    TableWriter(
        lambda b: b.idempotency,
        _insert_idempotency_keys,
        claim=Claim(lambda b: [key for key, _ in b.idempotency], KeysExist),
    ),
    TableWriter(
        lambda b: b.new_accounts,
        _insert_new_accounts,
        fence="an account this shard created already exists",
    ),
    TableWriter(
        lambda b: b.updated_accounts,
        _update_accounts,
        fence="an account changed under this shard (stale version)",
    ),
    TableWriter(lambda b: b.transactions, _insert_transactions),
    TableWriter(lambda b: b.transactions, _insert_ledger_entries),
    TableWriter(lambda b: b.assignments, _insert_assignments),
    TableWriter(
        _chain_link,
        _add_chain_pending,
        fence="the batch's transactions were not recorded for the chain",
    ),
    TableWriter(_new_lots, _insert_lots),
    TableWriter(
        lambda b: b.lot_deltas, _update_lot_deltas, fence="a lot this shard debited is missing"
    ),
    TableWriter(
        lambda b: b.lot_states, _update_lot_states, fence="a lot this shard confirmed is missing"
    ),
    # After the transactions and the lots they sum (the new lots' cohorts are read back).
    TableWriter(lambda b: b.transactions, _upsert_daily_flows),
    TableWriter(_lot_rollup_inputs, _upsert_daily_lots),
    TableWriter(
        lambda b: b.events,
        _insert_events,
        claim=Claim(lambda b: [(e.program_id, e.event_id) for e in b.events], EventsTaken),
    ),
    TableWriter(
        lambda b: b.event_reversals, _update_event_reversals, fence="a reversed event is missing"
    ),
    TableWriter(lambda b: b.tier_changes, _insert_tier_changes),
    # After the transactions they refer to (the hold, the decision).
    TableWriter(lambda b: b.new_reviews, _insert_reviews),
    TableWriter(
        lambda b: b.decided_reviews, _decide_reviews, fence="a review this shard decided is gone"
    ),
)
