"""The what-if replay (domain/simulation.py): replaying with the rules that scored the
events gives back exactly what they were awarded (caps, tiers and combinations included);
a doubled rule shows exactly its difference; windows and bounds are checked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.earning import member_context, record
from domain.errors import Code, PointsError
from domain.limits import SIMULATION_TOP_MEMBERS_MAX, SIMULATION_WINDOW_DAYS_MAX
from domain.policy import Policy, local_day, parse_policy
from domain.rules import EventIn, compile_rule_set, evaluate, explanation_json
from domain.simulation import (
    STATUSES,
    TIER_FROM_CURRENT,
    TIER_FROM_EXPLANATION,
    TIER_FROM_HISTORY,
    UNEXPLAINED_LINE_ID,
    PastEvent,
    Replay,
    check_top_members,
    check_window,
    context_range,
    explained_points,
    explained_tier,
    replay,
    tier_at,
)

T0 = datetime(2026, 3, 12, tzinfo=UTC)
RULES: list[dict[str, Any]] = [
    {
        "id": "order_points",
        "event_type": "order",
        "award": {"type": "per_amount", "attribute": "amount", "rate": "0.01"},
        "caps": {"per_event": 400, "per_member_day": 700},
        "priority": 10,
    },
    {
        "id": "big_order",
        "event_type": "order",
        "condition": "attributes.amount >= 30000",
        "award": {"type": "fixed", "points": 50},
        "priority": 20,
        "combine": "best",
    },
    {
        "id": "big_order_alt",
        "event_type": "order",
        "condition": "attributes.amount >= 20000",
        "award": {"type": "fixed", "points": 40},
        "priority": 30,
        "combine": "best",
    },
    {
        "id": "gold_double",
        "event_type": "order",
        "award": {"type": "multiplier", "by_tier": {"gold": "2"}},
    },
    {
        "id": "check_in",
        "event_type": "check_in",
        "award": {"type": "fixed", "points": 10},
        "caps": {"per_member_day": 20},
    },
]
POLICY = parse_policy(
    {
        "time_zone": "Asia/Shanghai",
        "caps": {"per_member_day": 500, "per_member_month": 1500},
        "tiers": {
            "basis": "lifetime",
            "tiers": [
                {"name": "member", "threshold": 0, "multiplier": "1"},
                {"name": "silver", "threshold": 1000, "multiplier": "1.5"},
                {"name": "gold", "threshold": 5000, "multiplier": "1"},
            ],
        },
    }
)
TIERS = (None, "member", "silver", "gold")

# (member index, type, amount, minutes after T0, tier index, applied this many minutes late)
raw_events = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.sampled_from(("order", "check_in", "refund")),
        st.integers(0, 90_000),
        # 40 days across a month's end: the day and month caps both bind.
        st.integers(0, 60 * 24 * 40),
        st.integers(0, 3),
        st.sampled_from((0, 0, 0, 30, 60 * 24 * 3)),
    ),
    max_size=80,
)


def scored(raw: list[tuple[int, str, int, int, int, int]], policy: Policy) -> list[PastEvent]:
    """What the shards would have stored: each event evaluated with RULES in application
    order against its member's counters, as actors/account_ops.py does it."""
    rule_set = compile_rule_set(RULES, 1)
    applied = sorted(
        enumerate(raw), key=lambda item: (item[1][3] + item[1][5], item[1][3], item[0])
    )
    earning: dict[str, dict[str, Any]] = {}
    stored = []
    for index, (member, kind, amount, minutes, tier_index, _late) in applied:
        member_id = f"m{member}"
        occurred_at = T0 + timedelta(minutes=minutes)
        state = earning.setdefault(member_id, {})
        state["tier"] = TIERS[tier_index]
        event = EventIn(f"e{index}", member_id, kind, occurred_at, {"amount": amount})
        if kind in rule_set.by_type:
            evaluation = evaluate(
                rule_set, event, member_context(state, policy, occurred_at), policy
            )
            record(state, policy, occurred_at, evaluation, local_day(policy, occurred_at))
            points, why = evaluation.points, explanation_json(evaluation)
        else:
            points, why = 0, []  # refused by the shard; stored here to be replayed anyway
        stored.append(
            PastEvent(
                event.event_id,
                member_id,
                kind,
                occurred_at,
                event.attributes,
                points,
                explained_points(why, points),
                TIERS[tier_index],
                TIER_FROM_HISTORY if tier_index % 2 == 0 else TIER_FROM_CURRENT,
            )
        )
    return stored


def window(events: list[PastEvent], start: datetime, end: datetime) -> list[PastEvent]:
    return [
        PastEvent(**{**_fields(event), "in_window": start <= event.occurred_at < end})
        for event in events
    ]


def _fields(event: PastEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in PastEvent.__slots__}


@settings(max_examples=200, deadline=None)
@given(raw_events, st.integers(0, 10**6), st.integers(1, 40 * 24))
def test_replaying_with_the_rules_that_scored_reproduces_every_award(
    raw: list[tuple[int, str, int, int, int, int]], pick: int, hours: int
) -> None:
    events = scored(raw, POLICY)
    # The window starts at one of the events (mid-day, mid-month: the counters before it
    # matter) and lasts 1 hour to 40 days.
    times = sorted(e.occurred_at for e in events) or [T0]
    start = times[pick % len(times)]
    end = start + timedelta(hours=hours)
    # Fed: the events of the context range (what the job reads), in application order.
    context_start, context_end = context_range(POLICY, start, end)
    fed = [e for e in window(events, start, end) if context_start <= e.occurred_at < context_end]
    awards, result = replay(compile_rule_set(RULES, 1), POLICY, fed, 5)
    assert [(a.actual, a.candidate) for a in awards] == [(a.actual, a.actual) for a in awards]
    assert result["difference"] == 0 and result["events_changed"] == 0
    assert all(row["difference"] == 0 for row in result["by_rule"])
    assert all(row["difference"] == 0 for row in result["by_tier"])
    assert result["top_members"] == []
    assert result["events"] == sum(1 for e in fed if e.in_window)


def test_a_doubled_rule_shows_exactly_its_difference() -> None:
    raw = [(m, "check_in", 0, 60 * 24 * d + m, 1, 0) for m in range(3) for d in range(4)]
    raw += [(0, "order", 12_345, 60 * 24 * 5, 1, 0)]
    events = scored(raw, POLICY)
    doubled = [
        {**rule, "award": {"type": "fixed", "points": 20}} if rule["id"] == "check_in" else rule
        for rule in RULES
    ]
    awards, result = replay(compile_rule_set(doubled, 2), POLICY, events, 2)
    assert result["events"] == 13 and result["members"] == 3
    assert result["difference"] == 12 * 10
    by_rule = {row["rule_id"]: row for row in result["by_rule"]}
    assert by_rule["check_in"] == {
        "rule_id": "check_in",
        "actual_points": 120,
        "candidate_points": 240,
        "difference": 120,
    }
    assert by_rule["order_points"]["difference"] == 0
    assert result["by_event_type"] == [
        {
            "event_type": "check_in",
            "events": 12,
            "actual_points": 120,
            "candidate_points": 240,
            "difference": 120,
        },
        {
            "event_type": "order",
            "events": 1,
            "actual_points": 123,
            "candidate_points": 123,
            "difference": 0,
        },
    ]
    assert [row["member_id"] for row in result["top_members"]] == ["m0", "m1"]  # ties: by id
    assert result["by_tier"] == [
        {
            "tier": "member",
            "events": 13,
            "actual_points": 243,
            "candidate_points": 363,
            "difference": 120,
        }
    ]
    assert result["tiers_from"] == {
        TIER_FROM_EXPLANATION: 0,
        TIER_FROM_HISTORY: 0,
        TIER_FROM_CURRENT: 13,
    }
    assert sum(a.candidate - a.actual for a in awards) == 120


def test_daily_caps_count_what_was_earned_before_the_window() -> None:
    # check_in caps at 20 a day: two check-ins before the window used it up that day.
    day = T0 + timedelta(hours=2)
    raw = [(0, "check_in", 0, 120 + i, 1, 0) for i in range(3)]
    events = scored(raw, POLICY)
    assert [e.points for e in events] == [10, 10, 0]
    fed = window(events, events[2].occurred_at, day + timedelta(days=1))
    _, same = replay(compile_rule_set(RULES, 1), POLICY, fed, 1)
    assert same["events"] == 1 and same["difference"] == 0
    # Without the context the cap would look unused and the replay would invent 10 points.
    _, alone = replay(compile_rule_set(RULES, 1), POLICY, [e for e in fed if e.in_window], 1)
    assert alone["difference"] == 10


def test_an_event_type_the_candidate_drops_earns_nothing() -> None:
    events = scored([(0, "check_in", 0, 10, 0, 0)], POLICY)
    orders_only = [rule for rule in RULES if rule["event_type"] == "order"]
    awards, result = replay(compile_rule_set(orders_only, 2), POLICY, events, 1)
    assert awards[0].candidate == 0 and result["difference"] == -10
    assert result["by_rule"] == [
        {"rule_id": "check_in", "actual_points": 10, "candidate_points": 0, "difference": -10}
    ]
    assert result["by_tier"][0]["tier"] is None


def test_stored_attributes_the_rules_refuse_count_as_invalid() -> None:
    event = PastEvent("e", "m", "order", T0, {"amount": 1.5}, 0, {}, None, TIER_FROM_CURRENT)
    _, result = replay(compile_rule_set(RULES, 1), POLICY, [event], 1)
    assert result["events_invalid"] == 1 and result["candidate_points"] == 0


def test_explained_points_sum_to_the_award() -> None:
    why = [
        {"rule_id": "a", "matched": True, "points": 5, "note": ""},
        {"rule_id": "a", "matched": True, "points": 0, "note": ""},
        {"rule_id": "@program", "matched": True, "points": -2, "note": ""},
    ]
    assert explained_points(why, 3) == {"a": 5, "@program": -2}
    assert explained_points(why, 10) == {"a": 5, "@program": -2, UNEXPLAINED_LINE_ID: 7}
    assert explained_points([], 0) == {}


def test_windows_must_be_forward_and_bounded() -> None:
    check_window(T0, T0 + timedelta(days=SIMULATION_WINDOW_DAYS_MAX))
    for start, end in (
        (T0, T0),
        (T0 + timedelta(seconds=1), T0),
        (T0, T0 + timedelta(days=SIMULATION_WINDOW_DAYS_MAX, seconds=1)),
    ):
        with pytest.raises(PointsError) as refused:
            check_window(start, end)
        assert refused.value.code is Code.VALIDATION_ERROR
    check_top_members(SIMULATION_TOP_MEMBERS_MAX)
    for bad in (0, SIMULATION_TOP_MEMBERS_MAX + 1):
        with pytest.raises(PointsError):
            check_top_members(bad)
    with pytest.raises(PointsError):
        Replay(compile_rule_set(RULES, 1), POLICY).result(0)


def test_the_context_covers_the_local_months_of_the_window() -> None:
    # Asia/Shanghai is UTC+8: 2026-03-31T20:00Z is already April there.
    start, end = context_range(
        POLICY, datetime(2026, 3, 31, 20, tzinfo=UTC), datetime(2026, 12, 31, 17, tzinfo=UTC)
    )
    assert start == datetime(2026, 3, 31, 16, tzinfo=UTC)  # 2026-04-01 00:00 local
    assert end == datetime(2027, 1, 31, 16, tzinfo=UTC)  # 2027-02-01 00:00 local
    march = datetime(2026, 3, 1, tzinfo=UTC)
    start, end = context_range(Policy(), march, march + timedelta(hours=1))
    assert (start, end) == (march, datetime(2026, 4, 1, tzinfo=UTC))


def test_the_tier_then_comes_from_the_tier_changes() -> None:
    t1, t2 = T0 + timedelta(days=1), T0 + timedelta(days=2)
    changes = [(t1, None, "member"), (t2, "member", "gold")]
    known = TIER_FROM_HISTORY
    assert tier_at([], t1, "gold") == ("gold", TIER_FROM_CURRENT)
    assert tier_at(changes, T0, "gold") == (None, known)  # before any change: no tier yet
    assert tier_at(changes, t1, "gold") == (None, known)  # its own commit made the change
    assert tier_at(changes, t1 + timedelta(seconds=1), "gold") == ("member", known)
    assert tier_at(changes, t2, "gold") == ("member", known)
    assert tier_at(changes, t2 + timedelta(days=9), "silver") == ("gold", known)
    # The explanation's tier multiplier line names the tier used: it wins.
    assert tier_at(changes, t1, "x", "silver") == ("silver", TIER_FROM_EXPLANATION)


def test_the_explanation_names_the_tier_of_its_multiplier() -> None:
    rule_set = compile_rule_set(RULES, 1)
    event = EventIn("e", "m", "check_in", T0, {})
    for tier, named in (("silver", "silver"), ("member", None), (None, None)):
        context = member_context({"tier": tier}, POLICY, T0)
        why = explanation_json(evaluate(rule_set, event, context, POLICY))
        assert explained_tier(why) == named


def test_the_request_body_is_strict() -> None:
    from pydantic import ValidationError

    from serve_app.schemas import SimulationIn

    body = SimulationIn.model_validate(
        {"rules": [], "from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00+08:00"}
    )
    assert body.from_ == datetime(2026, 1, 1, tzinfo=UTC) and body.top_members == 10
    for bad in (
        {"rules": [], "from": "2026-01-01T00:00:00", "to": "2026-02-01T00:00:00Z"},  # no zone
        {"rules": [], "from": 0, "to": "2026-02-01T00:00:00Z"},  # not text
        {"rules": [], "from": "1969-12-31T00:00:00Z", "to": "2026-02-01T00:00:00Z"},
        {"rules": [], "from_": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"},
        {"rules": [], "from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z", "x": 1},
        {"rules": [], "from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z",
         "top_members": SIMULATION_TOP_MEMBERS_MAX + 1},
        {"rules": [], "from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z",
         "top_members": "3"},
    ):  # fmt: skip
        with pytest.raises(ValidationError):
            SimulationIn.model_validate(bad)


def test_the_statuses_are_the_same_everywhere() -> None:
    from typing import get_args

    from db.models import simulations
    from serve_app.responses import SimulationJob

    assert get_args(SimulationJob.model_fields["status"].annotation) == STATUSES
    checks = {c.name: str(c.sqltext) for c in simulations.constraints if c.name}
    assert all(f"'{status}'" in checks["simulations_status_known"] for status in STATUSES)
