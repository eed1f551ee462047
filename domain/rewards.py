"""Reward stock and the redemption saga's states: pure, for the stock actors (issue 3).

Stock arithmetic (invariant 5): for a limited reward,
    available = stocked - reserved - redeemed  >= 0
where `stocked` is every unit ever made available (the initial stock plus restocks), so
units reserved or redeemed never exceed the units ever stocked. A redemption first
*reserves* units (the saga's first step), then *confirms* them once the points are debited,
or *releases* them when it compensates. Unlimited rewards (stock None) only count.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from domain.errors import Code, PointsError

# A restock or a redemption moves at most this many units at once.
QUANTITY_MAX = 1_000_000
# Units a reward can ever hold (keeps every sum far from a bigint's limit).
STOCK_MAX = 10**12


@dataclass(slots=True)
class RewardStock:
    reward_id: str
    stocked: int | None  # None: unlimited
    reserved: int = 0
    redeemed: int = 0
    active: bool = True

    @property
    def limited(self) -> bool:
        return self.stocked is not None

    @property
    def available(self) -> int | None:
        if self.stocked is None:
            return None
        return self.stocked - self.reserved - self.redeemed

    def check(self) -> None:
        """Invariant 5: never more reserved and redeemed than ever stocked."""
        assert self.reserved >= 0 and self.redeemed >= 0
        if self.stocked is not None:
            assert self.stocked >= 0
            available = self.available
            assert available is not None and available >= 0, "oversold"


def _check_quantity(quantity: int) -> None:
    if type(quantity) is not int or not 1 <= quantity <= QUANTITY_MAX:
        raise PointsError(Code.VALIDATION_ERROR, f"quantity must be 1..{QUANTITY_MAX}")


def reserve(
    stock: RewardStock,
    quantity: int,
    member_redeemed: int = 0,
    per_member_limit: int | None = None,
) -> None:
    """Hold `quantity` units for a redemption. Mutates `stock` only on success.

    `member_redeemed`: units this member already holds (reserved or redeemed) of this reward.
    """
    _check_quantity(quantity)
    assert member_redeemed >= 0
    stock.check()
    if not stock.active:
        raise PointsError(Code.REWARD_INACTIVE, f"reward {stock.reward_id} is not active")
    if per_member_limit is not None and member_redeemed + quantity > per_member_limit:
        raise PointsError(
            Code.LIMIT_EXCEEDED,
            f"at most {per_member_limit} per member; {member_redeemed} already redeemed",
        )
    available = stock.available
    if available is not None and quantity > available:
        raise PointsError(
            Code.OUT_OF_STOCK, f"{quantity} requested, {available} left of {stock.reward_id}"
        )
    reserved_before = stock.reserved
    stock.reserved += quantity
    assert stock.reserved == reserved_before + quantity
    stock.check()


def confirm(stock: RewardStock, quantity: int) -> None:
    """The points were debited: reserved units become redeemed."""
    _check_quantity(quantity)
    assert stock.reserved >= quantity, "confirming more than was reserved"
    stock.reserved -= quantity
    stock.redeemed += quantity
    stock.check()


def release(stock: RewardStock, quantity: int, *, redeemed: bool = False) -> None:
    """Compensation or cancellation: give units back (from reserved, or from redeemed)."""
    _check_quantity(quantity)
    if redeemed:
        assert stock.redeemed >= quantity, "releasing more than was redeemed"
        stock.redeemed -= quantity
    else:
        assert stock.reserved >= quantity, "releasing more than was reserved"
        stock.reserved -= quantity
    stock.check()


def restock(stock: RewardStock, quantity: int) -> None:
    _check_quantity(quantity)
    if stock.stocked is None:
        raise PointsError(Code.INVALID_STATE, "an unlimited reward cannot be restocked")
    if stock.stocked + quantity > STOCK_MAX:
        raise PointsError(Code.LIMIT_EXCEEDED, f"stock would exceed {STOCK_MAX} units")
    before = stock.available
    stock.stocked += quantity
    assert before is not None and stock.available == before + quantity
    stock.check()


def set_available(stock: RewardStock, available: int | None) -> None:
    """An operator sets how many units are available now (None: unlimited).

    Units already reserved or redeemed stay counted, so `stocked` becomes
    available + reserved + redeemed.
    """
    if available is None:
        stock.stocked = None
    else:
        if type(available) is not int or not 0 <= available <= STOCK_MAX:
            raise PointsError(Code.VALIDATION_ERROR, f"stock must be 0..{STOCK_MAX} or null")
        stock.stocked = available + stock.reserved + stock.redeemed
    stock.check()


class SagaState(StrEnum):
    """A redemption's life. Persisted; every step is idempotent."""

    STARTED = "started"
    STOCK_RESERVED = "stock_reserved"
    # Above the program's review threshold: the points are held (not spent) and the units
    # stay reserved until an operator approves (on to points_debited) or rejects (failed).
    PENDING_REVIEW = "pending_review"
    POINTS_DEBITED = "points_debited"
    PENDING_FULFILLMENT = "pending_fulfillment"
    COMPLETED = "completed"
    COMPENSATING = "compensating"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATES = frozenset({SagaState.COMPLETED, SagaState.FAILED, SagaState.CANCELLED})

# Allowed moves. Forward: reserve, debit, fulfil, complete. Any non-terminal state may
# start compensating; compensation ends failed (a step failed) or cancelled (an operator
# cancelled). A completed redemption may be cancelled by an operator (refund, restock).
TRANSITIONS: dict[SagaState, frozenset[SagaState]] = {
    SagaState.STARTED: frozenset({SagaState.STOCK_RESERVED, SagaState.FAILED}),
    # Straight to failed when the debit is refused: nothing to refund, the units go back.
    SagaState.STOCK_RESERVED: frozenset(
        {
            SagaState.POINTS_DEBITED,
            SagaState.PENDING_REVIEW,
            SagaState.COMPENSATING,
            SagaState.FAILED,
        }
    ),
    # Approved: the held points were spent. Rejected: they went back, the units go back.
    SagaState.PENDING_REVIEW: frozenset({SagaState.POINTS_DEBITED, SagaState.FAILED}),
    SagaState.POINTS_DEBITED: frozenset(
        {SagaState.PENDING_FULFILLMENT, SagaState.COMPLETED, SagaState.COMPENSATING}
    ),
    SagaState.PENDING_FULFILLMENT: frozenset({SagaState.COMPLETED, SagaState.COMPENSATING}),
    SagaState.COMPLETED: frozenset({SagaState.COMPENSATING}),
    SagaState.COMPENSATING: frozenset({SagaState.FAILED, SagaState.CANCELLED}),
    SagaState.FAILED: frozenset(),
    SagaState.CANCELLED: frozenset(),
}


def advance(current: SagaState, target: SagaState) -> SagaState:
    """The next state, or a validation error for a move the saga does not allow.

    Moving to the state it is already in is allowed: a step re-run after a crash finds its
    own state and re-applies its (idempotent) effects.
    """
    assert current in TRANSITIONS
    if target == current:
        return current
    if target not in TRANSITIONS[current]:
        raise PointsError(
            Code.VALIDATION_ERROR, f"a redemption cannot go from {current} to {target}"
        )
    return target


# Where a redemption's units are.
RESERVED = "reserved"
REDEEMED = "redeemed"
RELEASED = "released"


@dataclass(slots=True)
class Reward:
    program_id: str
    reward_id: str
    name: str
    cost_points: int
    stock: RewardStock
    per_member_limit: int | None
    fulfillment: dict[str, Any]
    version: int  # fencing token, as for accounts; 0 = not in the database yet
    created_at: datetime
    updated_at: datetime
    # member -> units held (reserved or redeemed) by their live redemptions
    holders: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class Redemption:
    redemption_id: uuid.UUID
    program_id: str
    reward_id: str
    member_id: str
    key: str
    request_hash: str
    quantity: int
    cost_points: int
    points: int
    status: SagaState
    stock_state: str
    fulfillment: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    compensate_to: SagaState | None = None
    debit_txn_id: uuid.UUID | None = None
    refund_txn_id: uuid.UUID | None = None
    balance_after: int | None = None
    attempts: int = 0
    failure_code: str | None = None
    failure_reason: str | None = None
    # Held for review: the review deciding it.
    review_id: uuid.UUID | None = None
    # A refusal's fields besides code and detail (a velocity limit's `limit`).
    failure_extra: dict[str, Any] | None = None


def start_redemption(
    reward: Reward,
    redemption_id: uuid.UUID,
    member_id: str,
    quantity: int,
    key: str,
    request_hash: str,
    now: datetime,
) -> Redemption:
    """The saga's first step: check and reserve the units. Mutates `reward` only on success."""
    _check_quantity(quantity)
    held = reward.holders.get(member_id, 0)
    reserve(reward.stock, quantity, held, reward.per_member_limit)
    reward.holders[member_id] = held + quantity
    points = reward.cost_points * quantity
    return Redemption(
        redemption_id,
        reward.program_id,
        reward.reward_id,
        member_id,
        key,
        request_hash,
        quantity,
        reward.cost_points,
        points,
        SagaState.STOCK_RESERVED,
        RESERVED,
        dict(reward.fulfillment),
        now,
        now,
    )


def move(reward: Reward, redemption: Redemption, target: SagaState, now: datetime) -> None:
    """One saga step on the reward side, with its effect on stock. Idempotent.

    completed: reserved units become redeemed. failed / cancelled: the units go back
    (from reserved or from redeemed). Other moves only record progress.
    """
    assert (redemption.program_id, redemption.reward_id) == (reward.program_id, reward.reward_id)
    if target == redemption.status:
        return
    redemption.status = advance(redemption.status, target)
    if target is SagaState.COMPLETED and redemption.stock_state == RESERVED:
        confirm(reward.stock, redemption.quantity)
        redemption.stock_state = REDEEMED
    elif target in (SagaState.FAILED, SagaState.CANCELLED) and redemption.stock_state != RELEASED:
        release(reward.stock, redemption.quantity, redeemed=redemption.stock_state == REDEEMED)
        redemption.stock_state = RELEASED
        held = reward.holders.get(redemption.member_id, 0) - redemption.quantity
        assert held >= 0
        if held:
            reward.holders[redemption.member_id] = held
        else:
            reward.holders.pop(redemption.member_id, None)
    redemption.updated_at = now
    reward.stock.check()


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def reward_view(reward: Reward) -> dict[str, Any]:
    stock = reward.stock
    return {
        "program_id": reward.program_id,
        "reward_id": reward.reward_id,
        "name": reward.name,
        "cost_points": reward.cost_points,
        "stock": stock.available,
        "stocked": stock.stocked,
        "reserved": stock.reserved,
        "redeemed": stock.redeemed,
        "per_member_limit": reward.per_member_limit,
        "active": stock.active,
        "fulfillment": public_fulfillment(reward.fulfillment),
        "created_at": _iso(reward.created_at),
        "updated_at": _iso(reward.updated_at),
    }


def public_fulfillment(fulfillment: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fulfillment.items() if k in ("type", "url")}


def redemption_view(redemption: Redemption) -> dict[str, Any]:
    return {
        "id": str(redemption.redemption_id),
        "program_id": redemption.program_id,
        "reward_id": redemption.reward_id,
        "member_id": redemption.member_id,
        "quantity": redemption.quantity,
        "status": str(redemption.status),
        "points_spent": redemption.points
        if redemption.debit_txn_id is not None and redemption.refund_txn_id is None
        else 0,
        "points": redemption.points,
        "balance_after": redemption.balance_after,
        "debit_transaction_id": _str(redemption.debit_txn_id),
        "refund_transaction_id": _str(redemption.refund_txn_id),
        "fulfillment": public_fulfillment(redemption.fulfillment),
        "failure": None
        if redemption.failure_code is None
        else {"code": redemption.failure_code, "detail": redemption.failure_reason},
        "created_at": _iso(redemption.created_at),
        "updated_at": _iso(redemption.updated_at),
        # Only on redemptions held for review: the answers of every other redemption stay
        # exactly what they were before reviews existed.
        **({"review_id": str(redemption.review_id)} if redemption.review_id else {}),
    }


def _str(value: uuid.UUID | None) -> str | None:
    return None if value is None else str(value)
