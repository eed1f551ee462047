"""Tiers: which tier a member's earnings support, and when a member moves between tiers.

Upgrades are immediate: the event that carries a member over a threshold lifts them.
Downgrades are gentle: when earnings fall below the current tier's threshold, the member
keeps the tier for `downgrade_grace_days` counted from the first moment they fell below
(`below_since`), then drops to the tier their earnings support at that point. Climbing
back over the threshold during the grace period clears `below_since`.

For a rolling basis, earnings are kept as per-local-day buckets ("YYYY-MM-DD" -> points);
`window_earned` sums the last `window_days` days and `prune_buckets` drops older ones so
a member's state stays bounded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from domain.limits import TIER_WINDOW_DAYS_MAX
from domain.numbers import invalid
from domain.policy import BASIS_LIFETIME, TierDef, TierPolicy


@dataclass(frozen=True)
class TierDecision:
    tier: str
    # When earnings first fell below the kept tier's threshold; None when they support it.
    below_since: datetime | None
    changed: bool
    reason: str


def tier_for(policy: TierPolicy, earned_in_window: int) -> TierDef:
    """The highest tier whose threshold the earnings reach (the base tier at least)."""
    # The policy was checked whole when parsed (TierPolicy.check); this runs per event.
    assert policy.tiers and policy.tiers[0].threshold == 0
    assert type(earned_in_window) is int and earned_in_window >= 0
    result = policy.tiers[0]
    for tier in policy.tiers:
        if tier.threshold > earned_in_window:
            break
        result = tier
    assert result.threshold <= earned_in_window
    return result


def next_tier(policy: TierPolicy, earned: int) -> tuple[TierDef | None, int]:
    """The next tier above what `earned` supports and the points still needed (None, 0 at
    the top)."""
    current = tier_for(policy, earned)
    index = policy.tiers.index(current)
    if index + 1 == len(policy.tiers):
        return None, 0
    upcoming = policy.tiers[index + 1]
    needed = upcoming.threshold - earned
    assert needed > 0
    assert upcoming.threshold > current.threshold
    return upcoming, needed


def _earned_text(policy: TierPolicy, earned: int) -> str:
    if policy.basis == BASIS_LIFETIME:
        return f"earned {earned} lifetime"
    return f"earned {earned} in {policy.window_days} days"


def decide_tier(
    policy: TierPolicy,
    current: str | None,
    below_since: datetime | None,
    earned_in_window: int,
    now: datetime,
) -> TierDecision:
    """The member's tier after looking at `earned_in_window` at `now`.

    `current` is the tier the member holds (None: never assigned, or a tier the policy no
    longer has, which is treated the same: the member gets what earnings support).
    """
    assert now.tzinfo is not None and now.utcoffset() is not None
    assert below_since is None or below_since.utcoffset() is not None
    supported = tier_for(policy, earned_in_window)
    names = [tier.name for tier in policy.tiers]
    earned = _earned_text(policy, earned_in_window)

    if current is None or current not in names:
        reason = (
            f"{earned} ≥ {supported.name} threshold {supported.threshold}"
            if supported.threshold > 0
            else f"{earned}: base tier {supported.name}"
        )
        decision = TierDecision(supported.name, None, current != supported.name, reason)
    else:
        held = policy.tiers[names.index(current)]
        if supported.threshold > held.threshold:
            decision = TierDecision(
                supported.name,
                None,
                True,
                f"{earned} ≥ {supported.name} threshold {supported.threshold}",
            )
        elif supported.threshold == held.threshold:
            decision = TierDecision(
                held.name, None, False, f"{earned} ≥ {held.name} threshold {held.threshold}"
            )
        else:
            since = below_since if below_since is not None else now
            grace = timedelta(days=policy.downgrade_grace_days)
            # A below_since later than now (a replay out of order) counts as just now.
            elapsed = max(now - since, timedelta(0))
            if elapsed >= grace:
                decision = TierDecision(
                    supported.name,
                    None,
                    True,
                    f"below {held.name} threshold since {since.date().isoformat()} for "
                    f"{policy.downgrade_grace_days} days grace: downgraded to {supported.name}",
                )
            else:
                until = (since + grace).date().isoformat()
                decision = TierDecision(
                    held.name,
                    since,
                    False,
                    f"{earned} < {held.name} threshold {held.threshold} since "
                    f"{since.date().isoformat()}: kept until {until} "
                    f"({policy.downgrade_grace_days} days grace)",
                )

    assert decision.tier in names
    assert decision.changed == (decision.tier != current)
    assert (decision.below_since is None) or decision.tier != supported.name
    return decision


def _day(text: str, field: str) -> date:
    try:
        return date.fromisoformat(text)
    except (TypeError, ValueError):
        raise invalid(f"{field} must be a day like 2026-01-31") from None


def _window_start(today: str, window_days: int) -> str:
    if type(window_days) is not int or not 1 <= window_days <= TIER_WINDOW_DAYS_MAX:
        raise invalid(f"window_days must be between 1 and {TIER_WINDOW_DAYS_MAX}")
    return (_day(today, "today") - timedelta(days=window_days - 1)).isoformat()


def window_earned(buckets: Mapping[str, int], today: str, window_days: int) -> int:
    """Points earned on the `window_days` local days ending with `today` (inclusive).

    Day keys are ISO dates, so comparing them as strings compares them as days.
    """
    start = _window_start(today, window_days)
    total = sum(points for day, points in buckets.items() if start <= day <= today)
    assert start <= today
    assert all(points >= 0 for points in buckets.values()), "bucket points are never negative"
    return total


def prune_buckets(buckets: Mapping[str, int], today: str, window_days: int) -> dict[str, int]:
    """Only the buckets inside the window (empty ones dropped): at most window_days days."""
    start = _window_start(today, window_days)
    kept = {day: points for day, points in buckets.items() if start <= day <= today and points}
    assert len(kept) <= window_days
    assert window_earned(kept, today, window_days) == window_earned(buckets, today, window_days)
    return kept
