"""Reports on a program's ledger: the math (pure: the sums come from db/reports_repo.py).

Every report covers a window of whole periods: `from` and `to` are UTC calendar days
(`to` included), `granularity` is day, week (ISO weeks, Monday first) or month; the
window runs from the start of the period holding `from` to the end of the period holding
`to`. The number of periods is bounded per granularity (REPORT_*_MAX), so an answer and
the work behind it are bounded too.

The reports reconcile with the ledger because they are computed from it: the daily
rollups are sums of the very transactions and lots the ledger holds, kept in the same
database transaction as the rows they sum (docs/reports.md). In particular:

- liability: closing = opening + issued - redeemed - expired - reversed + adjusted, for
  every period, and the closing of a period is the opening of the next; the closing of
  the last period is what members hold (the ledger summary's `outstanding.total`) as of
  its end.
- breakage: per cohort, issued = redeemed + expired + reversed + outstanding.

Money never touches a float: a point's value is a Decimal from a decimal string; points
times a value are exact; only deferred revenue and recognised breakage (which divide by a
rate) are rounded, half-even to MONEY_PLACES decimal places of the minor unit.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from dateutil.relativedelta import relativedelta

from domain.ledger import CREDIT, DEBIT, EXPIRE, REFUND, REVERSAL, TRANSACTION_TYPES
from domain.limits import (
    REPORT_ACTIVE_WINDOWS_DAYS,
    REPORT_DAYS_MAX,
    REPORT_EXPIRING_MONTHS,
    REPORT_MONTHS_MAX,
    REPORT_WEEKS_MAX,
)
from domain.numbers import invalid
from domain.policy import Policy

DAY = "day"
WEEK = "week"
MONTH = "month"
GRANULARITIES = (DAY, WEEK, MONTH)
PERIODS_MAX = {DAY: REPORT_DAYS_MAX, WEEK: REPORT_WEEKS_MAX, MONTH: REPORT_MONTHS_MAX}
# Without `from`: this many periods up to `to` (a month of days, a quarter of weeks, a
# year of months).
PERIODS_DEFAULT = {DAY: 31, WEEK: 13, MONTH: 12}
assert all(PERIODS_DEFAULT[g] <= PERIODS_MAX[g] for g in GRANULARITIES)

LIABILITY = "liability"
BREAKAGE = "breakage"
EXPIRING = "expiring"
FUNNEL = "funnel"
REWARDS = "rewards"
MEMBERS = "members"
REPORTS = (LIABILITY, BREAKAGE, EXPIRING, FUNNEL, REWARDS, MEMBERS)

# What each transaction kind does to what members hold (member, pending and held legs):
# credits and refunds add, debits, expiries and reversals take; activations, holds and
# releases move points between a member's own accounts and change nothing.
OUTSTANDING_SIGN = {kind: 0 for kind in TRANSACTION_TYPES} | {
    CREDIT: 1,
    REFUND: 1,
    DEBIT: -1,
    EXPIRE: -1,
    REVERSAL: -1,
}
assert set(OUTSTANDING_SIGN) == set(TRANSACTION_TYPES)

# Rates (breakage, conversion) as decimal strings with this many places.
RATE_PLACES = 4
# Money that had to be divided (deferred revenue, recognised breakage): places of the
# minor unit kept.
MONEY_PLACES = 4
BREAKAGE_SOURCE_POLICY = "policy"
BREAKAGE_SOURCE_OBSERVED = "observed"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HOURS_PER_DAY = 24
DATE_LENGTH = len("2026-01-01")
# Days a window may name: far enough from the calendar's ends that a window's periods (and
# `expiring`'s year ahead) never run past them.
DAY_MIN = date(1970, 1, 1)
DAY_MAX = date(9000, 12, 31)


# --- Periods -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """[start, end) in UTC calendar days."""

    start: date
    end: date

    @property
    def label(self) -> str:
        return self.start.isoformat()

    def contains(self, day: date) -> bool:
        return self.start <= day < self.end


@dataclass(frozen=True)
class Window:
    granularity: str
    periods: tuple[Period, ...]

    @property
    def start(self) -> date:
        return self.periods[0].start

    @property
    def end(self) -> date:
        return self.periods[-1].end

    @property
    def start_at(self) -> datetime:
        return instant(self.start)

    @property
    def end_at(self) -> datetime:
        return instant(self.end)

    def check(self) -> None:
        assert self.granularity in GRANULARITIES
        assert 1 <= len(self.periods) <= PERIODS_MAX[self.granularity]
        assert all(a.end == b.start for a, b in zip(self.periods, self.periods[1:], strict=False))
        assert all(p.start < p.end for p in self.periods)

    def period_of(self, day: date) -> int | None:
        """The index of the period holding `day`, None outside the window."""
        if not self.start <= day < self.end:
            return None
        low, high = 0, len(self.periods) - 1
        while low < high:  # periods are sorted and contiguous: bisect on their starts
            middle = (low + high + 1) // 2
            if self.periods[middle].start <= day:
                low = middle
            else:
                high = middle - 1
        assert self.periods[low].contains(day)
        return low


def instant(day: date) -> datetime:
    """The first instant of a UTC day."""
    return datetime.combine(day, time(0, 0), tzinfo=UTC)


def period_start(day: date, granularity: str) -> date:
    assert granularity in GRANULARITIES
    if granularity == DAY:
        return day
    if granularity == WEEK:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def next_start(start: date, granularity: str) -> date:
    assert period_start(start, granularity) == start
    if granularity == DAY:
        return start + timedelta(days=1)
    if granularity == WEEK:
        return start + timedelta(days=7)
    result: date = start + relativedelta(months=1)
    return result


def _shift(start: date, granularity: str, periods: int) -> date:
    """`start` moved `periods` whole periods (negative: back)."""
    if granularity == DAY:
        return start + timedelta(days=periods)
    if granularity == WEEK:
        return start + timedelta(days=7 * periods)
    result: date = start + relativedelta(months=periods)
    return result


def parse_day(value: str | None, field: str) -> date | None:
    """A UTC calendar day, "YYYY-MM-DD", within [DAY_MIN, DAY_MAX]; None if absent."""
    if value is None:
        return None
    if len(value) != DATE_LENGTH:
        raise invalid(f"{field} must be a date like 2026-01-31 (YYYY-MM-DD)")
    try:
        result = date.fromisoformat(value)
    except ValueError:
        raise invalid(f"{field} must be a valid date like 2026-01-31 (YYYY-MM-DD)") from None
    if not DAY_MIN <= result <= DAY_MAX:
        raise invalid(f"{field} must be between {DAY_MIN} and {DAY_MAX}")
    return result


def parse_granularity(value: str | None, default: str) -> str:
    assert default in GRANULARITIES
    if value is None:
        return default
    if value not in GRANULARITIES:
        raise invalid(f"granularity must be one of {', '.join(GRANULARITIES)}")
    return value


def window(
    first: date | None,
    last: date | None,
    granularity: str,
    today: date,
    *,
    ahead: bool = False,
) -> Window:
    """The periods from the one holding `first` to the one holding `last` (included).

    Defaults: `last` is today and `first` PERIODS_DEFAULT periods back; with `ahead` (a
    report on what is to come), `first` is today and `last` REPORT_EXPIRING_MONTHS months
    on (12 monthly periods). Refuses a reversed or too long window (validation_error).
    """
    assert granularity in GRANULARITIES
    if ahead:
        first = today if first is None else first
        if last is None:  # the rest of this month and the next 11: 12 months
            month = period_start(first, MONTH)
            last = month + relativedelta(months=REPORT_EXPIRING_MONTHS) - timedelta(days=1)
    else:
        last = today if last is None else last
        if first is None:
            first = _shift(
                period_start(last, granularity), granularity, 1 - PERIODS_DEFAULT[granularity]
            )
    assert first is not None and last is not None
    if first > last:
        raise invalid(f"from ({first}) must not be after to ({last})")
    start = period_start(first, granularity)
    final = period_start(last, granularity)
    count_max = PERIODS_MAX[granularity]
    periods: list[Period] = []
    while start <= final:
        if len(periods) == count_max:
            raise invalid(
                f"a report covers at most {count_max} periods of a {granularity}:"
                " narrow from and to, or pick a coarser granularity"
            )
        end = next_start(start, granularity)
        periods.append(Period(start, end))
        start = end
    result = Window(granularity, tuple(periods))
    result.check()
    return result


# --- Numbers -------------------------------------------------------------------------------


def rate(part: int | Decimal, whole: int | Decimal) -> str | None:
    """part / whole as a decimal string of RATE_PLACES places; None when whole is 0."""
    assert part >= 0 and whole >= 0
    if whole == 0:
        return None
    result = (Decimal(part) / Decimal(whole)).quantize(
        Decimal(1).scaleb(-RATE_PLACES), rounding=ROUND_HALF_EVEN
    )
    assert result >= 0
    return format(result, "f")


def money(value: Decimal | None) -> str | None:
    """An exact amount of minor units as a plain decimal string (None: no point value)."""
    if value is None:
        return None
    text = format(value.normalize() if value != 0 else Decimal(0), "f")
    assert "E" not in text
    return text


def rounded_money(value: Decimal | None) -> str | None:
    if value is None:
        return None
    return money(value.quantize(Decimal(1).scaleb(-MONEY_PLACES), rounding=ROUND_HALF_EVEN))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _header(name: str, program_id: str, win: Window, as_of: datetime) -> dict[str, Any]:
    assert name in REPORTS
    return {
        "report": name,
        "program_id": program_id,
        "from": win.start.isoformat(),
        "to": (win.end - timedelta(days=1)).isoformat(),
        "granularity": win.granularity,
        "as_of": _iso(as_of),
    }


# --- Liability -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Flows:
    """Points that changed what members hold in one period, by the usual names."""

    issued: int = 0
    redeemed: int = 0  # debits less refunds
    expired: int = 0
    reversed: int = 0
    adjusted: int = 0  # signed; no transaction kind moves points this way today

    @property
    def net(self) -> int:
        return self.issued - self.redeemed - self.expired - self.reversed + self.adjusted


def flows_of(kinds: dict[str, int]) -> Flows:
    """A period's flows from its points by transaction kind."""
    unknown = set(kinds) - set(TRANSACTION_TYPES)
    assert not unknown, f"unknown transaction kinds {unknown}"
    result = Flows(
        issued=kinds.get(CREDIT, 0),
        redeemed=kinds.get(DEBIT, 0) - kinds.get(REFUND, 0),
        expired=kinds.get(EXPIRE, 0),
        reversed=kinds.get(REVERSAL, 0),
    )
    # The names say the same as the signs: the roll-forward is the ledger's own sum.
    assert result.net == sum(OUTSTANDING_SIGN[kind] * points for kind, points in kinds.items())
    return result


def outstanding_of(kinds: dict[str, int]) -> int:
    """What members hold after transactions with these points by kind (from nothing)."""
    return sum(OUTSTANDING_SIGN[kind] * points for kind, points in kinds.items())


def roll_forward(opening: int, flows: Sequence[Flows]) -> list[tuple[int, int]]:
    """(opening, closing) of each period: closing = opening + net flows, and each period
    opens where the previous one closed."""
    result = []
    current = opening
    for period_flows in flows:
        closing = current + period_flows.net
        result.append((current, closing))
        current = closing
    assert len(result) == len(flows)
    assert not result or result[-1][1] == opening + sum(f.net for f in flows)
    return result


@dataclass(frozen=True)
class Breakage:
    """The breakage estimate a report uses: the policy's, else the observed rate."""

    rate: Decimal
    source: str

    def check(self) -> None:
        assert 0 <= self.rate < 1
        assert self.source in (BREAKAGE_SOURCE_POLICY, BREAKAGE_SOURCE_OBSERVED)


def observed_breakage(expired: int, redeemed: int) -> Decimal:
    """Of the points that left lots for good other than by reversal, the share that
    expired (0 before any did)."""
    assert expired >= 0
    total = expired + max(redeemed, 0)
    result = Decimal(0) if total == 0 else Decimal(expired) / Decimal(total)
    # Never 1: deferred revenue divides by 1 - rate (a program where nothing was ever
    # redeemed yet is capped like the policy's own bound).
    result = min(result, Decimal("0.99"))
    assert 0 <= result < 1
    return result


def breakage_estimate(policy: Policy, cohort_totals: dict[str, int]) -> Breakage:
    if policy.breakage_rate is not None:
        result = Breakage(policy.breakage_rate, BREAKAGE_SOURCE_POLICY)
    else:
        redeemed = _cohort_redeemed(cohort_totals)
        observed = observed_breakage(cohort_totals.get("expired", 0), redeemed)
        result = Breakage(
            observed.quantize(Decimal(1).scaleb(-RATE_PLACES), rounding=ROUND_HALF_EVEN),
            BREAKAGE_SOURCE_OBSERVED,
        )
    result.check()
    return result


def liability(
    program_id: str,
    policy: Policy,
    win: Window,
    as_of: datetime,
    opening_kinds: dict[str, int],
    daily_kinds: Iterable[tuple[date, str, int]],
    cohort_totals: dict[str, int],
) -> dict[str, Any]:
    """The roll-forward per period, in points and in money (the point value in force at
    each period's end), with deferred revenue and recognised breakage."""
    win.check()
    by_period: list[dict[str, int]] = [{} for _ in win.periods]
    for day, kind, points in daily_kinds:
        index = win.period_of(day)
        assert index is not None, f"a rollup day {day} outside the window"
        by_period[index][kind] = by_period[index].get(kind, 0) + points
    flows = [flows_of(kinds) for kinds in by_period]
    opening = outstanding_of(opening_kinds)
    estimate = breakage_estimate(policy, cohort_totals)
    value_of = _value_at(policy)
    rows = []
    previous_closing_money: Decimal | None = None
    for period, period_flows, (period_opening, closing) in zip(
        win.periods, flows, roll_forward(opening, flows), strict=True
    ):
        value = value_of(period)
        row: dict[str, Any] = {
            "period": period.label,
            "opening": period_opening,
            "issued": period_flows.issued,
            "redeemed": period_flows.redeemed,
            "expired": period_flows.expired,
            "reversed": period_flows.reversed,
            "adjusted": period_flows.adjusted,
            "closing": closing,
            "minor_units_per_point": money(value),
        }
        for name in ("opening", "issued", "redeemed", "expired", "reversed", "adjusted", "closing"):
            row[f"{name}_money"] = money(None if value is None else row[name] * value)
        opening_money = None if value is None else period_opening * value
        row["revaluation_money"] = money(
            None
            if opening_money is None or previous_closing_money is None
            else opening_money - previous_closing_money
        )
        previous_closing_money = None if value is None else closing * value
        keep = 1 - estimate.rate
        row["deferred_revenue_money"] = rounded_money(
            None if value is None else closing * value * keep
        )
        # Proportional (IFRS 15 B46): each point redeemed recognises rate / (1 - rate)
        # points of breakage, so by the time the expected redemptions are done, the
        # expected breakage has been recognised along with them.
        row["recognised_breakage_money"] = rounded_money(
            None if value is None else period_flows.redeemed * value * estimate.rate / keep
        )
        assert closing == period_opening + period_flows.net
        rows.append(row)
    return {
        **_header(LIABILITY, program_id, win, as_of),
        "currency": None if policy.point_value is None else policy.point_value.currency,
        "breakage_rate": format(estimate.rate, "f"),
        "breakage_rate_source": estimate.source,
        "rows": rows,
    }


def _value_at(policy: Policy) -> Callable[[Period], Decimal | None]:
    """A period's point value: the one in force at its end (its last instant), the
    valuation date of its closing balance."""

    def value(period: Period) -> Decimal | None:
        if policy.point_value is None:
            return None
        return policy.point_value.at(instant(period.end) - timedelta(microseconds=1))

    return value


# --- Breakage ------------------------------------------------------------------------------


def _cohort_redeemed(totals: dict[str, int]) -> int:
    """What left a cohort's lots other than by expiry and reversal: spent (net of refunds),
    or held for review."""
    return (
        totals.get("issued", 0)
        - totals.get("remaining", 0)
        - totals.get("expired", 0)
        - totals.get("reversed", 0)
    )


def _cohort_row(label: str, sums: dict[str, int], estimate: Breakage) -> dict[str, Any]:
    issued = sums.get("issued", 0)
    outstanding = sums.get("remaining", 0)
    expired = sums.get("expired", 0)
    reversed_ = sums.get("reversed", 0)
    redeemed = _cohort_redeemed(sums)
    assert issued == redeemed + expired + reversed_ + outstanding
    assert min(issued, outstanding, expired, reversed_) >= 0
    projected = Decimal(expired) + Decimal(outstanding) * estimate.rate
    return {
        "cohort": label,
        "issued": issued,
        "redeemed": redeemed,
        "expired": expired,
        "reversed": reversed_,
        "outstanding": outstanding,
        "observed_breakage_rate": rate(expired, issued),
        "projected_breakage_rate": rate(projected, issued),
    }


def breakage(
    program_id: str,
    policy: Policy,
    win: Window,
    as_of: datetime,
    daily_lots: Iterable[tuple[date, dict[str, int]]],
    cohort_totals: dict[str, int],
) -> dict[str, Any]:
    """Per issue cohort (the period its lots were created in): issued, redeemed, expired,
    reversed, outstanding; observed breakage = expired / issued, projected = (expired +
    outstanding x estimate) / issued."""
    win.check()
    estimate = breakage_estimate(policy, cohort_totals)
    sums: list[dict[str, int]] = [{} for _ in win.periods]
    for day, values in daily_lots:
        index = win.period_of(day)
        assert index is not None, f"a rollup day {day} outside the window"
        for name, points in values.items():
            sums[index][name] = sums[index].get(name, 0) + points
    rows = [
        _cohort_row(period.label, period_sums, estimate)
        for period, period_sums in zip(win.periods, sums, strict=True)
    ]
    totals: dict[str, int] = {}
    for period_sums in sums:
        for name, points in period_sums.items():
            totals[name] = totals.get(name, 0) + points
    total_row = _cohort_row("total", totals, estimate)
    assert total_row["issued"] == sum(row["issued"] for row in rows)
    return {
        **_header(BREAKAGE, program_id, win, as_of),
        "breakage_rate": format(estimate.rate, "f"),
        "breakage_rate_source": estimate.source,
        "rows": rows,
        "totals": total_row,
    }


# --- Expiring ------------------------------------------------------------------------------


def expiring(
    program_id: str,
    win: Window,
    as_of: datetime,
    daily: Iterable[tuple[date, int, int]],
    overdue: tuple[int, int],
) -> dict[str, Any]:
    """Points that will expire per period (from lots: what is left in them, and when they
    expire); `overdue`: points in lots past their expiry the expiry job has not written off
    yet (they are no longer spendable)."""
    win.check()
    points_by = [0] * len(win.periods)
    lots_by = [0] * len(win.periods)
    for day, points, lots in daily:
        index = win.period_of(day)
        assert index is not None and points >= 0 and lots >= 0
        points_by[index] += points
        lots_by[index] += lots
    rows = [
        {"period": p.label, "points": points_by[i], "lots": lots_by[i]}
        for i, p in enumerate(win.periods)
    ]
    return {
        **_header(EXPIRING, program_id, win, as_of),
        "overdue": {"points": overdue[0], "lots": overdue[1]},
        "total_points": sum(row["points"] for row in rows),
        "rows": rows,
    }


# --- Funnel --------------------------------------------------------------------------------

FUNNEL_STAGES = ("earned", "reached_reward", "redeemed_once", "redeemed_twice")


def funnel(
    program_id: str,
    win: Window,
    as_of: datetime,
    cheapest_reward_points: int | None,
    daily: Iterable[tuple[date, dict[str, int]]],
) -> dict[str, Any]:
    """Per cohort of members (the period of their first credit): how many earned, reached
    the cheapest active reward's cost (lifetime earned >= cost), redeemed at least once,
    twice; each stage's rate is of the stage before it."""
    win.check()
    sums = [dict.fromkeys(FUNNEL_STAGES, 0) for _ in win.periods]
    for day, stages in daily:
        index = win.period_of(day)
        assert index is not None
        for stage in FUNNEL_STAGES:
            sums[index][stage] += stages.get(stage, 0)
    rows = []
    for period, stages in zip(win.periods, sums, strict=True):
        assert all(
            stages[a] >= stages[b] or a == "reached_reward"
            for a, b in itertools.pairwise(FUNNEL_STAGES)
        )
        rows.append(
            {
                "cohort": period.label,
                **stages,
                "reached_reward_rate": rate(stages["reached_reward"], stages["earned"]),
                "redeemed_once_rate": rate(stages["redeemed_once"], stages["earned"]),
                "redeemed_twice_rate": rate(stages["redeemed_twice"], stages["redeemed_once"]),
            }
        )
    return {
        **_header(FUNNEL, program_id, win, as_of),
        "cheapest_reward_points": cheapest_reward_points,
        "rows": rows,
    }


# --- Rewards -------------------------------------------------------------------------------

REDEMPTION_COUNTS = ("redemptions", "completed", "cancelled", "failed", "in_progress")


def rewards(
    program_id: str,
    policy: Policy,
    win: Window,
    as_of: datetime,
    by_reward: Sequence[dict[str, Any]],
    heat: Iterable[tuple[int, int, int]],
    failures: dict[str, int],
) -> dict[str, Any]:
    """Redemptions started in the window, by reward (completed, cancelled, failed, in
    progress, points spent) and by weekday x hour in the program's time zone."""
    win.check()
    grid = [[0] * HOURS_PER_DAY for _ in WEEKDAYS]
    for isodow, hour, count in heat:
        assert 1 <= isodow <= len(WEEKDAYS) and 0 <= hour < HOURS_PER_DAY and count >= 0
        grid[isodow - 1][hour] += count
    rows = []
    for reward in by_reward:
        row = {"reward_id": reward["reward_id"], "name": reward.get("name")}
        for name in (*REDEMPTION_COUNTS, "points"):
            row[name] = int(reward.get(name) or 0)
        assert row["redemptions"] == sum(row[n] for n in REDEMPTION_COUNTS[1:])
        rows.append(row)
    rows.sort(key=lambda row: (-row["completed"], row["reward_id"]))
    total = sum(row["redemptions"] for row in rows)
    assert sum(map(sum, grid)) == total
    return {
        **_header(REWARDS, program_id, win, as_of),
        "time_zone": policy.time_zone,
        "rows": rows,
        "failures": dict(sorted(failures.items())),
        "heatmap": {"weekdays": list(WEEKDAYS), "counts": grid},
    }


# --- Members -------------------------------------------------------------------------------


def members(
    program_id: str,
    win: Window,
    as_of: datetime,
    active: dict[int, int],
    tiers: dict[str | None, int],
    new_daily: Iterable[tuple[date, int]],
) -> dict[str, Any]:
    """Members active (earned or spent) in the REPORT_ACTIVE_WINDOWS_DAYS days up to the
    window's end (or now, if sooner), the tier distribution now, and new members per
    period (their first credit)."""
    win.check()
    assert set(active) == set(REPORT_ACTIVE_WINDOWS_DAYS)
    new = [0] * len(win.periods)
    for day, count in new_daily:
        index = win.period_of(day)
        assert index is not None and count >= 0
        new[index] += count
    rows = [{"period": p.label, "new_members": new[i]} for i, p in enumerate(win.periods)]
    total = sum(tiers.values())
    return {
        **_header(MEMBERS, program_id, win, as_of),
        "members": total,
        "active": {f"{days}d": active[days] for days in REPORT_ACTIVE_WINDOWS_DAYS},
        "tiers": [
            {"tier": tier, "members": count, "share": rate(count, total)}
            for tier, count in sorted(
                tiers.items(), key=lambda item: (item[0] is None, item[0] or "")
            )
        ],
        "rows": rows,
    }


# --- CSV -----------------------------------------------------------------------------------


def to_csv(view: dict[str, Any]) -> str:
    """A report as CSV: one line per row of its table (the heat map of `rewards` as
    extra lines: weekday, hour, redemptions). Numbers as in JSON; absent values empty."""
    assert view["report"] in REPORTS
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    rows: list[dict[str, Any]] = list(view["rows"])
    if view["report"] == BREAKAGE:
        rows.append(view["totals"])
    if view["report"] == REWARDS:
        columns = ["section", "reward_id", "name", *REDEMPTION_COUNTS, "points", "weekday", "hour"]
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["reward", *(_cell(row.get(c)) for c in columns[1:-2]), "", ""])
        counts = view["heatmap"]["counts"]
        for day_index, weekday in enumerate(WEEKDAYS):
            for hour in range(HOURS_PER_DAY):
                cells = ["heatmap", "", "", counts[day_index][hour]]
                writer.writerow([*cells, *[""] * (len(columns) - len(cells) - 2), weekday, hour])
        return out.getvalue()
    columns = list(rows[0]) if rows else ["period"]
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(column)) for column in columns])
    return out.getvalue()


def _cell(value: object) -> object:
    return "" if value is None else value
