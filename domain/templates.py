"""Ready-made programs for the three scenarios the product is sold for.

Each template is plain JSON data: a policy (for `parse_policy`), a rule list (for
`compile_rule_set`) and an example event for the docs. A unit test compiles every one, so
a template can never drift out of what the engine accepts.
"""

from __future__ import annotations

from typing import Any

ECOMMERCE: dict[str, Any] = {
    "name": "E-commerce store",
    "description": (
        "1 point per currency unit spent (order amount in minor units, rounded down), "
        "10 points for the daily check-in (once a day), 5 points per share (up to 3 a day). "
        "Silver and gold tiers on the last 365 days of earnings multiply every award; "
        "points expire at the end of the year after the year they were earned."
    ),
    "policy": {
        "time_zone": "Asia/Shanghai",
        "expiry": {"kind": "end_of_year", "n": 1},
        "pending": {"kind": "none", "days": 0},
        "allow_debt": False,
        "caps": {"per_event": None, "per_member_day": None, "per_member_month": None},
        "tiers": {
            "basis": "rolling_days",
            "window_days": 365,
            "downgrade_grace_days": 30,
            "tiers": [
                {"name": "member", "threshold": 0, "multiplier": "1"},
                {"name": "silver", "threshold": 2000, "multiplier": "1.25"},
                {"name": "gold", "threshold": 10000, "multiplier": "1.5"},
            ],
        },
        "risk": {
            "debit_points_per_day": None,
            "redemptions_per_hour": None,
            "service_credit_points_per_day": None,
            "review_above_points": None,
        },
    },
    "rules": [
        {
            "id": "order_points",
            "event_type": "order",
            "condition": None,
            "award": {
                "type": "per_amount",
                "attribute": "amount",
                "rate": "0.01",
                "rounding": "down",
            },
            "caps": {"per_event": None, "per_member_day": None},
            "priority": 100,
            "combine": "stack",
        },
        {
            "id": "daily_check_in",
            "event_type": "check_in",
            "condition": None,
            "award": {"type": "fixed", "points": 10},
            # The cap equals the award, so only the first check-in of a local day pays.
            "caps": {"per_event": None, "per_member_day": 10},
            "priority": 100,
            "combine": "stack",
        },
        {
            "id": "share",
            "event_type": "share",
            "condition": None,
            "award": {"type": "fixed", "points": 5},
            "caps": {"per_event": None, "per_member_day": 15},
            "priority": 100,
            "combine": "stack",
        },
    ],
    "example_event": {
        "id": "order-10001",
        "member_id": "alice",
        "type": "order",
        "occurred_at": "2026-03-01T10:15:00Z",
        "attributes": {"amount": 12999, "currency": "CNY", "order_id": "SO-10001"},
    },
}

EDUCATION: dict[str, Any] = {
    "name": "Online school",
    "description": (
        "1 point per minute studied (up to 120 a day), quiz points by accuracy "
        "(60% → 5, 80% → 10, 100% → 20), 100 points per completed course. "
        "Points expire 365 days after they are earned."
    ),
    "policy": {
        "time_zone": "Asia/Shanghai",
        "expiry": {"kind": "days", "n": 365},
        "pending": {"kind": "none", "days": 0},
        "allow_debt": False,
        "caps": {"per_event": None, "per_member_day": None, "per_member_month": None},
        "tiers": None,
        "risk": {
            "debit_points_per_day": None,
            "redemptions_per_hour": None,
            "service_credit_points_per_day": None,
            "review_above_points": None,
        },
    },
    "rules": [
        {
            "id": "study_minutes",
            "event_type": "study_session",
            "condition": None,
            "award": {
                "type": "per_amount",
                "attribute": "minutes",
                "rate": "1",
                "rounding": "down",
            },
            # Leaving a video running all day should not pay more than two hours.
            "caps": {"per_event": None, "per_member_day": 120},
            "priority": 100,
            "combine": "stack",
        },
        {
            "id": "quiz_accuracy",
            "event_type": "quiz",
            "condition": None,
            "award": {
                "type": "ladder",
                "attribute": "accuracy",
                "brackets": [
                    {"min": 60, "points": 5},
                    {"min": 80, "points": 10},
                    {"min": 100, "points": 20},
                ],
            },
            "caps": {"per_event": None, "per_member_day": None},
            "priority": 100,
            "combine": "stack",
        },
        {
            "id": "course_completed",
            "event_type": "course_completed",
            "condition": None,
            "award": {"type": "fixed", "points": 100},
            "caps": {"per_event": None, "per_member_day": None},
            "priority": 100,
            "combine": "stack",
        },
    ],
    "example_event": {
        "id": "quiz-77-alice",
        "member_id": "alice",
        "type": "quiz",
        "occurred_at": "2026-03-01T19:40:00Z",
        "attributes": {"quiz_id": "algebra-3", "accuracy": 85},
    },
}

FINANCE: dict[str, Any] = {
    "name": "Credit card rewards",
    "description": (
        "1 point per currency unit of card spend (amount in minor units, rounded down); "
        "groceries (MCC 5411) earn ×2 and air travel (MCC 4511) ×3 — only the first "
        "matching category counts. At most 20000 points per member per month. A spend of "
        "5000.00 or more is held for review: its points are pending until the event is "
        "confirmed (POST /events/{id}/confirm). Points expire at the end of the 24th month "
        "after the month they became available. Risk control: at most 50000 points debited "
        "or redeemed per member per day and 10 redemptions per hour; a debit or redemption "
        "of more than 20000 points waits for an operator's review."
    ),
    "policy": {
        "time_zone": "Asia/Shanghai",
        "expiry": {"kind": "end_of_month", "n": 24},
        "pending": {"kind": "none", "days": 0},
        "allow_debt": False,
        "caps": {"per_event": None, "per_member_day": None, "per_member_month": 20000},
        "tiers": None,
        "risk": {
            "debit_points_per_day": 50000,
            "redemptions_per_hour": 10,
            "service_credit_points_per_day": None,
            "review_above_points": 20000,
        },
    },
    "rules": [
        {
            "id": "card_spend",
            "event_type": "card_spend",
            "condition": None,
            "award": {
                "type": "per_amount",
                "attribute": "amount",
                "rate": "0.01",
                "rounding": "down",
            },
            "caps": {"per_event": None, "per_member_day": None},
            "priority": 100,
            "combine": "stack",
        },
        {
            "id": "groceries_x2",
            "event_type": "card_spend",
            "condition": 'has("mcc") and attributes.mcc == "5411"',
            "award": {"type": "multiplier", "factor": "2", "by_tier": None, "campaign": None},
            "caps": {"per_event": None, "per_member_day": None},
            "priority": 10,
            "combine": "first_match",
        },
        {
            "id": "travel_x3",
            "event_type": "card_spend",
            "condition": 'has("mcc") and attributes.mcc == "4511"',
            "award": {"type": "multiplier", "factor": "3", "by_tier": None, "campaign": None},
            "caps": {"per_event": None, "per_member_day": None},
            "priority": 20,
            "combine": "first_match",
        },
        {
            "id": "large_spend_review",
            "event_type": "card_spend",
            "condition": "num(attributes.amount) >= 500000",
            "award": {"type": "fixed", "points": 0},
            "caps": {"per_event": None, "per_member_day": None},
            "priority": 5,
            "combine": "stack",
            "hold": "until_confirmed",
        },
    ],
    "example_event": {
        "id": "auth-8842117",
        "member_id": "card-4411",
        "type": "card_spend",
        "occurred_at": "2026-03-01T12:05:00Z",
        "attributes": {"amount": 45000, "currency": "CNY", "mcc": "5411"},
    },
}

TEMPLATES: dict[str, dict[str, Any]] = {
    "ecommerce": ECOMMERCE,
    "education": EDUCATION,
    "finance": FINANCE,
}
