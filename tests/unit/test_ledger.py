"""Ledger math: examples for each rule, then Hypothesis against a simple model."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from domain.errors import Code, PointsError
from domain.ledger import (
    MEMBER_ACCOUNT,
    REFUND,
    SYSTEM_ISSUED,
    SYSTEM_REDEEMED,
    Account,
    Lot,
    account_view,
    available,
    credit,
    debit,
    new_account,
    refund,
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
    assert view["balance"] == {"available": 0, "pending": 0, "total": 50, "debt": 0, "held": 0}


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


def copy_lot(lot: Lot) -> Lot:
    return Lot(lot.lot_id, lot.original, lot.remaining, lot.expires_at, lot.created_at)


def lots_by_id(account: Account) -> dict[uuid.UUID, Lot]:
    return {lot.lot_id: copy_lot(lot) for lot in account.lots}


@pytest.mark.parametrize("where", ["unknown lot last", "fully spent lot not described"])
def test_refund_naming_an_unknown_lot_is_refused_and_changes_nothing(where: str) -> None:
    soon, later = ids(), ids()
    account = Account("shop", "alice", 1, 60, 160, 100, [])
    account.lots.append(Lot(soon, 10, 10, T0 + timedelta(days=5), T0))
    account.lots.append(Lot(later, 50, 50, None, T0))
    stored = lots_by_id(account)
    txn = debit(account, 15, "reward", T0, ids())
    assert txn.allocations == ((soon, 10), (later, 5))
    assert [lot.lot_id for lot in account.lots] == [later]  # `soon` was spent entirely
    allocations = list(txn.allocations)
    if where == "unknown lot last":
        unknown = ids()
        allocations.append((unknown, 5))
    else:
        unknown = soon
        allocations.reverse()  # the lot still held comes first
        del stored[soon]
    before = account.clone()
    with pytest.raises(PointsError) as err:
        refund(account, txn.txn_id, allocations, stored, "refund", T0, ids())
    assert err.value.code is Code.VALIDATION_ERROR
    assert str(unknown) in err.value.detail
    assert account == before


# ----------------------------------------------------------------------------- properties

# (original, remaining share of it, expiry in days from now: None = never, <= 0 = expired)
lot_specs = st.lists(
    st.tuples(
        st.integers(min_value=1, max_value=1000),
        st.floats(min_value=0.001, max_value=1.0),
        st.one_of(st.none(), st.integers(min_value=-30, max_value=60)),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(lot_specs, st.data())
def test_a_refund_restores_the_lots_a_debit_took_from(
    specs: list[tuple[int, float, int | None]], data: st.DataObject
) -> None:
    """Whatever the lots (expiring, not, already expired) and however much a debit took, a
    refund of it puts every point back into the lot it came from: each lot's remaining,
    original, expiry and age as before, balance restored, lifetime_spent back down."""
    now = T0 + timedelta(days=100)
    account = Account("p", "m", 1, 0, 0, 0, [])
    for index, (original, share, days) in enumerate(specs):
        remaining = max(1, round(original * share))
        expires_at = None if days is None else now + timedelta(days=days)
        account.lots.append(
            Lot(ids(), original, remaining, expires_at, T0 + timedelta(hours=index))
        )
        account.balance += remaining
        account.lifetime_earned += original
        account.lifetime_spent += original - remaining
    account.check()
    spendable = available(account, now)
    assume(spendable > 0)
    points = data.draw(st.integers(min_value=1, max_value=spendable), label="debit")
    before = account.clone()
    stored = lots_by_id(account)  # captured before the debit drops fully spent lots

    txn = debit(account, points, "reward", now, ids())
    assert account.lifetime_spent == before.lifetime_spent + points
    later = now + timedelta(days=data.draw(st.integers(min_value=0, max_value=90), label="wait"))
    back = refund(account, txn.txn_id, list(txn.allocations), stored, "refund", later, ids())

    assert {lot.lot_id: lot for lot in account.lots} == {lot.lot_id: lot for lot in before.lots}
    assert len(account.lots) == len(before.lots)
    assert account.balance == before.balance == back.balance_after
    assert account.lifetime_spent == before.lifetime_spent
    assert account.lifetime_earned == before.lifetime_earned
    assert available(account, now) == spendable
    assert (back.kind, back.points, back.refers_to) == (REFUND, points, txn.txn_id)
    assert back.allocations == txn.allocations
    assert {(e.account, e.amount) for e in back.entries} == {
        (MEMBER_ACCOUNT, points),
        (SYSTEM_REDEEMED, -points),
    }
    account.check()


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
