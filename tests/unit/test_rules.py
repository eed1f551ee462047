"""The rules engine: awards, combination, caps, conditions, validation, and properties."""

import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import Code, PointsError
from domain.limits import (
    ATTRIBUTES_DEPTH_MAX,
    ATTRIBUTES_VALUES_MAX,
    CONDITION_LENGTH_MAX,
    POINTS_PER_OPERATION_MAX,
    RULES_PER_SET_MAX,
)
from domain.policy import DEFAULT_POLICY, Policy, local_day, local_month, parse_policy
from domain.rules import (
    PROGRAM_LINE_ID,
    Evaluation,
    EventIn,
    MemberContext,
    RuleSet,
    compile_rule_set,
    evaluate,
    explanation_json,
    rule_set_to_json,
    validate_attributes,
)

SATURDAY = datetime(2026, 3, 7, 10, 0, tzinfo=UTC)
NOBODY = MemberContext(tier=None, earned_day=0, earned_month=0, rule_earned_day={})


def rule(rule_id: str, award: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": rule_id, "event_type": "order", "award": award, **extra}


def fixed(points: int) -> dict[str, Any]:
    return {"type": "fixed", "points": points}


def per_amount(rate: str, rounding: str = "down", attribute: str = "amount") -> dict[str, Any]:
    return {"type": "per_amount", "attribute": attribute, "rate": rate, "rounding": rounding}


def run(
    rules: list[dict[str, Any]],
    attributes: dict[str, Any] | None = None,
    member: MemberContext = NOBODY,
    policy: Policy = DEFAULT_POLICY,
    at: datetime = SATURDAY,
    event_type: str = "order",
) -> Evaluation:
    rule_set = compile_rule_set(rules, 1)
    event = EventIn("e1", "m1", event_type, at, attributes if attributes is not None else {})
    result = evaluate(rule_set, event, member, policy)
    check(result)
    return result


def check(result: Evaluation) -> None:
    assert type(result.points) is int and 0 <= result.points <= POINTS_PER_OPERATION_MAX
    assert sum(line.points for line in result.lines) == result.points
    assert all(type(points) is int and points > 0 for points in result.rule_points.values())


def notes(result: Evaluation) -> dict[str, str]:
    return {line.rule_id: line.note for line in result.lines if line.rule_id != PROGRAM_LINE_ID}


def invalid(rules: Any, version: int = 1) -> str:
    with pytest.raises(PointsError) as err:
        compile_rule_set(rules, version)
    assert err.value.code is Code.VALIDATION_ERROR
    return err.value.detail


# --- Awards --------------------------------------------------------------------------------


def test_fixed_award() -> None:
    result = run([rule("ten", fixed(10))])
    assert result.points == 10
    assert result.lines[0].matched and result.lines[0].note == "matched: fixed 10"
    assert result.rule_points == {"ten": 10}
    assert explanation_json(result) == [
        {"rule_id": "ten", "matched": True, "points": 10, "note": "matched: fixed 10"}
    ]


@pytest.mark.parametrize(
    ("amount", "rounding", "points"),
    [
        (1299, "down", 12),
        (1299, "up", 13),
        (1299, "half_up", 13),
        (1249, "half_up", 12),
        (1250, "half_up", 13),
        (1200, "up", 12),
        ("12.99", "down", 0),  # a decimal string is the same unit as an int: 12.99 minor units
        (0, "up", 0),
        (-500, "up", 0),  # a negative amount never takes points back
    ],
)
def test_per_amount_rounding(amount: int | str, rounding: str, points: int) -> None:
    result = run([rule("spend", per_amount("0.01", rounding))], {"amount": amount})
    assert result.points == points
    assert "1 point per 100 of amount" in result.lines[0].note


def test_per_amount_decimal_strings_are_exact() -> None:
    # 0.1 + 0.2 style errors cannot happen: rate 0.3 on 10 units is exactly 3.
    assert run([rule("r", per_amount("0.3"))], {"amount": "10"}).points == 3
    assert run([rule("r", per_amount("0.3"))], {"amount": "10.000001"}).points == 3
    assert run([rule("r", per_amount("0.3", "up"))], {"amount": "10.000001"}).points == 4
    assert run([rule("r", per_amount("2.5"))], {"amount": 3}).points == 7
    assert (
        "2.5 points per 1 of amount"
        in run([rule("r", per_amount("2.5"))], {"amount": 3}).lines[0].note
    )


@pytest.mark.parametrize(
    ("value", "points", "note"),
    [
        (59, 0, "below lowest bracket 60"),
        (60, 5, "≥ 60 → 5"),
        (79, 5, "≥ 60 → 5"),
        (80, 10, "≥ 80 → 10"),
        ("99.9", 10, "≥ 80 → 10"),
        (100, 20, "≥ 100 → 20"),
        ("100.0", 20, "≥ 100 → 20"),
        (150, 20, "≥ 100 → 20"),
    ],
)
def test_ladder_award(value: int | str, points: int, note: str) -> None:
    ladder = {
        "type": "ladder",
        "attribute": "accuracy",
        # Given out of order on purpose: they are sorted by min.
        "brackets": [
            {"min": 80, "points": 10},
            {"min": "60", "points": 5},
            {"min": 100, "points": 20},
        ],
    }
    result = run([rule("quiz", ladder)], {"accuracy": value})
    assert result.points == points
    assert note in result.lines[0].note


def test_multiplier_by_tier_and_campaign_window() -> None:
    campaign = {
        "starts_at": "2026-03-07T00:00:00Z",
        "ends_at": "2026-03-08T00:00:00+00:00",
        "factor": "2",
    }
    rules = [
        rule("base", fixed(100)),
        rule(
            "boost",
            {"type": "multiplier", "by_tier": {"gold": "1.5"}, "campaign": campaign},
        ),
    ]
    gold = MemberContext("gold", 0, 0, {})
    assert run(rules, member=gold).points == 300
    assert run(rules, member=NOBODY).points == 200
    # starts_at is inside the window, ends_at is not.
    assert run(rules, member=gold, at=datetime(2026, 3, 7, tzinfo=UTC)).points == 300
    assert run(rules, member=gold, at=datetime(2026, 3, 8, tzinfo=UTC)).points == 150
    result = run(rules, member=gold)
    assert "gold ×1.5" in notes(result)["boost"] and "campaign ×2" in notes(result)["boost"]
    assert result.lines[-1].rule_id == PROGRAM_LINE_ID and result.lines[-1].points == 200
    # rule_points is what rules awarded before multipliers: it feeds their daily counters.
    assert result.rule_points == {"base": 100}


def test_multiplier_rounds_down_once() -> None:
    rules = [
        rule("base", fixed(3)),
        rule("a", {"type": "multiplier", "factor": "1.5"}),
        rule("b", {"type": "multiplier", "factor": "1.5"}),
    ]
    # 3 × 1.5 × 1.5 = 6.75 → 6 (not floor(floor(4.5) × 1.5) = 6 by luck: check 5 too).
    assert run(rules).points == 6
    rules[0] = rule("base", fixed(5))
    assert run(rules).points == 11  # 5 × 2.25 = 11.25; stepwise would give floor(7 × 1.5) = 10


def test_multiplier_without_base_points_gives_nothing() -> None:
    result = run([rule("x2", {"type": "multiplier", "factor": "2"})])
    assert result.points == 0
    assert "no base points" in result.lines[0].note


def test_policy_tier_multiplier_applies_after_rule_multipliers() -> None:
    policy = parse_policy(
        {
            "tiers": {
                "tiers": [
                    {"name": "base", "threshold": 0},
                    {"name": "gold", "threshold": 100, "multiplier": "1.5"},
                ]
            }
        }
    )
    rules = [rule("base", fixed(10)), rule("x3", {"type": "multiplier", "factor": "3"})]
    result = run(rules, member=MemberContext("gold", 0, 0, {}), policy=policy)
    assert result.points == 45
    assert [line.note for line in result.lines if line.rule_id == PROGRAM_LINE_ID] == [
        "multipliers ×3: 10 → 30",
        "tier gold ×1.5: 30 → 45",
    ]
    assert run(rules, member=MemberContext("base", 0, 0, {}), policy=policy).points == 30


# --- Combination ---------------------------------------------------------------------------


def test_stack_adds_up() -> None:
    result = run([rule("a", fixed(1)), rule("b", fixed(2)), rule("c", fixed(4))])
    assert result.points == 7
    assert result.rule_points == {"a": 1, "b": 2, "c": 4}


def test_best_takes_the_largest_award_ties_to_the_first() -> None:
    rules = [
        rule("small", fixed(5), combine="best"),
        rule("big_b", fixed(20), combine="best"),
        rule("big_a", fixed(20), combine="best"),
        rule("always", fixed(1)),
    ]
    result = run(rules)
    assert result.points == 21
    assert result.rule_points == {"big_a": 20, "always": 1}
    assert notes(result)["small"].endswith("not counted: best of group was rule big_a")
    assert notes(result)["big_b"].endswith("not counted: best of group was rule big_a")
    assert [line.rule_id for line in result.lines] == ["always", "big_a", "big_b", "small"]


def test_first_match_takes_the_first_in_priority_order() -> None:
    rules = [
        rule("late", fixed(100), combine="first_match", priority=50),
        rule("early", fixed(1), combine="first_match", priority=10, condition="True"),
        rule("skipped", fixed(7), combine="first_match", priority=5, condition="False"),
    ]
    result = run(rules)
    assert result.points == 1
    assert notes(result) == {
        "skipped": "condition false",
        "early": "matched: fixed 1",
        "late": "matched: fixed 100; not counted: first match was rule early",
    }
    assert [line.matched for line in result.lines] == [False, True, True]


def test_best_compares_awards_after_rule_caps() -> None:
    rules = [
        rule("capped", fixed(100), combine="best", caps={"per_member_day": 100}),
        rule("steady", fixed(10), combine="best"),
    ]
    fresh = run(rules)
    assert fresh.rule_points == {"capped": 100}
    spent = run(rules, member=MemberContext(None, 0, 0, {"capped": 95}))
    assert spent.points == 10 and spent.rule_points == {"steady": 10}


def test_multipliers_combine_like_awards() -> None:
    def mult(rule_id: str, factor: str, combine: str) -> dict[str, Any]:
        return rule(rule_id, {"type": "multiplier", "factor": factor}, combine=combine)

    base = rule("base", fixed(10))
    assert run([base, mult("a", "2", "stack"), mult("b", "3", "stack")]).points == 60
    assert run([base, mult("a", "2", "best"), mult("b", "3", "best")]).points == 30
    assert run([base, mult("a", "2", "first_match"), mult("b", "3", "first_match")]).points == 20
    mixed = run(
        [base, mult("a", "2", "first_match"), mult("b", "3", "best"), mult("c", "5", "best")]
    )
    assert mixed.points == 100
    assert "not counted: best of group was rule c" in notes(mixed)["b"]


# --- Caps ----------------------------------------------------------------------------------


def test_rule_caps() -> None:
    rules = [rule("spend", per_amount("1"), caps={"per_event": 50, "per_member_day": 80})]
    first = run(rules, {"amount": 70})
    assert first.points == 50 and "capped by per_event 50 → 50" in first.lines[0].note
    second = run(rules, {"amount": 70}, MemberContext(None, 0, 0, {"spend": 50}))
    assert second.points == 30 and "capped by per_member_day 80 → 30" in second.lines[0].note
    third = run(rules, {"amount": 70}, MemberContext(None, 0, 0, {"spend": 80}))
    assert third.points == 0 and third.rule_points == {}


def test_program_caps_apply_last() -> None:
    policy = parse_policy(
        {"caps": {"per_event": 500, "per_member_day": 700, "per_member_month": 900}}
    )
    rules = [rule("spend", per_amount("1"))]
    assert run(rules, {"amount": 800}, policy=policy).points == 500
    assert run(rules, {"amount": 800}, MemberContext(None, 600, 600, {}), policy).points == 100
    result = run(rules, {"amount": 800}, MemberContext(None, 0, 850, {}), policy)
    assert result.points == 50
    assert [line.note for line in result.lines[1:]] == [
        "program cap per_event 500: 800 → 500",
        "program cap per_member_month 900: 500 → 50",
    ]
    assert run(rules, {"amount": 800}, MemberContext(None, 999, 999, {}), policy).points == 0


def test_points_per_operation_is_the_ceiling() -> None:
    result = run([rule("spend", per_amount("1000000"))], {"amount": 10**15})
    assert result.points == POINTS_PER_OPERATION_MAX


# --- Conditions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("attributes.amount >= 1000", True),
        ("attributes['amount'] < 1000", False),
        ("type == 'order'", True),
        ("member.tier == 'gold'", True),
        ("member['tier'] in ('gold', 'platinum')", True),
        ("weekday in [6, 7]", True),  # 7 March 2026 is a Saturday
        ("hour == 11", True),  # 10:00 UTC is 11:00 in Paris
        ("occurred_at >= '2026-03-07T00:00:00Z'", True),
        ("occurred_at == '2026-03-07T10:00:00Z'", True),
        ("num(attributes.price) > num('10.49')", True),
        ("num(attributes.price) * 2 == 21", True),
        ("attributes.amount / 3 > 333", True),  # Decimal division, no float
        ("attributes.amount % 7 == 1", False),
        ("has('coupon') and lower(attributes.coupon) == 'spring'", True),
        ("has('missing')", False),
        ("not has('missing')", True),
        ("upper(attributes.coupon) == 'SPRING'", True),
        ("len(attributes.tags) == 2 and 'new' in attributes.tags", True),
        ("attributes.nested.level == 2", True),
        ("-attributes.amount < 0", True),
        ("'yes' if attributes.amount > 5 else 'no'", False),  # not a boolean: no match
        ("attributes.amount > 5 if True else False", True),
    ],
)
def test_condition_language(condition: str, expected: bool) -> None:
    attributes = {
        "amount": 1000,
        "price": "10.50",
        "coupon": "Spring",
        "tags": ["new", "sale"],
        "nested": {"level": 2},
    }
    result = run(
        [rule("r", fixed(1), condition=condition)],
        attributes,
        MemberContext("gold", 0, 0, {}),
        parse_policy({"time_zone": "Europe/Paris"}),
    )
    assert result.lines[0].matched is expected, result.lines[0].note


@pytest.mark.parametrize(
    ("condition", "error"),
    [
        ("attributes.nope > 1", "nope"),
        ("attributes['nope'] > 1", "nope"),
        ("attributes.amount > 'x'", "TypeError"),
        ("attributes.coupon + 1 > 1", "arithmetic needs numbers"),
        ("num(attributes.coupon) > 1", "num()"),
        ("attributes.amount / 0 > 1", "Division"),
        ("lower(attributes.amount) == 'x'", "lower()"),
        ("len(attributes.amount) == 1", "TypeError"),
        ("attributes.coupon.upper == 1", "upper"),
        ("attributes.tags[5] == 1", "IndexError"),
        ("attributes.amount", "not true/false"),
    ],
)
def test_condition_errors_do_not_match_and_do_not_raise(condition: str, error: str) -> None:
    rules = [rule("bad", fixed(100), condition=condition), rule("good", fixed(1))]
    result = run(rules, {"amount": 5, "coupon": "x", "tags": []})
    assert result.points == 1
    line = result.lines[0]
    assert not line.matched and line.points == 0
    assert line.note.startswith("condition error: ")
    assert error in line.note


@pytest.mark.parametrize(
    "condition",
    [
        "__import__('os').system('true')",
        "().__class__",
        "().__class__.__bases__[0].__subclasses__()",
        "attributes.__class__",
        "attributes._private",
        "9**9**9",
        "2 ** 10",
        "'a' * 10",  # allowed to compile? no: strings are not numbers, but syntax is fine
        "open('/etc/passwd')",
        "eval('1')",
        "exec('x = 1')",
        "float('1e308')",
        "int('5') > 1",
        "str(1) == '1'",
        "x = 1",
        "(x := 1)",
        "lambda: 1",
        "[i for i in range(10**9)]",
        "{'a': 1}",
        "{1, 2}",
        "f'{attributes}'",
        "attributes.amount > 1.5",
        "1j",
        "b'x'",
        "...",
        "attributes[1:2]",
        "has(key='a')",
        "has(*['a'])",
        "num(1, 2)",
        "attributes.get('a')",
        "member.tier.lower()",
        "foo",
        "1; 2",
        "1 +",
        "",
        "   ",
        "(" * 300 + "1" + ")" * 300,
        "a" * (CONDITION_LENGTH_MAX + 1),
        "1 < " + " < ".join(["1"] * 400),
        "10**100",
        str(2**64) + " > 1",
        "[" + ",".join(["1"] * 150) + "]",
    ],
)
def test_malicious_or_malformed_conditions_are_refused_at_compile(condition: str) -> None:
    if condition == "'a' * 10":
        # Syntax allowed, but string repetition is refused when it runs.
        result = run([rule("r", fixed(1), condition=condition + " == 'a'")])
        assert result.points == 0 and "arithmetic needs numbers" in result.lines[0].note
        return
    detail = invalid([rule("r", fixed(1), condition=condition)])
    assert "rule 'r':" in detail and "condition" in detail


def test_conditions_are_parsed_once_and_cached() -> None:
    rule_set = compile_rule_set([rule("r", fixed(1), condition="attributes.amount > 5")], 1)
    node = rule_set.rules[0].condition_node
    assert node is not None
    for amount in (1, 10):
        evaluate(
            rule_set,
            EventIn("e", "m", "order", SATURDAY, {"amount": amount}),
            NOBODY,
            DEFAULT_POLICY,
        )
    assert rule_set.rules[0].condition_node is node


# --- Validation ----------------------------------------------------------------------------


def test_rule_set_validation_names_the_rule_and_field() -> None:
    assert "id is used twice" in invalid([rule("a", fixed(1)), rule("a", fixed(2))])
    assert f"at most {RULES_PER_SET_MAX}" in invalid(
        [rule(f"r{i}", fixed(1)) for i in range(RULES_PER_SET_MAX + 1)]
    )
    assert "rules[0].id" in invalid([{"event_type": "order", "award": fixed(1)}])
    assert "rules[0].id" in invalid([rule("bad id", fixed(1))])
    assert "rule 'a': award.points" in invalid([rule("a", fixed(-1))])
    assert "rule 'a': award.points" in invalid([rule("a", fixed(1.0))])  # type: ignore[arg-type]
    assert "rule 'a': award.rate" in invalid([rule("a", per_amount(0.01))])  # type: ignore[arg-type]
    assert "rule 'a': award.rate" in invalid([rule("a", per_amount("1e-2"))])
    assert "rule 'a': award.rate" in invalid([rule("a", per_amount("-1"))])
    assert "rule 'a': award.rounding" in invalid([rule("a", per_amount("1", "banker"))])
    assert "rule 'a': award.attribute" in invalid([rule("a", per_amount("1", attribute="a b"))])
    assert "rule 'a': award.type" in invalid([rule("a", {"type": "random"})])
    assert "rule 'a': award has unknown keys: extra" in invalid(
        [rule("a", {**fixed(1), "extra": 1})]
    )
    assert "rule 'a': rule has unknown keys: colour" in invalid([rule("a", fixed(1), colour=1)])
    assert "rule 'a': priority" in invalid([rule("a", fixed(1), priority=10001)])
    assert "rule 'a': priority" in invalid([rule("a", fixed(1), priority=-1)])
    assert "rule 'a': combine" in invalid([rule("a", fixed(1), combine="all")])
    assert "rule 'a': caps.per_event" in invalid([rule("a", fixed(1), caps={"per_event": -1})])
    assert "rule 'a': caps has unknown keys" in invalid([rule("a", fixed(1), caps={"month": 1})])
    assert "rule 'a': event_type" in invalid([{"id": "a", "event_type": "", "award": fixed(1)}])
    assert "caps do not apply to multiplier" in invalid(
        [rule("a", {"type": "multiplier", "factor": "2"}, caps={"per_event": 1})]
    )
    assert "needs a factor, by_tier or campaign" in invalid([rule("a", {"type": "multiplier"})])
    assert "award.factor" in invalid([rule("a", {"type": "multiplier", "factor": "101"})])
    assert "award.by_tier.gold" in invalid(
        [rule("a", {"type": "multiplier", "by_tier": {"gold": 1.5}})]
    )
    assert "campaign.ends_at must be after" in invalid(
        [
            rule(
                "a",
                {
                    "type": "multiplier",
                    "campaign": {
                        "starts_at": "2026-02-01T00:00:00Z",
                        "ends_at": "2026-01-01T00:00:00Z",
                        "factor": "2",
                    },
                },
            )
        ]
    )
    assert "campaign.starts_at needs a time zone" in invalid(
        [
            rule(
                "a",
                {
                    "type": "multiplier",
                    "campaign": {
                        "starts_at": "2026-01-01T00:00:00",
                        "ends_at": "2026-02-01T00:00:00Z",
                        "factor": "2",
                    },
                },
            )
        ]
    )
    ladder = {"type": "ladder", "attribute": "x", "brackets": [{"min": 1, "points": 1}] * 2}
    assert "distinct min" in invalid([rule("a", ladder)])
    assert "brackets[0].min" in invalid(
        [rule("a", {"type": "ladder", "attribute": "x", "brackets": [{"min": 0.5, "points": 1}]})]
    )
    assert "version" in invalid([], version=-1)
    assert "rules must be a list" in invalid({"a": 1})


def test_empty_rule_set_and_unknown_event_type_award_nothing() -> None:
    assert run([]).points == 0
    result = run([rule("a", fixed(1))], event_type="refund")
    assert result.points == 0 and result.lines == ()


def test_award_errors_do_not_match() -> None:
    rules = [rule("spend", per_amount("0.01")), rule("flat", fixed(2))]
    for attributes, error in [
        ({}, "attribute amount is missing"),
        ({"amount": "12,50"}, "decimal string"),
        ({"amount": True}, "decimal string"),
        ({"amount": "1e5"}, "decimal string"),
        ({"amount": [1]}, "decimal string"),
    ]:
        result = run(rules, attributes)
        assert result.points == 2
        assert (
            notes(result)["spend"].startswith("award error: ") and error in notes(result)["spend"]
        )


def test_rule_set_json_round_trips_in_evaluation_order() -> None:
    rules = [
        rule("z", fixed(1), priority=1, condition="attributes.amount > 1"),
        rule("a", per_amount("0.010", "half_up"), caps={"per_member_day": 5}),
        rule(
            "m",
            {
                "type": "multiplier",
                "by_tier": {"gold": "1.50"},
                "campaign": {
                    "starts_at": "2026-03-01T08:00:00+08:00",
                    "ends_at": "2026-04-01T00:00:00Z",
                    "factor": 2,
                },
            },
            combine="best",
        ),
        rule(
            "l",
            {"type": "ladder", "attribute": "x", "brackets": [{"min": "2.5", "points": 3}]},
        ),
    ]
    rule_set = compile_rule_set(rules, 7)
    as_json = rule_set_to_json(rule_set)
    assert [item["id"] for item in as_json] == ["z", "a", "l", "m"]
    assert as_json[1]["award"]["rate"] == "0.010"
    assert as_json[3]["award"]["campaign"]["starts_at"] == "2026-03-01T00:00:00Z"
    assert as_json[3]["award"]["campaign"]["factor"] == "2"
    again = compile_rule_set(as_json, 7)
    assert rule_set_to_json(again) == as_json
    assert again.version == 7


# --- Attributes ----------------------------------------------------------------------------


def nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": value}
    return value


@pytest.mark.parametrize(
    "attributes",
    [
        {"amount": 1.5},
        {"amount": float("nan")},
        {"items": [{"price": 9.99}]},
        {"deep": {"deeper": [1, 2, {"x": 0.0}]}},
        {"deep": nest(ATTRIBUTES_DEPTH_MAX)},
        {"many": list(range(ATTRIBUTES_VALUES_MAX + 1))},
        {"s": "x" * 1001},
        {"big": 2**63},
        {"": 1},
        {"t": (1, 2)},
        {"b": b"x"},
        {"d": Decimal("1")},
        [1, 2],
    ],
)
def test_bad_attributes_are_refused_everywhere(attributes: Any) -> None:
    with pytest.raises(PointsError) as err:
        validate_attributes(attributes)
    assert err.value.code is Code.VALIDATION_ERROR
    rule_set = compile_rule_set([rule("a", fixed(1))], 1)
    with pytest.raises(PointsError):
        evaluate(rule_set, EventIn("e", "m", "order", SATURDAY, attributes), NOBODY, DEFAULT_POLICY)


def test_good_attributes_pass() -> None:
    attributes = {
        "amount": 12999,
        "price": "10.50",
        "flags": [True, None, "x"],
        "deep": nest(ATTRIBUTES_DEPTH_MAX - 1),
    }
    assert validate_attributes(attributes) is attributes


def test_naive_occurred_at_is_refused() -> None:
    rule_set = compile_rule_set([rule("a", fixed(1))], 1)
    with pytest.raises(PointsError):
        evaluate(
            rule_set, EventIn("e", "m", "order", datetime(2026, 1, 1), {}), NOBODY, DEFAULT_POLICY
        )


@given(
    st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), st.text(max_size=5)),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(min_size=1, max_size=5), children, max_size=3)
        ),
        max_leaves=10,
    ),
    st.floats(allow_nan=True, allow_infinity=True),
)
def test_a_float_anywhere_is_refused(tree: Any, number: float) -> None:
    attributes = {"tree": tree, "x": [tree, {"y": number}]}
    with pytest.raises(PointsError) as err:
        validate_attributes(attributes)
    assert err.value.code is Code.VALIDATION_ERROR


# --- Properties ----------------------------------------------------------------------------

CONDITIONS = [
    None,
    None,
    "attributes.amount > 5000",
    "member.tier == 'gold'",
    "weekday <= 5",
    "has('coupon')",
    "attributes.nope == 1",  # always a condition error
]


@st.composite
def random_rule(draw: st.DrawFn, rule_id: str) -> dict[str, Any]:
    kind = draw(st.sampled_from(["fixed", "per_amount", "ladder", "multiplier"]))
    award: dict[str, Any]
    if kind == "fixed":
        award = fixed(draw(st.integers(0, 1000)))
    elif kind == "per_amount":
        rate = draw(st.sampled_from(["0.01", "0.1", "1", "0.015", "2.5"]))
        award = per_amount(rate, draw(st.sampled_from(["down", "up", "half_up"])))
    elif kind == "ladder":
        mins = sorted(draw(st.sets(st.integers(0, 10000), min_size=1, max_size=4)))
        award = {
            "type": "ladder",
            "attribute": "amount",
            "brackets": [{"min": low, "points": draw(st.integers(0, 500))} for low in mins],
        }
    else:
        award = {
            "type": "multiplier",
            "factor": draw(st.sampled_from(["0.5", "1", "1.5", "2", "3"])),
            "by_tier": draw(st.sampled_from([None, {"gold": "2", "silver": "1.25"}])),
        }
    caps: dict[str, int | None] = {"per_event": None, "per_member_day": None}
    if kind != "multiplier":
        caps = {
            "per_event": draw(st.one_of(st.none(), st.integers(0, 500))),
            "per_member_day": draw(st.one_of(st.none(), st.integers(0, 800))),
        }
    return {
        "id": rule_id,
        "event_type": "order",
        "condition": draw(st.sampled_from(CONDITIONS)),
        "award": award,
        "caps": caps,
        "priority": draw(st.integers(0, 3)),
        "combine": draw(st.sampled_from(["stack", "best", "first_match"])),
    }


@st.composite
def random_rules(draw: st.DrawFn) -> list[dict[str, Any]]:
    count = draw(st.integers(0, 8))
    return [draw(random_rule(f"r{i}")) for i in range(count)]


caps_policies = st.builds(
    lambda event, day, month: parse_policy(
        {
            "time_zone": "Europe/Paris",
            "caps": {"per_event": event, "per_member_day": day, "per_member_month": month},
            "tiers": {
                "tiers": [
                    {"name": "base", "threshold": 0},
                    {"name": "silver", "threshold": 10, "multiplier": "1.25"},
                    {"name": "gold", "threshold": 20, "multiplier": "2"},
                ]
            },
        }
    ),
    st.one_of(st.none(), st.integers(0, 2000)),
    st.one_of(st.none(), st.integers(0, 3000)),
    st.one_of(st.none(), st.integers(0, 10000)),
)
amounts = st.one_of(st.integers(-100, 10**6), st.integers(0, 10**6).map(str))
moments = st.datetimes(
    min_value=datetime(2025, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
)
members = st.builds(
    MemberContext,
    st.sampled_from([None, "base", "silver", "gold"]),
    st.integers(0, 5000),
    st.integers(0, 20000),
    st.dictionaries(st.sampled_from([f"r{i}" for i in range(8)]), st.integers(0, 1000)),
)


@settings(max_examples=300, deadline=None)
@given(random_rules(), amounts, members, caps_policies, moments, st.randoms())
def test_result_is_a_capped_int_and_independent_of_rule_order(
    rules: list[dict[str, Any]],
    amount: int | str,
    member: MemberContext,
    policy: Policy,
    at: datetime,
    rng: random.Random,
) -> None:
    event = EventIn("e", "m", "order", at, {"amount": amount})
    result = evaluate(compile_rule_set(rules, 1), event, member, policy)
    check(result)
    caps = policy.caps
    if caps.per_event is not None:
        assert result.points <= caps.per_event
    if caps.per_member_day is not None:
        assert result.points <= max(0, caps.per_member_day - member.earned_day)
    if caps.per_member_month is not None:
        assert result.points <= max(0, caps.per_member_month - member.earned_month)
    assert len([line for line in result.lines if line.rule_id != PROGRAM_LINE_ID]) == len(rules)
    shuffled = list(rules)
    rng.shuffle(shuffled)
    again = evaluate(compile_rule_set(shuffled, 1), event, member, policy)
    assert again == result


@settings(max_examples=150, deadline=None)
@given(
    random_rules(),
    caps_policies,
    st.lists(st.tuples(amounts, st.integers(0, 3 * 24 * 60)), min_size=1, max_size=40),
)
def test_daily_caps_hold_over_a_sequence_of_events(
    rules: list[dict[str, Any]], policy: Policy, stream: list[tuple[int | str, int]]
) -> None:
    """Fold evaluate over events, keeping the counters the way the caller would."""
    rule_set = compile_rule_set(rules, 1)
    start = datetime(2026, 3, 28, tzinfo=UTC)  # spans the Paris DST change
    earned_day: dict[str, int] = {}
    earned_month: dict[str, int] = {}
    rule_day: dict[tuple[str, str], int] = {}
    for index, (amount, minutes) in enumerate(sorted(stream, key=lambda item: item[1])):
        at = start + timedelta(minutes=minutes)
        day, month = local_day(policy, at), local_month(policy, at)
        member = MemberContext(
            "gold",
            earned_day.get(day, 0),
            earned_month.get(month, 0),
            {rule_id: points for (d, rule_id), points in rule_day.items() if d == day},
        )
        result = evaluate(
            rule_set, EventIn(f"e{index}", "m", "order", at, {"amount": amount}), member, policy
        )
        check(result)
        earned_day[day] = earned_day.get(day, 0) + result.points
        earned_month[month] = earned_month.get(month, 0) + result.points
        for rule_id, points in result.rule_points.items():
            rule_day[day, rule_id] = rule_day.get((day, rule_id), 0) + points
    if policy.caps.per_member_day is not None:
        assert all(total <= policy.caps.per_member_day for total in earned_day.values())
    if policy.caps.per_member_month is not None:
        assert all(total <= policy.caps.per_member_month for total in earned_month.values())
    by_id: Mapping[str, dict[str, Any]] = {raw["id"]: raw for raw in rules}
    for (_, rule_id), total in rule_day.items():
        cap = by_id[rule_id]["caps"]["per_member_day"]
        assert cap is None or total <= cap


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 10**12),
    st.sampled_from(["0.01", "1", "0.333", "7.25", "0.0001"]),
    st.sampled_from(["down", "up", "half_up"]),
)
def test_per_amount_agrees_for_ints_and_decimal_strings(
    amount: int, rate: str, rounding: str
) -> None:
    rules = [rule("spend", per_amount(rate, rounding))]
    as_int = run(rules, {"amount": amount}).points
    assert run(rules, {"amount": str(amount)}).points == as_int
    assert run(rules, {"amount": f"{amount}.000"}).points == as_int
    exact = Decimal(amount) * Decimal(rate)
    mode = {"down": ROUND_FLOOR, "up": ROUND_CEILING, "half_up": ROUND_HALF_UP}[rounding]
    # Beyond one operation's maximum the result is that maximum.
    assert as_int == min(int(exact.to_integral_value(rounding=mode)), POINTS_PER_OPERATION_MAX)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_condition_text_either_compiles_or_is_a_validation_error(text: str) -> None:
    try:
        rule_set = compile_rule_set([rule("r", fixed(1), condition=text)], 1)
    except PointsError as err:
        assert err.code is Code.VALIDATION_ERROR
        return
    result = evaluate(
        rule_set, EventIn("e", "m", "order", SATURDAY, {"a": 1}), NOBODY, DEFAULT_POLICY
    )
    check(result)


def test_rule_set_is_reusable_across_threads() -> None:
    import threading

    rule_set = compile_rule_set(
        [rule("r", per_amount("1"), condition="attributes.amount % 2 == 0")], 1
    )
    failures: list[str] = []

    def work(offset: int) -> None:
        for amount in range(offset, offset + 2000):
            result = evaluate(
                rule_set,
                EventIn("e", "m", "order", SATURDAY, {"amount": amount}),
                NOBODY,
                DEFAULT_POLICY,
            )
            if result.points != (amount if amount % 2 == 0 else 0):
                failures.append(f"{amount}: {result.points}")

    threads = [threading.Thread(target=work, args=(i * 10000,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert isinstance(rule_set, RuleSet)
