"""Reward stock and the redemption saga's states: pure, for the stock actors (issue 3).

Stock arithmetic (invariant 5): for a limited reward,
    available = initial + restocked - reserved - redeemed  >= 0
so units reserved or redeemed never exceed the units ever stocked. A redemption first
*reserves* units (the saga's first step), then *confirms* them once the points are debited,
or *releases* them when it compensates. Unlimited rewards (stock None) only count.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from domain.errors import Code, PointsError

# A restock or a redemption moves at most this many units at once.
QUANTITY_MAX = 1_000_000
# Units a reward can ever hold (keeps every sum far from a bigint's limit).
STOCK_MAX = 10**12


@dataclass(slots=True)
class RewardStock:
    reward_id: str
    initial: int | None  # None: unlimited
    restocked: int = 0
    reserved: int = 0
    redeemed: int = 0
    active: bool = True

    @property
    def limited(self) -> bool:
        return self.initial is not None

    @property
    def available(self) -> int | None:
        if self.initial is None:
            return None
        return self.initial + self.restocked - self.reserved - self.redeemed

    def check(self) -> None:
        """Invariant 5: never more reserved and redeemed than ever stocked."""
        assert self.reserved >= 0 and self.redeemed >= 0 and self.restocked >= 0
        if self.initial is not None:
            assert self.initial >= 0
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
    if stock.initial is None:
        raise PointsError(Code.VALIDATION_ERROR, "an unlimited reward cannot be restocked")
    if stock.initial + stock.restocked + quantity > STOCK_MAX:
        raise PointsError(Code.LIMIT_EXCEEDED, f"stock would exceed {STOCK_MAX} units")
    before = stock.available
    stock.restocked += quantity
    assert before is not None and stock.available == before + quantity
    stock.check()


class SagaState(StrEnum):
    """A redemption's life. Persisted; every step is idempotent."""

    STARTED = "started"
    STOCK_RESERVED = "stock_reserved"
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
    SagaState.STOCK_RESERVED: frozenset({SagaState.POINTS_DEBITED, SagaState.COMPENSATING}),
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
