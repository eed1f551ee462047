"""Scenario templates compile, parse, and award what their descriptions promise."""

from datetime import UTC, datetime
from typing import Any

import pytest

from domain.policy import Policy, local_day, parse_policy, policy_to_json
from domain.rules import (
    EventIn,
    MemberContext,
    RuleSet,
    compile_rule_set,
    evaluate,
    rule_set_to_json,
)
from domain.templates import TEMPLATES


def load(name: str) -> tuple[Policy, RuleSet]:
    template = TEMPLATES[name]
    return parse_policy(template["policy"]), compile_rule_set(template["rules"], 1)


def event(raw: dict[str, Any]) -> EventIn:
    return EventIn(
        raw["id"],
        raw["member_id"],
        raw["type"],
        datetime.fromisoformat(raw["occurred_at"]),
        raw["attributes"],
    )


def points(
    name: str,
    event_type: str,
    attributes: dict[str, Any],
    member: MemberContext | None = None,
) -> int:
    policy, rule_set = load(name)
    at = datetime.fromisoformat("2026-03-02T10:00:00Z")
    member = member or MemberContext(None, 0, 0, {})
    return evaluate(rule_set, EventIn("e", "m", event_type, at, attributes), member, policy).points


def test_there_are_three_templates() -> None:
    assert sorted(TEMPLATES) == ["ecommerce", "education", "finance"]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_compiles_parses_and_explains_its_example(name: str) -> None:
    template = TEMPLATES[name]
    assert set(template) == {"name", "description", "policy", "rules", "example_event"}
    assert template["name"] and template["description"]
    policy, rule_set = load(name)
    # The stored JSON is already in normal form: what the API would write back.
    assert policy_to_json(policy) == template["policy"]
    assert sorted(rule_set_to_json(rule_set), key=lambda r: r["id"]) == sorted(
        template["rules"], key=lambda r: r["id"]
    )
    example = event(template["example_event"])
    result = evaluate(rule_set, example, MemberContext(None, 0, 0, {}), policy)
    assert result.points > 0
    assert local_day(policy, example.occurred_at)


def test_ecommerce_awards() -> None:
    assert points("ecommerce", "order", {"amount": 12999}) == 129
    assert points("ecommerce", "check_in", {}) == 10
    # Once a day: the rule's daily counter already holds the first check-in.
    assert (
        points("ecommerce", "check_in", {}, MemberContext(None, 10, 10, {"daily_check_in": 10}))
        == 0
    )
    assert points("ecommerce", "share", {}, MemberContext(None, 0, 0, {"share": 10})) == 5
    assert points("ecommerce", "share", {}, MemberContext(None, 0, 0, {"share": 15})) == 0
    # Gold multiplies by 1.5 through the policy's tier multiplier.
    assert points("ecommerce", "order", {"amount": 10000}, MemberContext("gold", 0, 0, {})) == 150
    policy, _ = load("ecommerce")
    assert policy.expiry.kind == "end_of_year" and policy.expiry.n == 1
    assert policy.tiers is not None
    assert [tier.name for tier in policy.tiers.tiers] == ["member", "silver", "gold"]


def test_education_awards() -> None:
    assert points("education", "study_session", {"minutes": 45}) == 45
    assert points("education", "study_session", {"minutes": 500}) == 120
    assert points("education", "quiz", {"accuracy": 59}) == 0
    assert points("education", "quiz", {"accuracy": 60}) == 5
    assert points("education", "quiz", {"accuracy": 85}) == 10
    assert points("education", "quiz", {"accuracy": 100}) == 20
    assert points("education", "course_completed", {}) == 100


def test_finance_awards() -> None:
    assert points("finance", "card_spend", {"amount": 45000}) == 450
    assert points("finance", "card_spend", {"amount": 45000, "mcc": "5411"}) == 900
    assert points("finance", "card_spend", {"amount": 45000, "mcc": "4511"}) == 1350
    assert points("finance", "card_spend", {"amount": 45000, "mcc": "5812"}) == 450
    near_cap = MemberContext(None, 0, 19900, {})
    assert points("finance", "card_spend", {"amount": 45000, "mcc": "4511"}, near_cap) == 100
    policy, rule_set = load("finance")
    assert policy.pending.kind == "none"
    assert policy.caps.per_member_month == 20000
    # Large spends (5000.00 and more) are held for review; smaller ones are not.
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    context = MemberContext(None, 0, 0, {})
    small_spend = EventIn("s", "m", "card_spend", now, {"amount": 499_999})
    large_spend = EventIn("l", "m", "card_spend", now, {"amount": 500_000})
    small = evaluate(rule_set, small_spend, context, policy)
    large = evaluate(rule_set, large_spend, context, policy)
    assert (small.hold, large.hold) == (None, "until_confirmed")
    assert large.points == 5000
    assert any("holds the award" in line.note for line in large.lines)
