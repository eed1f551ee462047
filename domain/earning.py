"""A member's earning state: what caps and tiers need to know, kept on the account.

The state is a small JSON object stored with the account (so it is loaded, changed and
committed with the account, under the same fencing):

    {"days":   {"2026-11-25": {"_": 120, "order_points": 100, "check_in": 10}, ...},
     "months": {"2026-11": 950, ...},
     "tier": "gold", "below_since": "2026-10-01T00:00:00+00:00" | null}

`days` holds points earned per local day (program time zone) in total ("_") and per rule,
for the cap counters and for a rolling tier window; `months` the monthly totals. Both are
pruned so the state stays bounded (DAYS_KEPT_MIN days, or the tier window if longer;
MONTHS_KEPT months). Events older than what is kept count against empty counters: caps are
guaranteed within the kept horizon, which covers every cap period.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any

from domain.limits import EVENT_PAST_AGE_S
from domain.policy import BASIS_LIFETIME, Policy, local_day, local_month
from domain.rules import Evaluation, MemberContext
from domain.tiers import TierDecision, decide_tier, next_tier, window_earned

# Days of counters kept at least: longer than the oldest event accepted (plus a day for
# time zones), so every event's day still has its counters.
DAYS_KEPT_MIN = 40
MONTHS_KEPT = 13
TOTAL = "_"
assert (DAYS_KEPT_MIN - 2) * 86400 >= EVENT_PAST_AGE_S, "late events would escape daily caps"


def member_context(
    earning: Mapping[str, Any], policy: Policy, occurred_at: datetime
) -> MemberContext:
    """Counters for the event's local day and month, as the rules engine wants them."""
    assert occurred_at.utcoffset() is not None
    day = local_day(policy, occurred_at)
    month = local_month(policy, occurred_at)
    day_counters: Mapping[str, int] = earning.get("days", {}).get(day, {})
    context = MemberContext(
        tier=earning.get("tier"),
        earned_day=int(day_counters.get(TOTAL, 0)),
        earned_month=int(earning.get("months", {}).get(month, 0)),
        rule_earned_day={k: int(v) for k, v in day_counters.items() if k != TOTAL},
    )
    assert context.earned_day >= 0 and context.earned_month >= 0
    return context


def _days_kept(policy: Policy) -> int:
    tiers = policy.tiers
    window = tiers.window_days if tiers is not None and tiers.basis != BASIS_LIFETIME else 0
    return max(DAYS_KEPT_MIN, window)


def record(
    earning: dict[str, Any],
    policy: Policy,
    occurred_at: datetime,
    evaluation: Evaluation,
    today: str,
) -> None:
    """Add what an event earned to the counters of its local day and month; prune.

    Mutates `earning`. `today` (local, "YYYY-MM-DD") decides what is old enough to drop.
    """
    assert evaluation.points >= 0
    if evaluation.points == 0:
        return
    day = local_day(policy, occurred_at)
    month = local_month(policy, occurred_at)
    days: dict[str, dict[str, int]] = earning.setdefault("days", {})
    counters = days.setdefault(day, {})
    counters[TOTAL] = counters.get(TOTAL, 0) + evaluation.points
    for rule_id, points in evaluation.rule_points.items():
        counters[rule_id] = counters.get(rule_id, 0) + points
    months: dict[str, int] = earning.setdefault("months", {})
    months[month] = months.get(month, 0) + evaluation.points
    oldest_day = (date.fromisoformat(today) - timedelta(days=_days_kept(policy) - 1)).isoformat()
    for old in [d for d in days if d < oldest_day]:
        del days[old]
    for old in sorted(months)[:-MONTHS_KEPT]:
        del months[old]
    assert len(months) <= MONTHS_KEPT
    assert all(value >= 0 for value in months.values())


def earned_for_tier(earning: Mapping[str, Any], policy: Policy, lifetime: int, today: str) -> int:
    """Points counted toward a tier: lifetime earnings, or the rolling window's."""
    tiers = policy.tiers
    assert tiers is not None
    if tiers.basis == BASIS_LIFETIME:
        return max(0, lifetime)
    buckets = {day: int(c.get(TOTAL, 0)) for day, c in earning.get("days", {}).items()}
    earned = window_earned(buckets, today, tiers.window_days)
    assert earned >= 0
    return earned


def update_tier(
    earning: dict[str, Any], policy: Policy, lifetime: int, now: datetime
) -> TierDecision | None:
    """Re-decide the member's tier now; records it in `earning`. None without tiers."""
    tiers = policy.tiers
    if tiers is None:
        return None
    assert now.utcoffset() is not None
    today = local_day(policy, now)
    earned = earned_for_tier(earning, policy, lifetime, today)
    below_raw = earning.get("below_since")
    below_since = datetime.fromisoformat(below_raw) if below_raw else None
    decision = decide_tier(tiers, earning.get("tier"), below_since, earned, now)
    earning["tier"] = decision.tier
    earning["below_since"] = (
        decision.below_since.isoformat() if decision.below_since is not None else None
    )
    assert earning["tier"] == decision.tier
    return decision


def tier_view(
    earning: Mapping[str, Any], policy: Policy, lifetime: int, now: datetime
) -> dict[str, Any] | None:
    """The member's tier and the points needed for the next one (JSON-ready)."""
    tiers = policy.tiers
    if tiers is None:
        return None
    today = local_day(policy, now)
    earned = earned_for_tier(earning, policy, lifetime, today)
    current = earning.get("tier") or tiers.tiers[0].name
    upcoming, needed = next_tier(tiers, earned)
    names = [tier.name for tier in tiers.tiers]
    if (
        current in names
        and upcoming is not None
        and (names.index(upcoming.name) <= names.index(current))
    ):
        # Kept in grace above what earnings support: the next tier is the one above the
        # tier held (points to keep the current one show as below_since's grace).
        above = names.index(current) + 1
        upcoming = tiers.tiers[above] if above < len(names) else None
        needed = max(0, upcoming.threshold - earned) if upcoming is not None else 0
    view = {
        "name": current,
        "basis": tiers.basis,
        **({"window_days": tiers.window_days} if tiers.basis != BASIS_LIFETIME else {}),
        "earned": earned,
        "next": upcoming.name if upcoming is not None else None,
        "points_to_next": needed,
        "below_since": earning.get("below_since"),
    }
    assert needed >= 0
    return view
