"""Program policy: parsing, round-trips and the expiry calendar in the program's zone."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import Code, PointsError
from domain.limits import EXPIRY_DAYS_MAX, EXPIRY_MONTHS_MAX, EXPIRY_YEARS_MAX
from domain.policy import (
    DEFAULT_POLICY,
    Caps,
    ExpiryPolicy,
    PendingPolicy,
    Policy,
    available_at,
    expires_at,
    local_day,
    local_month,
    parse_policy,
    policy_to_json,
)

ZONES = ["Europe/Paris", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata", "UTC"]

moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2200, 12, 31), timezones=st.just(UTC)
)


def policy(zone: str, kind: str, n: int) -> Policy:
    return Policy(time_zone=zone, expiry=ExpiryPolicy(kind, n))


def bad(raw: Any) -> str:
    with pytest.raises(PointsError) as err:
        parse_policy(raw)
    assert err.value.code is Code.VALIDATION_ERROR
    return err.value.detail


# --- Parsing -------------------------------------------------------------------------------


def test_missing_or_empty_policy_gives_the_defaults() -> None:
    for raw in (None, {}):
        result = parse_policy(raw)
        assert result == DEFAULT_POLICY
        assert result.time_zone == "UTC"
        assert result.expiry == ExpiryPolicy("never", 0)
        assert result.pending == PendingPolicy("none", 0)
        assert result.allow_debt is False
        assert result.caps == Caps(None, None, None)
        assert result.tiers is None


FULL = {
    "time_zone": "Europe/Paris",
    "expiry": {"kind": "end_of_month", "n": 3},
    "pending": {"kind": "days", "days": 14},
    "allow_debt": True,
    "caps": {"per_event": 500, "per_member_day": 1000, "per_member_month": 20000},
    "tiers": {
        "basis": "rolling_days",
        "window_days": 365,
        "downgrade_grace_days": 30,
        "tiers": [
            {"name": "gold", "threshold": 5000, "multiplier": "1.5"},
            {"name": "base", "threshold": 0, "multiplier": "1"},
            {"name": "silver", "threshold": 1000, "multiplier": 2},
        ],
    },
}


def test_full_policy_parses_sorts_tiers_and_round_trips() -> None:
    result = parse_policy(FULL)
    assert result.tiers is not None
    assert [tier.name for tier in result.tiers.tiers] == ["base", "silver", "gold"]
    assert result.tiers.tiers[2].multiplier == Decimal("1.5")
    assert result.caps.per_member_month == 20000
    as_json = policy_to_json(result)
    assert parse_policy(as_json) == result
    assert policy_to_json(parse_policy(as_json)) == as_json
    assert policy_to_json(DEFAULT_POLICY)["tiers"] is None
    assert parse_policy(policy_to_json(DEFAULT_POLICY)) == DEFAULT_POLICY


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"time_zone": "Mars/Olympus"}, "time_zone"),
        ({"time_zone": "../../etc/passwd"}, "time_zone"),
        ({"time_zone": 5}, "time_zone"),
        ({"colour": "red"}, "colour"),
        ({"expiry": {"kind": "weekly"}}, "expiry.kind"),
        ({"expiry": {"kind": "days", "n": 0}}, "expiry.n"),
        ({"expiry": {"kind": "days", "n": EXPIRY_DAYS_MAX + 1}}, "expiry.n"),
        ({"expiry": {"kind": "days", "n": 30.0}}, "expiry.n"),
        ({"expiry": {"kind": "end_of_month", "n": -1}}, "expiry.n"),
        ({"expiry": {"kind": "end_of_month", "n": EXPIRY_MONTHS_MAX + 1}}, "expiry.n"),
        ({"expiry": {"kind": "end_of_year", "n": EXPIRY_YEARS_MAX + 1}}, "expiry.n"),
        ({"expiry": {"kind": "never", "n": 3}}, "expiry.n"),
        ({"expiry": {"kind": "days", "n": True}}, "expiry.n"),
        ({"expiry": {"kind": "days", "n": 3, "unit": "d"}}, "unit"),
        ({"expiry": "never"}, "expiry"),
        ({"pending": {"kind": "days"}}, "pending.days"),
        ({"pending": {"kind": "none", "days": 3}}, "pending.days"),
        ({"pending": {"kind": "later"}}, "pending.kind"),
        ({"allow_debt": "yes"}, "allow_debt"),
        ({"caps": {"per_event": -1}}, "caps.per_event"),
        ({"caps": {"per_member_day": 10.5}}, "caps.per_member_day"),
        ({"caps": {"per_year": 10}}, "per_year"),
        ({"tiers": {"basis": "rolling_days", "tiers": [{"name": "a", "threshold": 0}]}}, "window"),
        ({"tiers": {"basis": "lifetime", "tiers": []}}, "tiers.tiers"),
        ({"tiers": {"basis": "lifetime", "tiers": [{"name": "a", "threshold": 5}]}}, "base"),
        (
            {
                "tiers": {
                    "tiers": [{"name": "a", "threshold": 0}, {"name": "b", "threshold": 0}],
                }
            },
            "distinct",
        ),
        (
            {
                "tiers": {
                    "tiers": [{"name": "a", "threshold": 0}, {"name": "a", "threshold": 9}],
                }
            },
            "distinct",
        ),
        ({"tiers": {"tiers": [{"name": "a", "threshold": 0, "multiplier": 1.5}]}}, "multiplier"),
        ({"tiers": {"tiers": [{"name": "a", "threshold": 0, "multiplier": "-1"}]}}, "multiplier"),
        ({"tiers": {"tiers": [{"name": "a", "threshold": 0, "multiplier": "1e3"}]}}, "multiplier"),
        ({"tiers": {"tiers": [{"name": "no spaces", "threshold": 0}]}}, "name"),
        ({"tiers": {"tiers": [{"name": "a", "threshold": -5}]}}, "threshold"),
        ("not an object", "policy"),
    ],
)
def test_bad_policies_are_validation_errors_naming_the_field(raw: Any, field: str) -> None:
    assert field in bad(raw)


@given(
    st.sampled_from(ZONES),
    st.sampled_from(["never", "days", "end_of_month", "end_of_year"]),
    st.integers(0, 100),
    st.sampled_from(["none", "days", "until_confirmed"]),
    st.integers(1, 365),
    st.booleans(),
    st.lists(st.one_of(st.none(), st.integers(0, 10**9)), min_size=3, max_size=3),
)
def test_policy_json_round_trips(
    zone: str,
    kind: str,
    n: int,
    pending: str,
    days: int,
    debt: bool,
    caps: list[int | None],
) -> None:
    raw = {
        "time_zone": zone,
        "expiry": {"kind": kind, "n": 0 if kind == "never" else max(n, 1)},
        "pending": {"kind": pending, "days": days if pending == "days" else 0},
        "allow_debt": debt,
        "caps": dict(zip(["per_event", "per_member_day", "per_member_month"], caps, strict=True)),
    }
    parsed = parse_policy(raw)
    assert policy_to_json(parsed) == {
        **raw,
        "tiers": None,
        "risk": policy_to_json(DEFAULT_POLICY)["risk"],
    }
    assert parse_policy(policy_to_json(parsed)) == parsed


# --- Expiry calendar -----------------------------------------------------------------------


def test_examples_in_paris() -> None:
    at = datetime(2026, 1, 31, 22, 30, tzinfo=UTC)  # 23:30 in Paris
    assert expires_at(policy("Europe/Paris", "never", 0), at) is None
    # End of this local month: 1 Feb 00:00 Paris = 31 Jan 23:00 UTC.
    assert expires_at(policy("Europe/Paris", "end_of_month", 0), at) == datetime(
        2026, 1, 31, 23, 0, tzinfo=UTC
    )
    assert expires_at(policy("Europe/Paris", "end_of_month", 1), at) == datetime(
        2026, 2, 28, 23, 0, tzinfo=UTC
    )
    assert expires_at(policy("Europe/Paris", "end_of_year", 0), at) == datetime(
        2026, 12, 31, 23, 0, tzinfo=UTC
    )
    assert expires_at(policy("Europe/Paris", "end_of_year", 1), at) == datetime(
        2027, 12, 31, 23, 0, tzinfo=UTC
    )
    # 30 local days later, after the March DST change: still 23:30 local (now 21:30 UTC).
    assert expires_at(policy("Europe/Paris", "days", 60), at) == datetime(
        2026, 4, 1, 21, 30, tzinfo=UTC
    )


def test_local_month_decides_not_utc_month() -> None:
    # 31 Jan 20:00 UTC is already 1 Feb in Kolkata (+05:30).
    at = datetime(2026, 1, 31, 20, 0, tzinfo=UTC)
    assert local_month("Asia/Kolkata", at) == "2026-02"
    assert local_day("Asia/Kolkata", at) == "2026-02-01"
    assert local_month(DEFAULT_POLICY, at) == "2026-01"
    assert local_day(ZoneInfo("America/New_York"), at) == "2026-01-31"
    assert expires_at(policy("Asia/Kolkata", "end_of_month", 0), at) == datetime(
        2026, 2, 28, 18, 30, tzinfo=UTC
    )


def test_leap_day_plus_twelve_months() -> None:
    at = datetime(2024, 2, 29, 12, 0, tzinfo=UTC)
    # Feb 2024 + 12 months = Feb 2025, which ends on 1 Mar 2025 00:00 local.
    assert expires_at(policy("UTC", "end_of_month", 12), at) == datetime(2025, 3, 1, tzinfo=UTC)
    # 365 days from a leap day is 28 Feb 2025, same local hour.
    assert expires_at(policy("UTC", "days", 365), at) == datetime(2025, 2, 28, 12, tzinfo=UTC)
    # And end_of_month from 31 Jan 2024 (leap year) + 1 month ends with Feb 29.
    jan = datetime(2024, 1, 31, 12, tzinfo=UTC)
    assert expires_at(policy("UTC", "end_of_month", 1), jan) == datetime(2024, 3, 1, tzinfo=UTC)


def test_days_keep_local_hour_across_dst_in_new_york() -> None:
    # 1 Mar 09:00 EST (UTC-5); 30 days later is 31 Mar 09:00 EDT (UTC-4).
    at = datetime(2026, 3, 1, 14, 0, tzinfo=UTC)
    result = expires_at(policy("America/New_York", "days", 30), at)
    assert result == datetime(2026, 3, 31, 13, 0, tzinfo=UTC)
    assert result.astimezone(ZoneInfo("America/New_York")).hour == 9


@settings(max_examples=400, deadline=None)
@given(
    moments,
    st.sampled_from(ZONES),
    st.sampled_from(["days", "end_of_month", "end_of_year"]),
    st.integers(0, 120),
)
def test_expiry_is_after_availability_in_every_zone(
    at: datetime, zone: str, kind: str, n: int
) -> None:
    n = {"days": max(1, n), "end_of_month": n, "end_of_year": min(n, EXPIRY_YEARS_MAX)}[kind]
    result = expires_at(policy(zone, kind, n), at)
    assert result is not None
    assert result > at
    assert result.tzinfo is UTC
    if kind != "days":
        local = result.astimezone(ZoneInfo(zone))
        assert (local.day, local.hour, local.minute, local.second) == (1, 0, 0, 0)
        assert local.microsecond == 0
        if kind == "end_of_year":
            assert local.month == 1


@settings(max_examples=300, deadline=None)
@given(moments, st.sampled_from(ZONES), st.integers(0, EXPIRY_MONTHS_MAX))
def test_end_of_month_is_local_midnight_on_the_first_of_the_right_month(
    at: datetime, zone: str, n: int
) -> None:
    tz = ZoneInfo(zone)
    local = at.astimezone(tz)
    result = expires_at(policy(zone, "end_of_month", n), at)
    assert result is not None
    expires_local = result.astimezone(tz)
    months = (expires_local.year * 12 + expires_local.month) - (local.year * 12 + local.month)
    assert months == n + 1
    assert (expires_local.day, expires_local.hour, expires_local.minute) == (1, 0, 0)
    # The instant just before is still inside the earlier month.
    assert (result - timedelta(microseconds=1)).astimezone(tz).day != 1


@settings(max_examples=400, deadline=None)
@given(moments, st.sampled_from(ZONES), st.integers(1, EXPIRY_DAYS_MAX))
def test_days_keep_the_local_wall_clock_time(at: datetime, zone: str, days: int) -> None:
    tz = ZoneInfo(zone)
    local = at.astimezone(tz)
    expected = local.replace(tzinfo=None) + timedelta(days=days)
    result = expires_at(policy(zone, "days", days), at)
    assert result is not None and result > at
    # Where the expected wall-clock time exists (not inside a DST gap), it is kept exactly.
    exists = (
        expected.replace(tzinfo=tz).astimezone(UTC).astimezone(tz).replace(tzinfo=None) == expected
    )
    if exists:
        assert result.astimezone(tz).replace(tzinfo=None) == expected
    # Inside a gap (never at midnight in these zones) the day is still the expected one.
    assert result.astimezone(tz).date() == expected.date()


def test_lord_howe_half_hour_dst_keeps_local_time() -> None:
    # Lord Howe moves its clocks by 30 minutes (first Sunday of April / October).
    tz = ZoneInfo("Australia/Lord_Howe")
    at = datetime(2026, 3, 20, 9, 0, tzinfo=tz).astimezone(UTC)  # +11:00 (DST)
    result = expires_at(policy("Australia/Lord_Howe", "days", 30), at)
    assert result is not None
    assert result.astimezone(tz).replace(tzinfo=None) == datetime(2026, 4, 19, 9, 0)
    assert result - at == timedelta(days=30, minutes=30)


def test_pending_availability() -> None:
    at = datetime(2026, 3, 20, 9, 0, tzinfo=UTC)
    assert available_at(PendingPolicy("none"), at, "UTC") == at
    assert available_at(PendingPolicy("until_confirmed"), at, "UTC") is None
    assert available_at(PendingPolicy("days", 14), at, "Europe/Paris") == datetime(
        2026, 4, 3, 8, 0, tzinfo=UTC
    )  # 10:00 Paris before and after; the clocks moved on 29 March
    assert available_at(PendingPolicy("days", 1), at, ZoneInfo("UTC")) == at + timedelta(days=1)
