"""Business events as they arrive (HTTP body or Redis stream entry) → `EventIn`.

One parser for both doors, so an event refused over HTTP is refused the same way (and
with the same words) when it comes through the stream, where it becomes a dead letter.
Time is an argument: `occurred_at` must lie within a window around `now` (events from the
far past would award points for periods already closed; far-future ones are clock bugs).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from domain.errors import Code, PointsError
from domain.ids import valid_id
from domain.limits import (
    EVENT_FUTURE_SKEW_S,
    EVENT_PAST_AGE_S,
    EVENT_TYPE_LENGTH_MAX,
    EVENT_TYPE_PATTERN,
    ID_LENGTH_MAX,
)
from domain.rules import EventIn, validate_attributes

EVENT_FIELDS = frozenset({"id", "member_id", "type", "occurred_at", "attributes"})
_TYPE_RE = re.compile(EVENT_TYPE_PATTERN)
# RFC 3339 date-time: offsets are hours and minutes only, fractions up to microseconds.
_NAIVE_RE = re.compile(r"\d{4}-\d{2}-\d{2}([Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?")
_RFC3339_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?([Zz]|[+-]\d{2}:\d{2})"
)


def _invalid(detail: str) -> PointsError:
    return PointsError(Code.VALIDATION_ERROR, detail)


def parse_time(value: object, field: str) -> datetime:
    """An RFC 3339 timestamp with an offset (naive times are ambiguous: refused)."""
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        raise _invalid(f"{field} must be an RFC 3339 timestamp string with a time zone")
    if _RFC3339_RE.fullmatch(value) is None:
        if _NAIVE_RE.fullmatch(value) is not None:
            raise _invalid(f"{field} must carry a time zone offset (e.g. Z or +08:00)")
        raise _invalid(
            f"{field} is not a valid RFC 3339 timestamp (e.g. 2026-11-25T10:00:00Z or "
            f"2026-11-25T18:00:00+08:00): {value[:40]!r}"
        )
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise _invalid(f"{field} is not a valid RFC 3339 timestamp: {value[:40]!r}") from None
    if moment.utcoffset() is None:
        raise _invalid(f"{field} must carry a time zone offset (e.g. Z or +08:00)")
    assert moment.tzinfo is not None
    return moment


def parse_event(raw: object, now: datetime) -> EventIn:
    """Validate one event body; raises PointsError(validation_error) naming the field."""
    assert now.utcoffset() is not None, "now must be time-zone aware"
    if not isinstance(raw, Mapping):
        raise _invalid("an event must be a JSON object")
    unknown = set(raw) - EVENT_FIELDS
    if unknown:
        raise _invalid(f"unknown event fields: {', '.join(sorted(map(str, unknown)))[:200]}")
    for name in ("id", "member_id", "type", "occurred_at"):
        if name not in raw:
            raise _invalid(f"event field {name} is required")
    event_id, member_id, kind = raw["id"], raw["member_id"], raw["type"]
    if not isinstance(event_id, str) or not valid_id(event_id):
        raise _invalid(
            f"id must be 1..{ID_LENGTH_MAX} characters of A-Z a-z 0-9 . _ : @ - "
            "(starting with a letter or digit)"
        )
    if not isinstance(member_id, str) or not valid_id(member_id):
        raise _invalid(f"member_id must be 1..{ID_LENGTH_MAX} characters of A-Z a-z 0-9 . _ : @ -")
    if (
        not isinstance(kind, str)
        or not 1 <= len(kind) <= EVENT_TYPE_LENGTH_MAX
        or not _TYPE_RE.fullmatch(kind)
    ):
        raise _invalid(
            f"type must be 1..{EVENT_TYPE_LENGTH_MAX} characters of a-z 0-9 _ . - (e.g. order)"
        )
    occurred_at = parse_time(raw["occurred_at"], "occurred_at")
    if occurred_at > now + timedelta(seconds=EVENT_FUTURE_SKEW_S):
        raise _invalid(
            f"occurred_at is more than {EVENT_FUTURE_SKEW_S} s in the future: check the clock"
        )
    if occurred_at < now - timedelta(seconds=EVENT_PAST_AGE_S):
        raise _invalid(f"occurred_at is more than {EVENT_PAST_AGE_S // 86400} days in the past")
    attributes: Any = raw.get("attributes", {})
    if attributes is None:
        attributes = {}
    validate_attributes(attributes)
    event = EventIn(event_id, member_id, kind, occurred_at, dict(attributes))
    assert event.occurred_at.utcoffset() is not None
    return event


def event_json(event: EventIn) -> dict[str, Any]:
    """The canonical JSON of an event (what is hashed for deduplication and stored)."""
    assert event.occurred_at.utcoffset() is not None
    body = {
        "id": event.event_id,
        "member_id": event.member_id,
        "type": event.type,
        "occurred_at": event.occurred_at.isoformat(),
        "attributes": event.attributes,
    }
    assert body["id"]
    return body
