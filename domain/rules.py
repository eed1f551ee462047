"""Earning rules: a versioned rule set turns one event into an integer number of points.

A rule set is data (JSON), compiled once by `compile_rule_set` (validated, conditions
parsed, decimals turned into exact fractions, rules grouped by event type) and then
evaluated per event by `evaluate`, which is pure: no clock, no I/O, same input, same
answer, and an explanation line for every rule of the event's type.

Rule JSON::

    {"id": "order_points", "event_type": "order", "condition": "attributes.amount >= 100",
     "award": {...}, "caps": {"per_event": null, "per_member_day": null},
     "priority": 100, "combine": "stack"}

Awards:

- ``{"type": "fixed", "points": 10}``
- ``{"type": "per_amount", "attribute": "amount", "rate": "0.01", "rounding": "down"}``:
  points = value x rate, where value is the attribute (int minor units or a decimal
  string) and rate is points per unit of it ("0.01" = 1 point per 100 minor units).
- ``{"type": "ladder", "attribute": "accuracy", "brackets": [{"min": 60, "points": 5}]}``:
  the points of the highest bracket whose min <= value (none: 0 points).
- ``{"type": "multiplier", "factor": "2", "by_tier": {"gold": "1.5"},
  "campaign": {"starts_at": iso, "ends_at": iso, "factor": "2"}}``: a factor on the base
  points = factor x (the member tier's factor, 1 if not listed) x (the campaign factor if
  starts_at <= occurred_at < ends_at, else 1). Each of the three keys is optional
  (factor defaults to "1"), at least one must be given.

Combination (in this order):

1. Rules for the event's type whose condition is true are taken in (priority, rule id)
   order; shuffling the input list changes nothing.
2. Each point-awarding rule computes its award, then its own caps: ``per_event`` caps the
   rule's points, ``per_member_day`` caps them at what is left of the rule's daily
   allowance (``MemberContext.rule_earned_day``, for the event's local day).
3. Among point-awarding rules: every ``stack`` rule counts; of the ``best`` rules only the
   one with the most points (after its caps) counts, ties to the first in order; of the
   ``first_match`` rules only the first counts. Base = the sum of what counts.
4. Multiplier rules combine the same way: stack = product of their factors, best = the
   largest factor, first_match = the first; the three results multiply. Then the policy
   tier multiplier of the member's tier (``TierDef.multiplier``) multiplies too.
   Points = floor(base x all factors): one rounding, down, at the end.
5. Program caps (``policy.caps``) apply last: per_event, then per_member_day and
   per_member_month against ``MemberContext.earned_day`` / ``earned_month``. Finally
   the result is capped at POINTS_PER_OPERATION_MAX (what one ledger credit may move).

The result is always an int >= 0. ``Evaluation.rule_points`` holds, per counted rule with
points, what that rule awarded after its own caps (before multipliers and program caps):
the caller adds it to the rule's daily counter. Lines sum to the result: a rule line
carries the points the rule counted for, and lines with rule id "@program" carry the
change each program step made (multipliers +, caps -).

Rounding: per_amount rounds its exact product once, as the rule says ("down" = floor,
"up" = ceiling, "half_up" = .5 goes up); multipliers round down once at the end. All
arithmetic is exact (Fraction); no float is ever accepted or produced.

Conditions are expressions in a small safe language evaluated by `simpleeval` (never
eval/exec), parsed once at compile time and checked against a whitelist of syntax. Names:
``type``, ``attributes``, ``member`` (``member.tier``), ``occurred_at`` (ISO UTC string),
``hour`` and ``weekday`` (local, ISO 1..7). Functions: ``num(x)`` (Decimal from an int or
a decimal string), ``has(key)``, ``lower(s)``, ``upper(s)``, ``len(x)``. ``a.b`` reads key
"b" of a dict (no attribute of any object is reachable). A condition that fails at run
time (missing attribute, wrong type) makes its rule not match: "condition error: ...".
"""

from __future__ import annotations

import ast
import operator
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from simpleeval import (
    AttributeDoesNotExist,
    FeatureNotAvailable,
    SimpleEval,
)

from domain.limits import (
    ATTRIBUTE_NAME_LENGTH_MAX,
    ATTRIBUTE_STRING_LENGTH_MAX,
    ATTRIBUTES_DEPTH_MAX,
    ATTRIBUTES_VALUES_MAX,
    AWARD_RATE_MAX,
    CONDITION_DEPTH_MAX,
    CONDITION_LENGTH_MAX,
    CONDITION_LITERAL_ITEMS_MAX,
    CONDITION_NODES_MAX,
    EVENT_TYPE_LENGTH_MAX,
    EVENT_TYPE_PATTERN,
    ID_RE,
    INTEGER_ABS_MAX,
    LADDER_BRACKETS_MAX,
    MULTIPLIER_MAX,
    NOTE_LENGTH_MAX,
    POINTS_PER_OPERATION_MAX,
    RULE_PRIORITY_MAX,
    RULE_SET_VERSION_MAX,
    RULES_PER_SET_MAX,
    TIER_NAME_LENGTH_MAX,
    TIERS_MAX,
)
from domain.numbers import (
    ROUND_DOWN,
    ROUNDINGS,
    check_int,
    invalid,
    is_decimal_string,
    parse_decimal,
    round_ratio,
    to_fraction,
)
from domain.policy import Policy, zone

COMBINE_STACK = "stack"
COMBINE_FIRST_MATCH = "first_match"
COMBINE_BEST = "best"
COMBINE_MODES = (COMBINE_STACK, COMBINE_FIRST_MATCH, COMBINE_BEST)

AWARD_FIXED = "fixed"
AWARD_PER_AMOUNT = "per_amount"
AWARD_LADDER = "ladder"
AWARD_MULTIPLIER = "multiplier"
AWARD_TYPES = (AWARD_FIXED, AWARD_PER_AMOUNT, AWARD_LADDER, AWARD_MULTIPLIER)

PRIORITY_DEFAULT = 100
# Explanation lines for program-wide steps. "@" cannot start a rule id, so no clash.
PROGRAM_LINE_ID = "@program"

RULE_KEYS = ("id", "event_type", "condition", "award", "caps", "priority", "combine", "hold")
# A matched rule with "hold": "until_confirmed" holds the whole award of its event until the
# event is confirmed (e.g. large card spends reviewed first), whatever the program's pending
# policy says.
HOLD_UNTIL_CONFIRMED = "until_confirmed"
HOLDS = (None, HOLD_UNTIL_CONFIRMED)
HOLD_NOTE = "; holds the award until the event is confirmed"
RULE_CAP_KEYS = ("per_event", "per_member_day")
CONDITION_NAMES = ("type", "attributes", "member", "occurred_at", "hour", "weekday")
CONDITION_FUNCTIONS = ("num", "has", "lower", "upper", "len")
CONSTANT_NAMES = {"True": True, "False": False, "None": None}

# Attribute names an award reads: identifiers, so conditions can write attributes.name.
_ATTRIBUTE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_ONE = Fraction(1)
_EVENT_TYPE_RE = re.compile(EVENT_TYPE_PATTERN)
_MULTIPLIER_RANGE = (Fraction(0), Fraction(MULTIPLIER_MAX))
_RATE_RANGE = (Fraction(0), Fraction(AWARD_RATE_MAX))
_AMOUNT_RANGE = (Fraction(-INTEGER_ABS_MAX), Fraction(INTEGER_ABS_MAX))


# --- Event input ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EventIn:
    event_id: str
    member_id: str
    type: str
    occurred_at: datetime
    attributes: dict[str, Any]


@dataclass(frozen=True)
class MemberContext:
    """What the caller knows about the member, for the event's local day and month."""

    tier: str | None
    earned_day: int
    earned_month: int
    rule_earned_day: Mapping[str, int]


def validate_attributes(attrs: object) -> dict[str, Any]:
    """Check an event's attributes: JSON without floats, bounded in depth and size.

    Values are str, int, bool, None, or lists / objects of them. Floats are refused
    anywhere: amounts travel as integer minor units or decimal strings.
    """
    if not isinstance(attrs, dict):
        raise invalid("attributes must be an object")
    if len(attrs) <= ATTRIBUTES_VALUES_MAX and all(
        type(key) is str
        and 1 <= len(key) <= ATTRIBUTE_NAME_LENGTH_MAX
        and "\x00" not in key
        and (
            value is None
            or (
                type(value) is str
                and len(value) <= ATTRIBUTE_STRING_LENGTH_MAX
                and "\x00" not in value
            )
            or (type(value) is int and -INTEGER_ABS_MAX <= value <= INTEGER_ABS_MAX)
            or type(value) is bool
        )
        for key, value in attrs.items()
    ):
        # The usual flat object of scalars: checked in one pass, no stack.
        return attrs
    values = 0
    # (value, path, depth): an explicit stack, so hostile nesting cannot recurse deeply.
    stack: list[tuple[object, str, int]] = [(attrs, "attributes", 1)]
    while stack:
        value, path, depth = stack.pop()
        values += 1
        if values > ATTRIBUTES_VALUES_MAX + 1:
            raise invalid(f"attributes hold more than {ATTRIBUTES_VALUES_MAX} values")
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, float):
            raise invalid(
                f"{path} must not be a float: send integer minor units or a decimal string"
            )
        if isinstance(value, int):
            if abs(value) > INTEGER_ABS_MAX:
                raise invalid(f"{path} is out of range")
        elif isinstance(value, str):
            if len(value) > ATTRIBUTE_STRING_LENGTH_MAX:
                raise invalid(f"{path} is longer than {ATTRIBUTE_STRING_LENGTH_MAX} characters")
            if "\x00" in value:
                # PostgreSQL text and jsonb cannot hold NUL: refuse it here, not at commit.
                raise invalid(f"{path} must not contain NUL characters")
        elif isinstance(value, list | dict):
            if depth > ATTRIBUTES_DEPTH_MAX:
                raise invalid(f"{path} nests deeper than {ATTRIBUTES_DEPTH_MAX} levels")
            if isinstance(value, list):
                stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
            else:
                for key, item in value.items():
                    if (
                        not isinstance(key, str)
                        or not 1 <= len(key) <= ATTRIBUTE_NAME_LENGTH_MAX
                        or "\x00" in key
                    ):
                        raise invalid(
                            f"{path} keys must be strings of 1..{ATTRIBUTE_NAME_LENGTH_MAX}"
                            " characters, without NUL"
                        )
                    stack.append((item, f"{path}.{key}", depth + 1))
        else:
            raise invalid(f"{path} has an unsupported type {type(value).__name__}")
    assert values <= ATTRIBUTES_VALUES_MAX + 1
    assert not stack
    return attrs


def _check_event(event: EventIn) -> None:
    if not isinstance(event.type, str) or not event.type:
        raise invalid("event type must be a non-empty string")
    occurred_at = event.occurred_at
    if not isinstance(occurred_at, datetime) or occurred_at.utcoffset() is None:
        raise invalid("occurred_at must be a time-zone-aware datetime")
    validate_attributes(event.attributes)


# --- Awards --------------------------------------------------------------------------------


class _AwardError(Exception):
    """An award cannot be computed for this event (missing or malformed attribute)."""


def _amount(attributes: Mapping[str, Any], name: str) -> Fraction:
    if name not in attributes:
        raise _AwardError(f"attribute {name} is missing")
    value = to_fraction(attributes[name])
    if value is None:
        raise _AwardError(f"attribute {name} must be an integer (minor units) or a decimal string")
    return value


def _text(value: Fraction) -> str:
    """A short exact rendering for explanations: 12, 0.5, 1/3."""
    if value.denominator == 1:
        return str(value.numerator)
    decimal = Decimal(value.numerator) / Decimal(value.denominator)
    return str(decimal) if Fraction(decimal) == value else str(value)


@dataclass(frozen=True)
class FixedAward:
    points: int

    def points_for(self, attributes: Mapping[str, Any]) -> tuple[int, str]:
        return self.points, f"matched: fixed {self.points}"

    def to_json(self) -> dict[str, Any]:
        return {"type": AWARD_FIXED, "points": self.points}


@dataclass(frozen=True)
class PerAmountAward:
    attribute: str
    rate: Decimal
    rounding: str
    # Pre-parsed so the hot path does integer arithmetic only: rate = numerator/denominator.
    rate_numerator: int
    rate_denominator: int

    def points_for(self, attributes: Mapping[str, Any]) -> tuple[int, str]:
        name = self.attribute
        if name not in attributes:
            raise _AwardError(f"attribute {name} is missing")
        raw = attributes[name]
        if type(raw) is int:
            # The common case: integer minor units, no Fraction needed.
            numerator, denominator = raw, 1
        else:
            value = to_fraction(raw)
            if value is None:
                raise _AwardError(
                    f"attribute {name} must be an integer (minor units) or a decimal string"
                )
            numerator, denominator = value.numerator, value.denominator
        if self.rate_numerator == 1 and self.rate_denominator > 1:
            how = f"1 point per {self.rate_denominator} of {name}"
        else:
            how = f"{self.rate} points per 1 of {name}"
        if numerator <= 0:
            # A negative amount (a return) never takes points back here: reversals are
            # separate ledger operations.
            return 0, f"matched: {how}, {name} {raw} → 0"
        points = round_ratio(
            numerator * self.rate_numerator, denominator * self.rate_denominator, self.rounding
        )
        return points, f"matched: {how}, {name} {raw} → {points} (rounding {self.rounding})"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": AWARD_PER_AMOUNT,
            "attribute": self.attribute,
            "rate": str(self.rate),
            "rounding": self.rounding,
        }


@dataclass(frozen=True)
class LadderAward:
    attribute: str
    # (min as given, exact min, points), sorted by min ascending. Integral mins are ints,
    # so the usual integer attribute compares without Fraction arithmetic.
    brackets: tuple[tuple[int | str, int | Fraction, int], ...]

    def points_for(self, attributes: Mapping[str, Any]) -> tuple[int, str]:
        name = self.attribute
        if name not in attributes:
            raise _AwardError(f"attribute {name} is missing")
        raw = attributes[name]
        value: int | Fraction | None = raw if type(raw) is int else to_fraction(raw)
        if value is None:
            raise _AwardError(f"attribute {name} must be an integer or a decimal string")
        chosen: tuple[int | str, int | Fraction, int] | None = None
        for bracket in self.brackets:
            if bracket[1] > value:
                break
            chosen = bracket
        if chosen is None:
            lowest = self.brackets[0][0]
            return 0, f"matched: {name} {raw} below lowest bracket {lowest} → 0"
        return chosen[2], f"matched: {name} {raw} ≥ {chosen[0]} → {chosen[2]}"

    def to_json(self) -> dict[str, Any]:
        return {
            "type": AWARD_LADDER,
            "attribute": self.attribute,
            "brackets": [{"min": low, "points": points} for low, _, points in self.brackets],
        }


@dataclass(frozen=True)
class Campaign:
    starts_at: datetime
    ends_at: datetime
    factor: Decimal
    factor_exact: Fraction


@dataclass(frozen=True)
class MultiplierAward:
    factor: Decimal
    by_tier: Mapping[str, Decimal] | None
    campaign: Campaign | None
    factor_exact: Fraction
    by_tier_exact: Mapping[str, Fraction] | None

    def factor_for(self, tier: str | None, occurred_at: datetime) -> tuple[Fraction, str]:
        result = self.factor_exact
        parts: list[str] = []
        if self.factor_exact != _ONE:
            parts.append(f"×{self.factor}")
        if self.by_tier_exact is not None:
            if tier is not None and tier in self.by_tier_exact:
                result *= self.by_tier_exact[tier]
                assert self.by_tier is not None
                parts.append(f"{tier} ×{self.by_tier[tier]}")
            else:
                parts.append(f"tier {tier or 'none'} not listed ×1")
        campaign = self.campaign
        if campaign is not None:
            if campaign.starts_at <= occurred_at < campaign.ends_at:
                result *= campaign.factor_exact
                parts.append(f"campaign ×{campaign.factor}")
            else:
                parts.append("campaign not running ×1")
        assert result >= 0
        if not parts:
            return result, "multiplier ×1"
        if len(parts) == 1:
            return result, f"multiplier {parts[0]}"
        return result, f"multiplier {' · '.join(parts)} = ×{_text(result)}"

    def to_json(self) -> dict[str, Any]:
        campaign = self.campaign
        return {
            "type": AWARD_MULTIPLIER,
            "factor": str(self.factor),
            "by_tier": None
            if self.by_tier is None
            else {tier: str(factor) for tier, factor in self.by_tier.items()},
            "campaign": None
            if campaign is None
            else {
                "starts_at": _iso(campaign.starts_at),
                "ends_at": _iso(campaign.ends_at),
                "factor": str(campaign.factor),
            },
        }


PointAward = FixedAward | PerAmountAward | LadderAward
Award = PointAward | MultiplierAward


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- Conditions ----------------------------------------------------------------------------


def _number(value: object) -> bool:
    return (type(value) is int) or isinstance(value, Decimal)


def _arithmetic(apply: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Arithmetic on integers and Decimals only: no string or list repetition, no floats."""

    def checked(left: Any, right: Any) -> Any:
        if not (_number(left) and _number(right)):
            raise TypeError(
                f"arithmetic needs numbers, got {type(left).__name__} and {type(right).__name__}"
            )
        return apply(left, right)

    return checked


def _divide(left: Any, right: Any) -> Decimal:
    # Python's / would make a float; Decimal keeps the language float-free.
    return Decimal(left) / Decimal(right)


_OPERATORS: dict[type, Callable[..., Any]] = {
    ast.Add: _arithmetic(operator.add),
    ast.Sub: _arithmetic(operator.sub),
    ast.Mult: _arithmetic(operator.mul),
    ast.Div: _arithmetic(_divide),
    ast.Mod: _arithmetic(operator.mod),
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Gt: operator.gt,
    ast.Lt: operator.lt,
    ast.GtE: operator.ge,
    ast.LtE: operator.le,
    ast.Not: operator.not_,
    ast.USub: lambda value: -value if _number(value) else _arithmetic(operator.sub)(0, value),
    ast.UAdd: lambda value: value if _number(value) else _arithmetic(operator.add)(0, value),
    ast.In: lambda item, container: item in container,
    ast.NotIn: lambda item, container: item not in container,
}

# The whole syntax a condition may use; anything else is refused at compile time.
_ALLOWED_NODES: tuple[type, ...] = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.BinOp,
    ast.Compare,
    ast.IfExp,
    ast.Call,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Subscript,
    ast.Attribute,
    ast.Tuple,
    ast.List,
    *_OPERATORS,
)


def _num(value: object) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if type(value) is int or is_decimal_string(value):
        return Decimal(value)
    raise TypeError("num() needs an integer or a decimal string")


def _lower(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("lower() needs a string")
    return value.lower()


def _upper(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError("upper() needs a string")
    return value.upper()


_SAFE_RESULT_TYPES = frozenset({str, int, bool, type(None), Decimal, dict, list, tuple})


# simpleeval ships no type information: SimpleEval is Any to mypy.
class _Evaluator(SimpleEval):  # type: ignore[misc]
    """simpleeval with our operators, tuple/list literals, and dict-only `a.b` access."""

    def __init__(self) -> None:
        super().__init__(operators=dict(_OPERATORS), functions={}, names={})
        self.nodes[ast.Tuple] = self._eval_sequence
        self.nodes[ast.List] = self._eval_sequence

    def _check_disallowed_items(self, item: Any) -> None:
        # Values here are validated event JSON, Decimals and our five functions: no module
        # or foreign callable is reachable, so a type test replaces simpleeval's deep walk
        # of every container (which would re-walk `attributes` on each use).
        if type(item) in _SAFE_RESULT_TYPES:
            return
        if callable(item) and item not in self.functions.values():
            raise FeatureNotAvailable("only the condition functions may be called")

    def _eval_sequence(self, node: ast.Tuple | ast.List) -> tuple[Any, ...]:
        return tuple(self._eval(item) for item in node.elts)

    def _eval_attribute(self, node: ast.Attribute) -> Any:
        # Only keys of dicts: no getattr at all, so no object internals are reachable.
        container = self._eval(node.value)
        if isinstance(container, dict) and node.attr in container:
            return container[node.attr]
        raise AttributeDoesNotExist(node.attr, self.expr)


_evaluators = threading.local()


def _evaluator() -> _Evaluator:
    """One evaluator per thread: it holds per-event names while it runs."""
    evaluator: _Evaluator | None = getattr(_evaluators, "evaluator", None)
    if evaluator is None:
        evaluator = _Evaluator()
        _evaluators.evaluator = evaluator
    return evaluator


def _depth(node: ast.AST) -> int:
    depth_max = 0
    stack = [(node, 1)]
    while stack:
        current, depth = stack.pop()
        depth_max = max(depth_max, depth)
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(current))
    return depth_max


def compile_condition(source: str, where: str) -> ast.expr:
    """Parse and vet a condition once; the tree is cached in the compiled rule."""
    assert where
    if not isinstance(source, str) or not source.strip():
        raise invalid(f"{where} must be a non-empty expression or null")
    if len(source) > CONDITION_LENGTH_MAX:
        raise invalid(f"{where} is longer than {CONDITION_LENGTH_MAX} characters")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise invalid(f"{where} does not parse: {str(error)[:100]}") from None
    nodes = list(ast.walk(tree))
    if len(nodes) > CONDITION_NODES_MAX:
        raise invalid(f"{where} has more than {CONDITION_NODES_MAX} syntax nodes")
    if _depth(tree) > CONDITION_DEPTH_MAX:
        raise invalid(f"{where} nests deeper than {CONDITION_DEPTH_MAX} levels")
    called = {id(node.func) for node in nodes if isinstance(node, ast.Call)}
    for node in nodes:
        if not isinstance(node, _ALLOWED_NODES):
            raise invalid(f"{where} may not use {type(node).__name__}")
        if isinstance(node, ast.Name):
            allowed = CONDITION_FUNCTIONS if id(node) in called else CONDITION_NAMES
            if node.id not in allowed:
                raise invalid(f"{where} uses unknown name {node.id!r}")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.keywords or len(node.args) != 1:
                raise invalid(f"{where}: call one of {', '.join(CONDITION_FUNCTIONS)}(x)")
        elif isinstance(node, ast.Attribute):
            if node.attr.startswith("_"):
                raise invalid(f"{where} may not read {node.attr!r}")
        elif isinstance(node, ast.Constant):
            value = node.value
            if value is not None and type(value) not in (str, int, bool):
                raise invalid(f"{where}: literal {value!r} is not allowed (no floats)")
            if type(value) is int and abs(value) > INTEGER_ABS_MAX:
                raise invalid(f"{where}: integer literal out of range")
        elif (
            isinstance(node, ast.Tuple | ast.List) and len(node.elts) > CONDITION_LITERAL_ITEMS_MAX
        ):
            raise invalid(f"{where}: literal with more than {CONDITION_LITERAL_ITEMS_MAX} items")
    assert isinstance(tree, ast.Expression)
    assert len(nodes) <= CONDITION_NODES_MAX
    return tree.body


class _Names(dict[str, Any]):
    """The names a condition sees; time-derived ones are computed on first use."""

    __slots__ = ("_moment", "_time_zone")

    def __init__(self, moment: datetime, time_zone: str) -> None:
        super().__init__(CONSTANT_NAMES)
        self._moment = moment
        self._time_zone = time_zone

    def __missing__(self, key: str) -> Any:
        if key == "occurred_at":
            self[key] = _iso(self._moment)
        elif key in ("hour", "weekday"):
            local = self._moment.astimezone(zone(self._time_zone))
            self["hour"] = local.hour
            self["weekday"] = local.isoweekday()
        else:
            raise KeyError(key)
        return self[key]


def _run_condition(rule: CompiledRule, names: _Names, functions: dict[str, Any]) -> bool | str:
    """True/False, or the error text when the condition cannot be evaluated."""
    assert rule.condition_node is not None
    evaluator = _evaluator()
    evaluator.names = names
    evaluator.functions = functions
    try:
        result = evaluator.eval(rule.condition, previously_parsed=rule.condition_node)
    except Exception as error:
        # Anything the data can make a condition do wrong means "no match", never a crash.
        message = str(error) or type(error).__name__
        return f"{type(error).__name__}: {message}"
    finally:
        # Do not keep the event alive in a thread-local between calls.
        evaluator.names = {}
        evaluator.functions = {}
    if not isinstance(result, bool):
        return f"result is {type(result).__name__}, not true/false"
    return result


# --- Compiling a rule set ------------------------------------------------------------------


@dataclass(frozen=True)
class CompiledRule:
    id: str
    event_type: str
    condition: str | None
    condition_node: ast.expr | None
    award: Award
    cap_per_event: int | None
    cap_per_member_day: int | None
    priority: int
    combine: str
    hold: str | None = None

    @property
    def is_multiplier(self) -> bool:
        return isinstance(self.award, MultiplierAward)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_type": self.event_type,
            "condition": self.condition,
            "award": self.award.to_json(),
            "caps": {"per_event": self.cap_per_event, "per_member_day": self.cap_per_member_day},
            "priority": self.priority,
            "combine": self.combine,
            **({"hold": self.hold} if self.hold is not None else {}),
        }


@dataclass(frozen=True)
class RuleSet:
    version: int
    # Every rule in (priority, id) order.
    rules: tuple[CompiledRule, ...]
    # event type -> its rules in (priority, id) order: the hot path's only lookup.
    by_type: Mapping[str, tuple[CompiledRule, ...]]


def _fields(raw: object, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise invalid(f"{where} must be an object")
    unknown = sorted(str(key) for key in raw if key not in allowed)
    if unknown:
        raise invalid(f"{where} has unknown keys: {', '.join(unknown)[:200]}")
    return raw


def _attribute_name(value: object, where: str) -> str:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= ATTRIBUTE_NAME_LENGTH_MAX
        or not set(value) <= _ATTRIBUTE_NAME_CHARS
        or value[0].isdigit()
    ):
        raise invalid(f"{where} must be an attribute name (letters, digits, _)")
    return value


def _moment(value: object, where: str) -> datetime:
    if not isinstance(value, str) or len(value) > 40:
        raise invalid(f"{where} must be an ISO 8601 date-time with a time zone")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise invalid(f"{where} must be an ISO 8601 date-time with a time zone") from None
    if parsed.utcoffset() is None:
        raise invalid(f"{where} needs a time zone (e.g. a trailing Z)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        raise invalid(f"{where} is out of range") from None


def _factor(value: object, where: str) -> tuple[Decimal, Fraction]:
    factor = parse_decimal(value, where, *_MULTIPLIER_RANGE)
    return factor, Fraction(factor)


def _compile_award(raw: object, where: str) -> Award:
    if not isinstance(raw, dict):
        raise invalid(f"{where} must be an object")
    kind = raw.get("type")
    if kind == AWARD_FIXED:
        fields = _fields(raw, where, ("type", "points"))
        return FixedAward(
            check_int(fields.get("points"), f"{where}.points", 0, POINTS_PER_OPERATION_MAX)
        )
    if kind == AWARD_PER_AMOUNT:
        fields = _fields(raw, where, ("type", "attribute", "rate", "rounding"))
        attribute = _attribute_name(fields.get("attribute"), f"{where}.attribute")
        rate = parse_decimal(fields.get("rate"), f"{where}.rate", *_RATE_RANGE)
        rounding = fields.get("rounding", ROUND_DOWN)
        if rounding not in ROUNDINGS:
            raise invalid(f"{where}.rounding must be one of {', '.join(ROUNDINGS)}")
        exact = Fraction(rate)
        return PerAmountAward(attribute, rate, rounding, exact.numerator, exact.denominator)
    if kind == AWARD_LADDER:
        fields = _fields(raw, where, ("type", "attribute", "brackets"))
        attribute = _attribute_name(fields.get("attribute"), f"{where}.attribute")
        raw_brackets = fields.get("brackets")
        if not isinstance(raw_brackets, list) or not 1 <= len(raw_brackets) <= LADDER_BRACKETS_MAX:
            raise invalid(f"{where}.brackets must be a list of 1..{LADDER_BRACKETS_MAX} brackets")
        brackets: list[tuple[int | str, int | Fraction, int]] = []
        for index, item in enumerate(raw_brackets):
            at = f"{where}.brackets[{index}]"
            bracket = _fields(item, at, ("min", "points"))
            low = parse_decimal(bracket.get("min"), f"{at}.min", *_AMOUNT_RANGE)
            points = check_int(bracket.get("points"), f"{at}.points", 0, POINTS_PER_OPERATION_MAX)
            given = bracket["min"]
            exact = Fraction(low)
            brackets.append(
                (
                    given if type(given) is int else str(low),
                    exact.numerator if exact.denominator == 1 else exact,
                    points,
                )
            )
        brackets.sort(key=lambda bracket: bracket[1])
        if len({bracket[1] for bracket in brackets}) != len(brackets):
            raise invalid(f"{where}.brackets must have distinct min values")
        return LadderAward(attribute, tuple(brackets))
    if kind == AWARD_MULTIPLIER:
        fields = _fields(raw, where, ("type", "factor", "by_tier", "campaign"))
        if all(fields.get(key) is None for key in ("factor", "by_tier", "campaign")):
            raise invalid(f"{where} needs a factor, by_tier or campaign")
        factor, factor_exact = _factor(fields.get("factor", "1"), f"{where}.factor")
        by_tier: dict[str, Decimal] | None = None
        by_tier_exact: dict[str, Fraction] | None = None
        raw_tiers = fields.get("by_tier")
        if raw_tiers is not None:
            if not isinstance(raw_tiers, dict) or not 1 <= len(raw_tiers) <= TIERS_MAX:
                raise invalid(f"{where}.by_tier must be an object of 1..{TIERS_MAX} tiers")
            by_tier, by_tier_exact = {}, {}
            for tier, value in sorted(raw_tiers.items()):
                if (
                    not isinstance(tier, str)
                    or len(tier) > TIER_NAME_LENGTH_MAX
                    or not ID_RE.fullmatch(tier)
                ):
                    raise invalid(f"{where}.by_tier keys must be tier names")
                by_tier[tier], by_tier_exact[tier] = _factor(value, f"{where}.by_tier.{tier}")
        campaign = None
        raw_campaign = fields.get("campaign")
        if raw_campaign is not None:
            at = f"{where}.campaign"
            spec = _fields(raw_campaign, at, ("starts_at", "ends_at", "factor"))
            starts_at = _moment(spec.get("starts_at"), f"{at}.starts_at")
            ends_at = _moment(spec.get("ends_at"), f"{at}.ends_at")
            if not starts_at < ends_at:
                raise invalid(f"{at}.ends_at must be after starts_at")
            campaign_factor, campaign_exact = _factor(spec.get("factor"), f"{at}.factor")
            campaign = Campaign(starts_at, ends_at, campaign_factor, campaign_exact)
        return MultiplierAward(factor, by_tier, campaign, factor_exact, by_tier_exact)
    raise invalid(f"{where}.type must be one of {', '.join(AWARD_TYPES)}")


def _compile_rule(raw: object, index: int) -> CompiledRule:
    if not isinstance(raw, dict):
        raise invalid(f"rules[{index}] must be an object")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not ID_RE.fullmatch(rule_id):
        raise invalid(f"rules[{index}].id must be a safe id (letters, digits, ._:@-)")
    where = f"rule {rule_id!r}:"
    fields = _fields(raw, f"{where} rule", RULE_KEYS)
    event_type = fields.get("event_type")
    if (
        not isinstance(event_type, str)
        or len(event_type) > EVENT_TYPE_LENGTH_MAX
        or not _EVENT_TYPE_RE.fullmatch(event_type)
    ):
        raise invalid(
            f"{where} event_type must be 1..{EVENT_TYPE_LENGTH_MAX} characters of a-z 0-9 _ . -"
        )
    condition = fields.get("condition")
    node = None if condition is None else compile_condition(condition, f"{where} condition")
    award = _compile_award(fields.get("award"), f"{where} award")
    caps = _fields(fields.get("caps") or {}, f"{where} caps", RULE_CAP_KEYS)
    cap_values = [
        None
        if caps.get(key) is None
        else check_int(caps[key], f"{where} caps.{key}", 0, POINTS_PER_OPERATION_MAX)
        for key in RULE_CAP_KEYS
    ]
    if isinstance(award, MultiplierAward) and any(cap is not None for cap in cap_values):
        raise invalid(f"{where} caps do not apply to multiplier rules")
    priority = check_int(
        fields.get("priority", PRIORITY_DEFAULT), f"{where} priority", 0, RULE_PRIORITY_MAX
    )
    combine = fields.get("combine", COMBINE_STACK)
    if combine not in COMBINE_MODES:
        raise invalid(f"{where} combine must be one of {', '.join(COMBINE_MODES)}")
    hold = fields.get("hold")
    if hold not in HOLDS:
        raise invalid(f'{where} hold must be null or "{HOLD_UNTIL_CONFIRMED}"')
    rule = CompiledRule(
        rule_id,
        event_type,
        condition,
        node,
        award,
        cap_values[0],
        cap_values[1],
        priority,
        combine,
        hold,
    )
    assert (rule.condition is None) == (rule.condition_node is None)
    return rule


def compile_rule_set(raw_rules: list[dict[str, Any]], version: int) -> RuleSet:
    """Validate and compile a rule list. Raises PointsError(VALIDATION_ERROR) naming the
    rule and the field at fault."""
    check_int(version, "version", 0, RULE_SET_VERSION_MAX)
    if not isinstance(raw_rules, list):
        raise invalid("rules must be a list")
    if len(raw_rules) > RULES_PER_SET_MAX:
        raise invalid(f"a rule set holds at most {RULES_PER_SET_MAX} rules")
    rules = [_compile_rule(raw, index) for index, raw in enumerate(raw_rules)]
    seen: set[str] = set()
    for rule in rules:
        if rule.id in seen:
            raise invalid(f"rule {rule.id!r}: id is used twice")
        seen.add(rule.id)
    rules.sort(key=lambda rule: (rule.priority, rule.id))
    by_type: dict[str, list[CompiledRule]] = {}
    for rule in rules:
        by_type.setdefault(rule.event_type, []).append(rule)
    result = RuleSet(
        version, tuple(rules), {event_type: tuple(group) for event_type, group in by_type.items()}
    )
    assert len(result.rules) == len(raw_rules)
    assert sum(len(group) for group in result.by_type.values()) == len(result.rules)
    return result


def rule_set_to_json(rule_set: RuleSet) -> list[dict[str, Any]]:
    """The rules in normal form, in evaluation order; compiles back to an equal set."""
    assert isinstance(rule_set, RuleSet)
    result = [rule.to_json() for rule in rule_set.rules]
    assert len(result) == len(rule_set.rules)
    return result


# --- Evaluating ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RuleLine:
    rule_id: str
    matched: bool
    points: int
    note: str


@dataclass(frozen=True)
class Evaluation:
    points: int
    lines: tuple[RuleLine, ...]
    # Counted rule id -> points after the rule's own caps (feeds rule_earned_day).
    rule_points: Mapping[str, int]
    # A matched rule asks to hold the award until the event is confirmed.
    hold: str | None = None


def _note(text: str) -> str:
    return text if len(text) <= NOTE_LENGTH_MAX else text[: NOTE_LENGTH_MAX - 1] + "…"


# A rule that matched: (line index, combine mode, its points or its factor).
_Candidate = tuple[int, str, Any]


def _combine(candidates: list[_Candidate], notes: list[str], ids: list[str]) -> list[int]:
    """Line indexes of the candidates that count, in order; explains the others.

    stack: all count; best: the largest value (ties: the first); first_match: the first.
    """
    counted = [line for line, combine, _ in candidates if combine == COMBINE_STACK]
    for combine, label in ((COMBINE_BEST, "best of group"), (COMBINE_FIRST_MATCH, "first match")):
        group = [(line, value) for line, mode, value in candidates if mode == combine]
        if not group:
            continue
        # max() returns the first of equal values, so ties go to the earlier rule.
        winner = group[0][0] if combine == COMBINE_FIRST_MATCH else max(group, key=_value)[0]
        counted.append(winner)
        for line, _ in group:
            if line != winner:
                notes[line] += f"; not counted: {label} was rule {ids[winner]}"
    counted.sort()
    assert len(counted) <= len(candidates)
    return counted


def _value(item: tuple[int, Any]) -> Any:
    return item[1]


def _apply(base: int, factor: Fraction) -> int:
    """base x factor, rounded down (the one rounding of multipliers)."""
    return base * factor.numerator // factor.denominator


def evaluate(
    rule_set: RuleSet, event: EventIn, member: MemberContext, policy: Policy
) -> Evaluation:
    """Points for one event, with one explanation line per rule of the event's type.

    Raises only for invalid input (PointsError VALIDATION_ERROR: e.g. a float attribute);
    a rule whose condition or award cannot be computed just does not match.
    """
    assert isinstance(rule_set, RuleSet)
    assert member.earned_day >= 0 and member.earned_month >= 0
    _check_event(event)
    rules = rule_set.by_type.get(event.type)
    if not rules:
        return Evaluation(0, (), {})
    attributes = event.attributes
    occurred_at = event.occurred_at.astimezone(UTC)

    names: _Names | None = None
    functions: dict[str, Any] = {}
    count = len(rules)
    ids = [rule.id for rule in rules]
    matched = [False] * count
    points = [0] * count
    notes = [""] * count
    awards: list[_Candidate] = []
    factors: list[_Candidate] = []
    hold: str | None = None
    for line, rule in enumerate(rules):
        if rule.condition_node is not None:
            if names is None:
                # Built once per event, and only when some rule has a condition; the
                # costlier names (local time, ISO text) only when a condition reads them.
                names = _Names(occurred_at, policy.time_zone)
                names["type"] = event.type
                names["attributes"] = attributes
                names["member"] = {"tier": member.tier}
                functions = {
                    "num": _num,
                    "has": attributes.__contains__,
                    "lower": _lower,
                    "upper": _upper,
                    "len": len,
                }
            outcome = _run_condition(rule, names, functions)
            if outcome is not True:
                notes[line] = (
                    "condition false" if outcome is False else f"condition error: {outcome}"
                )
                continue
        award = rule.award
        if rule.hold is not None:
            # The condition held: the event's whole award waits for confirmation.
            hold = rule.hold
        if isinstance(award, MultiplierAward):
            factor, notes[line] = award.factor_for(member.tier, occurred_at)
            notes[line] += HOLD_NOTE if rule.hold else ""
            matched[line] = True
            factors.append((line, rule.combine, factor))
            continue
        try:
            earned, note = award.points_for(attributes)
        except _AwardError as error:
            notes[line] = f"award error: {error}"
            continue
        assert type(earned) is int and earned >= 0
        if rule.cap_per_event is not None and earned > rule.cap_per_event:
            earned = rule.cap_per_event
            note += f"; capped by per_event {rule.cap_per_event} → {earned}"
        if rule.cap_per_member_day is not None:
            left = max(0, rule.cap_per_member_day - member.rule_earned_day.get(rule.id, 0))
            if earned > left:
                earned = left
                note += f"; capped by per_member_day {rule.cap_per_member_day} → {earned}"
        matched[line] = True
        points[line] = earned
        notes[line] = note + (HOLD_NOTE if rule.hold else "")
        awards.append((line, rule.combine, earned))

    counted = set(_combine(awards, notes, ids))
    for line, _, _ in awards:
        if line not in counted:
            points[line] = 0
    rule_points = {ids[line]: points[line] for line in sorted(counted) if points[line] > 0}
    base = sum(points)
    factor = _ONE
    factor_of = {line: value for line, _, value in factors}
    for line in _combine(factors, notes, ids):
        factor *= factor_of[line]
    if base == 0:
        for line, _, _ in factors:
            notes[line] += "; no base points to multiply"
    lines = [RuleLine(ids[i], matched[i], points[i], _note(notes[i])) for i in range(count)]
    total = base

    def step(after: int, note: str) -> None:
        # A program-wide step: its line carries the change, so all lines sum to the result.
        nonlocal total
        lines.append(RuleLine(PROGRAM_LINE_ID, True, after - total, _note(note)))
        total = after

    if base > 0:
        if factor != _ONE:
            after = _apply(base, factor)
            step(after, f"multipliers ×{_text(factor)}: {base} → {after}")
        tier_factor = _tier_factor(policy, member.tier)
        if tier_factor is not None:
            after = _apply(base, factor * tier_factor)
            step(after, f"tier {member.tier} ×{_text(tier_factor)}: {total} → {after}")
        caps = policy.caps
        if caps.per_event is not None and total > caps.per_event:
            step(
                caps.per_event,
                f"program cap per_event {caps.per_event}: {total} → {caps.per_event}",
            )
        if caps.per_member_day is not None:
            left = max(0, caps.per_member_day - member.earned_day)
            if total > left:
                step(left, f"program cap per_member_day {caps.per_member_day}: {total} → {left}")
        if caps.per_member_month is not None:
            left = max(0, caps.per_member_month - member.earned_month)
            if total > left:
                step(
                    left, f"program cap per_member_month {caps.per_member_month}: {total} → {left}"
                )
        if total > POINTS_PER_OPERATION_MAX:
            step(
                POINTS_PER_OPERATION_MAX,
                f"points per operation max: {total} → {POINTS_PER_OPERATION_MAX}",
            )

    result = Evaluation(total, tuple(lines), rule_points, hold)
    assert type(total) is int and 0 <= total <= POINTS_PER_OPERATION_MAX
    assert sum(line.points for line in result.lines) == total
    return result


def _tier_factor(policy: Policy, tier: str | None) -> Fraction | None:
    """The policy multiplier of the member's tier, or None when there is none to apply."""
    if policy.tiers is None or tier is None:
        return None
    for definition in policy.tiers.tiers:
        if definition.name == tier:
            factor = Fraction(definition.multiplier)
            return None if factor == _ONE else factor
    return None


def explanation_json(evaluation: Evaluation) -> list[dict[str, Any]]:
    """The explanation lines as JSON, in evaluation order."""
    assert evaluation.points >= 0
    result = [
        {"rule_id": line.rule_id, "matched": line.matched, "points": line.points, "note": line.note}
        for line in evaluation.lines
    ]
    assert len(result) == len(evaluation.lines)
    return result
