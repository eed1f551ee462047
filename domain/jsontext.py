"""Strict JSON: the one parser of JSON bodies, for the HTTP API and the event stream alike.

JSON leaves a few things to the reader; a ledger must not guess at them:

- an object with the same key twice is refused (most parsers silently keep the last one,
  so `{"points": 1, "points": 2}` would credit 2);
- `NaN` and `Infinity` are not JSON and are refused;
- a number with a fraction or an exponent that is a whole number (`27.0`, `1e3`) is that
  integer: JSON has one number type and JSON Schema's "integer" includes 27.0. Any other
  stays a float, which every field that counts points or units refuses. Exponents past
  INTEGRAL_EXPONENT_MAX stay floats too (no giant integer from a short literal).
"""

import json
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from domain.errors import Code, PointsError

INTEGRAL_EXPONENT_MAX = 18
DETAIL_LENGTH_MAX = 300


class _Ambiguous(ValueError):
    pass


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, value in pairs:
        if name in found:
            raise _Ambiguous(f"has the key {name!r} twice")
        found[name] = value
    assert len(found) == len(pairs)
    return found


def _refuse_constant(name: str) -> Any:
    raise _Ambiguous(f"holds {name}, which is not JSON")


def _number(literal: str) -> int | float:
    try:
        exact = Decimal(literal)
    except InvalidOperation:
        return float(literal)
    if (
        exact.is_finite()
        and exact.adjusted() <= INTEGRAL_EXPONENT_MAX
        and exact == exact.to_integral_value()
    ):
        return int(exact)
    return float(literal)


def loads(raw: bytes | str, subject: str = "the body") -> Any:
    """Parse JSON strictly; PointsError(bad_request) saying what is wrong with `subject`."""
    assert subject
    try:
        value = json.loads(
            raw,
            object_pairs_hook=_refuse_duplicates,
            parse_constant=_refuse_constant,
            parse_float=_number,
        )
    except RecursionError as exc:  # nesting deeper than Python's stack: never a real body
        raise PointsError(Code.BAD_REQUEST, f"{subject} is nested too deeply") from exc
    except _Ambiguous as exc:
        raise PointsError(Code.BAD_REQUEST, f"{subject} {exc}"[:DETAIL_LENGTH_MAX]) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        detail = f"{subject} is not valid JSON: {exc}"[:DETAIL_LENGTH_MAX]
        raise PointsError(Code.BAD_REQUEST, detail) from exc
    # Python's parser takes a lone UTF-16 surrogate ("\ud800"), which no UTF-8 text can
    # hold: everything downstream (orjson answers, PostgreSQL JSONB) would fail on it.
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        detail = f"{subject} is not valid JSON: {exc}"[:DETAIL_LENGTH_MAX]
        raise PointsError(Code.BAD_REQUEST, detail) from exc
    return value
