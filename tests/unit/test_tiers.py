"""Tiers: thresholds, upgrades now, downgrades after a grace period, rolling windows."""

from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import PointsError
from domain.limits import TIER_WINDOW_DAYS_MAX
from domain.policy import TierPolicy, parse_policy
from domain.tiers import decide_tier, next_tier, prune_buckets, tier_for, window_earned

NEW_YEAR = datetime(2026, 1, 1, tzinfo=UTC)


def tiers(grace_days: int = 30, basis: str = "rolling_days") -> TierPolicy:
    policy = parse_policy(
        {
            "tiers": {
                "basis": basis,
                "window_days": 365 if basis == "rolling_days" else 0,
                "downgrade_grace_days": grace_days,
                "tiers": [
                    {"name": "base", "threshold": 0},
                    {"name": "silver", "threshold": 1000, "multiplier": "1.25"},
                    {"name": "gold", "threshold": 5000, "multiplier": "1.5"},
                ],
            }
        }
    )
    assert policy.tiers is not None
    return policy.tiers


@pytest.mark.parametrize(
    ("earned", "tier", "upcoming", "needed"),
    [
        (0, "base", "silver", 1000),
        (999, "base", "silver", 1),
        (1000, "silver", "gold", 4000),
        (4999, "silver", "gold", 1),
        (5000, "gold", None, 0),
        (10**9, "gold", None, 0),
    ],
)
def test_tier_for_and_next_tier(earned: int, tier: str, upcoming: str | None, needed: int) -> None:
    policy = tiers()
    assert tier_for(policy, earned).name == tier
    following, points = next_tier(policy, earned)
    assert (following.name if following else None, points) == (upcoming, needed)


def test_upgrade_is_immediate() -> None:
    decision = decide_tier(tiers(), "silver", None, 5000, NEW_YEAR)
    assert (decision.tier, decision.changed, decision.below_since) == ("gold", True, None)
    assert decision.reason == "earned 5000 in 365 days ≥ gold threshold 5000"
    # Skipping a tier is fine, and a new member starts where earnings put them.
    assert decide_tier(tiers(), "base", None, 7000, NEW_YEAR).tier == "gold"
    fresh = decide_tier(tiers(), None, None, 0, NEW_YEAR)
    assert (fresh.tier, fresh.changed) == ("base", True)
    assert decide_tier(tiers(basis="lifetime"), None, None, 1200, NEW_YEAR).reason == (
        "earned 1200 lifetime ≥ silver threshold 1000"
    )


def test_staying_clears_below_since() -> None:
    decision = decide_tier(tiers(), "gold", NEW_YEAR, 6000, NEW_YEAR + timedelta(days=3))
    assert (decision.tier, decision.changed, decision.below_since) == ("gold", False, None)


def test_downgrade_waits_for_the_grace_period() -> None:
    policy = tiers(grace_days=30)
    first = decide_tier(policy, "gold", None, 1500, NEW_YEAR)
    assert (first.tier, first.changed, first.below_since) == ("gold", False, NEW_YEAR)
    assert "kept until 2026-01-31" in first.reason
    later = decide_tier(policy, "gold", first.below_since, 1500, NEW_YEAR + timedelta(days=29))
    assert (later.tier, later.below_since) == ("gold", NEW_YEAR)
    done = decide_tier(policy, "gold", first.below_since, 1500, NEW_YEAR + timedelta(days=30))
    assert (done.tier, done.changed, done.below_since) == ("silver", True, None)
    assert done.reason == (
        "below gold threshold since 2026-01-01 for 30 days grace: downgraded to silver"
    )
    # Earnings that fell further during the grace period drop the member further.
    assert decide_tier(policy, "gold", NEW_YEAR, 10, NEW_YEAR + timedelta(days=31)).tier == "base"


def test_zero_grace_downgrades_at_once() -> None:
    decision = decide_tier(tiers(grace_days=0), "gold", None, 0, NEW_YEAR)
    assert (decision.tier, decision.changed) == ("base", True)


def test_unknown_current_tier_is_replaced() -> None:
    decision = decide_tier(tiers(), "platinum", NEW_YEAR, 1200, NEW_YEAR)
    assert (decision.tier, decision.changed, decision.below_since) == ("silver", True, None)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 60),
    st.lists(st.tuples(st.integers(0, 8000), st.integers(0, 5)), min_size=1, max_size=40),
)
def test_a_member_never_holds_a_tier_below_their_earnings_nor_drops_early(
    grace_days: int, steps: list[tuple[int, int]]
) -> None:
    policy = tiers(grace_days)
    current: str | None = None
    below_since: datetime | None = None
    now = NEW_YEAR
    order = [tier.name for tier in policy.tiers]
    for earned, days in steps:
        now += timedelta(days=days)
        decision = decide_tier(policy, current, below_since, earned, now)
        supported = tier_for(policy, earned).name
        assert order.index(decision.tier) >= order.index(supported)
        if current is not None and order.index(decision.tier) < order.index(current):
            # A downgrade only after the grace period, counted from below_since.
            assert below_since is not None or grace_days == 0
            assert below_since is None or now - below_since >= timedelta(days=grace_days)
            assert decision.tier == supported
        current, below_since = decision.tier, decision.below_since


def test_window_earned_and_pruning() -> None:
    buckets = {"2025-01-01": 100, "2025-12-31": 7, "2026-01-01": 5, "2026-01-02": 900}
    assert window_earned(buckets, "2026-01-01", 1) == 5
    assert window_earned(buckets, "2026-01-01", 2) == 12
    assert window_earned(buckets, "2026-01-01", 366) == 112
    assert window_earned(buckets, "2026-01-01", 365) == 12
    assert prune_buckets(buckets, "2026-01-01", 2) == {"2025-12-31": 7, "2026-01-01": 5}
    assert prune_buckets({"2026-01-01": 0}, "2026-01-01", 5) == {}
    with pytest.raises(PointsError):
        window_earned(buckets, "yesterday", 5)
    with pytest.raises(PointsError):
        prune_buckets(buckets, "2026-01-01", TIER_WINDOW_DAYS_MAX + 1)
    with pytest.raises(PointsError):
        window_earned(buckets, "2026-01-01", 0)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.dates(date(2024, 1, 1), date(2026, 12, 31)).map(date.isoformat),
        st.integers(0, 1000),
        max_size=60,
    ),
    st.dates(date(2025, 1, 1), date(2026, 12, 31)),
    st.integers(1, 800),
)
def test_pruning_keeps_exactly_the_window(
    buckets: dict[str, int], today: date, window_days: int
) -> None:
    kept = prune_buckets(buckets, today.isoformat(), window_days)
    assert len(kept) <= window_days
    expected = sum(
        points
        for day, points in buckets.items()
        if 0 <= (today - date.fromisoformat(day)).days < window_days
    )
    assert window_earned(buckets, today.isoformat(), window_days) == expected
    assert sum(kept.values()) == expected
