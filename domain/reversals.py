"""Reversals: how many points an event's (partial) reversal claws back.

A refund or chargeback upstream reverses some of an event's amount (an order's price, a
card spend). The member loses the points the event earned in the same proportion, rounded
down, so partial reversals never claw back more in total than a full one, and the one that
reaches the whole amount takes the rest. Without an amount the whole event is reversed,
whatever its amount attribute holds (or whether it has one).

The event row keeps the running totals (amount reversed as decimal text, points reversed),
so each reversal only claws back the difference between the new total and the old one.
"""

from __future__ import annotations

from decimal import Decimal, localcontext
from fractions import Fraction
from typing import NamedTuple

from domain.errors import Code, PointsError
from domain.limits import DECIMAL_DIGITS_MAX
from domain.numbers import parse_decimal

# Amounts are decimals of at most DECIMAL_DIGITS_MAX digits within a bigint's range.
AMOUNT_LOW = Fraction(-(2**63 - 1))
AMOUNT_HIGH = Fraction(2**63 - 1)
# Points as stored: a PostgreSQL bigint.
POINTS_STORED_MAX = 2**63 - 1
# Digits the reversal arithmetic keeps. Python's default context keeps 28, which can round
# the sum of two amounts, or an amount times the event's points; this is enough for neither
# to round (the product of a bigint and an amount is the largest number involved).
REVERSAL_DIGITS = 4 * DECIMAL_DIGITS_MAX
assert len(str(POINTS_STORED_MAX)) + DECIMAL_DIGITS_MAX + 1 < REVERSAL_DIGITS


class Reversal(NamedTuple):
    """The event's running totals after this reversal, and what it claws back now."""

    # Of the event's amount, reversed in all (stored as decimal text on the event).
    reversed_amount: Decimal
    # Of the event's points, reversed in all.
    target_points: int
    # To claw back now: target_points minus what earlier reversals took.
    claw_points: int


def _amount(value: object, field: str) -> Decimal:
    """An amount (int or decimal string) as an exact Decimal; validation error otherwise."""
    return parse_decimal(value, field, AMOUNT_LOW, AMOUNT_HIGH)


def reversal(
    event_points: int,
    event_amount: object,
    reversed_amount: object,
    reversed_points: int,
    amount: object | None,
) -> Reversal:
    """Reverse `amount` more of an event (None: all of it).

    `event_points` is what the event earned, `event_amount` its amount attribute as stored
    (None if it has none), `reversed_amount` / `reversed_points` the totals of the earlier
    reversals. Raises PointsError(VALIDATION_ERROR) for a partial reversal of an event
    without a usable positive amount, or for an amount that is not a positive decimal.
    """
    assert 0 <= event_points <= POINTS_STORED_MAX
    assert 0 <= reversed_points <= event_points
    already = _amount(reversed_amount, "reversed_amount")
    with localcontext() as context:
        context.prec = REVERSAL_DIGITS
        if amount is None:
            # The whole event, whatever its amount attribute holds (or not).
            target = event_points
            try:
                new_reversed = _amount(event_amount, "attributes.amount")
            except PointsError:
                new_reversed = already
        else:
            if event_amount is None or isinstance(event_amount, bool):
                raise PointsError(
                    Code.VALIDATION_ERROR,
                    "the event has no amount attribute: only a full reversal (no amount)",
                )
            total = _amount(event_amount, "attributes.amount")
            more = _amount(amount, "amount")
            if more <= 0:
                raise PointsError(Code.VALIDATION_ERROR, "amount must be positive")
            if total <= 0:
                raise PointsError(Code.VALIDATION_ERROR, "the event's amount is not positive")
            new_reversed = min(already + more, total)
            # Proportional, rounded down: partial reversals never claw back more in total
            # than a full one, and the last one (reaching the whole amount) takes the rest.
            target = int(event_points * new_reversed // total)
            assert new_reversed < total or target == event_points
    # Never more than the event earned, never less than earlier reversals already took.
    target = max(min(target, event_points), reversed_points)
    result = Reversal(new_reversed, target, target - reversed_points)
    assert 0 <= reversed_points <= result.target_points <= event_points
    assert result.claw_points == result.target_points - reversed_points >= 0
    return result
