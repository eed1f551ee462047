"""Ledger math: examples for each rule, then Hypothesis against a simple model."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import Code, PointsError
from domain.ledger import (
    MEMBER_ACCOUNT,
    SYSTEM_ISSUED,
    SYSTEM_REDEEMED,
    Account,
    Lot,
    account_view,
    available,
    credit,
    debit,
    new_account,
    spend_order,
)
from domain.limits import BALANCE_MAX, POINTS_PER_OPERATION_MAX, REASON_LENGTH_MAX

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ids() -> uuid.UUID:
    return uuid.uuid4()


def test_credit_creates_a_lot_and_balanced_entries() -> None:
    account = new_account("shop", "alice")
    txn = credit(account, 100, "order", T0, ids(), ids())
    assert account.balance == 100
    assert [lot.remaining for lot in account.lots] == [100]
    assert {(e.account, e.amount) for e in txn.entries} == {
        (MEMBER_ACCOUNT, 100),
        (SYSTEM_ISSUED, -100),
    }
    assert txn.balance_after == 100
    assert account.lifetime_earned == 100


def test_debit_takes_soonest_expiry_first_and_never_expiring_last() -> None:
    account = new_account("shop", "alice")
    credit(account, 10, "no expiry", T0, ids(), ids())
    late = ids()
    credit(account, 10, "late", T0, ids(), late, T0 + timedelta(days=60))
    soon = ids()
    credit(account, 10, "soon", T0, ids(), soon, T0 + timedelta(days=5))
    txn = debit(account, 15, "reward", T0 + timedelta(days=1), ids())
    assert txn.allocations == ((soon, 10), (late, 5))
    remaining = sorted(lot.remaining for lot in account.lots)
    assert remaining == [5, 10]
    assert {(e.account, e.amount) for e in txn.entries} == {
        (MEMBER_ACCOUNT, -15),
        (SYSTEM_REDEEMED, 15),
    }


def test_ties_on_expiry_are_broken_by_age() -> None:
    account = new_account("shop", "alice")
    expiry = T0 + timedelta(days=30)
    older = ids()
    credit(account, 5, "first", T0, ids(), older, expiry)
    credit(account, 5, "second", T0 + timedelta(seconds=1), ids(), ids(), expiry)
    order = spend_order(account.lots, T0 + timedelta(days=1))
    assert order[0].lot_id == older


def test_expired_lots_cannot_be_spent() -> None:
    account = new_account("shop", "alice")
    credit(account, 50, "expiring", T0, ids(), ids(), T0 + timedelta(days=1))
    later = T0 + timedelta(days=2)
    assert available(account, later) == 0
    with pytest.raises(PointsError) as err:
        debit(account, 1, "too late", later, ids())
    assert err.value.code is Code.INSUFFICIENT_POINTS
    view = account_view(account, later, 10)
    assert view["balance"] == {"available": 0, "total": 50}


def test_insufficient_debit_changes_nothing() -> None:
    account = new_account("shop", "alice")
    credit(account, 10, "order", T0, ids(), ids())
    before = account.clone()
    with pytest.raises(PointsError) as err:
        debit(account, 11, "too much", T0, ids())
    assert err.value.code is Code.INSUFFICIENT_POINTS
    assert account == before


@pytest.mark.parametrize(
    "points",
    [0, -1, POINTS_PER_OPERATION_MAX + 1, 1.5, True, "10"],
)
def test_points_out_of_bounds_or_not_int_are_refused(points: object) -> None:
    account = new_account("shop", "alice")
    with pytest.raises(PointsError) as err:
        credit(account, points, "x", T0, ids(), ids())  # type: ignore[arg-type]
    assert err.value.code is Code.VALIDATION_ERROR
    assert account.balance == 0 and account.lots == []


@pytest.mark.parametrize("reason", ["", "x" * (REASON_LENGTH_MAX + 1)])
def test_reason_bounds(reason: str) -> None:
    with pytest.raises(PointsError):
        credit(new_account("shop", "alice"), 1, reason, T0, ids(), ids())


def test_balance_ceiling() -> None:
    account = Account("shop", "whale", 1, BALANCE_MAX, BALANCE_MAX, 0, [])
    account.lots.append(Lot(ids(), BALANCE_MAX, BALANCE_MAX, None, T0))
    account.check()
    with pytest.raises(PointsError) as err:
        credit(account, 1, "overflow", T0, ids(), ids())
    assert err.value.code is Code.LIMIT_EXCEEDED
    assert account.balance == BALANCE_MAX


def test_credit_with_past_expiry_is_refused() -> None:
    with pytest.raises(PointsError):
        credit(new_account("s", "m"), 1, "x", T0, ids(), ids(), T0 - timedelta(seconds=1))


# ----------------------------------------------------------------------------- properties

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("credit"),
            st.integers(min_value=1, max_value=1000),
            st.one_of(st.none(), st.integers(min_value=1, max_value=100)),  # expiry in days
        ),
        st.tuples(st.just("debit"), st.integers(min_value=1, max_value=1500), st.none()),
        st.tuples(st.just("wait"), st.integers(min_value=0, max_value=40), st.none()),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_random_sequences_match_a_simple_model(ops: list[tuple[str, int, int | None]]) -> None:
    """Against a model that keeps (amount, expiry) pairs: never negative, balance == sum of
    lots == sum of member entries, every transaction balanced, available as the model says."""
    account = new_account("p", "m")
    now = T0
    model: list[list[object]] = []  # [remaining, expires_at]
    member_entries = 0
    system_entries = 0
    for kind, amount, days in ops:
        if kind == "wait":
            now += timedelta(days=amount)
            continue
        model_available = sum(
            r
            for r, x in model
            if (x is None or x > now)  # type: ignore[operator]
        )
        assert available(account, now) == model_available
        if kind == "credit":
            expires = None if days is None else now + timedelta(days=days)
            txn = credit(account, amount, "c", now, ids(), ids(), expires)
            model.append([amount, expires])
        else:
            if amount > model_available:
                with pytest.raises(PointsError):
                    debit(account, amount, "d", now, ids())
                continue
            txn = debit(account, amount, "d", now, ids())
            still = amount
            live = [e for e in model if e[1] is None or e[1] > now]  # type: ignore[operator]
            live.sort(key=lambda e: (e[1] is None, e[1] or T0))
            for entry in live:
                take = min(entry[0], still)  # type: ignore[type-var]
                entry[0] -= take  # type: ignore[operator]
                still -= take
        for entry in txn.entries:
            if entry.account == MEMBER_ACCOUNT:
                member_entries += entry.amount
            else:
                system_entries += entry.amount
        assert sum(e.amount for e in txn.entries) == 0
        assert account.balance >= 0
        assert account.balance == sum(lot.remaining for lot in account.lots)
        assert account.balance == member_entries == -system_entries
        assert account.balance == sum(r for r, _ in model)  # type: ignore[misc]
