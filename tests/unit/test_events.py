"""Event parsing: one parser for HTTP and the stream, refusing bad input by field."""

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import Code, PointsError
from domain.events import event_json, parse_event, parse_time
from domain.limits import (
    EVENT_FUTURE_SKEW_S,
    EVENT_PAST_AGE_S,
    EVENT_TYPE_LENGTH_MAX,
    ID_LENGTH_MAX,
)
from domain.rules import EventIn

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def good(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "order-10001",
        "member_id": "alice",
        "type": "order",
        "occurred_at": "2026-03-01T10:15:00Z",
        "attributes": {"amount": 12999, "currency": "CNY", "order_id": "SO-10001"},
    }
    body.update(changes)
    return body


def refused(raw: object, now: datetime = NOW) -> str:
    """The detail of the validation error parse_event raises for `raw`."""
    with pytest.raises(PointsError) as err:
        parse_event(raw, now)
    assert err.value.code is Code.VALIDATION_ERROR
    return err.value.detail


# ----------------------------------------------------------------------------- accepted


def test_a_good_event_is_parsed() -> None:
    event = parse_event(good(), NOW)
    assert event == EventIn(
        "order-10001",
        "alice",
        "order",
        datetime(2026, 3, 1, 10, 15, tzinfo=UTC),
        {"amount": 12999, "currency": "CNY", "order_id": "SO-10001"},
    )
    assert event.occurred_at.utcoffset() == timedelta(0)


def test_an_offset_is_kept_and_means_the_same_instant() -> None:
    event = parse_event(good(occurred_at="2026-03-01T18:15:00+08:00"), NOW)
    assert event.occurred_at == datetime(2026, 3, 1, 10, 15, tzinfo=UTC)
    assert event.occurred_at.utcoffset() == timedelta(hours=8)
    lower_z = parse_event(good(occurred_at="2026-03-01T10:15:00z"), NOW)
    assert lower_z.occurred_at == event.occurred_at


def test_attributes_are_optional_and_null_means_none() -> None:
    body = good()
    del body["attributes"]
    assert parse_event(body, NOW).attributes == {}
    assert parse_event(good(attributes=None), NOW).attributes == {}


def test_the_window_edges_are_accepted() -> None:
    future_edge = NOW + timedelta(seconds=EVENT_FUTURE_SKEW_S)
    past_edge = NOW - timedelta(seconds=EVENT_PAST_AGE_S)
    for moment in (future_edge, past_edge):
        assert parse_event(good(occurred_at=moment.isoformat()), NOW).occurred_at == moment


def test_ids_at_the_length_limit_are_accepted() -> None:
    longest = "a" * ID_LENGTH_MAX
    event = parse_event(good(id=longest, member_id=longest, type="t" * EVENT_TYPE_LENGTH_MAX), NOW)
    assert (event.event_id, event.member_id) == (longest, longest)
    assert parse_event(good(id="shop:order@1.a_b-c"), NOW).event_id == "shop:order@1.a_b-c"


# ----------------------------------------------------------------------------- refused


@pytest.mark.parametrize("field", ["id", "member_id", "type", "occurred_at"])
def test_a_missing_field_is_refused_by_name(field: str) -> None:
    body = good()
    del body[field]
    assert f"event field {field} is required" in refused(body)


@pytest.mark.parametrize("field", ["amount", "ID", "idempotency_key", "", "1"])
def test_unknown_fields_are_refused_by_name(field: str) -> None:
    body = good()
    body[field] = 1
    detail = refused(body)
    assert "unknown event fields" in detail and field in detail


def test_a_non_string_key_is_an_unknown_field() -> None:
    body: dict[Any, Any] = good()
    body[7] = "x"
    assert "unknown event fields: 7" in refused(body)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "has space",
        " leading",
        "trailing ",
        "-starts-with-dash",
        "a" * (ID_LENGTH_MAX + 1),
        "tab\there",
        "line\n",
        "ünïcode",
        42,
        None,
        ["a"],
    ],
)
@pytest.mark.parametrize("field", ["id", "member_id"])
def test_bad_ids_are_refused_by_name(field: str, bad: object) -> None:
    assert refused(good(**{field: bad})).startswith(f"{field} must be 1..{ID_LENGTH_MAX}")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "Order",
        "ORDER",
        "order placed",
        "order/placed",
        "t" * (EVENT_TYPE_LENGTH_MAX + 1),
        "ordér",
        1,
        None,
        True,
    ],
)
def test_bad_types_are_refused(bad: object) -> None:
    assert refused(good(type=bad)).startswith(f"type must be 1..{EVENT_TYPE_LENGTH_MAX}")


@pytest.mark.parametrize(
    "bad",
    ["2026-03-01T10:15:00", "2026-03-01 10:15:00", "2026-03-01"],
)
def test_naive_timestamps_are_refused(bad: str) -> None:
    assert "occurred_at must carry a time zone offset" in refused(good(occurred_at=bad))


@pytest.mark.parametrize(
    "bad",
    [
        "yesterday at noon",
        "2026-13-01T10:15:00Z",
        "2026-02-30T10:15:00Z",
        "2026-03-01T25:00:00Z",
        "2026-03-01T10:15:00+25:00",
        "2026-03-01T10:15:00ZZ",
        "1772360100",
    ],
)
def test_garbage_timestamps_are_refused(bad: str) -> None:
    assert refused(good(occurred_at=bad)).startswith("occurred_at is not a valid RFC 3339")


@pytest.mark.parametrize(
    "bad", [1772360100, 1772360100.5, None, "", "2026", "2026-03-01T10:15:00Z" + " " * 30]
)
def test_timestamps_of_the_wrong_type_or_length_are_refused(bad: object) -> None:
    assert refused(good(occurred_at=bad)).startswith("occurred_at must be an RFC 3339")


def test_occurred_at_too_far_in_the_future_is_refused() -> None:
    moment = NOW + timedelta(seconds=EVENT_FUTURE_SKEW_S, microseconds=1)
    detail = refused(good(occurred_at=moment.isoformat()))
    assert detail.startswith(f"occurred_at is more than {EVENT_FUTURE_SKEW_S} s in the future")


def test_occurred_at_too_far_in_the_past_is_refused() -> None:
    moment = NOW - timedelta(seconds=EVENT_PAST_AGE_S, microseconds=1)
    detail = refused(good(occurred_at=moment.isoformat()))
    days = EVENT_PAST_AGE_S // 86400
    assert detail.startswith(f"occurred_at is more than {days} days in the past")


def test_the_window_is_about_instants_not_wall_clocks() -> None:
    # 14:00 in Shanghai is 06:00 UTC: in the past, though its wall clock is after NOW.
    assert parse_event(good(occurred_at="2026-03-01T14:00:00+08:00"), NOW)
    # 12:06 UTC written as 07:06 in New York (-05:00) is 6 minutes in the future.
    assert "in the future" in refused(good(occurred_at="2026-03-01T07:06:00-05:00"))


@pytest.mark.parametrize(
    ("attributes", "path"),
    [
        ({"amount": 129.99}, "attributes.amount"),
        ({"order": {"amount": 1.0}}, "attributes.order.amount"),
        ({"items": [1, 2, 3.5]}, "attributes.items[2]"),
        ({"a": {"b": [{"price": 0.1}]}}, "attributes.a.b[0].price"),
        ({"n": float("nan")}, "attributes.n"),
        ({"n": float("inf")}, "attributes.n"),
    ],
)
def test_floats_are_refused_at_any_depth(attributes: dict[str, Any], path: str) -> None:
    detail = refused(good(attributes=attributes))
    assert detail.startswith(f"{path} must not be a float")


@pytest.mark.parametrize("attributes", [[], "x", 1, [{"amount": 1}]])
def test_attributes_must_be_an_object(attributes: object) -> None:
    assert refused(good(attributes=attributes)) == "attributes must be an object"


@pytest.mark.parametrize("raw", [[], [good()], "order", "", None, 1, 1.5, True])
def test_a_body_that_is_not_an_object_is_refused(raw: object) -> None:
    assert refused(raw) == "an event must be a JSON object"


def test_parse_time_names_the_field() -> None:
    with pytest.raises(PointsError) as err:
        parse_time("tomorrow at noon", "starts_at")
    assert err.value.code is Code.VALIDATION_ERROR
    assert err.value.detail.startswith("starts_at is not a valid RFC 3339 timestamp")
    assert parse_time("2026-03-01T10:15:00-03:30", "x").utcoffset() == timedelta(
        hours=-3, minutes=-30
    )


# ----------------------------------------------------------------------------- round trip


def test_event_json_is_the_canonical_form() -> None:
    event = parse_event(good(occurred_at="2026-03-01T18:15:00+08:00"), NOW)
    assert event_json(event) == {
        "id": "order-10001",
        "member_id": "alice",
        "type": "order",
        "occurred_at": "2026-03-01T18:15:00+08:00",
        "attributes": {"amount": 12999, "currency": "CNY", "order_id": "SO-10001"},
    }


offsets = st.integers(-14 * 60, 14 * 60).map(lambda minutes: timezone(timedelta(minutes=minutes)))
# PostgreSQL cannot store NUL: attributes holding one are refused (tested separately).
text = st.text(alphabet=st.characters(exclude_characters="\x00"), max_size=20)
keys = st.text(alphabet=st.characters(exclude_characters="\x00"), min_size=1, max_size=10)
scalars = st.none() | st.booleans() | st.integers(-(2**63) + 1, 2**63 - 1) | text


def nest(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return scalars | st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3)


# Containers three levels deep inside the attributes object: the deepest accepted.
attribute_values = nest(nest(nest(scalars)))
event_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:@-]{0,40}\Z")


@settings(max_examples=300, deadline=None)
@given(
    event_ids,
    event_ids,
    st.from_regex(r"\A[a-z0-9_.-]{1,64}\Z"),
    st.integers(-EVENT_PAST_AGE_S * 10**6, EVENT_FUTURE_SKEW_S * 10**6),
    offsets,
    st.dictionaries(keys, attribute_values, max_size=4),
)
def test_event_json_round_trips_through_parse_event(
    event_id: str,
    member_id: str,
    kind: str,
    micros: int,
    offset: timezone,
    attributes: dict[str, Any],
) -> None:
    occurred_at = (NOW + timedelta(microseconds=micros)).astimezone(offset)
    event = EventIn(event_id, member_id, kind, occurred_at, attributes)
    body = event_json(event)
    again = parse_event(body, NOW)
    assert again == event
    assert again.occurred_at.utcoffset() == offset.utcoffset(None)
    assert event_json(again) == body


def test_offsets_with_seconds_are_not_rfc_3339_and_are_refused() -> None:
    # Python's fromisoformat takes "+05:30:15.123456"; RFC 3339 offsets are hh:mm only, and
    # event_json's rendering of such an offset would not parse again.
    assert "not a valid RFC 3339" in refused(
        good(occurred_at="2026-03-01T10:15:00.1+05:30:15.123456")
    )
    event = parse_event(good(occurred_at="2026-03-01T10:15:00.1+05:30"), NOW)
    assert parse_event(event_json(event), NOW) == event


# ----------------------------------------------------------------------------- fuzzing

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
in_window = st.builds(
    lambda seconds, offset: (NOW + timedelta(seconds=seconds)).astimezone(offset).isoformat(),
    st.integers(-EVENT_PAST_AGE_S - 60, EVENT_FUTURE_SKEW_S + 60),
    offsets,
)
timestamp_like = st.one_of(
    in_window,
    in_window.map(lambda text: text.replace("+00:00", "Z")),
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda moment: moment.isoformat()),
    st.from_regex(r"\A\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d{1,9})?)?([Zz]|[+-]\d\d(:?\d\d)*)?\Z"),
    st.text(max_size=45),
)
event_fields = {
    "id": st.one_of(event_ids, event_ids, json_values),
    "member_id": st.one_of(event_ids, event_ids, json_values),
    "type": st.one_of(st.from_regex(r"\A[a-z_]{1,10}\Z"), json_values),
    "occurred_at": st.one_of(timestamp_like, timestamp_like, json_values),
}
near_events = st.one_of(
    st.fixed_dictionaries(
        event_fields,
        optional={
            "attributes": st.one_of(
                st.dictionaries(st.text(max_size=5), attribute_values), json_values
            ),
            "extra": json_values,
        },
    ),
    st.fixed_dictionaries({}, optional={**event_fields, "attributes": json_values}),
)


def parses_or_refuses(raw: object) -> None:
    try:
        event = parse_event(raw, NOW)
    except PointsError as error:
        assert error.code is Code.VALIDATION_ERROR
        assert error.detail
        return
    assert isinstance(raw, dict)
    assert isinstance(event, EventIn)
    assert (event.event_id, event.member_id, event.type) == (
        raw["id"],
        raw["member_id"],
        raw["type"],
    )
    assert event.occurred_at.utcoffset() is not None
    assert NOW - timedelta(seconds=EVENT_PAST_AGE_S) <= event.occurred_at
    assert event.occurred_at <= NOW + timedelta(seconds=EVENT_FUTURE_SKEW_S)
    assert event.attributes == (raw.get("attributes") or {})


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_any_json_either_parses_or_is_refused_as_invalid(raw: object) -> None:
    parses_or_refuses(raw)


@settings(max_examples=500, deadline=None)
@given(near_events)
def test_near_miss_events_either_parse_or_are_refused_as_invalid(raw: dict[str, Any]) -> None:
    parses_or_refuses(raw)


@pytest.mark.parametrize(
    "attributes", [{"note": "a\x00b"}, {"\x00": 1}, {"list": ["ok", "\x00"]}, {"a": {"b": "\x00"}}]
)
def test_nul_anywhere_in_attributes_is_refused(attributes: dict[str, Any]) -> None:
    assert "NUL" in refused(good(attributes=attributes))
