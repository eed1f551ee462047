"""Risk control, pure: velocity windows and limit arithmetic, the review state machine,
and the ledger's hold / capture / release."""

import uuid
from datetime import UTC, datetime, timedelta
from itertools import count

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import Code, PointsError
from domain.ledger import (
    MEMBER_HELD_ACCOUNT,
    available,
    capture,
    credit,
    debit,
    hold,
    new_account,
    refund,
    release,
)
from domain.policy import RiskPolicy, parse_policy, policy_to_json
from domain.reviews import (
    APPROVE,
    REJECT,
    Review,
    ReviewKind,
    ReviewStatus,
    decide,
    record_decision,
    review_view,
)
from domain.risk import charge, day_window, hour_window, needs_review, used

T0 = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # Europe/Paris springs forward at 01:00 UTC
_ids = count(1)


def ids() -> uuid.UUID:
    return uuid.UUID(int=next(_ids))


# ----------------------------------------------------------------- windows


def test_a_day_is_the_program_local_calendar_day_and_a_dst_day_is_23_hours() -> None:
    window = day_window("Europe/Paris", T0)
    assert window.key == "2026-03-29"
    assert window.start == datetime(2026, 3, 28, 23, 0, tzinfo=UTC)
    assert window.end == datetime(2026, 3, 29, 22, 0, tzinfo=UTC)  # 23 hours


def test_an_hour_is_a_local_clock_hour_keyed_by_its_first_instant() -> None:
    # Asia/Kolkata is UTC+05:30: its hours start at :30 UTC.
    window = hour_window("Asia/Kolkata", datetime(2026, 1, 1, 10, 45, tzinfo=UTC))
    assert (window.start, window.end) == (
        datetime(2026, 1, 1, 10, 30, tzinfo=UTC),
        datetime(2026, 1, 1, 11, 30, tzinfo=UTC),
    )
    # The repeated hour of a fall-back (Paris, 2026-10-25, 02:00-03:00 local twice) is two
    # windows, not one.
    first = hour_window("Europe/Paris", datetime(2026, 10, 25, 0, 30, tzinfo=UTC))
    second = hour_window("Europe/Paris", datetime(2026, 10, 25, 1, 30, tzinfo=UTC))
    assert first.key != second.key and first.end == second.start


@settings(max_examples=200)
@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
    ),
    st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"]),
)
def test_windows_hold_their_moment_and_tile_time(moment: datetime, tz: str) -> None:
    for window_of in (day_window, hour_window):
        window = window_of(tz, moment)
        assert window.start <= moment < window.end
        # The next window starts exactly where this one ends (no gap, no overlap).
        assert window_of(tz, window.end).start == window.end
        assert window_of(tz, window.end - timedelta(microseconds=1)).key == window.key


# ----------------------------------------------------------------- limits

RISK = RiskPolicy(
    debit_points_per_day=1000, redemptions_per_hour=2, service_credit_points_per_day=300
)


def test_charge_counts_until_the_limit_and_names_it_past_it() -> None:
    state = charge({}, RISK, "UTC", T0, debited=600, redemptions=1)
    state = charge(state, RISK, "UTC", T0, debited=400, redemptions=1)
    assert used(state, "debit_points_per_day", "UTC", T0) == 1000
    with pytest.raises(PointsError) as err:
        charge(state, RISK, "UTC", T0, debited=1)
    assert err.value.code is Code.LIMIT_EXCEEDED
    limit = err.value.extra["limit"]
    assert limit == {
        "name": "debit_points_per_day",
        "value": 1000,
        "window": "day",
        "window_start": "2026-03-29T00:00:00Z",
        "resets_at": "2026-03-30T00:00:00Z",
        "used": 1000,
        "requested": 1,
    }
    with pytest.raises(PointsError) as err:
        charge(state, RISK, "UTC", T0 + timedelta(minutes=5), debited=1, redemptions=1)
    # The first limit passed is named (the day's points here).
    assert err.value.extra["limit"]["name"] == "debit_points_per_day"


def test_a_new_window_starts_from_zero_and_a_refusal_counts_nothing() -> None:
    state = charge({}, RISK, "UTC", T0, redemptions=2)
    with pytest.raises(PointsError):
        charge(state, RISK, "UTC", T0, redemptions=1)
    later = T0 + timedelta(hours=1)
    assert used(state, "redemptions_per_hour", "UTC", later) == 0
    assert charge(state, RISK, "UTC", later, redemptions=1)["redemptions"] == 1


def test_limits_not_set_count_nothing_and_cost_nothing() -> None:
    state: dict[str, object] = {}
    assert charge(state, RiskPolicy(), "UTC", T0, debited=10**9, redemptions=10**6) == {}


@settings(max_examples=300)
@given(
    st.integers(1, 5000),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 48 * 3600)), max_size=40),
)
def test_a_window_never_counts_more_than_its_limit(limit: int, ops: list[tuple[int, int]]) -> None:
    """Whatever comes in, in time order: each day accepts at most `limit` points, and
    exactly the operations that fit (first come, first served)."""
    risk = RiskPolicy(debit_points_per_day=limit)
    state: dict[str, object] = {}
    accepted: dict[str, int] = {}
    for points, offset_s in sorted(ops, key=lambda item: item[1]):
        now = T0 + timedelta(seconds=offset_s)
        day = day_window("Europe/Paris", now).key
        try:
            state = charge(state, risk, "Europe/Paris", now, debited=points)
        except PointsError as exc:
            assert exc.code is Code.LIMIT_EXCEEDED
            assert accepted.get(day, 0) + points > limit
            continue
        accepted[day] = accepted.get(day, 0) + points
        assert accepted[day] <= limit
        assert used(state, "debit_points_per_day", "Europe/Paris", now) == accepted[day]


def test_review_threshold_is_strictly_above() -> None:
    risk = RiskPolicy(review_above_points=500)
    assert not needs_review(risk, 500) and needs_review(risk, 501)
    assert not needs_review(RiskPolicy(), 10**12)


def test_risk_policy_parses_round_trips_and_refuses_bad_values() -> None:
    raw = {"risk": {"debit_points_per_day": 5, "redemptions_per_hour": 0}}
    policy = parse_policy(raw)
    assert policy.risk == RiskPolicy(debit_points_per_day=5, redemptions_per_hour=0)
    assert parse_policy(policy_to_json(policy)) == policy
    for bad in ({"risk": {"debit_points_per_day": -1}}, {"risk": {"per_week": 3}}):
        with pytest.raises(PointsError) as err:
            parse_policy(bad)
        assert err.value.code is Code.VALIDATION_ERROR and "risk" in err.value.detail


# ----------------------------------------------------------------- reviews


def a_review(status: ReviewStatus = ReviewStatus.PENDING) -> Review:
    return Review(
        review_id=ids(),
        program_id="shop",
        member_id="alice",
        kind=ReviewKind.DEBIT,
        points=700,
        reason="tv",
        status=status,
        hold_txn_id=ids(),
        key="k",
        created_at=T0,
    )


def test_a_review_is_decided_once_and_the_same_decision_again_is_no_change() -> None:
    review = a_review()
    assert decide(review, APPROVE) is True
    record_decision(review, APPROVE, ids(), "verified", T0)
    first = review_view(review)
    assert first["status"] == "approved" and first["decided_at"] == "2026-03-29T00:30:00Z"
    assert decide(review, APPROVE) is False  # answered as it was made
    with pytest.raises(PointsError) as err:
        decide(review, REJECT)
    assert err.value.code is Code.INVALID_STATE
    assert review_view(review) == first


@pytest.mark.parametrize("reason", ["", "x" * 501, "nul\x00"])
def test_a_decision_needs_a_reason(reason: str) -> None:
    with pytest.raises(PointsError) as err:
        record_decision(a_review(), REJECT, ids(), reason, T0)
    assert err.value.code is Code.VALIDATION_ERROR


# ----------------------------------------------------------------- ledger


def test_hold_takes_points_out_of_the_lots_without_spending_them() -> None:
    account = new_account("shop", "alice")
    credit(account, 300, "a", T0, ids(), ids(), T0 + timedelta(days=1))
    credit(account, 500, "b", T0, ids(), ids())
    review_id = ids()
    txn = hold(account, 600, "tv", T0, ids(), review_id)
    assert txn.kind == "hold" and (txn.entries[1].account, txn.entries[1].amount) == (
        MEMBER_HELD_ACCOUNT,
        600,
    )
    assert (account.balance, account.held, account.lifetime_spent) == (200, 600, 0)
    assert available(account, T0) == 200
    with pytest.raises(PointsError) as err:
        debit(account, 201, "more", T0, ids())
    assert err.value.code is Code.INSUFFICIENT_POINTS
    # Released: every point back into its own lot (the expiring lot emptied is restored).
    back = release(account, review_id, "rejected", T0, ids())
    assert back.kind == "release" and (account.balance, account.held) == (800, 0)
    assert sorted(lot.remaining for lot in account.lots) == [300, 500]


def test_capture_spends_held_points_and_a_refund_of_it_returns_them_to_their_lots() -> None:
    account = new_account("shop", "alice")
    credit(account, 1000, "a", T0, ids(), ids())
    review_id = ids()
    held = hold(account, 700, "tv", T0, ids(), review_id)
    spent = capture(account, review_id, "tv", T0, ids())
    assert spent.kind == "debit" and spent.allocations == held.allocations
    assert (account.balance, account.held, account.lifetime_spent) == (300, 0, 700)
    assert sum(e.amount for e in spent.entries) == 0
    lots = {lot.lot_id: lot for lot in account.lots}
    refund(account, spent.txn_id, list(spent.allocations), lots, "cancelled", T0, ids())
    assert (account.balance, account.lifetime_spent) == (1000, 0)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(1, 400), st.sampled_from(["approve", "reject"])), max_size=8))
def test_holds_and_decisions_keep_the_account_invariants(
    requests: list[tuple[int, str]],
) -> None:
    account = new_account("shop", "alice")
    credit(account, 1000, "a", T0, ids(), ids(), T0 + timedelta(days=30))
    credit(account, 500, "b", T0, ids(), ids())
    spent = 0
    for points, decision in requests:
        review_id = ids()
        try:
            hold(account, points, "x", T0, ids(), review_id)
        except PointsError:
            continue
        assert account.balance + account.held + spent == 1500
        if decision == "approve":
            capture(account, review_id, "x", T0, ids())
            spent += points
        else:
            release(account, review_id, "x", T0, ids())
        account.check()
        assert account.balance + account.held + spent == 1500
        assert account.lifetime_spent == spent
