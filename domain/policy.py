"""A program's earning policy: time zone, expiry, pending, debt, caps and tiers.

A policy is versioned data: the API stores it as JSON, `parse_policy` validates it into
frozen dataclasses and `policy_to_json` writes it back (the two round-trip).

Calendar rules are counted in the program's own time zone, because "points expire at the
end of the month" means the member's month, not UTC's:

- expiry counts from when points become *available* (after any pending period);
- an expiry instant is the first instant the points are no longer spendable;
- "days N" adds N local calendar days (dateutil's relativedelta on the local wall clock),
  so across a DST change the local hour is kept; if that local time does not exist (a
  spring-forward gap) the instant is the one the pre-transition offset names;
- "end_of_month N" is 00:00 local on the 1st of the month after the month N months
  later than the month of availability (N=0: the end of the current month);
- "end_of_year N" is 00:00 local on Jan 1 of (local year + N + 1).

Time is always an argument (tz-aware, UTC); nothing here reads the clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, tzinfo
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.relativedelta import relativedelta

from domain.limits import (
    CURRENCY_RE,
    EXPIRY_DAYS_MAX,
    EXPIRY_MONTHS_MAX,
    EXPIRY_YEARS_MAX,
    ID_RE,
    MINOR_UNITS_PER_POINT_MAX,
    MULTIPLIER_MAX,
    PENDING_DAYS_MAX,
    POINT_VALUES_MAX,
    POINTS_PER_OPERATION_MAX,
    REDEMPTIONS_PER_HOUR_MAX,
    TIER_GRACE_DAYS_MAX,
    TIER_NAME_LENGTH_MAX,
    TIER_WINDOW_DAYS_MAX,
    TIERS_MAX,
    TIME_ZONE_LENGTH_MAX,
)
from domain.numbers import check_int, invalid, parse_decimal

EXPIRY_NEVER = "never"
EXPIRY_DAYS = "days"
EXPIRY_END_OF_MONTH = "end_of_month"
EXPIRY_END_OF_YEAR = "end_of_year"
# kind -> the largest n it accepts (and the smallest).
EXPIRY_N_RANGE: dict[str, tuple[int, int]] = {
    EXPIRY_NEVER: (0, 0),
    EXPIRY_DAYS: (1, EXPIRY_DAYS_MAX),
    EXPIRY_END_OF_MONTH: (0, EXPIRY_MONTHS_MAX),
    EXPIRY_END_OF_YEAR: (0, EXPIRY_YEARS_MAX),
}

PENDING_NONE = "none"
PENDING_DAYS = "days"
PENDING_UNTIL_CONFIRMED = "until_confirmed"
PENDING_KINDS = (PENDING_NONE, PENDING_DAYS, PENDING_UNTIL_CONFIRMED)

BASIS_LIFETIME = "lifetime"
BASIS_ROLLING_DAYS = "rolling_days"
TIER_BASES = (BASIS_LIFETIME, BASIS_ROLLING_DAYS)

# Only what IANA names are made of: no dots, so no path can reach the file system.
TIME_ZONE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$")

_MULTIPLIER_LOW = Fraction(0)
_MULTIPLIER_HIGH = Fraction(MULTIPLIER_MAX)


@dataclass(frozen=True)
class ExpiryPolicy:
    kind: str = EXPIRY_NEVER
    n: int = 0


@dataclass(frozen=True)
class PendingPolicy:
    kind: str = PENDING_NONE
    days: int = 0


@dataclass(frozen=True)
class Caps:
    """Program-wide caps in points; None means no cap."""

    per_event: int | None = None
    per_member_day: int | None = None
    per_member_month: int | None = None


@dataclass(frozen=True)
class RiskPolicy:
    """Risk control (domain/risk.py); None means no limit, or no review.

    Velocity limits per member: points debited or redeemed per local day, redemptions per
    local clock hour, points credited per local day by `service` keys. A debit or a
    redemption of more than `review_above_points` is held for an operator's review.
    """

    debit_points_per_day: int | None = None
    redemptions_per_hour: int | None = None
    service_credit_points_per_day: int | None = None
    review_above_points: int | None = None


@dataclass(frozen=True)
class TierDef:
    name: str
    threshold: int
    multiplier: Decimal


@dataclass(frozen=True)
class TierPolicy:
    basis: str
    window_days: int
    downgrade_grace_days: int
    # Sorted by threshold ascending; the first is the base tier (threshold 0).
    tiers: tuple[TierDef, ...]

    def check(self) -> None:
        assert self.basis in TIER_BASES
        assert self.tiers and self.tiers[0].threshold == 0
        assert all(
            a.threshold < b.threshold for a, b in zip(self.tiers, self.tiers[1:], strict=False)
        )
        assert (self.basis == BASIS_ROLLING_DAYS) == (self.window_days > 0)


@dataclass(frozen=True)
class PointValueStep:
    """From `starts_at` on (until the next step), a point is worth this many minor units
    of the currency (exact: a Decimal from a decimal string, never a float)."""

    starts_at: datetime
    minor_units_per_point: Decimal


@dataclass(frozen=True)
class PointValue:
    """What a point is worth in money, over time (reports value the liability with it)."""

    currency: str
    # Sorted by starts_at, strictly increasing; at least one.
    steps: tuple[PointValueStep, ...]

    def check(self) -> None:
        assert CURRENCY_RE.fullmatch(self.currency)
        assert 1 <= len(self.steps) <= POINT_VALUES_MAX
        assert all(
            a.starts_at < b.starts_at for a, b in zip(self.steps, self.steps[1:], strict=False)
        )

    def at(self, moment: datetime) -> Decimal | None:
        """The value in force at `moment`: the last step that started at or before it; None
        before the first step (no value known yet)."""
        _check_moment(moment, "moment")
        found = None
        for step in self.steps:
            if step.starts_at > moment:
                break
            found = step.minor_units_per_point
        assert found is None or found >= 0
        return found


@dataclass(frozen=True)
class Policy:
    time_zone: str = "UTC"
    expiry: ExpiryPolicy = ExpiryPolicy()
    pending: PendingPolicy = PendingPolicy()
    allow_debt: bool = False
    caps: Caps = Caps()
    tiers: TierPolicy | None = None
    risk: RiskPolicy = RiskPolicy()
    # Reports (domain/reports.py): a point's money value, and the share of issued points
    # expected never to be redeemed (None: the reports use the observed rate).
    point_value: PointValue | None = None
    breakage_rate: Decimal | None = None


DEFAULT_POLICY = Policy()


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    """The ZoneInfo for a validated IANA name (cached: the hot path asks per event)."""
    assert name
    result = ZoneInfo(name)
    assert result.key == name
    return result


def _zone_of(policy_or_tz: Policy | str | tzinfo) -> tzinfo:
    if isinstance(policy_or_tz, Policy):
        return zone(policy_or_tz.time_zone)
    if isinstance(policy_or_tz, str):
        return zone(policy_or_tz)
    assert isinstance(policy_or_tz, tzinfo)
    return policy_or_tz


def _check_moment(moment: datetime, field: str) -> None:
    assert isinstance(moment, datetime), f"{field} must be a datetime"
    assert moment.tzinfo is not None and moment.utcoffset() is not None, f"{field} is naive"


# --- Parsing -------------------------------------------------------------------------------


def _object(raw: object, field: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise invalid(f"{field} must be an object")
    unknown = sorted(str(key) for key in raw if key not in allowed)
    if unknown:
        raise invalid(f"{field} has unknown keys: {', '.join(unknown)[:200]}")
    return raw


def _choice(value: object, field: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise invalid(f"{field} must be one of {', '.join(choices)}")
    return value


def _optional_points(value: object, field: str) -> int | None:
    if value is None:
        return None
    return check_int(value, field, 0, POINTS_PER_OPERATION_MAX)


def parse_time_zone(value: object, field: str = "time_zone") -> str:
    """An IANA time zone name that this machine's tz database knows."""
    if not isinstance(value, str) or not 1 <= len(value) <= TIME_ZONE_LENGTH_MAX:
        raise invalid(f'{field} must be an IANA time zone name like "Europe/Paris"')
    if TIME_ZONE_RE.fullmatch(value) is None:
        raise invalid(f"{field} {value!r} is not a time zone name")
    try:
        found = zone(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise invalid(f"{field} {value!r} is not a known time zone") from None
    assert found.key == value
    assert len(value) <= TIME_ZONE_LENGTH_MAX
    return value


def _parse_expiry(raw: object) -> ExpiryPolicy:
    fields = _object(raw, "expiry", ("kind", "n"))
    kind = _choice(fields.get("kind", EXPIRY_NEVER), "expiry.kind", tuple(EXPIRY_N_RANGE))
    low, high = EXPIRY_N_RANGE[kind]
    n = check_int(fields.get("n", low), "expiry.n", low, high)
    return ExpiryPolicy(kind, n)


def _parse_pending(raw: object) -> PendingPolicy:
    fields = _object(raw, "pending", ("kind", "days"))
    kind = _choice(fields.get("kind", PENDING_NONE), "pending.kind", PENDING_KINDS)
    if kind == PENDING_DAYS:
        days = check_int(fields.get("days"), "pending.days", 1, PENDING_DAYS_MAX)
    else:
        days = check_int(fields.get("days", 0), "pending.days", 0, 0)
    return PendingPolicy(kind, days)


def _parse_caps(raw: object) -> Caps:
    fields = _object(raw, "caps", ("per_event", "per_member_day", "per_member_month"))
    return Caps(
        _optional_points(fields.get("per_event"), "caps.per_event"),
        _optional_points(fields.get("per_member_day"), "caps.per_member_day"),
        _optional_points(fields.get("per_member_month"), "caps.per_member_month"),
    )


RISK_KEYS = (
    "debit_points_per_day",
    "redemptions_per_hour",
    "service_credit_points_per_day",
    "review_above_points",
)


def _parse_risk(raw: object) -> RiskPolicy:
    fields = _object(raw, "risk", RISK_KEYS)
    per_hour = fields.get("redemptions_per_hour")
    result = RiskPolicy(
        _optional_points(fields.get("debit_points_per_day"), "risk.debit_points_per_day"),
        None
        if per_hour is None
        else check_int(per_hour, "risk.redemptions_per_hour", 0, REDEMPTIONS_PER_HOUR_MAX),
        _optional_points(
            fields.get("service_credit_points_per_day"), "risk.service_credit_points_per_day"
        ),
        _optional_points(fields.get("review_above_points"), "risk.review_above_points"),
    )
    assert result.redemptions_per_hour is None or result.redemptions_per_hour >= 0
    assert result.review_above_points is None or result.review_above_points >= 0
    return result


def _parse_tier_def(raw: object, index: int) -> TierDef:
    field = f"tiers.tiers[{index}]"
    fields = _object(raw, field, ("name", "threshold", "multiplier"))
    name = fields.get("name")
    if not isinstance(name, str) or len(name) > TIER_NAME_LENGTH_MAX or not ID_RE.fullmatch(name):
        raise invalid(f"{field}.name must be a safe id of 1..{TIER_NAME_LENGTH_MAX} characters")
    threshold = check_int(
        fields.get("threshold"), f"{field}.threshold", 0, POINTS_PER_OPERATION_MAX
    )
    multiplier = parse_decimal(
        fields.get("multiplier", "1"), f"{field}.multiplier", _MULTIPLIER_LOW, _MULTIPLIER_HIGH
    )
    return TierDef(name, threshold, multiplier)


def _parse_tiers(raw: object) -> TierPolicy | None:
    if raw is None:
        return None
    fields = _object(raw, "tiers", ("basis", "window_days", "downgrade_grace_days", "tiers"))
    basis = _choice(fields.get("basis", BASIS_LIFETIME), "tiers.basis", TIER_BASES)
    if basis == BASIS_ROLLING_DAYS:
        window_days = check_int(
            fields.get("window_days"), "tiers.window_days", 1, TIER_WINDOW_DAYS_MAX
        )
    else:
        # A lifetime basis has no window; 0 keeps one normal form for round-trips.
        window_days = check_int(fields.get("window_days", 0), "tiers.window_days", 0, 0)
    grace_days = check_int(
        fields.get("downgrade_grace_days", 0),
        "tiers.downgrade_grace_days",
        0,
        TIER_GRACE_DAYS_MAX,
    )
    raw_defs = fields.get("tiers")
    if not isinstance(raw_defs, list) or not 1 <= len(raw_defs) <= TIERS_MAX:
        raise invalid(f"tiers.tiers must be a list of 1..{TIERS_MAX} tiers")
    defs = sorted(
        (_parse_tier_def(item, index) for index, item in enumerate(raw_defs)),
        key=lambda tier: tier.threshold,
    )
    if defs[0].threshold != 0:
        raise invalid("tiers.tiers needs a base tier with threshold 0")
    if len({tier.threshold for tier in defs}) != len(defs):
        raise invalid("tiers.tiers thresholds must be distinct")
    if len({tier.name for tier in defs}) != len(defs):
        raise invalid("tiers.tiers names must be distinct")
    result = TierPolicy(basis, window_days, grace_days, tuple(defs))
    result.check()
    return result


_MINOR_UNITS_LOW = Fraction(0)
_MINOR_UNITS_HIGH = Fraction(MINOR_UNITS_PER_POINT_MAX)
# A breakage rate is a share of issued points: 0 <= rate < 1 (a rate of 1 would say no
# point is ever redeemed, and deferred revenue would be nothing).
_BREAKAGE_LOW = Fraction(0)
_BREAKAGE_HIGH = Fraction(99, 100)


def _parse_instant(value: object, field: str) -> datetime:
    """An RFC 3339 date-time with a zone (e.g. "2026-01-01T00:00:00Z"), in UTC."""
    # Imported here: at module level it would be circular (domain.events imports
    # domain.rules, which imports this module). One RFC 3339 parser for the product.
    from domain.events import parse_time

    result = parse_time(value, field).astimezone(UTC)
    assert result.tzinfo is UTC
    return result


def _parse_point_value(raw: object) -> PointValue | None:
    if raw is None:
        return None
    fields = _object(raw, "point_value", ("currency", "values"))
    currency = fields.get("currency")
    if not isinstance(currency, str) or not CURRENCY_RE.fullmatch(currency):
        raise invalid('point_value.currency must be an ISO 4217 code like "EUR"')
    raw_values = fields.get("values")
    if not isinstance(raw_values, list) or not 1 <= len(raw_values) <= POINT_VALUES_MAX:
        raise invalid(f"point_value.values must be a list of 1..{POINT_VALUES_MAX} values")
    steps = []
    for index, item in enumerate(raw_values):
        field = f"point_value.values[{index}]"
        step = _object(item, field, ("from", "minor_units_per_point"))
        value = step.get("minor_units_per_point")
        if not isinstance(value, str):
            # A JSON number may already have lost its exact value: decimal strings only.
            raise invalid(f'{field}.minor_units_per_point must be a decimal string like "0.5"')
        steps.append(
            PointValueStep(
                _parse_instant(step.get("from"), f"{field}.from"),
                parse_decimal(
                    value, f"{field}.minor_units_per_point", _MINOR_UNITS_LOW, _MINOR_UNITS_HIGH
                ),
            )
        )
    steps.sort(key=lambda step: step.starts_at)
    if len({step.starts_at for step in steps}) != len(steps):
        raise invalid("point_value.values must start at distinct instants")
    result = PointValue(currency, tuple(steps))
    result.check()
    return result


def _parse_breakage_rate(raw: object) -> Decimal | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        raise invalid('breakage_rate must be a decimal string like "0.2" (0 to 0.99)')
    rate = parse_decimal(raw, "breakage_rate", _BREAKAGE_LOW, _BREAKAGE_HIGH)
    assert 0 <= rate < 1
    return rate


def _decimal_text(value: Decimal) -> str:
    """A Decimal as a plain decimal string (never an exponent: "0.5", "12", "0.000001")."""
    text = format(value, "f")
    assert "E" not in text and "e" not in text
    return text


POLICY_KEYS = (
    "time_zone",
    "expiry",
    "pending",
    "allow_debt",
    "caps",
    "tiers",
    "risk",
    "point_value",
    "breakage_rate",
)


def parse_policy(raw: dict[str, Any] | None) -> Policy:
    """Validate a policy JSON object; None or {} gives the defaults.

    Defaults: UTC, points never expire, no pending period, no debt, no caps, no tiers, no
    risk limits and no reviews, no point value and no breakage estimate.
    Raises PointsError(VALIDATION_ERROR) naming the first bad field.
    """
    if raw is None:
        return DEFAULT_POLICY
    fields = _object(raw, "policy", POLICY_KEYS)
    time_zone = parse_time_zone(fields.get("time_zone", "UTC"))
    allow_debt = fields.get("allow_debt", False)
    if not isinstance(allow_debt, bool):
        raise invalid("allow_debt must be true or false")
    policy = Policy(
        time_zone,
        _parse_expiry(fields.get("expiry", {})),
        _parse_pending(fields.get("pending", {})),
        allow_debt,
        _parse_caps(fields.get("caps", {})),
        _parse_tiers(fields.get("tiers")),
        _parse_risk(fields.get("risk", {})),
        _parse_point_value(fields.get("point_value")),
        _parse_breakage_rate(fields.get("breakage_rate")),
    )
    assert policy.expiry.kind in EXPIRY_N_RANGE
    assert policy.pending.kind in PENDING_KINDS
    return policy


def policy_to_json(policy: Policy) -> dict[str, Any]:
    """The policy as JSON (every key written out); parse_policy reads it back equal."""
    assert isinstance(policy, Policy)
    assert policy.expiry.kind in EXPIRY_N_RANGE
    tiers = policy.tiers
    result: dict[str, Any] = {
        "time_zone": policy.time_zone,
        "expiry": {"kind": policy.expiry.kind, "n": policy.expiry.n},
        "pending": {"kind": policy.pending.kind, "days": policy.pending.days},
        "allow_debt": policy.allow_debt,
        "caps": {
            "per_event": policy.caps.per_event,
            "per_member_day": policy.caps.per_member_day,
            "per_member_month": policy.caps.per_member_month,
        },
        "tiers": None
        if tiers is None
        else {
            "basis": tiers.basis,
            "window_days": tiers.window_days,
            "downgrade_grace_days": tiers.downgrade_grace_days,
            "tiers": [
                {"name": tier.name, "threshold": tier.threshold, "multiplier": str(tier.multiplier)}
                for tier in tiers.tiers
            ],
        },
        "risk": {name: getattr(policy.risk, name) for name in RISK_KEYS},
    }
    # The report fields are written only when set, so that the JSON of every policy made
    # before they existed stays exactly as it was.
    if policy.point_value is not None:
        result["point_value"] = {
            "currency": policy.point_value.currency,
            "values": [
                {
                    "from": step.starts_at.isoformat().replace("+00:00", "Z"),
                    "minor_units_per_point": _decimal_text(step.minor_units_per_point),
                }
                for step in policy.point_value.steps
            ],
        }
    if policy.breakage_rate is not None:
        result["breakage_rate"] = _decimal_text(policy.breakage_rate)
    return result


# --- Calendar ------------------------------------------------------------------------------


def _local_midnight_utc(day: date, tz: tzinfo) -> datetime:
    """The first instant of a local day, in UTC.

    fold=0 names the pre-transition offset; where midnight falls in a DST gap, that is
    exactly the transition instant, i.e. the first instant that exists on that day.
    """
    return datetime.combine(day, time(0, 0), tzinfo=tz).astimezone(UTC)


def _add_local_days(moment: datetime, days: int, tz: tzinfo) -> datetime:
    """`moment` plus `days` local calendar days, keeping the local wall-clock time."""
    assert days >= 0
    local = moment.astimezone(tz)
    # Aware arithmetic in Python is wall-clock arithmetic; fold=0 makes the result in an
    # ambiguous or missing hour deterministic (the earlier offset).
    shifted: datetime = (local + relativedelta(days=days)).replace(fold=0)
    result = shifted.astimezone(UTC)
    assert days == 0 or result > moment
    return result


def expires_at(policy: Policy, available_at: datetime) -> datetime | None:
    """First instant at which points that became available at `available_at` are expired.

    None: they never expire. The result is in UTC and always after `available_at`.
    """
    _check_moment(available_at, "available_at")
    expiry = policy.expiry
    low, high = EXPIRY_N_RANGE[expiry.kind]
    assert low <= expiry.n <= high
    if expiry.kind == EXPIRY_NEVER:
        return None
    tz = zone(policy.time_zone)
    try:
        if expiry.kind == EXPIRY_DAYS:
            result = _add_local_days(available_at, expiry.n, tz)
        else:
            local = available_at.astimezone(tz)
            if expiry.kind == EXPIRY_END_OF_MONTH:
                first = date(local.year, local.month, 1) + relativedelta(months=expiry.n + 1)
            else:
                first = date(local.year + expiry.n + 1, 1, 1)
            result = _local_midnight_utc(first, tz)
    except (OverflowError, ValueError):
        # Only reachable near year 9999: refuse instead of crashing.
        raise invalid("expiry falls beyond the calendar") from None
    assert result > available_at, "expiry must come after availability"
    assert result.tzinfo is UTC
    return result


def available_at(pending: PendingPolicy, awarded_at: datetime, tz: str | tzinfo) -> datetime | None:
    """When points awarded at `awarded_at` become spendable; None: once confirmed."""
    _check_moment(awarded_at, "awarded_at")
    assert pending.kind in PENDING_KINDS
    if pending.kind == PENDING_UNTIL_CONFIRMED:
        return None
    if pending.kind == PENDING_NONE:
        return awarded_at.astimezone(UTC)
    assert 1 <= pending.days <= PENDING_DAYS_MAX
    result = _add_local_days(awarded_at, pending.days, _zone_of(tz))
    assert result > awarded_at
    return result


def local_day(policy_or_tz: Policy | str | tzinfo, moment: datetime) -> str:
    """The program-local calendar day of `moment`, "YYYY-MM-DD" (the key of daily caps)."""
    _check_moment(moment, "moment")
    result = moment.astimezone(_zone_of(policy_or_tz)).date().isoformat()
    assert len(result) == 10
    return result


def local_month(policy_or_tz: Policy | str | tzinfo, moment: datetime) -> str:
    """The program-local calendar month of `moment`, "YYYY-MM" (the key of monthly caps)."""
    _check_moment(moment, "moment")
    local = moment.astimezone(_zone_of(policy_or_tz))
    result = f"{local.year:04d}-{local.month:02d}"
    assert len(result) == 7
    return result
