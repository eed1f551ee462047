"""Ledger for earning programs: pending lots, expiry write-offs, reversals, member view."""

import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import Code, PointsError
from domain.ledger import (
    ACTIVATE,
    EXPIRE,
    MEMBER_ACCOUNT,
    MEMBER_PENDING_ACCOUNT,
    REVERSAL,
    SYSTEM_EXPIRED,
    SYSTEM_ISSUED,
    SYSTEM_REDEEMED,
    Account,
    Transaction,
    account_view,
    activate,
    available,
    credit,
    debit,
    expire,
    new_account,
    reverse,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SHANGHAI = ZoneInfo("Asia/Shanghai")


def ids() -> uuid.UUID:
    return uuid.uuid4()


def legs(txn: Transaction) -> set[tuple[str, int]]:
    return {(entry.account, entry.amount) for entry in txn.entries}


def remaining_by_id(account: Account) -> dict[uuid.UUID, int]:
    return {lot.lot_id: lot.remaining for lot in account.lots}


def balance(view: dict[str, object]) -> dict[str, object]:
    """The three balance figures of the member view (other keys may be added)."""
    figures = view["balance"]
    assert isinstance(figures, dict)
    return {key: figures[key] for key in ("available", "pending", "total")}


# ----------------------------------------------------------------------------- pending lots


def test_a_pending_credit_is_booked_to_member_pending_not_the_balance() -> None:
    account = new_account("shop", "alice")
    lot_id = ids()
    txn = credit(account, 100, "order", T0, ids(), lot_id, available_at=T0 + timedelta(days=7))
    assert txn.new_lot is not None and txn.new_lot.available_at == T0 + timedelta(days=7)
    assert legs(txn) == {(MEMBER_PENDING_ACCOUNT, 100), (SYSTEM_ISSUED, -100)}
    assert (account.balance, account.pending) == (0, 100)
    assert available(account, T0) == 0
    view = account_view(account, T0, 10)
    assert balance(view) == {"available": 0, "pending": 100, "total": 100}
    assert [lot["lot_id"] for lot in view["pending_lots"]] == [str(lot_id)]  # type: ignore[index]
    assert view["lots"] == []  # only spendable lots are listed there

    before = account.clone()
    with pytest.raises(PointsError) as err:
        debit(account, 1, "reward", T0 + timedelta(days=8), ids())  # due, not activated
    assert err.value.code is Code.INSUFFICIENT_POINTS
    assert account == before


def test_activation_moves_due_pending_points_into_the_balance_once() -> None:
    account = new_account("shop", "alice")
    release = T0 + timedelta(days=7)
    credit(account, 100, "order", T0, ids(), ids(), available_at=release)
    assert activate(account, release - timedelta(microseconds=1), ids()) is None
    txn = activate(account, release, ids())
    assert txn is not None and txn.kind == ACTIVATE and txn.points == 100
    assert legs(txn) == {(MEMBER_PENDING_ACCOUNT, -100), (MEMBER_ACCOUNT, 100)}
    assert (account.balance, account.pending) == (100, 0)
    assert activate(account, release, ids()) is None  # nothing left to activate
    view = account_view(account, release, 10)
    assert balance(view) == {"available": 100, "pending": 0, "total": 100}
    assert view["pending_lots"] == []
    assert debit(account, 60, "reward", release, ids()).points == 60
    assert account.balance == 40


def test_activation_repays_debt_first() -> None:
    account = new_account("shop", "alice")
    account.debt = 30
    credit(account, 100, "order", T0, ids(), ids(), available_at=T0 + timedelta(days=1))
    txn = activate(account, T0 + timedelta(days=1), ids())
    assert txn is not None and txn.debt_change == -30
    assert (account.balance, account.debt, account.pending) == (70, 0, 0)
    assert sum(points for _, points in txn.allocations) == 70


def test_pending_lots_are_not_spent_while_others_are() -> None:
    account = new_account("shop", "alice")
    credit(account, 50, "pending", T0, ids(), ids(), available_at=T0 + timedelta(days=3))
    free = ids()
    credit(account, 20, "free", T0, ids(), free)
    assert available(account, T0) == 20
    with pytest.raises(PointsError) as err:
        debit(account, 21, "too much", T0, ids())
    assert err.value.code is Code.INSUFFICIENT_POINTS
    txn = debit(account, 20, "reward", T0, ids())
    assert txn.allocations == ((free, 20),)
    assert (account.balance, account.pending) == (0, 50) and available(account, T0) == 0


@pytest.mark.parametrize("offset", [timedelta(0), timedelta(seconds=-1), timedelta(days=-30)])
def test_available_at_not_in_the_future_is_available_at_once(offset: timedelta) -> None:
    account = new_account("shop", "alice")
    txn = credit(account, 10, "order", T0, ids(), ids(), available_at=T0 + offset)
    assert txn.new_lot is not None and txn.new_lot.available_at is None
    assert available(account, T0) == 10
    assert balance(account_view(account, T0, 10)) == {
        "available": 10,
        "pending": 0,
        "total": 10,
    }


@pytest.mark.parametrize(
    "expires_after_available", [timedelta(0), timedelta(seconds=-1), timedelta(days=-2)]
)
def test_points_expiring_before_they_are_available_are_refused(
    expires_after_available: timedelta,
) -> None:
    account = new_account("shop", "alice")
    available_at = T0 + timedelta(days=3)
    with pytest.raises(PointsError) as err:
        credit(
            account,
            10,
            "order",
            T0,
            ids(),
            ids(),
            expires_at=available_at + expires_after_available,
            available_at=available_at,
        )
    assert err.value.code is Code.VALIDATION_ERROR
    assert account.balance == 0 and account.lots == [] and account.lifetime_earned == 0


def test_expiry_one_instant_after_availability_is_accepted() -> None:
    account = new_account("shop", "alice")
    available_at = T0 + timedelta(days=3)
    credit(
        account,
        10,
        "order",
        T0,
        ids(),
        ids(),
        expires_at=available_at + timedelta(microseconds=1),
        available_at=available_at,
    )
    assert activate(account, available_at, ids()) is not None
    assert available(account, available_at) == 10
    assert available(account, available_at + timedelta(microseconds=1)) == 0


# ----------------------------------------------------------------------------- expire


def expiring_account() -> tuple[Account, dict[str, uuid.UUID]]:
    """a: 10 expiring T0+1d; b: 20 expiring T0+2d, 5 of it spent; c: 30 expiring T0+10d;
    d: 40 never expiring."""
    account = new_account("shop", "alice")
    lots = {name: ids() for name in "abcd"}
    credit(account, 10, "a", T0, ids(), lots["a"], T0 + timedelta(days=1))
    credit(account, 20, "b", T0, ids(), lots["b"], T0 + timedelta(days=2))
    credit(account, 30, "c", T0, ids(), lots["c"], T0 + timedelta(days=10))
    credit(account, 40, "d", T0, ids(), lots["d"])
    # Spends 10 from a and 5 from b (soonest expiry first).
    debit(account, 15, "reward", T0, ids())
    assert remaining_by_id(account) == {lots["b"]: 15, lots["c"]: 30, lots["d"]: 40}
    return account, lots


def test_expire_writes_off_exactly_what_is_left_in_due_lots() -> None:
    account, lots = expiring_account()
    now = T0 + timedelta(days=2)  # b expires exactly now: due
    earned, spent = account.lifetime_earned, account.lifetime_spent
    txn_id = ids()
    txn = expire(account, now, txn_id)
    assert txn is not None
    assert (txn.txn_id, txn.kind, txn.points, txn.created_at) == (txn_id, EXPIRE, 15, now)
    assert legs(txn) == {(MEMBER_ACCOUNT, -15), (SYSTEM_EXPIRED, 15)}
    assert sum(entry.amount for entry in txn.entries) == 0
    assert txn.allocations == ((lots["b"], 15),)
    assert txn.balance_after == account.balance == 70
    # Not yet due lots are untouched.
    assert remaining_by_id(account) == {lots["c"]: 30, lots["d"]: 40}
    by_id = {lot.lot_id: lot for lot in account.lots}
    assert by_id[lots["c"]].expires_at == T0 + timedelta(days=10)
    assert by_id[lots["d"]].expires_at is None
    assert account.balance == sum(lot.remaining for lot in account.lots)
    # Expiry is neither earning nor spending.
    assert (account.lifetime_earned, account.lifetime_spent) == (earned, spent)
    account.check()


def test_expire_names_every_due_lot_with_its_remaining() -> None:
    account = new_account("shop", "alice")
    first, second, third = ids(), ids(), ids()
    credit(account, 7, "first", T0, ids(), first, T0 + timedelta(hours=1))
    credit(account, 9, "second", T0, ids(), second, T0 + timedelta(hours=5))
    credit(account, 11, "third", T0, ids(), third, T0 + timedelta(hours=6))
    txn = expire(account, T0 + timedelta(hours=5, minutes=30), ids())
    assert txn is not None
    assert sorted(txn.allocations) == sorted([(first, 7), (second, 9)])
    assert txn.points == 16
    assert legs(txn) == {(MEMBER_ACCOUNT, -16), (SYSTEM_EXPIRED, 16)}
    assert remaining_by_id(account) == {third: 11}


def test_expire_twice_writes_nothing_the_second_time() -> None:
    account, _ = expiring_account()
    now = T0 + timedelta(days=3)
    assert expire(account, now, ids()) is not None
    after_first = account.clone()
    assert expire(account, now, ids()) is None
    assert account == after_first
    # Later, more lots are due: a new write-off for just those.
    later = expire(account, T0 + timedelta(days=10), ids())
    assert later is not None and later.points == 30
    assert account.balance == 40


def test_expire_with_nothing_due_changes_nothing() -> None:
    account, _ = expiring_account()
    before = account.clone()
    # a is fully spent already: nothing is left to write off at T0 + 1d.
    assert expire(account, T0 + timedelta(days=1), ids()) is None
    assert account == before


# ----------------------------------------------------------------------------- reverse


def test_reverse_takes_the_event_lots_first_even_pending_then_soonest_expiry() -> None:
    account = new_account("shop", "alice")
    never, late, soon, own = ids(), ids(), ids(), ids()
    credit(account, 10, "never", T0, ids(), never)
    credit(account, 30, "late", T0, ids(), late, T0 + timedelta(days=50))
    credit(account, 20, "soon", T0, ids(), soon, T0 + timedelta(days=5))
    credit(
        account,
        50,
        "order e1",
        T0,
        ids(),
        own,
        available_at=T0 + timedelta(days=14),
        event_id="e1",
    )
    now = T0 + timedelta(days=1)
    assert available(account, now) == 60
    earned = account.lifetime_earned
    txn, shortfall = reverse(account, "e1", 75, "order refunded", now, ids())
    assert shortfall == 0
    assert txn is not None
    assert (txn.kind, txn.points, txn.event_id) == (REVERSAL, 75, "e1")
    assert txn.allocations == ((own, 50), (soon, 20), (late, 5))
    # The event's own lot was still pending: those 50 leave member:pending.
    assert legs(txn) == {(MEMBER_PENDING_ACCOUNT, -50), (MEMBER_ACCOUNT, -25), (SYSTEM_ISSUED, 75)}
    assert account.balance == txn.balance_after == 35 and account.pending == 0
    assert remaining_by_id(account) == {never: 10, late: 25}
    assert account.lifetime_earned == earned - 75
    account.check()


def test_reverse_does_not_take_other_pending_lots() -> None:
    account = new_account("shop", "alice")
    credit(account, 40, "e1", T0, ids(), ids(), event_id="e1")
    debit(account, 30, "reward", T0, ids())
    other_pending = ids()
    credit(account, 100, "e2", T0, ids(), other_pending, available_at=T0 + timedelta(days=3))
    txn, shortfall = reverse(account, "e1", 40, "refund", T0 + timedelta(hours=1), ids())
    assert txn is not None and txn.points == 10
    assert shortfall == 30
    assert remaining_by_id(account) == {other_pending: 100}


def test_reverse_never_takes_more_than_asked() -> None:
    account = new_account("shop", "alice")
    own = ids()
    credit(account, 100, "order", T0, ids(), own, event_id="e1")
    credit(account, 100, "other", T0, ids(), ids())
    txn, shortfall = reverse(account, "e1", 30, "partial refund", T0, ids())
    assert txn is not None and txn.points == 30 and shortfall == 0
    assert txn.allocations == ((own, 30),)
    assert account.balance == 170
    assert account.lifetime_earned == 170


def test_reverse_reports_the_shortfall_when_the_points_were_spent() -> None:
    account = new_account("shop", "alice")
    credit(account, 100, "order", T0, ids(), ids(), event_id="e1")
    debit(account, 80, "reward", T0, ids())
    txn, shortfall = reverse(account, "e1", 100, "refund", T0, ids())
    assert txn is not None and txn.points == 20
    assert shortfall == 80
    assert account.balance == 0 and account.lots == []
    assert account.lifetime_earned == 80
    assert legs(txn) == {(MEMBER_ACCOUNT, -20), (SYSTEM_ISSUED, 20)}
    # Nothing left at all: no transaction, the whole amount is the shortfall.
    before = account.clone()
    assert reverse(account, "e1", 5, "refund again", T0, ids()) == (None, 5)
    assert account == before


def test_reverse_of_partly_spent_event_lots_takes_them_in_age_order() -> None:
    account = new_account("shop", "alice")
    older, newer = ids(), ids()
    credit(account, 10, "e1 part 1", T0, ids(), older, event_id="e1")
    credit(account, 10, "e1 part 2", T0 + timedelta(seconds=1), ids(), newer, event_id="e1")
    txn, _ = reverse(account, "e1", 15, "refund", T0 + timedelta(seconds=2), ids())
    assert txn is not None and txn.allocations == ((older, 10), (newer, 5))


@pytest.mark.parametrize("points", [0, -1, 1.5, True])
def test_reverse_refuses_bad_points(points: object) -> None:
    account = new_account("shop", "alice")
    credit(account, 10, "order", T0, ids(), ids(), event_id="e1")
    before = account.clone()
    with pytest.raises(PointsError) as err:
        reverse(account, "e1", points, "refund", T0, ids())  # type: ignore[arg-type]
    assert err.value.code is Code.VALIDATION_ERROR
    assert account == before


# ----------------------------------------------------------------------------- property

EVENTS = ["e0", "e1", "e2", "e3"]

ledger_ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("credit"),
            st.integers(1, 500),
            st.one_of(st.none(), st.integers(1, 60 * 24)),  # expiry, hours from now
            st.one_of(st.none(), st.integers(-48, 24 * 20)),  # available_at, hours from now
            st.one_of(st.none(), st.sampled_from(EVENTS)),
        ),
        st.tuples(st.just("debit"), st.integers(1, 800), st.none(), st.none(), st.none()),
        st.tuples(st.just("wait"), st.integers(0, 24 * 10), st.none(), st.none(), st.none()),
        st.tuples(st.just("expire"), st.just(0), st.none(), st.none(), st.none()),
        st.tuples(
            st.just("reverse"), st.integers(1, 600), st.none(), st.none(), st.sampled_from(EVENTS)
        ),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(ledger_ops)
def test_random_earning_sequences_keep_the_ledger_invariants(
    ops: list[tuple[str, int, int | None, int | None, str | None]],
) -> None:
    """Credits (pending, expiring, per event), debits, expiry runs and reversals in any
    order: never negative, balance == lots == member legs, balanced transactions, and an
    event never loses more than it earned (the caller bounds claws like the shard does)."""
    account = new_account("p", "m")
    now = T0
    legs_by_account: dict[str, int] = defaultdict(int)
    credited: dict[str, int] = defaultdict(int)
    asked: dict[str, int] = defaultdict(int)
    clawed: dict[str, int] = defaultdict(int)
    lot_event: dict[uuid.UUID, str | None] = {}
    issued_total = 0
    redeemed_total = 0
    for kind, amount, expiry_h, available_h, event_id in ops:
        txn: Transaction | None = None
        if kind == "wait":
            now += timedelta(hours=amount)
            # As the shard does before anything else touches the account.
            txn = activate(account, now, ids())
        elif kind == "credit":
            expires_at = None if expiry_h is None else now + timedelta(hours=expiry_h)
            available_at = None if available_h is None else now + timedelta(hours=available_h)
            refused = (
                available_at is not None
                and available_at > now
                and expires_at is not None
                and expires_at <= available_at
            )
            lot_id = ids()
            if refused:
                before = account.clone()
                with pytest.raises(PointsError) as err:
                    credit(account, amount, "c", now, ids(), lot_id, expires_at, available_at)
                assert err.value.code is Code.VALIDATION_ERROR
                assert account == before
                continue
            txn = credit(
                account, amount, "c", now, ids(), lot_id, expires_at, available_at, event_id
            )
            lot_event[lot_id] = event_id
            issued_total += amount
            if event_id is not None:
                credited[event_id] += amount
        elif kind == "debit":
            spendable = available(account, now)
            if amount > spendable:
                before = account.clone()
                with pytest.raises(PointsError) as err:
                    debit(account, amount, "d", now, ids())
                assert err.value.code is Code.INSUFFICIENT_POINTS
                assert account == before
                continue
            txn = debit(account, amount, "d", now, ids())
            assert available(account, now) == spendable - amount
            redeemed_total += amount
        elif kind == "expire":
            activated = activate(account, now, ids())
            if activated is not None:
                activated.check()
                for entry in activated.entries:
                    legs_by_account[entry.account] += entry.amount
            txn = expire(account, now, ids())
            assert not any(lot.expired(now) for lot in account.lots)
            assert expire(account, now, ids()) is None
        else:
            assert event_id is not None
            # As the shard does: never ask for more than the event earned in total.
            claw = min(amount, credited[event_id] - asked[event_id])
            if claw <= 0:
                continue
            asked[event_id] += claw
            before = account.clone()
            spendable_before = {lot.lot_id for lot in before.lots if lot.spendable(now)}
            txn, shortfall = reverse(account, event_id, claw, "r", now, ids())
            taken = 0 if txn is None else txn.points
            assert taken + shortfall == claw and 0 <= taken <= claw
            clawed[event_id] += taken
            assert account.lifetime_earned == before.lifetime_earned - taken
            if txn is None:
                assert account == before
            else:
                own = [lot_event[lot_id] == event_id for lot_id, _ in txn.allocations]
                # The event's own lots first, and others only once those are empty.
                assert own == sorted(own, reverse=True)
                if not all(own):
                    assert not any(
                        lot.event_id == event_id and lot.remaining for lot in account.lots
                    )
                # Other lots only if they were spendable.
                assert all(
                    mine or lot_id in spendable_before
                    for (lot_id, _), mine in zip(txn.allocations, own, strict=True)
                )
        if txn is not None:
            txn.check()
            assert sum(entry.amount for entry in txn.entries) == 0
            for entry in txn.entries:
                legs_by_account[entry.account] += entry.amount
            assert txn.balance_after == account.balance
        member_legs = legs_by_account[MEMBER_ACCOUNT]
        pending_legs = legs_by_account[MEMBER_PENDING_ACCOUNT]
        system_total = sum(v for k, v in legs_by_account.items() if k.startswith("system:"))
        assert account.balance == sum(lot.remaining for lot in account.lots if lot.active) >= 0
        assert account.pending == sum(lot.remaining for lot in account.lots if not lot.active)
        assert account.balance == member_legs and account.pending == pending_legs
        assert member_legs + pending_legs == -system_total
        assert 0 <= available(account, now) <= account.balance
        account.check()
        for name in EVENTS:
            assert clawed[name] <= asked[name] <= credited[name]
    # What went through each door: issued minus clawed back, redeemed, expired.
    assert legs_by_account[SYSTEM_ISSUED] == -issued_total + sum(clawed.values())
    assert legs_by_account[SYSTEM_REDEEMED] == redeemed_total
    assert legs_by_account[SYSTEM_EXPIRED] >= 0


# ----------------------------------------------------------------------------- member view


def test_expiring_soon_groups_by_local_last_day() -> None:
    account = new_account("shop", "alice")
    created = datetime(2026, 12, 1, tzinfo=UTC)
    now = datetime(2026, 12, 15, tzinfo=UTC)
    new_year_shanghai = datetime(2027, 1, 1, tzinfo=SHANGHAI)  # 2026-12-31T16:00Z
    credit(account, 10, "a", created, ids(), ids(), new_year_shanghai)
    credit(account, 5, "b", created, ids(), ids(), datetime(2026, 12, 31, 20, tzinfo=SHANGHAI))
    credit(account, 7, "c", created, ids(), ids(), datetime(2026, 12, 20, tzinfo=SHANGHAI))
    credit(account, 3, "d", created, ids(), ids(), datetime(2027, 1, 1, tzinfo=UTC))
    credit(account, 100, "far", created, ids(), ids(), datetime(2027, 2, 1, tzinfo=UTC))
    credit(account, 1000, "never", created, ids(), ids())
    credit(account, 50, "gone", created, ids(), ids(), now)  # expired, not written off

    shanghai = account_view(account, now, 10, SHANGHAI, 30)
    assert shanghai["expiring_soon"] == [
        {"date": "2026-12-19", "points": 7},
        {"date": "2026-12-31", "points": 15},
        {"date": "2027-01-01", "points": 3},  # 08:00 local on Jan 1
    ]
    utc = account_view(account, now, 10, UTC, 30)
    assert utc["expiring_soon"] == [
        {"date": "2026-12-19", "points": 7},
        {"date": "2026-12-31", "points": 18},
    ]
    assert balance(shanghai) == {"available": 1125, "pending": 0, "total": 1175}


def test_expiring_soon_only_covers_soon_days() -> None:
    account = new_account("shop", "alice")
    now = T0
    credit(account, 4, "edge", now, ids(), ids(), now + timedelta(days=7))
    credit(account, 6, "after", now, ids(), ids(), now + timedelta(days=7, microseconds=1))
    view = account_view(account, now, 10, UTC, 7)
    assert view["expiring_soon"] == [{"date": "2026-01-07", "points": 4}]
    assert account_view(account, now, 10, UTC, 8)["expiring_soon"] == [
        {"date": "2026-01-07", "points": 4},
        {"date": "2026-01-08", "points": 6},
    ]


def test_view_counts_pending_and_lists_pending_lots() -> None:
    account = new_account("shop", "alice")
    pending_lot = ids()
    credit(
        account,
        30,
        "order",
        T0,
        ids(),
        pending_lot,
        T0 + timedelta(days=20),
        T0 + timedelta(days=14),
        "e1",
    )
    credit(account, 12, "check-in", T0, ids(), ids())
    view = account_view(account, T0, 10, SHANGHAI, 30)
    assert balance(view) == {"available": 12, "pending": 30, "total": 42}
    assert view["pending_lots"] == [
        {
            "lot_id": str(pending_lot),
            "points": 30,
            "available_at": "2026-01-15T00:00:00Z",
            "expires_at": "2026-01-21T00:00:00Z",
            "event_id": "e1",
        }
    ]
    # Pending points that will expire soon are announced too (last local day 2026-01-21).
    assert view["expiring_soon"] == [{"date": "2026-01-21", "points": 30}]
    assert activate(account, T0 + timedelta(days=14), ids()) is not None
    later = account_view(account, T0 + timedelta(days=14), 10, SHANGHAI, 30)
    assert balance(later) == {"available": 42, "pending": 0, "total": 42}
    assert later["pending_lots"] == []
