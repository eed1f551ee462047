"""Reports math (domain/reports.py) and the policy fields it reads (point_value,
breakage_rate): windows and their bounds, the roll-forward identity, money, cohorts, CSV."""

import itertools
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import reports
from domain.errors import Code, PointsError
from domain.ledger import TRANSACTION_TYPES
from domain.limits import REPORT_DAYS_MAX, REPORT_MONTHS_MAX, REPORT_WEEKS_MAX
from domain.policy import DEFAULT_POLICY, parse_policy, policy_to_json

TODAY = date(2026, 11, 30)
AS_OF = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
VALUED = {
    "point_value": {
        "currency": "EUR",
        "values": [
            {"from": "2026-01-01T00:00:00Z", "minor_units_per_point": "0.5"},
            {"from": "2026-03-01T01:00:00+01:00", "minor_units_per_point": "0.75"},
        ],
    },
    "breakage_rate": "0.2",
}


def refused(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(PointsError) as err:
        call(*args, **kwargs)
    assert err.value.code is Code.VALIDATION_ERROR
    return err.value.detail


# --- policy ------------------------------------------------------------------------------


def test_point_value_and_breakage_round_trip() -> None:
    policy = parse_policy(VALUED)
    assert policy.breakage_rate == Decimal("0.2")
    assert policy.point_value is not None and policy.point_value.currency == "EUR"
    steps = policy.point_value.steps
    assert steps[1].starts_at == datetime(2026, 3, 1, 0, 0, tzinfo=UTC)  # in UTC
    as_json = policy_to_json(policy)
    assert as_json["point_value"]["values"][1] == {
        "from": "2026-03-01T00:00:00Z",
        "minor_units_per_point": "0.75",
    }
    assert parse_policy(as_json) == policy
    # Unset: absent from the JSON, so policies made before stay exactly as they were.
    assert "point_value" not in policy_to_json(DEFAULT_POLICY)
    assert "breakage_rate" not in policy_to_json(DEFAULT_POLICY)


def test_point_value_in_force() -> None:
    value = parse_policy(VALUED).point_value
    assert value is not None
    assert value.at(datetime(2025, 12, 31, tzinfo=UTC)) is None
    assert value.at(datetime(2026, 1, 1, tzinfo=UTC)) == Decimal("0.5")
    assert value.at(datetime(2026, 2, 28, 23, 59, tzinfo=UTC)) == Decimal("0.5")
    assert value.at(datetime(2026, 3, 1, 0, 0, tzinfo=UTC)) == Decimal("0.75")


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"point_value": {"currency": "eur", "values": []}}, "ISO 4217"),
        ({"point_value": {"currency": "EUR", "values": []}}, "1..100"),
        ({"point_value": {"currency": "EUR"}}, "values"),
        (
            {"point_value": {"currency": "EUR", "values": [{"from": "2026-01-01T00:00:00Z"}]}},
            "decimal string",
        ),
        (
            {
                "point_value": {
                    "currency": "EUR",
                    "values": [{"from": "2026-01-01T00:00:00Z", "minor_units_per_point": 0.5}],
                }
            },
            "decimal string",
        ),
        (
            {
                "point_value": {
                    "currency": "EUR",
                    "values": [{"from": "2026-01-01", "minor_units_per_point": "1"}],
                }
            },
            "time zone",
        ),
        (
            {
                "point_value": {
                    "currency": "EUR",
                    "values": [{"from": "2026-01-01T00:00:00Z", "minor_units_per_point": "-1"}],
                }
            },
            "between",
        ),
        (
            {
                "point_value": {
                    "currency": "EUR",
                    "values": [
                        {"from": "2026-01-01T00:00:00Z", "minor_units_per_point": "1"},
                        {"from": "2026-01-01T01:00:00+01:00", "minor_units_per_point": "2"},
                    ],
                }
            },
            "distinct",
        ),
        ({"point_value": {"currency": "EUR", "values": [], "x": 1}}, "unknown keys"),
        ({"breakage_rate": 0.2}, "decimal string"),
        ({"breakage_rate": "1"}, "between"),
        ({"breakage_rate": "-0.1"}, "between"),
    ],
)
def test_bad_report_policy_fields_are_refused(raw: dict[str, Any], says: str) -> None:
    assert says in refused(parse_policy, raw)


# --- windows -----------------------------------------------------------------------------


def test_window_aligns_to_periods() -> None:
    win = reports.window(date(2026, 1, 15), date(2026, 3, 2), "month", TODAY)
    assert [p.label for p in win.periods] == ["2026-01-01", "2026-02-01", "2026-03-01"]
    assert win.end == date(2026, 4, 1)
    week = reports.window(date(2026, 11, 4), date(2026, 11, 4), "week", TODAY)
    assert [(p.start, p.end) for p in week.periods] == [(date(2026, 11, 2), date(2026, 11, 9))]
    days = reports.window(None, None, "day", TODAY)
    assert len(days.periods) == reports.PERIODS_DEFAULT["day"] and days.periods[-1].start == TODAY
    ahead = reports.window(None, None, "month", TODAY, ahead=True)
    assert len(ahead.periods) == 12 and ahead.start == date(2026, 11, 1)


@pytest.mark.parametrize(
    ("granularity", "count"),
    [("day", REPORT_DAYS_MAX), ("week", REPORT_WEEKS_MAX), ("month", REPORT_MONTHS_MAX)],
)
def test_window_bounds(granularity: str, count: int) -> None:
    first = date(2000, 1, 3)  # a Monday, the 3rd of a month
    start = reports.period_start(first, granularity)
    last_ok = start
    for _ in range(count - 1):
        last_ok = reports.next_start(last_ok, granularity)
    assert len(reports.window(first, last_ok, granularity, TODAY).periods) == count
    too_far = reports.next_start(last_ok, granularity)
    assert "at most" in refused(reports.window, first, too_far, granularity, TODAY)


def test_bad_window_input_is_refused() -> None:
    assert "not be after" in refused(
        reports.window, date(2026, 2, 1), date(2026, 1, 1), "day", TODAY
    )
    assert "YYYY-MM-DD" in refused(reports.parse_day, "2026-02-30", "from")
    assert "YYYY-MM-DD" in refused(reports.parse_day, "2026-1-1", "to")
    assert "granularity" in refused(reports.parse_granularity, "year", "month")
    assert reports.parse_day(None, "from") is None
    assert reports.parse_granularity(None, "week") == "week"


@settings(max_examples=200, deadline=None)
@given(
    st.dates(min_value=date(1990, 1, 1), max_value=date(2100, 1, 1)),
    st.integers(0, 2000),
    st.sampled_from(reports.GRANULARITIES),
)
def test_periods_are_contiguous_and_find_their_days(
    first: date, span: int, granularity: str
) -> None:
    last = first + timedelta(days=span)
    try:
        win = reports.window(first, last, granularity, TODAY)
    except PointsError:
        return  # too long: refused, checked above
    win.check()
    assert win.start <= first and last < win.end
    for day in (first, last, first + timedelta(days=span // 2)):
        index = win.period_of(day)
        assert index is not None and win.periods[index].contains(day)
    assert win.period_of(win.end) is None and win.period_of(win.start - timedelta(days=1)) is None


# --- liability ---------------------------------------------------------------------------

kinds = st.dictionaries(st.sampled_from(TRANSACTION_TYPES), st.integers(0, 10**12), max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.integers(-(10**12), 10**15), st.lists(kinds, min_size=1, max_size=30))
def test_roll_forward_identity(opening: int, periods: list[dict[str, int]]) -> None:
    flows = [reports.flows_of(k) for k in periods]
    rolled = reports.roll_forward(opening, flows)
    assert rolled[0][0] == opening
    for (start, end), f in zip(rolled, flows, strict=True):
        assert end == start + f.issued - f.redeemed - f.expired - f.reversed + f.adjusted
    for (_, closing), (next_opening, _) in itertools.pairwise(rolled):
        assert closing == next_opening
    everything: dict[str, int] = {}
    for k in periods:
        for kind, points in k.items():
            everything[kind] = everything.get(kind, 0) + points
    assert rolled[-1][1] == opening + reports.outstanding_of(everything)


def test_liability_in_points_and_money() -> None:
    policy = parse_policy(VALUED)
    win = reports.window(date(2026, 2, 1), date(2026, 3, 31), "month", TODAY)
    daily = [
        (date(2026, 2, 3), "credit", 1000),
        (date(2026, 2, 4), "debit", 300),
        (date(2026, 2, 5), "refund", 100),
        (date(2026, 2, 6), "hold", 50),  # moves points between a member's accounts
        (date(2026, 3, 9), "expire", 40),
        (date(2026, 3, 9), "reversal", 10),
    ]
    view = reports.liability(
        policy=policy,
        program_id="shop",
        win=win,
        as_of=AS_OF,
        opening_kinds={"credit": 500, "debit": 100},
        daily_kinds=daily,
        cohort_totals={},
    )
    feb, mar = view["rows"]
    assert (feb["opening"], feb["issued"], feb["redeemed"], feb["closing"]) == (
        400,
        1000,
        200,
        1200,
    )
    assert (mar["opening"], mar["expired"], mar["reversed"], mar["closing"]) == (1200, 40, 10, 1150)
    assert feb["minor_units_per_point"] == "0.5" and mar["minor_units_per_point"] == "0.75"
    assert feb["closing_money"] == "600" and mar["opening_money"] == "900"
    assert mar["revaluation_money"] == "300"  # the same 1200 points, valued higher
    assert mar["closing_money"] == "862.5"
    # Deferred revenue: closing x value x (1 - 0.2); breakage: redeemed x value x 0.2 / 0.8.
    assert feb["deferred_revenue_money"] == "480"
    assert feb["recognised_breakage_money"] == "25"
    assert view["breakage_rate"] == "0.2" and view["breakage_rate_source"] == "policy"
    assert view["currency"] == "EUR"
    plain = reports.liability(
        "shop",
        DEFAULT_POLICY,
        win,
        AS_OF,
        {},
        daily,
        {"issued": 100, "remaining": 50, "expired": 10},
    )
    assert plain["rows"][0]["closing_money"] is None and plain["currency"] is None
    # No policy rate: the observed one, expired / (expired + redeemed) = 10 / (10 + 40).
    assert (plain["breakage_rate"], plain["breakage_rate_source"]) == ("0.2000", "observed")


# --- other reports -----------------------------------------------------------------------


def test_breakage_cohorts_sum_to_totals() -> None:
    win = reports.window(date(2026, 1, 1), date(2026, 2, 28), "month", TODAY)
    daily = [
        (date(2026, 1, 5), {"issued": 1000, "remaining": 300, "expired": 100, "reversed": 0}),
        (date(2026, 1, 20), {"issued": 500, "remaining": 500, "expired": 0, "reversed": 0}),
        (date(2026, 2, 2), {"issued": 200, "remaining": 0, "expired": 0, "reversed": 50}),
    ]
    view = reports.breakage("shop", parse_policy(VALUED), win, AS_OF, daily, {})
    jan, feb = view["rows"]
    assert (jan["issued"], jan["redeemed"], jan["expired"], jan["outstanding"]) == (
        1500,
        600,
        100,
        800,
    )
    assert jan["observed_breakage_rate"] == "0.0667"
    assert jan["projected_breakage_rate"] == "0.1733"  # (100 + 800 x 0.2) / 1500
    assert feb["redeemed"] == 150 and feb["reversed"] == 50
    totals = view["totals"]
    for name in ("issued", "redeemed", "expired", "reversed", "outstanding"):
        assert totals[name] == jan[name] + feb[name]
    lines = reports.to_csv(view).splitlines()
    assert lines[0].startswith("cohort,issued,redeemed") and lines[-1].startswith("total,1700")


def test_funnel_rewards_members_and_csv() -> None:
    win = reports.window(date(2026, 1, 1), date(2026, 1, 31), "month", TODAY)
    funnel = reports.funnel(
        "shop",
        win,
        AS_OF,
        150,
        [
            (
                date(2026, 1, 2),
                {"earned": 10, "reached_reward": 4, "redeemed_once": 2, "redeemed_twice": 1},
            ),
        ],
    )
    row = funnel["rows"][0]
    assert (row["reached_reward_rate"], row["redeemed_once_rate"], row["redeemed_twice_rate"]) == (
        "0.4000",
        "0.2000",
        "0.5000",
    )
    rewards = reports.rewards(
        "shop",
        DEFAULT_POLICY,
        win,
        AS_OF,
        [
            {
                "reward_id": "mug",
                "name": "Mug",
                "redemptions": 3,
                "completed": 2,
                "cancelled": 0,
                "failed": 1,
                "in_progress": 0,
                "points": 300,
            }
        ],
        [(1, 9, 2), (7, 23, 1)],
        {"fulfillment_failed": 1},
    )
    assert rewards["heatmap"]["counts"][0][9] == 2 and rewards["heatmap"]["counts"][6][23] == 1
    csv_lines = reports.to_csv(rewards).splitlines()
    assert csv_lines[1] == "reward,mug,Mug,3,2,0,1,0,300,,"
    assert len(csv_lines) == 1 + 1 + 7 * 24
    members = reports.members(
        "shop", win, AS_OF, {30: 3, 90: 5}, {None: 6, "gold": 2}, [(date(2026, 1, 3), 4)]
    )
    assert members["members"] == 8 and members["active"] == {"30d": 3, "90d": 5}
    assert members["tiers"][0] == {"tier": "gold", "members": 2, "share": "0.2500"}
    assert members["rows"] == [{"period": "2026-01-01", "new_members": 4}]
    assert reports.to_csv(members) == "period,new_members\r\n2026-01-01,4\r\n"


def test_rates_and_money_text() -> None:
    assert reports.rate(1, 3) == "0.3333" and reports.rate(0, 0) is None
    assert reports.money(Decimal("1.50")) == "1.5" and reports.money(Decimal("0.00")) == "0"
    assert reports.money(Decimal("1E+3")) == "1000"
    assert reports.rounded_money(Decimal(1) / Decimal(3)) == "0.3333"


def test_days_near_the_calendar_ends_are_refused() -> None:
    assert "between" in refused(reports.parse_day, "9999-12-31", "from")
    assert "between" in refused(reports.parse_day, "0001-01-01", "to")
    last = reports.parse_day("9000-12-31", "from")
    assert last is not None
    ahead = reports.window(last, None, "month", TODAY, ahead=True)
    assert len(ahead.periods) == 12
