"""Idempotency hashing, routing, ids, problem mapping, request schemas, auth, cursors."""

import uuid
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from actors.routing import SLOTS, shard_of, slot_of
from db.api_repo import decode_cursor, encode_cursor
from domain.errors import NEVER_ANSWERED_CODES, SUCCESS_CODES, Code, PointsError
from domain.idempotency import StoredResponse, replay, request_hash
from domain.ids import uuid7, valid_id
from serve_app.problems import HTTP_STATUS, TITLES, problem_body
from serve_app.schemas import CreditIn, DebitIn


def test_request_hash_is_canonical() -> None:
    a = request_hash("debit", {"points": 5, "reason": "x"})
    b = request_hash("debit", {"reason": "x", "points": 5})
    assert a == b
    assert a != request_hash("debit", {"points": 6, "reason": "x"})
    assert a != request_hash("credit", {"points": 5, "reason": "x"})


def test_replay_returns_original_or_conflicts() -> None:
    stored = StoredResponse(request_hash("debit", {"p": 1}), Code.CREATED, {"transaction_id": "t"})
    assert replay(stored, stored.request_hash) is stored
    with pytest.raises(PointsError) as err:
        replay(stored, request_hash("debit", {"p": 2}))
    assert err.value.code is Code.IDEMPOTENCY_CONFLICT


def test_slots_are_stable_and_spread() -> None:
    # A fixed vector: changing the hash would move every account to another shard.
    assert slot_of("shop", "alice") == slot_of("shop", "alice")
    assert (slot_of("shop", "alice"), slot_of("p", "m1")) == (371, 150)
    counts = [0] * 4
    for i in range(4000):
        counts[shard_of("shop", f"m{i}", 4)] += 1
    assert min(counts) > 800  # roughly uniform
    assert all(0 <= slot_of("p", f"m{i}") < SLOTS for i in range(100))


def test_uuid7_is_time_ordered() -> None:
    first = uuid7(1_700_000_000_000, b"\xff" * 10)
    second = uuid7(1_700_000_000_001, b"\x00" * 10)
    assert first.version == 7 and second.version == 7
    assert first.variant == uuid.RFC_4122
    assert first < second


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("alice", True),
        ("a.b-c_d:e@f", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("has space", False),
        ("../etc", False),
        ("ünï", False),
    ],
)
def test_id_alphabet(value: str, ok: bool) -> None:
    assert valid_id(value) is ok


def test_every_code_maps_to_a_status_and_a_title() -> None:
    for code in Code:
        if code in NEVER_ANSWERED_CODES:  # stored or routing only: no status on purpose
            assert code not in HTTP_STATUS
            continue
        if code in SUCCESS_CODES:
            assert 200 <= HTTP_STATUS[code] < 300 and code not in TITLES
            continue
        assert code in HTTP_STATUS and code in TITLES
        assert HTTP_STATUS[code] >= 400
        body = problem_body(code, "detail")
        assert body["code"] == code.value and body["status"] == HTTP_STATUS[code]
        assert body["type"].endswith(code.value) and body["title"]
    business = {Code.INSUFFICIENT_POINTS, Code.OUT_OF_STOCK, Code.LIMIT_EXCEEDED}
    assert all(400 <= HTTP_STATUS[c] < 500 for c in business)
    assert HTTP_STATUS[Code.UNAVAILABLE] == 503


@pytest.mark.parametrize(
    "body",
    [
        {"points": 1.5, "reason": "x"},
        {"points": "10", "reason": "x"},
        {"points": True, "reason": "x"},
        {"points": 0, "reason": "x"},
        {"points": -5, "reason": "x"},
        {"points": 10**13, "reason": "x"},
        {"points": 10, "reason": ""},
        {"points": 10, "reason": "x" * 501},
        {"points": 10},
        {"points": 10, "reason": "x", "extra": 1},
        {"points": 10, "reason": "x", "expires_at": "2030-01-01T00:00:00"},  # naive
        {"points": 10, "reason": "x", "expires_at": "3030-01-01T00:00:00Z"},  # too far
    ],
)
def test_bad_credit_bodies_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        CreditIn.model_validate_json(__import__("json").dumps(body))


def test_good_bodies_parse() -> None:
    credit = CreditIn.model_validate_json(
        '{"points": 5, "reason": "x", "expires_at": "2030-01-01T09:00:00+09:00"}'
    )
    assert credit.expires_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert DebitIn.model_validate_json('{"points": 5, "reason": "x"}').points == 5


def test_cursor_round_trip_and_garbage() -> None:
    moment = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    txn = uuid.uuid4()
    assert decode_cursor(encode_cursor(moment, txn)) == (moment, txn)
    for garbage in ["", "abc", "x" * 300, encode_cursor(moment, txn)[:-3]]:
        with pytest.raises((ValueError, UnicodeDecodeError)):
            decode_cursor(garbage)


def test_points_up_refuses_a_busy_port_before_starting_anything() -> None:
    import socket

    from typer.testing import CliRunner

    from serve_app.cli import app

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(app, ["up", "--port", str(port)])
    assert result.exit_code == 1
    assert "already in use" in result.output


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"points": 1, "points": 2}', "twice"),
        (b'{"a": {"b": 1, "b": 1}}', "twice"),
        (b'{"points": NaN}', "NaN"),
        (b'{"points": Infinity}', "Infinity"),
        (b'{"points": 1,', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"note": "\\ud800"}', "not valid JSON"),  # a lone surrogate
        (b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
    ],
)
def test_strict_json_refuses_what_it_would_have_to_guess(raw: bytes, fragment: str) -> None:
    from domain import jsontext

    with pytest.raises(PointsError) as err:
        jsontext.loads(raw)
    assert err.value.code is Code.BAD_REQUEST and fragment in err.value.detail


def test_strict_json_reads_whole_number_literals_as_integers() -> None:
    from domain import jsontext

    parsed = jsontext.loads(b'{"a": 27.0, "b": 1e3, "c": 1.5, "d": 1e300, "e": -0.0}')
    assert parsed == {"a": 27, "b": 1000, "c": 1.5, "d": 1e300, "e": 0}
    assert [type(parsed[k]) for k in "abcde"] == [int, int, float, float, int]


def test_the_ingress_queue_is_bounded_with_retry_after() -> None:
    from ray.serve._private.config import DeploymentConfig

    from serve_app.app import queue_options
    from serve_app.problems import RETRY_AFTER_S
    from serve_app.settings import INGRESS_QUEUED_MAX, load_settings

    options = queue_options(load_settings().ingress_queued_max)
    assert options["max_queued_requests"] == INGRESS_QUEUED_MAX
    # Serve accepts them as they are (the dict becomes its BackpressureConfig).
    config = DeploymentConfig(**options)
    assert config.backpressure_config.status_code == 503
    assert config.backpressure_config.retry_after_s == RETRY_AFTER_S
