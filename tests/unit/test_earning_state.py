"""A member's earning state: cap counters by local day and month, pruning, tiers."""

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.earning import (
    DAYS_KEPT_MIN,
    MONTHS_KEPT,
    TOTAL,
    earned_for_tier,
    member_context,
    record,
    tier_view,
    update_tier,
)
from domain.errors import PointsError
from domain.events import event_json, parse_event
from domain.policy import Policy, local_day, parse_policy
from domain.rules import Evaluation, EventIn, compile_rule_set, evaluate
from domain.templates import ECOMMERCE, EDUCATION

SHANGHAI = "Asia/Shanghai"
TIER_DEFS = [
    {"name": "base", "threshold": 0},
    {"name": "silver", "threshold": 1000, "multiplier": "1.25"},
    {"name": "gold", "threshold": 5000, "multiplier": "1.5"},
]


def policy(
    time_zone: str = "UTC",
    basis: str | None = None,
    window_days: int = 365,
    grace_days: int = 30,
) -> Policy:
    raw: dict[str, Any] = {"time_zone": time_zone}
    if basis is not None:
        raw["tiers"] = {
            "basis": basis,
            "window_days": window_days if basis == "rolling_days" else 0,
            "downgrade_grace_days": grace_days,
            "tiers": TIER_DEFS,
        }
    return parse_policy(raw)


def earned(points: int, **rules: int) -> Evaluation:
    return Evaluation(points, (), rules)


def day_before(today: str, days: int) -> str:
    return (date.fromisoformat(today) - timedelta(days=days)).isoformat()


# ----------------------------------------------------------------------------- counters


STATE: dict[str, Any] = {
    "days": {
        "2026-03-01": {TOTAL: 30, "check_in": 10, "order": 20},
        "2026-03-02": {TOTAL: 5, "share": 5},
    },
    "months": {"2026-02": 100, "2026-03": 35},
    "tier": "silver",
}


def test_member_context_reads_the_local_day_of_the_event() -> None:
    moment = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)  # 07:30 on March 2 in Shanghai
    in_utc = member_context(STATE, policy("UTC"), moment)
    assert (in_utc.tier, in_utc.earned_day, in_utc.earned_month) == ("silver", 30, 35)
    assert dict(in_utc.rule_earned_day) == {"check_in": 10, "order": 20}
    in_shanghai = member_context(STATE, policy(SHANGHAI), moment)
    assert (in_shanghai.earned_day, in_shanghai.earned_month) == (5, 35)
    assert dict(in_shanghai.rule_earned_day) == {"share": 5}


def test_member_context_reads_the_local_month_of_the_event() -> None:
    moment = datetime(2026, 2, 28, 16, 30, tzinfo=UTC)  # 00:30 on March 1 in Shanghai
    assert member_context(STATE, policy("UTC"), moment).earned_month == 100
    in_shanghai = member_context(STATE, policy(SHANGHAI), moment)
    assert (in_shanghai.earned_day, in_shanghai.earned_month) == (30, 35)


def test_member_context_of_a_new_member_is_empty() -> None:
    context = member_context({}, policy(SHANGHAI), datetime(2026, 3, 1, tzinfo=UTC))
    assert (context.tier, context.earned_day, context.earned_month) == (None, 0, 0)
    assert dict(context.rule_earned_day) == {}


def test_record_adds_totals_and_rule_counters_on_the_local_day() -> None:
    state: dict[str, Any] = {}
    shanghai = policy(SHANGHAI)
    moment = datetime(2026, 3, 31, 23, 30, tzinfo=UTC)  # April 1, 07:30 in Shanghai
    record(state, shanghai, moment, earned(15, check_in=10, share=5), "2026-04-01")
    record(state, shanghai, moment, earned(25, order=20, share=5), "2026-04-01")
    assert state["days"] == {"2026-04-01": {TOTAL: 40, "check_in": 10, "share": 10, "order": 20}}
    assert state["months"] == {"2026-04": 40}
    context = member_context(state, shanghai, moment)
    assert (context.earned_day, context.earned_month) == (40, 40)
    assert dict(context.rule_earned_day) == {"check_in": 10, "share": 10, "order": 20}
    # The same instant is still March 31 in UTC.
    in_utc: dict[str, Any] = {}
    record(in_utc, policy("UTC"), moment, earned(15, check_in=10, share=5), "2026-03-31")
    assert in_utc["days"] == {"2026-03-31": {TOTAL: 15, "check_in": 10, "share": 5}}
    assert in_utc["months"] == {"2026-03": 15}


def test_record_of_nothing_earned_changes_nothing() -> None:
    state: dict[str, Any] = {"days": {"2020-01-01": {TOTAL: 1}}, "months": {"2020-01": 1}}
    record(state, policy(), datetime(2026, 3, 1, tzinfo=UTC), earned(0), "2026-03-01")
    assert state == {"days": {"2020-01-01": {TOTAL: 1}}, "months": {"2020-01": 1}}


@pytest.mark.parametrize(
    ("tiers_basis", "kept"),
    [(None, DAYS_KEPT_MIN), ("lifetime", DAYS_KEPT_MIN), ("rolling_days", 365)],
)
def test_record_prunes_days_older_than_what_caps_and_tiers_need(
    tiers_basis: str | None, kept: int
) -> None:
    today = "2026-03-01"
    oldest_kept = day_before(today, kept - 1)
    too_old = day_before(today, kept)
    state: dict[str, Any] = {
        "days": {too_old: {TOTAL: 7}, oldest_kept: {TOTAL: 9}, day_before(today, 1): {TOTAL: 1}}
    }
    moment = datetime(2026, 3, 1, 12, tzinfo=UTC)
    record(state, policy("UTC", tiers_basis), moment, earned(3, r=3), today)
    assert sorted(state["days"]) == [oldest_kept, day_before(today, 1), today]
    assert state["days"][oldest_kept] == {TOTAL: 9}


def test_record_prunes_with_a_tier_window_shorter_than_the_minimum() -> None:
    today = "2026-03-01"
    state: dict[str, Any] = {"days": {day_before(today, DAYS_KEPT_MIN - 1): {TOTAL: 4}}}
    short = policy("UTC", "rolling_days", window_days=7)
    record(state, short, datetime(2026, 3, 1, tzinfo=UTC), earned(1, r=1), today)
    # Caps still need DAYS_KEPT_MIN days even though the tier window is 7.
    assert day_before(today, DAYS_KEPT_MIN - 1) in state["days"]


def test_record_keeps_at_most_months_kept_months() -> None:
    months = [f"{2025 + (m - 1) // 12}-{(m - 1) % 12 + 1:02d}" for m in range(1, 14)]
    assert len(months) == MONTHS_KEPT and months[-1] == "2026-01"
    state: dict[str, Any] = {"months": dict.fromkeys(months, 50)}
    record(state, policy(), datetime(2026, 2, 10, tzinfo=UTC), earned(5, r=5), "2026-02-10")
    assert len(state["months"]) == MONTHS_KEPT
    assert sorted(state["months"]) == [*months[1:], "2026-02"]
    assert state["months"]["2026-02"] == 5
    # A further month drops the next oldest one.
    record(state, policy(), datetime(2026, 3, 10, tzinfo=UTC), earned(6, r=6), "2026-03-10")
    assert sorted(state["months"]) == [*months[2:], "2026-02", "2026-03"]


# ----------------------------------------------------------------------------- tiers


def test_update_tier_upgrades_keeps_during_grace_then_downgrades() -> None:
    rolling = policy(SHANGHAI, "rolling_days", window_days=365, grace_days=30)
    state: dict[str, Any] = {
        "days": {"2026-01-10": {TOTAL: 4000}, "2026-06-01": {TOTAL: 1500}},
    }
    start = datetime(2026, 1, 10, 4, tzinfo=UTC)
    first = update_tier(state, rolling, 0, start)
    assert first is not None and (first.tier, first.changed) == ("silver", True)
    assert (state["tier"], state["below_since"]) == ("silver", None)

    june = datetime(2026, 6, 1, 4, tzinfo=UTC)
    upgrade = update_tier(state, rolling, 0, june)
    assert upgrade is not None and (upgrade.tier, upgrade.changed) == ("gold", True)
    assert state["tier"] == "gold"

    # 2027-01-09 local is still inside the 365-day window that starts 2026-01-10.
    still = datetime(2027, 1, 9, 4, tzinfo=UTC)
    assert earned_for_tier(state, rolling, 0, local_day(rolling, still)) == 5500
    assert update_tier(state, rolling, 0, still).tier == "gold"  # type: ignore[union-attr]
    assert state["below_since"] is None

    # The 4000 points leave the window: below gold since now, kept for the grace period.
    fell = datetime(2027, 1, 10, 4, tzinfo=UTC)
    kept = update_tier(state, rolling, 0, fell)
    assert kept is not None and (kept.tier, kept.changed, kept.below_since) == ("gold", False, fell)
    assert (state["tier"], state["below_since"]) == ("gold", fell.isoformat())
    in_grace = update_tier(state, rolling, 0, fell + timedelta(days=29, hours=23))
    assert in_grace is not None and in_grace.tier == "gold"
    assert state["below_since"] == fell.isoformat()  # counted from the first moment below

    done = update_tier(state, rolling, 0, fell + timedelta(days=30))
    assert done is not None and (done.tier, done.changed, done.below_since) == (
        "silver",
        True,
        None,
    )
    assert (state["tier"], state["below_since"]) == ("silver", None)


def test_update_tier_climbing_back_during_grace_clears_below_since() -> None:
    rolling = policy("UTC", "rolling_days", window_days=30, grace_days=30)
    now = datetime(2026, 5, 1, tzinfo=UTC)
    state: dict[str, Any] = {
        "days": {"2026-05-01": {TOTAL: 6000}},
        "tier": "gold",
        "below_since": (now - timedelta(days=10)).isoformat(),
    }
    decision = update_tier(state, rolling, 0, now)
    assert decision is not None and (decision.tier, decision.below_since) == ("gold", None)
    assert state["below_since"] is None


def test_update_tier_on_a_lifetime_basis_uses_lifetime_earned() -> None:
    lifetime = policy("UTC", "lifetime")
    state: dict[str, Any] = {"days": {"2026-05-01": {TOTAL: 9000}}}
    now = datetime(2026, 5, 1, tzinfo=UTC)
    assert update_tier(state, lifetime, 1200, now).tier == "silver"  # type: ignore[union-attr]
    assert earned_for_tier(state, lifetime, -5, "2026-05-01") == 0


def test_without_tiers_there_is_no_tier_state() -> None:
    state: dict[str, Any] = {"days": {"2026-05-01": {TOTAL: 9000}}}
    now = datetime(2026, 5, 1, tzinfo=UTC)
    assert update_tier(state, policy(), 9000, now) is None
    assert tier_view(state, policy(), 9000, now) is None
    assert state == {"days": {"2026-05-01": {TOTAL: 9000}}}


def test_tier_view_shows_the_next_tier_and_the_points_to_it() -> None:
    rolling = policy(SHANGHAI, "rolling_days", window_days=365)
    now = datetime(2026, 5, 1, tzinfo=UTC)
    state: dict[str, Any] = {"days": {"2026-04-01": {TOTAL: 1200}, "2025-01-01": {TOTAL: 9999}}}
    update_tier(state, rolling, 0, now)
    assert tier_view(state, rolling, 0, now) == {
        "name": "silver",
        "basis": "rolling_days",
        "window_days": 365,
        "earned": 1200,
        "next": "gold",
        "points_to_next": 3800,
        "below_since": None,
    }
    state["days"]["2026-04-02"] = {TOTAL: 3800}
    update_tier(state, rolling, 0, now)
    top = tier_view(state, rolling, 0, now)
    assert top is not None
    assert (top["name"], top["next"], top["points_to_next"]) == ("gold", None, 0)


def test_tier_view_of_a_new_member_on_a_lifetime_basis() -> None:
    lifetime = policy("UTC", "lifetime")
    view = tier_view({}, lifetime, 250, datetime(2026, 5, 1, tzinfo=UTC))
    assert view == {
        "name": "base",
        "basis": "lifetime",
        "earned": 250,
        "next": "silver",
        "points_to_next": 750,
        "below_since": None,
    }


def test_tier_view_next_is_never_below_the_tier_held() -> None:
    rolling = policy("UTC", "rolling_days", window_days=365, grace_days=30)
    now = datetime(2026, 3, 1, tzinfo=UTC)
    state: dict[str, Any] = {"days": {}, "tier": "gold", "below_since": None}
    decision = update_tier(state, rolling, 0, now)
    assert decision is not None and decision.tier == "gold"  # kept during the grace period
    view = tier_view(state, rolling, 0, now)
    assert view is not None
    order = [tier["name"] for tier in TIER_DEFS]
    assert view["next"] is None or order.index(view["next"]) > order.index(view["name"])


# ----------------------------------------------------------------------------- caps fold

ECOMMERCE_POLICY = parse_policy(ECOMMERCE["policy"])
ECOMMERCE_RULES = compile_rule_set(ECOMMERCE["rules"], 1)
CHECK_IN_CAP = next(
    rule["caps"]["per_member_day"] for rule in ECOMMERCE["rules"] if rule["id"] == "daily_check_in"
)
SHARE_CAP = next(
    rule["caps"]["per_member_day"] for rule in ECOMMERCE["rules"] if rule["id"] == "share"
)
START = datetime(2026, 3, 1, 15, 0, tzinfo=UTC)  # 23:00 in Shanghai: days turn soon

steps = st.lists(
    st.tuples(
        st.sampled_from(["check_in", "check_in", "share", "order"]),
        st.integers(0, 12 * 60),  # minutes the clock moves before the event arrives
        # minutes late, up to the oldest event accepted (EVENT_PAST_AGE_S, 35 days)
        st.one_of(st.integers(0, 6 * 60), st.integers(0, 34 * 24 * 60)),
        st.integers(0, 600_000),  # order amount in minor units
    ),
    min_size=1,
    max_size=80,
)


def fold(
    policy: Policy, rule_set: Any, events: list[tuple[EventIn, datetime]]
) -> tuple[dict[str, Any], list[tuple[EventIn, Evaluation]]]:
    """What the shard does per event: context, evaluate, record, update the tier."""
    state: dict[str, Any] = {}
    lifetime = 0
    results = []
    for event, now in events:
        evaluation = evaluate(
            rule_set, event, member_context(state, policy, event.occurred_at), policy
        )
        if evaluation.points > 0:
            record(state, policy, event.occurred_at, evaluation, local_day(policy, now))
            lifetime += evaluation.points
        update_tier(state, policy, lifetime, now)
        results.append((event, evaluation))
    return state, results


@settings(max_examples=200, deadline=None)
@given(steps)
def test_daily_caps_hold_for_every_local_day_with_the_ecommerce_template(
    plan: list[tuple[str, int, int, int]],
) -> None:
    """Events arrive late and out of order (within what the state keeps), across local
    midnights, while tiers change: one paying check-in per local day, the check-in rule
    never over its per_member_day cap, shares never over theirs."""
    now = START
    events = []
    for index, (kind, advance, late, amount) in enumerate(plan):
        now += timedelta(minutes=advance)
        occurred_at = now - timedelta(minutes=late)
        attributes = {"amount": amount} if kind == "order" else {}
        raw = {
            "id": f"e{index}",
            "member_id": "alice",
            "type": kind,
            "occurred_at": occurred_at.isoformat(),
            "attributes": attributes,
        }
        events.append((parse_event(raw, now), now))
    _, results = fold(ECOMMERCE_POLICY, ECOMMERCE_RULES, events)

    rule_by_day: dict[tuple[str, str], int] = defaultdict(int)
    paying_check_ins: dict[str, int] = defaultdict(int)
    for event, evaluation in results:
        day = local_day(ECOMMERCE_POLICY, event.occurred_at)
        for rule_id, points in evaluation.rule_points.items():
            rule_by_day[rule_id, day] += points
        if event.type == "check_in" and evaluation.points > 0:
            paying_check_ins[day] += 1
            # At most the award times the largest tier multiplier.
            assert evaluation.points <= CHECK_IN_CAP * 3 // 2
    for (rule_id, day), points in rule_by_day.items():
        if rule_id == "daily_check_in":
            assert points <= CHECK_IN_CAP, day
        if rule_id == "share":
            assert points <= SHARE_CAP, day
    assert all(count <= 1 for count in paying_check_ins.values())


def test_the_fold_pays_one_check_in_per_shanghai_day() -> None:
    """23:30 UTC is already the next day in Shanghai: the second check-in pays, a third on
    that local day does not."""
    times = [
        datetime(2026, 3, 1, 10, tzinfo=UTC),  # 18:00 March 1 local
        datetime(2026, 3, 1, 15, 30, tzinfo=UTC),  # 23:30 March 1 local
        datetime(2026, 3, 1, 16, 30, tzinfo=UTC),  # 00:30 March 2 local
        datetime(2026, 3, 1, 23, 30, tzinfo=UTC),  # 07:30 March 2 local
    ]
    events = [(EventIn(f"c{i}", "alice", "check_in", t, {}), t) for i, t in enumerate(times)]
    state, results = fold(ECOMMERCE_POLICY, ECOMMERCE_RULES, events)
    assert [evaluation.points for _, evaluation in results] == [10, 0, 10, 0]
    assert state["days"] == {
        "2026-03-01": {TOTAL: 10, "daily_check_in": 10},
        "2026-03-02": {TOTAL: 10, "daily_check_in": 10},
    }
    assert state["months"] == {"2026-03": 20}


LATE_CASES = [
    # (template, event type, attributes, rule id, days late): the oldest events parse_event
    # accepts (EVENT_PAST_AGE_S, 35 days) still find their day's counters (DAYS_KEPT_MIN).
    (ECOMMERCE, "check_in", {}, "daily_check_in", 34),
    (EDUCATION, "study_session", {"minutes": 120}, "study_minutes", 34),
]


def test_events_older_than_the_kept_counters_are_refused() -> None:
    now = datetime(2027, 3, 10, 4, tzinfo=UTC)
    for days_late in (DAYS_KEPT_MIN, 100, 365):
        raw = {
            "id": "late",
            "member_id": "alice",
            "type": "check_in",
            "occurred_at": (now - timedelta(days=days_late)).isoformat(),
        }
        with pytest.raises(PointsError) as error:
            parse_event(raw, now)
        assert "in the past" in error.value.detail


@pytest.mark.parametrize(
    ("template", "kind", "attributes", "rule_id", "days_late"),
    LATE_CASES,
    ids=["ecommerce-34-days-late", "education-34-days-late"],
)
def test_late_events_accepted_by_parse_event_still_respect_daily_caps(
    template: dict[str, Any], kind: str, attributes: dict[str, Any], rule_id: str, days_late: int
) -> None:
    program = parse_policy(template["policy"])
    rule_set = compile_rule_set(template["rules"], 1)
    cap = next(
        rule["caps"]["per_member_day"] for rule in template["rules"] if rule["id"] == rule_id
    )
    now = datetime(2027, 3, 10, 4, tzinfo=UTC)
    occurred_at = now - timedelta(days=days_late, hours=1)
    events = []
    for index in range(2):
        raw = {
            "id": f"late-{index}",
            "member_id": "alice",
            "type": kind,
            "occurred_at": occurred_at.isoformat(),
            "attributes": attributes,
        }
        event = parse_event(raw, now)  # accepted: within EVENT_PAST_AGE_S
        assert event_json(event)["occurred_at"] == occurred_at.isoformat()
        events.append((event, now))
    _, results = fold(program, rule_set, events)
    paid = sum(evaluation.rule_points.get(rule_id, 0) for _, evaluation in results)
    assert paid <= cap
