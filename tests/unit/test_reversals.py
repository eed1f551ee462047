"""Reversal arithmetic (domain/reversals.py): proportional, rounded down, never too much."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import Code, PointsError
from domain.reversals import Reversal, reversal

pytestmark = pytest.mark.unit

POINTS = st.integers(min_value=0, max_value=10**12)
# Event amounts as stored: int minor units or decimal text, positive.
AMOUNTS = st.one_of(
    st.integers(min_value=1, max_value=10**12),
    st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1e9"), places=2).map(str),
)
PARTS = st.lists(
    st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1e9"), places=2).map(str),
    min_size=1,
    max_size=8,
)


def run(points: int, amount: object, parts: list[str | None]) -> list[Reversal]:
    """Reversals one after the other, carrying the running totals as the event row does."""
    reversed_amount, reversed_points = "0", 0
    steps = []
    for part in parts:
        step = reversal(points, amount, reversed_amount, reversed_points, part)
        reversed_amount, reversed_points = str(step.reversed_amount), step.target_points
        steps.append(step)
    return steps


def test_proportional_and_rounded_down() -> None:
    assert reversal(100, "50.00", "0", 0, "10") == Reversal(Decimal("10"), 20, 20)
    assert reversal(10, 3, "0", 0, "1") == Reversal(Decimal("1"), 3, 3)  # 3.33 rounded down
    assert reversal(10, 3, "1", 3, "1") == Reversal(Decimal("2"), 6, 3)
    assert reversal(10, 3, "2", 6, "1") == Reversal(Decimal("3"), 10, 4)  # the last takes the rest


def test_more_than_the_amount_is_clamped_to_it() -> None:
    assert reversal(100, "50", "40", 80, "25") == Reversal(Decimal("50"), 100, 20)
    assert reversal(100, "50", "50", 100, "1") == Reversal(Decimal("50"), 100, 0)


def test_full_reversal_takes_what_is_left_with_or_without_an_amount() -> None:
    assert reversal(100, "50", "10", 20, None) == Reversal(Decimal("50"), 100, 80)
    # No amount attribute (or an unusable one): the reversed amount stays as it was.
    assert reversal(100, None, "0", 0, None) == Reversal(Decimal("0"), 100, 100)
    assert reversal(100, True, "0", 0, None) == Reversal(Decimal("0"), 100, 100)
    assert reversal(100, "abc", "0", 0, None) == Reversal(Decimal("0"), 100, 100)
    assert reversal(100, "50", "50", 100, None) == Reversal(Decimal("50"), 100, 0)


@pytest.mark.parametrize(
    ("event_amount", "amount", "detail"),
    [
        (None, "1", "the event has no amount attribute"),
        (True, "1", "the event has no amount attribute"),
        ("50", "0", "amount must be positive"),
        ("50", "-1", "amount must be positive"),
        ("0", "1", "the event's amount is not positive"),
        ("-5", "1", "the event's amount is not positive"),
        ("50", 1.5, "amount must be a decimal string"),
        ("50", "1e3", "amount must be an integer or a decimal string"),
        (1.5, "1", "attributes.amount must be a decimal string"),
        ("abc", "1", "attributes.amount must be an integer or a decimal string"),
    ],
)
def test_invalid_partial_reversals_are_validation_errors(
    event_amount: object, amount: object, detail: str
) -> None:
    with pytest.raises(PointsError) as caught:
        reversal(100, event_amount, "0", 0, amount)
    assert caught.value.code is Code.VALIDATION_ERROR
    assert detail in caught.value.detail


def test_a_bad_stored_running_total_is_a_validation_error() -> None:
    with pytest.raises(PointsError) as caught:
        reversal(100, "50", "not a number", 0, "1")
    assert caught.value.code is Code.VALIDATION_ERROR


def test_many_digits_do_not_round() -> None:
    """Python's default 28 digits would leave one point behind here."""
    points = 999_999_999_999
    amount = "1234567890123456789.123456789"
    assert reversal(points, amount, "0", 0, amount) == Reversal(Decimal(amount), points, points)
    # A running total of 30 digits is kept whole.
    part = reversal(points, amount, "0.000000000001", 0, "617283945061728394.561728394512")
    assert str(part.reversed_amount) == "617283945061728394.561728394513"


@given(POINTS, AMOUNTS, PARTS)
def test_partial_reversals_never_take_more_than_a_full_one(
    points: int, amount: int | str, parts: list[str]
) -> None:
    steps = run(points, amount, list(parts))
    full = reversal(points, amount, "0", 0, None)
    assert sum(step.claw_points for step in steps) == steps[-1].target_points
    assert steps[-1].target_points <= full.claw_points == points
    for before, after in zip([Reversal(Decimal(0), 0, 0), *steps], steps, strict=False):
        assert after.reversed_amount >= before.reversed_amount
        assert before.target_points <= after.target_points <= points
        assert after.claw_points >= 0


@given(POINTS, AMOUNTS, PARTS)
def test_the_reversal_reaching_the_whole_amount_takes_the_rest(
    points: int, amount: int | str, parts: list[str]
) -> None:
    steps = run(points, amount, [*parts, str(amount)])  # the last one covers what is left
    assert steps[-1].reversed_amount == Decimal(amount)
    assert steps[-1].target_points == points
    assert sum(step.claw_points for step in steps) == points


@given(POINTS, AMOUNTS, PARTS)
def test_a_full_reversal_after_partial_ones_takes_exactly_the_rest(
    points: int, amount: int | str, parts: list[str]
) -> None:
    steps = run(points, amount, [*parts, None])
    assert steps[-1].target_points == points
    assert sum(step.claw_points for step in steps) == points
