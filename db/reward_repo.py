"""The reward shards' repository: load rewards with their redemptions, commit one batch.

Same discipline as the ledger repository: one dedicated connection per shard, set-based
statements over `unnest` arrays, the whole batch pipelined in one transaction, and every
reward row fenced by its version (a stale owner's batch rolls back whole).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

from db.ledger_repo import FencedError, LedgerRepo
from domain.rewards import Redemption, Reward, RewardStock, SagaState

RewardKey = tuple[str, str]

OPEN_STATES = ("started", "stock_reserved", "points_debited", "pending_fulfillment", "compensating")


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class RedemptionKeysExist(Exception):
    """Redemption keys of the batch are already used (by another reward's redemption)."""

    def __init__(self, keys: list[tuple[str, str, str]]) -> None:
        super().__init__(f"{len(keys)} redemption keys already used")
        self.keys = keys


@dataclass(slots=True)
class Restock:
    key: str
    request_hash: str
    quantity: int
    stocked_after: int
    created_at: datetime


@dataclass(slots=True)
class LoadedReward:
    reward: Reward
    redemptions: list[Redemption]
    restocks: dict[str, Restock]


@dataclass(slots=True)
class RewardWrite:
    """Everything one reward batch writes."""

    new_rewards: list[Reward] = field(default_factory=list)
    # (final state, version loaded); the row gets version + 1
    updated_rewards: list[tuple[Reward, int]] = field(default_factory=list)
    restocks: list[tuple[Reward, Restock]] = field(default_factory=list)
    new_redemptions: list[tuple[Redemption, int]] = field(default_factory=list)  # (r, slot)
    updated_redemptions: list[Redemption] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.new_rewards or self.updated_rewards)


REDEMPTION_COLUMNS = """redemption_id, program_id, reward_id, member_id, idempotency_key,
    request_hash, quantity, cost_points, points, status, stock_state, fulfillment, created_at,
    updated_at, compensate_to, debit_txn_id, refund_txn_id, balance_after, attempts,
    failure_code, failure_reason"""


def redemption_from_row(row: Any) -> Redemption:
    return Redemption(
        row[0],
        row[1],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        SagaState(row[9]),
        row[10],
        row[11],
        row[12],
        row[13],
        SagaState(row[14]) if row[14] else None,
        row[15],
        row[16],
        row[17],
        row[18],
        row[19],
        row[20],
    )


class RewardRepo(LedgerRepo):
    """Reuses the ledger repository's connection handling (one connection, reconnects)."""

    def reader(self) -> RewardRepo:
        return RewardRepo(self._dsn, self._connect_timeout_s, autocommit=True)

    async def load_rewards(self, keys: list[RewardKey]) -> dict[RewardKey, LoadedReward]:
        """Rewards with every redemption and restock they have (one snapshot)."""
        if not keys:
            return {}
        conn = await self._connection()
        programs = [k[0] for k in keys]
        rewards = [k[1] for k in keys]
        found: dict[RewardKey, LoadedReward] = {}
        async with conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            cur = await conn.execute(
                """
                SELECT r.program_id, r.reward_id, r.name, r.cost_points, r.stocked, r.reserved,
                       r.redeemed, r.active, r.per_member_limit, r.fulfillment, r.version,
                       r.created_at, r.updated_at
                FROM unnest(%b::text[], %b::text[]) AS k(p, w)
                JOIN rewards r ON r.program_id = k.p AND r.reward_id = k.w
                """,
                (programs, rewards),
            )
            for row in await cur.fetchall():
                stock = RewardStock(row[1], row[4], row[5], row[6], row[7])
                reward = Reward(
                    row[0], row[1], row[2], row[3], stock, row[8], row[9], row[10], row[11], row[12]
                )
                found[(row[0], row[1])] = LoadedReward(reward, [], {})
            if not found:
                return found
            cur = await conn.execute(
                f"""
                SELECT {REDEMPTION_COLUMNS} FROM redemptions
                WHERE (program_id, reward_id) IN (SELECT * FROM unnest(%b::text[], %b::text[]))
                """,
                (programs, rewards),
            )
            for row in await cur.fetchall():
                redemption = redemption_from_row(row)
                found[(redemption.program_id, redemption.reward_id)].redemptions.append(redemption)
            cur = await conn.execute(
                """
                SELECT program_id, reward_id, key, request_hash, quantity, stocked_after,
                       created_at
                FROM restocks
                WHERE (program_id, reward_id) IN (SELECT * FROM unnest(%b::text[], %b::text[]))
                """,
                (programs, rewards),
            )
            for row in await cur.fetchall():
                found[(row[0], row[1])].restocks[row[2]] = Restock(*row[2:])
        return found

    async def open_reward_keys(self, slots: list[int]) -> list[RewardKey]:
        """Rewards with redemptions left half-way (not completed, failed or cancelled)."""
        conn = await self._connection()
        async with self._transaction(conn):
            cur = await conn.execute(
                """
                SELECT DISTINCT program_id, reward_id FROM redemptions
                WHERE slot = ANY(%b::int[])
                  AND status NOT IN ('completed', 'failed', 'cancelled')
                """,
                (slots,),
            )
            return [(row[0], row[1]) for row in await cur.fetchall()]

    async def commit_rewards(self, write: RewardWrite, now: datetime) -> None:
        if write.empty:
            return
        conn = await self._connection()
        async with conn.pipeline() as pipeline, conn.transaction():
            checks: list[tuple[Any, int, str]] = []
            new_cur = None
            if write.new_rewards:
                new = write.new_rewards
                cur = await conn.execute(
                    """
                    INSERT INTO rewards (program_id, reward_id, name, cost_points, stocked,
                                         reserved, redeemed, per_member_limit, active,
                                         fulfillment, version, created_at, updated_at)
                    SELECT p, w, n, c, s, r, d, l, a, f, 1, t, t
                    FROM unnest(%b::text[], %b::text[], %b::text[], %b::bigint[], %b::bigint[],
                                %b::bigint[], %b::bigint[], %b::bigint[], %b::bool[],
                                %b::jsonb[], %b::timestamptz[])
                         AS v(p, w, n, c, s, r, d, l, a, f, t)
                    ON CONFLICT DO NOTHING
                    """,
                    (
                        [r.program_id for r in new],
                        [r.reward_id for r in new],
                        [r.name for r in new],
                        [r.cost_points for r in new],
                        [r.stock.stocked for r in new],
                        [r.stock.reserved for r in new],
                        [r.stock.redeemed for r in new],
                        [r.per_member_limit for r in new],
                        [r.stock.active for r in new],
                        [Jsonb(r.fulfillment, dumps=_dumps) for r in new],
                        [r.created_at for r in new],
                    ),
                )
                checks.append((cur, len(new), "a reward this shard created already exists"))
            if write.updated_rewards:
                upd = write.updated_rewards
                cur = await conn.execute(
                    """
                    UPDATE rewards r
                    SET name = v.n, cost_points = v.c, stocked = v.s, reserved = v.r,
                        redeemed = v.d, per_member_limit = v.l, active = v.a, fulfillment = v.f,
                        version = v.old + 1, updated_at = v.t
                    FROM unnest(%b::text[], %b::text[], %b::text[], %b::bigint[], %b::bigint[],
                                %b::bigint[], %b::bigint[], %b::bigint[], %b::bool[],
                                %b::jsonb[], %b::timestamptz[], %b::bigint[])
                         AS v(p, w, n, c, s, r, d, l, a, f, t, old)
                    WHERE r.program_id = v.p AND r.reward_id = v.w AND r.version = v.old
                    """,
                    (
                        [r.program_id for r, _ in upd],
                        [r.reward_id for r, _ in upd],
                        [r.name for r, _ in upd],
                        [r.cost_points for r, _ in upd],
                        [r.stock.stocked for r, _ in upd],
                        [r.stock.reserved for r, _ in upd],
                        [r.stock.redeemed for r, _ in upd],
                        [r.per_member_limit for r, _ in upd],
                        [r.stock.active for r, _ in upd],
                        [Jsonb(r.fulfillment, dumps=_dumps) for r, _ in upd],
                        [r.updated_at for r, _ in upd],
                        [old for _, old in upd],
                    ),
                )
                checks.append((cur, len(upd), "a reward changed under this shard (stale version)"))
            if write.restocks:
                rows = write.restocks
                await conn.execute(
                    """
                    INSERT INTO restocks (program_id, reward_id, key, request_hash, quantity,
                                          stocked_after, created_at)
                    SELECT * FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[],
                                         %b::bigint[], %b::bigint[], %b::timestamptz[])
                    """,
                    (
                        [r.program_id for r, _ in rows],
                        [r.reward_id for r, _ in rows],
                        [s.key for _, s in rows],
                        [s.request_hash for _, s in rows],
                        [s.quantity for _, s in rows],
                        [s.stocked_after for _, s in rows],
                        [s.created_at for _, s in rows],
                    ),
                )
            if write.new_redemptions:
                new_cur = await conn.execute(
                    f"""
                    INSERT INTO redemptions ({REDEMPTION_COLUMNS}, slot)
                    SELECT * FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::text[],
                        %b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::bigint[],
                        %b::text[], %b::text[], %b::jsonb[], %b::timestamptz[],
                        %b::timestamptz[], %b::text[], %b::uuid[], %b::uuid[], %b::bigint[],
                        %b::int[], %b::text[], %b::text[], %b::int[])
                    ON CONFLICT (program_id, member_id, idempotency_key) DO NOTHING
                    RETURNING program_id, member_id, idempotency_key
                    """,
                    (
                        *_redemption_columns([r for r, _ in write.new_redemptions]),
                        [slot for _, slot in write.new_redemptions],
                    ),
                )
            if write.updated_redemptions:
                upd_r = write.updated_redemptions
                cols = _redemption_columns(upd_r)
                cur = await conn.execute(
                    """
                    UPDATE redemptions r
                    SET status = v.status, stock_state = v.stock_state, updated_at = v.t,
                        compensate_to = v.comp, debit_txn_id = v.debit, refund_txn_id = v.refund,
                        balance_after = v.bal, attempts = v.att, failure_code = v.fc,
                        failure_reason = v.fr
                    FROM unnest(%b::uuid[], %b::text[], %b::text[], %b::timestamptz[],
                                %b::text[], %b::uuid[], %b::uuid[], %b::bigint[], %b::int[],
                                %b::text[], %b::text[])
                         AS v(id, status, stock_state, t, comp, debit, refund, bal, att, fc, fr)
                    WHERE r.redemption_id = v.id
                    """,
                    (cols[0], cols[9], cols[10], *cols[13:]),
                )
                checks.append((cur, len(upd_r), "a redemption this shard updated is missing"))
            try:
                await pipeline.sync()
            except psycopg.errors.IntegrityError as exc:
                raise FencedError(f"constraint failed, state was stale: {exc}") from exc
            for cur, expected, message in checks:
                if cur.rowcount != expected:
                    raise FencedError(message)
            if new_cur is not None:
                written = {tuple(row) for row in await new_cur.fetchall()}
                missing = [
                    (r.program_id, r.member_id, r.key)
                    for r, _ in write.new_redemptions
                    if (r.program_id, r.member_id, r.key) not in written
                ]
                if missing:
                    raise RedemptionKeysExist(missing)


def _redemption_columns(items: list[Redemption]) -> list[list[Any]]:
    """Columns in REDEMPTION_COLUMNS order."""
    return [
        [r.redemption_id for r in items],
        [r.program_id for r in items],
        [r.reward_id for r in items],
        [r.member_id for r in items],
        [r.key for r in items],
        [r.request_hash for r in items],
        [r.quantity for r in items],
        [r.cost_points for r in items],
        [r.points for r in items],
        [str(r.status) for r in items],
        [r.stock_state for r in items],
        [Jsonb(r.fulfillment, dumps=_dumps) for r in items],
        [r.created_at for r in items],
        [r.updated_at for r in items],
        [str(r.compensate_to) if r.compensate_to else None for r in items],
        [r.debit_txn_id for r in items],
        [r.refund_txn_id for r in items],
        [r.balance_after for r in items],
        [r.attempts for r in items],
        [r.failure_code for r in items],
        [r.failure_reason for r in items],
    ]


def new_redemption_id() -> uuid.UUID:
    return uuid.uuid4()
