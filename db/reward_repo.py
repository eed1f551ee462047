"""The reward shards' repository: load rewards with their redemptions, commit one batch.

Same discipline as the ledger repository, on the same kind of connection (ShardRepo): one
dedicated connection per shard, set-based statements over `unnest` arrays, the whole batch
pipelined in one transaction, and every reward row fenced by its version (a stale owner's
batch rolls back whole). The commit is a list of writers, one per table (`REWARD_WRITERS`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from db.errors import FencedError, RedemptionKeysExist
from db.shard_connection import Claim, Conn, Cursor, ShardRepo, TableWriter, jsonb, unzip
from db.topology_repo import SlotFence, slot_fence_writers
from domain.reviews import ReviewStatus
from domain.rewards import Redemption, Reward, RewardStock, SagaState

# Callers import these from here (actors/reward_core.py).
__all__ = [
    "REDEMPTION_COLUMNS",
    "REWARD_COLUMNS",
    "FencedError",
    "LoadedReward",
    "RedemptionKeysExist",
    "Restock",
    "RewardKey",
    "RewardRepo",
    "RewardWrite",
    "redemption_from_row",
    "reward_from_row",
]

RewardKey = tuple[str, str]

OPEN_STATES = ("started", "stock_reserved", "points_debited", "pending_fulfillment", "compensating")


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
    # The slots (at their epochs) the shard must still own for this batch to commit.
    fence: SlotFence | None = None

    @property
    def empty(self) -> bool:
        return not (self.new_rewards or self.updated_rewards)


# ----------------------------------------------------------------- rows read by name


@dataclass(frozen=True, slots=True)
class ReviewDecision:
    """Where a redemption's review stands, as the saga reads it."""

    status: ReviewStatus
    decision_txn_id: uuid.UUID | None
    decision_reason: str | None
    balance_after: int | None


REWARD_COLUMNS = """program_id, reward_id, name, cost_points, stocked, reserved, redeemed,
    active, per_member_limit, fulfillment, version, created_at, updated_at"""


def reward_from_row(row: dict[str, Any]) -> Reward:
    """A row of REWARD_COLUMNS (a dict_row cursor)."""
    stock = RewardStock(
        reward_id=row["reward_id"],
        stocked=row["stocked"],
        reserved=row["reserved"],
        redeemed=row["redeemed"],
        active=row["active"],
    )
    return Reward(
        program_id=row["program_id"],
        reward_id=row["reward_id"],
        name=row["name"],
        cost_points=row["cost_points"],
        stock=stock,
        per_member_limit=row["per_member_limit"],
        fulfillment=row["fulfillment"],
        version=row["version"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _optional_state(value: str | None) -> SagaState | None:
    return SagaState(value) if value else None


# redemptions: each column, its array type, and its value in a Redemption. The insert, the
# update and every read (REDEMPTION_COLUMNS) follow this one list.
_REDEMPTION_FIELDS: tuple[tuple[str, str, Callable[[Redemption], Any]], ...] = (
    ("redemption_id", "uuid", lambda r: r.redemption_id),
    ("program_id", "text", lambda r: r.program_id),
    ("reward_id", "text", lambda r: r.reward_id),
    ("member_id", "text", lambda r: r.member_id),
    ("idempotency_key", "text", lambda r: r.key),
    ("request_hash", "text", lambda r: r.request_hash),
    ("quantity", "bigint", lambda r: r.quantity),
    ("cost_points", "bigint", lambda r: r.cost_points),
    ("points", "bigint", lambda r: r.points),
    ("status", "text", lambda r: str(r.status)),
    ("stock_state", "text", lambda r: r.stock_state),
    ("fulfillment", "jsonb", lambda r: jsonb(r.fulfillment)),
    ("created_at", "timestamptz", lambda r: r.created_at),
    ("updated_at", "timestamptz", lambda r: r.updated_at),
    ("compensate_to", "text", lambda r: str(r.compensate_to) if r.compensate_to else None),
    ("debit_txn_id", "uuid", lambda r: r.debit_txn_id),
    ("refund_txn_id", "uuid", lambda r: r.refund_txn_id),
    ("balance_after", "bigint", lambda r: r.balance_after),
    ("attempts", "int", lambda r: r.attempts),
    ("failure_code", "text", lambda r: r.failure_code),
    ("failure_reason", "text", lambda r: r.failure_reason),
    ("review_id", "uuid", lambda r: r.review_id),
    (
        "failure_extra",
        "jsonb",
        lambda r: None if r.failure_extra is None else jsonb(r.failure_extra),
    ),
)
REDEMPTION_COLUMNS = ", ".join(column for column, _, _ in _REDEMPTION_FIELDS)
# What a redemption's later steps change (its identity and request never change).
_REDEMPTION_UPDATED = frozenset(
    {
        "status",
        "stock_state",
        "updated_at",
        "compensate_to",
        "debit_txn_id",
        "refund_txn_id",
        "balance_after",
        "attempts",
        "failure_code",
        "failure_reason",
        "review_id",
        "failure_extra",
    }
)
_REDEMPTION_UPDATE_FIELDS = tuple(
    (column, kind, value)
    for column, kind, value in _REDEMPTION_FIELDS
    if column in _REDEMPTION_UPDATED
)


def redemption_from_row(row: dict[str, Any]) -> Redemption:
    """A row of REDEMPTION_COLUMNS (a dict_row cursor)."""
    return Redemption(
        redemption_id=row["redemption_id"],
        program_id=row["program_id"],
        reward_id=row["reward_id"],
        member_id=row["member_id"],
        key=row["idempotency_key"],
        request_hash=row["request_hash"],
        quantity=row["quantity"],
        cost_points=row["cost_points"],
        points=row["points"],
        status=SagaState(row["status"]),
        stock_state=row["stock_state"],
        fulfillment=row["fulfillment"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        compensate_to=_optional_state(row["compensate_to"]),
        debit_txn_id=row["debit_txn_id"],
        refund_txn_id=row["refund_txn_id"],
        balance_after=row["balance_after"],
        attempts=row["attempts"],
        failure_code=row["failure_code"],
        failure_reason=row["failure_reason"],
        review_id=row["review_id"],
        failure_extra=row["failure_extra"],
    )


class RewardRepo(ShardRepo):
    """The reward shard's repository, on its own dedicated connection (ShardRepo)."""

    def reader(self) -> RewardRepo:
        """A second repository on its own connection, for reads outside the batch loop."""
        return RewardRepo(self._db.reader())

    async def load_rewards(self, keys: list[RewardKey]) -> dict[RewardKey, LoadedReward]:
        """Rewards with every redemption and restock they have (one snapshot)."""
        if not keys:
            return {}
        found: dict[RewardKey, LoadedReward] = {}
        async with self._db.snapshot() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"""
                SELECT {REWARD_COLUMNS}
                FROM unnest(%b::text[], %b::text[]) AS k(p, w)
                JOIN rewards r ON r.program_id = k.p AND r.reward_id = k.w
                """,
                unzip(keys),
            )
            for row in await cur.fetchall():
                reward = reward_from_row(row)
                found[(reward.program_id, reward.reward_id)] = LoadedReward(reward, [], {})
            if not found:
                return found
            await cur.execute(
                f"""
                SELECT {REDEMPTION_COLUMNS} FROM redemptions
                WHERE (program_id, reward_id) IN (SELECT * FROM unnest(%b::text[], %b::text[]))
                """,
                unzip(keys),
            )
            for row in await cur.fetchall():
                redemption = redemption_from_row(row)
                found[(redemption.program_id, redemption.reward_id)].redemptions.append(redemption)
            await cur.execute(
                """
                SELECT program_id, reward_id, key, request_hash, quantity, stocked_after,
                       created_at
                FROM restocks
                WHERE (program_id, reward_id) IN (SELECT * FROM unnest(%b::text[], %b::text[]))
                """,
                unzip(keys),
            )
            for row in await cur.fetchall():
                found[(row["program_id"], row["reward_id"])].restocks[row["key"]] = Restock(
                    key=row["key"],
                    request_hash=row["request_hash"],
                    quantity=row["quantity"],
                    stocked_after=row["stocked_after"],
                    created_at=row["created_at"],
                )
        return found

    async def open_reward_keys(self, slots: list[int]) -> list[RewardKey]:
        """Rewards with redemptions left half-way (not completed, failed or cancelled)."""
        rows = await self._db.fetch_all(
            """
            SELECT DISTINCT program_id, reward_id FROM redemptions
            WHERE slot = ANY(%b::int[]) AND status NOT IN ('completed', 'failed', 'cancelled')
            """,
            (slots,),
            dict_row,
        )
        return [(row["program_id"], row["reward_id"]) for row in rows]

    async def review_decisions(
        self, review_ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, ReviewDecision]:
        """Reviews by id: their status, deciding transaction and balance after it. A
        decision is committed by the account shard before it is answered, so what this
        reads is final once it is not pending."""
        if not review_ids:
            return {}
        rows = await self._db.fetch_all(
            """
            SELECT r.review_id, r.status, r.decision_txn_id, r.decision_reason, t.balance_after
            FROM reviews r LEFT JOIN transactions t ON t.txn_id = r.decision_txn_id
            WHERE r.review_id = ANY(%b::uuid[])
            """,
            (review_ids,),
            dict_row,
        )
        return {
            row["review_id"]: ReviewDecision(
                ReviewStatus(row["status"]),
                row["decision_txn_id"],
                row["decision_reason"],
                row["balance_after"],
            )
            for row in rows
        }

    async def commit_rewards(self, write: RewardWrite, now: datetime) -> None:
        """Write the batch in one transaction, or raise (FencedError, RedemptionKeysExist
        or a database error)."""
        if write.empty:
            return
        await self._db.commit(REWARD_WRITERS, write, now)


# ----------------------------------------------------------------- the commit's writers
# The columns a commit sets on a reward row (insert and update), in `_reward_arrays` order.
_REWARD_ARRAYS = """%b::text[], %b::text[], %b::text[], %b::bigint[], %b::bigint[],
                    %b::bigint[], %b::bigint[], %b::bigint[], %b::bool[], %b::jsonb[]"""


def _reward_arrays(rewards: list[Reward]) -> list[list[Any]]:
    """program_id, reward_id, name, cost_points, stocked, reserved, redeemed,
    per_member_limit, active, fulfillment: one array each."""
    return [
        [r.program_id for r in rewards],
        [r.reward_id for r in rewards],
        [r.name for r in rewards],
        [r.cost_points for r in rewards],
        [r.stock.stocked for r in rewards],
        [r.stock.reserved for r in rewards],
        [r.stock.redeemed for r in rewards],
        [r.per_member_limit for r in rewards],
        [r.stock.active for r in rewards],
        [jsonb(r.fulfillment) for r in rewards],
    ]


async def _insert_new_rewards(conn: Conn, write: RewardWrite, now: datetime) -> Cursor:
    new = write.new_rewards
    return await conn.execute(
        f"""
        INSERT INTO rewards (program_id, reward_id, name, cost_points, stocked, reserved,
                             redeemed, per_member_limit, active, fulfillment, created_at,
                             updated_at, version)
        SELECT p, w, n, c, s, r, d, l, a, f, t, t, 1
        FROM unnest({_REWARD_ARRAYS}, %b::timestamptz[]) AS v(p, w, n, c, s, r, d, l, a, f, t)
        ON CONFLICT DO NOTHING
        """,
        (*_reward_arrays(new), [r.created_at for r in new]),
    )


async def _update_rewards(conn: Conn, write: RewardWrite, now: datetime) -> Cursor:
    # Fenced by version: a row another owner changed is not updated, and the batch fails.
    updated = write.updated_rewards
    return await conn.execute(
        f"""
        UPDATE rewards r
        SET name = v.n, cost_points = v.c, stocked = v.s, reserved = v.r, redeemed = v.d,
            per_member_limit = v.l, active = v.a, fulfillment = v.f, version = v.old + 1,
            updated_at = v.t
        FROM unnest({_REWARD_ARRAYS}, %b::timestamptz[], %b::bigint[])
             AS v(p, w, n, c, s, r, d, l, a, f, t, old)
        WHERE r.program_id = v.p AND r.reward_id = v.w AND r.version = v.old
        """,
        (
            *_reward_arrays([reward for reward, _ in updated]),
            [reward.updated_at for reward, _ in updated],
            [loaded_version for _, loaded_version in updated],
        ),
    )


async def _insert_restocks(conn: Conn, write: RewardWrite, now: datetime) -> Cursor:
    rows = write.restocks
    return await conn.execute(
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


def _arrays(
    fields: tuple[tuple[str, str, Callable[[Redemption], Any]], ...], items: list[Redemption]
) -> list[list[Any]]:
    return [[value(r) for r in items] for _, _, value in fields]


def _types(fields: tuple[tuple[str, str, Callable[[Redemption], Any]], ...]) -> str:
    return ", ".join(f"%b::{kind}[]" for _, kind, _ in fields)


_INSERT_REDEMPTIONS = f"""
    INSERT INTO redemptions ({REDEMPTION_COLUMNS}, slot)
    SELECT * FROM unnest({_types(_REDEMPTION_FIELDS)}, %b::int[])
    ON CONFLICT (program_id, member_id, idempotency_key) DO NOTHING
    RETURNING program_id, member_id, idempotency_key
"""
_UPDATED_NAMES = ", ".join(column for column, _, _ in _REDEMPTION_UPDATE_FIELDS)
_UPDATE_REDEMPTIONS = f"""
    UPDATE redemptions r
    SET {", ".join(f"{column} = v.{column}" for column, _, _ in _REDEMPTION_UPDATE_FIELDS)}
    FROM unnest(%b::uuid[], {_types(_REDEMPTION_UPDATE_FIELDS)})
         AS v(redemption_id, {_UPDATED_NAMES})
    WHERE r.redemption_id = v.redemption_id
"""


async def _insert_redemptions(conn: Conn, write: RewardWrite, now: datetime) -> Cursor:
    # A key used before (for another reward's redemption): RedemptionKeysExist after the sync.
    new = write.new_redemptions
    return await conn.execute(
        _INSERT_REDEMPTIONS,
        (
            *_arrays(_REDEMPTION_FIELDS, [r for r, _ in new]),
            [slot for _, slot in new],
        ),
    )


async def _update_redemptions(conn: Conn, write: RewardWrite, now: datetime) -> Cursor:
    updated = write.updated_redemptions
    return await conn.execute(
        _UPDATE_REDEMPTIONS,
        (
            [r.redemption_id for r in updated],
            *_arrays(_REDEMPTION_UPDATE_FIELDS, updated),
        ),
    )


# The group commit: one statement per table, in this order (rewards before the restocks and
# redemptions that refer to them).
REWARD_WRITERS: tuple[TableWriter[RewardWrite], ...] = (
    # First: the batch's slots must still be this shard's (db/topology_repo.py).
    *slot_fence_writers(lambda w: w.fence),
    TableWriter(
        lambda w: w.new_rewards,
        _insert_new_rewards,
        fence="a reward this shard created already exists",
    ),
    TableWriter(
        lambda w: w.updated_rewards,
        _update_rewards,
        fence="a reward changed under this shard (stale version)",
    ),
    TableWriter(lambda w: w.restocks, _insert_restocks),
    TableWriter(
        lambda w: w.new_redemptions,
        _insert_redemptions,
        claim=Claim(
            lambda w: [(r.program_id, r.member_id, r.key) for r, _ in w.new_redemptions],
            RedemptionKeysExist,
        ),
    ),
    TableWriter(
        lambda w: w.updated_redemptions,
        _update_redemptions,
        fence="a redemption this shard updated is missing",
    ),
)


def new_redemption_id() -> uuid.UUID:
    return uuid.uuid4()
