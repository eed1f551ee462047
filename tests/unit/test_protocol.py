"""The ingress <-> actor protocol: typed commands and outcomes, compact on the wire."""

import pickle
import uuid
from dataclasses import FrozenInstanceError, fields
from datetime import UTC, datetime

import pytest

from actors import protocol
from actors.protocol import (
    AccountCommand,
    ApplyEvent,
    Cancel,
    Confirm,
    Credit,
    Debit,
    DecideReview,
    Expire,
    OpKind,
    Outcome,
    PutReward,
    Redeem,
    Refund,
    Restock,
    Resume,
    Retier,
    Reverse,
    RewardCommand,
    command_from_wire,
    command_to_wire,
    outcome_from_wire,
    outcome_to_wire,
)
from domain.errors import SUCCESS_CODES, Code, PointsError
from domain.rules import EventIn

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
EVENT = EventIn("e-1", "m", "order", NOW, {"amount": 100})
COMMANDS: list[AccountCommand | RewardCommand] = [
    Credit(program_id="p", member_id="m", key="k", request_hash="h", points=5, reason="r"),
    Debit(program_id="p", member_id="m", key="k", request_hash="h", points=5, reason="r"),
    Refund(program_id="p", member_id="m", points=5, reason="r", refund_of=uuid.uuid4()),
    ApplyEvent(program_id="p", member_id="m", key="event e-1", event=EVENT),
    Reverse(program_id="p", member_id="m", key="k", event_id="e-1", amount="10.5"),
    Confirm(program_id="p", member_id="m", key="confirm e-1", event_id="e-1"),
    Expire(program_id="p", member_id="m"),
    Retier(program_id="p", member_id="m"),
    PutReward(
        program_id="p",
        reward_id="mug",
        name="Mug",
        cost_points=100,
        stock=None,
        per_member_limit=2,
        active=True,
        fulfillment={"type": "none"},
    ),
    Restock(program_id="p", reward_id="mug", quantity=3, key="k", request_hash="h"),
    Redeem(program_id="p", reward_id="mug", member_id="m", quantity=1, key="k", request_hash="h"),
    Cancel(program_id="p", reward_id="mug", redemption_id=uuid.uuid4()),
    # Risk control: a service credit and a redemption's debit carry who and what, unhashed.
    Credit(
        program_id="p",
        member_id="m",
        key="k",
        request_hash="h",
        points=5,
        reason="r",
        by_service=True,
    ),
    Debit(
        program_id="p",
        member_id="m",
        key="saga x debit",
        request_hash="h",
        points=5,
        reason="r",
        redemption_id=uuid.uuid4(),
        reward_id="mug",
    ),
    DecideReview(
        program_id="p", member_id="m", review_id=uuid.uuid4(), decision="approve", reason="ok"
    ),
    Resume(program_id="p", reward_id="mug", redemption_id=uuid.uuid4()),
]


def test_every_operation_kind_has_exactly_one_command_type() -> None:
    kinds = {command.kind for command in COMMANDS}
    assert sorted(kinds) == sorted(OpKind)
    declared = {
        obj.kind
        for obj in vars(protocol).values()
        if isinstance(obj, type)
        and issubclass(obj, AccountCommand | RewardCommand)
        and "kind" in vars(obj)
    }
    assert declared == set(OpKind)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.kind)
def test_commands_are_frozen_and_survive_pickling(command: AccountCommand) -> None:
    copy = pickle.loads(pickle.dumps(command))
    assert copy == command and type(copy) is type(command)
    with pytest.raises(FrozenInstanceError):
        command.program_id = "other"  # type: ignore[misc]


def test_outcomes_carry_codes_never_statuses() -> None:
    created = Outcome.created({"transaction_id": "t"})
    refused = Outcome.refused(Code.INSUFFICIENT_POINTS, "not enough", balance=3)
    assert created.succeeded and created.code in SUCCESS_CODES
    assert not refused.succeeded and refused.detail == "not enough"
    assert refused.body == {"detail": "not enough", "balance": 3}
    assert Outcome.of_error(PointsError(Code.NOT_FOUND, "x")).code is Code.NOT_FOUND
    assert created.as_replay().replayed and not created.replayed
    assert [f.name for f in fields(Outcome)] == ["code", "body", "replayed"]
    assert pickle.loads(pickle.dumps(refused)) == refused
    with pytest.raises(AssertionError):
        Outcome.refused(Code.OK, "a success is not a refusal")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.kind)
def test_every_command_round_trips_through_its_wire_form(command: AccountCommand) -> None:
    wire = command_to_wire(command)
    assert _builtins_only(wire), wire
    assert command_from_wire(pickle.loads(pickle.dumps(wire))) == command


def test_outcomes_round_trip_through_their_wire_form() -> None:
    for outcome in (
        Outcome.created({"transaction_id": "t"}),
        Outcome.refused(Code.OUT_OF_STOCK, "sold out").as_replay(),
    ):
        wire = outcome_to_wire(outcome)
        assert _builtins_only(wire)
        assert outcome_from_wire(pickle.loads(pickle.dumps(wire))) == outcome


def _builtins_only(value: object) -> bool:
    """Only builtin containers and scalars (and datetimes, UUIDs): what a pickler handles
    without a Python-level reducer call per object."""
    if isinstance(value, tuple | list):
        return type(value) in (tuple, list) and all(_builtins_only(v) for v in value)
    if isinstance(value, dict):
        return type(value) is dict and all(_builtins_only(v) for v in value.values())
    return type(value) in (str, int, bool, float, type(None), datetime, uuid.UUID)


def test_a_call_of_many_commands_is_no_bigger_than_the_dicts_it_replaced() -> None:
    """What one Ray call carries: a thousand debits in their wire form are no bigger than
    the untyped dicts the protocol replaced."""
    typed = [
        command_to_wire(
            Debit(
                program_id="shop",
                member_id=f"m{i}",
                key=f"k{i}",
                request_hash="h" * 64,
                points=1,
                reason="coffee",
            )
        )
        for i in range(1000)
    ]
    dicts = [
        {
            "kind": "debit",
            "program_id": "shop",
            "member_id": f"m{i}",
            "key": f"k{i}",
            "request_hash": "h" * 64,
            "points": 1,
            "reason": "coffee",
        }
        for i in range(1000)
    ]
    typed_bytes = len(pickle.dumps(typed, protocol=5))
    dict_bytes = len(pickle.dumps(dicts, protocol=5))
    assert typed_bytes <= dict_bytes, (typed_bytes, dict_bytes)
