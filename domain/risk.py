"""Velocity limits: how much one member may move per window, counted with the account.

The counters are a small JSON object kept on the account (`Account.velocity`, the
`accounts.velocity` column), so they are loaded, changed and committed with the account
under the same fencing as its balance: the shard serializes them like balances, and a
restarted shard reads them back from PostgreSQL. Only the current windows are kept:

    {"day": "2026-11-25", "debited": 1200, "service_credited": 300,
     "hour": "2026-11-25T13:00:00Z", "redemptions": 2}

Windows are fixed and follow the program's own calendar (its time zone, UTC if none):

- a day is the program-local calendar day, 00:00 to the next 00:00 local (23 or 25 hours
  across a DST change), as for the earning caps (`caps.per_member_day`);
- an hour is a program-local clock hour, hh:00 to hh:00 + 60 minutes. It is keyed by its
  first instant in UTC, so the repeated hour of a DST fall-back is two windows, and a zone
  with a :30 offset has its hours start at :30 UTC.

Why fixed windows rather than rolling ones: they are what a member and a support desk can
read off a statement ("today", "this hour"), the state is O(1) per member whatever the
limit, and a limit's answer can say exactly when it resets. The price is known: a member
can spend up to twice a limit across a window boundary (the end of one window and the start
of the next). What counts is what was accepted in the window: an operation refused counts
nothing, and points given back later (a refund, a rejected review) do not restore quota. A
limit counts from when it is set (a program without limits pays nothing for them).

Time is an argument; nothing here reads the clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from domain.errors import Code, PointsError
from domain.policy import RiskPolicy, _local_midnight_utc, local_day, zone

DAY = "day"
HOUR = "hour"
# The counters, by limit name (the policy field, the name a refusal carries).
DEBIT_POINTS_PER_DAY = "debit_points_per_day"
REDEMPTIONS_PER_HOUR = "redemptions_per_hour"
SERVICE_CREDIT_POINTS_PER_DAY = "service_credit_points_per_day"
# limit name -> (window, counter key in the state)
COUNTERS: dict[str, tuple[str, str]] = {
    DEBIT_POINTS_PER_DAY: (DAY, "debited"),
    REDEMPTIONS_PER_HOUR: (HOUR, "redemptions"),
    SERVICE_CREDIT_POINTS_PER_DAY: (DAY, "service_credited"),
}
HOUR_S = 3600


@dataclass(frozen=True, slots=True)
class Window:
    key: str
    start: datetime
    end: datetime


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def day_window(time_zone: str, now: datetime) -> Window:
    """The program-local calendar day holding `now`."""
    assert now.tzinfo is not None
    tz = zone(time_zone)
    local = now.astimezone(tz)
    start = _local_midnight_utc(local.date(), tz)
    end = _local_midnight_utc(local.date() + timedelta(days=1), tz)
    assert start <= now < end
    return Window(local_day(time_zone, now), start, end)


def hour_window(time_zone: str, now: datetime) -> Window:
    """The program-local clock hour holding `now`, keyed by its first instant in UTC."""
    assert now.tzinfo is not None
    local = now.astimezone(zone(time_zone))
    # Whole minutes and seconds since the local hour began: the same in UTC (offsets are
    # whole minutes), so the start is exact even in a repeated DST hour.
    into = timedelta(minutes=local.minute, seconds=local.second, microseconds=local.microsecond)
    start = (now - into).astimezone(UTC)
    end = start + timedelta(seconds=HOUR_S)
    assert start <= now < end
    return Window(_iso(start), start, end)


def _window(kind: str, time_zone: str, now: datetime) -> Window:
    return day_window(time_zone, now) if kind == DAY else hour_window(time_zone, now)


def used(state: dict[str, Any], name: str, time_zone: str, now: datetime) -> int:
    """What the limit `name` has counted in its window holding `now` (0 in a new window)."""
    kind, counter = COUNTERS[name]
    window = _window(kind, time_zone, now)
    if state.get(kind) != window.key:
        return 0
    result = int(state.get(counter, 0))
    assert result >= 0
    return result


def charge(
    state: dict[str, Any],
    risk: RiskPolicy,
    time_zone: str,
    now: datetime,
    *,
    debited: int = 0,
    redemptions: int = 0,
    service_credited: int = 0,
) -> dict[str, Any]:
    """The counters after counting an operation, or LIMIT_EXCEEDED naming the first limit
    it would pass (nothing is counted then). Pure: `state` is not changed.

    A counter whose window has passed starts again from zero. Only limits that are set
    count: a limit set during a window counts from then on.
    """
    assert debited >= 0 and redemptions >= 0 and service_credited >= 0
    amounts = {
        DEBIT_POINTS_PER_DAY: debited,
        REDEMPTIONS_PER_HOUR: redemptions,
        SERVICE_CREDIT_POINTS_PER_DAY: service_credited,
    }
    result = dict(state)
    for name, amount in amounts.items():
        limit = getattr(risk, name)
        if amount == 0 or limit is None:
            continue
        kind, counter = COUNTERS[name]
        window = _window(kind, time_zone, now)
        before = used(state, name, time_zone, now)
        if before + amount > limit:
            raise limit_exceeded(name, limit, kind, window, before, amount)
        if result.get(kind) != window.key:
            # A new window: every counter of this kind starts again.
            for other, (other_kind, other_counter) in COUNTERS.items():
                if other_kind == kind and other != name:
                    result.pop(other_counter, None)
            result[kind] = window.key
        result[counter] = before + amount
    assert all(int(result.get(counter, 0)) >= 0 for _, counter in COUNTERS.values())
    return result


def limit_exceeded(
    name: str, limit: int, kind: str, window: Window, used_before: int, requested: int
) -> PointsError:
    """The refusal: 409 limit_exceeded with a `limit` object naming the limit."""
    assert used_before + requested > limit
    unit = "redemptions" if name == REDEMPTIONS_PER_HOUR else "points"
    detail = (
        f"{name}: at most {limit} {unit} per {kind}; {used_before} used in this {kind},"
        f" {requested} more requested (resets at {_iso(window.end)})"
    )
    return PointsError(
        Code.LIMIT_EXCEEDED,
        detail,
        extra={
            "limit": {
                "name": name,
                "value": limit,
                "window": kind,
                "window_start": _iso(window.start),
                "resets_at": _iso(window.end),
                "used": used_before,
                "requested": requested,
            }
        },
    )


def needs_review(risk: RiskPolicy, points: int) -> bool:
    """A debit or redemption of `points` is held for review (strictly above the threshold)."""
    assert points > 0
    return risk.review_above_points is not None and points > risk.review_above_points
