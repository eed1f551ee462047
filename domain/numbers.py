"""Exact numbers for earning: decimal strings in, integers out, never a float.

Rates and factors arrive as JSON. A JSON float ("0.01" written as 0.01) has already lost
its exact value by the time Python sees it, so every float is refused and rates travel
as decimal strings ("0.01") or integers. Inside the core they become `Fraction`s, whose
arithmetic is exact, so the only rounding is the one a rule names.
"""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction
from typing import TypeGuard

from domain.errors import Code, PointsError
from domain.limits import DECIMAL_DIGITS_MAX, DECIMAL_PLACES_MAX, INTEGER_ABS_MAX

DECIMAL_PATTERN = r"^-?\d+(\.\d+)?$"
DECIMAL_RE = re.compile(DECIMAL_PATTERN)

ROUND_DOWN = "down"
ROUND_UP = "up"
ROUND_HALF_UP = "half_up"
ROUNDINGS = (ROUND_DOWN, ROUND_UP, ROUND_HALF_UP)


def invalid(detail: str) -> PointsError:
    """The one error bad program data raises: a validation error naming the field."""
    assert isinstance(detail, str) and detail
    error = PointsError(Code.VALIDATION_ERROR, detail)
    assert error.code is Code.VALIDATION_ERROR
    return error


def is_decimal_string(value: object) -> TypeGuard[str]:
    """A plain decimal: optional minus, digits, optional fraction; no exponent, no spaces."""
    if not isinstance(value, str) or len(value) > DECIMAL_DIGITS_MAX + 2:
        return False
    if DECIMAL_RE.fullmatch(value) is None:
        return False
    places = len(value) - value.index(".") - 1 if "." in value else 0
    assert 0 <= places < len(value)
    assert value.lstrip("-")[:1].isdigit()
    return places <= DECIMAL_PLACES_MAX


def check_int(value: object, field: str, low: int, high: int) -> int:
    """An integer in [low, high]; bools and floats are refused (True is not 1 point)."""
    assert low <= high
    if isinstance(value, float):
        raise invalid(f"{field} must be an integer, not a float")
    if type(value) is not int:
        raise invalid(f"{field} must be an integer")
    if not low <= value <= high:
        raise invalid(f"{field} must be between {low} and {high}")
    assert low <= value <= high
    return value


def parse_decimal(value: object, field: str, low: Fraction, high: Fraction) -> Decimal:
    """An int or a decimal string in [low, high], as an exact Decimal."""
    assert low <= high
    assert field
    if isinstance(value, float):
        raise invalid(f'{field} must be a decimal string like "1.5", not a float')
    if type(value) is int:
        if abs(value) > INTEGER_ABS_MAX:
            raise invalid(f"{field} is out of range")
        parsed = Decimal(value)
    elif is_decimal_string(value):
        assert isinstance(value, str)
        parsed = Decimal(value)
    else:
        raise invalid(f'{field} must be an integer or a decimal string like "1.5"')
    if not low <= Fraction(parsed) <= high:
        raise invalid(f"{field} must be between {low} and {high}")
    assert parsed.is_finite()
    return parsed


def to_fraction(value: object) -> Fraction | None:
    """An event's amount (int minor units or decimal string) as an exact Fraction, or None.

    None means "not a number we accept" (bool, float, malformed string); callers turn it
    into a rule that does not match rather than an exception.
    """
    if type(value) is int:
        return Fraction(value)
    if is_decimal_string(value):
        assert isinstance(value, str)
        result = Fraction(Decimal(value))
        assert result.denominator <= 10**DECIMAL_PLACES_MAX
        return result
    assert type(value) is not int
    return None


def round_ratio(numerator: int, denominator: int, rounding: str) -> int:
    """Round numerator / denominator (both >= 0 and > 0) to an integer, exactly.

    "down" is floor, "up" is ceiling, "half_up" sends .5 up (as a person would on a
    receipt). Points are never negative here, so floor and "toward zero" agree.
    """
    assert numerator >= 0 and denominator > 0
    assert rounding in ROUNDINGS
    if rounding == ROUND_DOWN:
        result = numerator // denominator
    elif rounding == ROUND_UP:
        result = -(-numerator // denominator)
    else:
        result = (2 * numerator + denominator) // (2 * denominator)
    assert result * denominator - denominator < numerator or numerator == 0
    return result


def round_fraction(value: Fraction, rounding: str) -> int:
    """Round an exact value >= 0 to an integer (see round_ratio)."""
    assert value >= 0
    result = round_ratio(value.numerator, value.denominator, rounding)
    assert abs(result - value) <= 1
    return result
