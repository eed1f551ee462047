"""The typed protocol between the ingress and the shard actors.

Contract: the ingress (and the reward shards' saga, and the stream consumer) send frozen
*commands*, one type per operation, and get back one `Outcome` each. An outcome carries a
domain result code (`domain.errors.Code`, never an HTTP status), the body, and whether it
is a replay of an earlier answer. Only `serve_app` turns a code into an HTTP status.

Commands carry only what the operation needs; the idempotency key and the request hash
travel with the writes that are keyed. On the wire (one Ray call carries many) they travel
as tuples of builtins: see "On the wire" below for why and how.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from enum import StrEnum
from operator import attrgetter
from typing import Any, ClassVar

from domain.errors import SUCCESS_CODES, Code, PointsError
from domain.rules import EventIn


class OpKind(StrEnum):
    """Every operation a shard applies. The account kinds double as the names hashed into
    request hashes (`domain.idempotency.request_hash`), so they never change."""

    # Account shards.
    CREDIT = "credit"
    DEBIT = "debit"
    REFUND = "refund"
    EVENT = "event"
    REVERSE = "reverse"
    CONFIRM = "confirm"
    EXPIRE = "expire"
    RETIER = "retier"
    DECIDE = "decide"
    # Reward shards.
    PUT_REWARD = "put_reward"
    RESTOCK = "restock"
    REDEEM = "redeem"
    CANCEL = "cancel"
    RESUME = "resume"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an operation answered. `body` is the resource view for a success, and
    `{"detail": ..., **extra}` for a refusal."""

    code: Code
    body: dict[str, Any] = field(default_factory=dict)
    replayed: bool = False

    @staticmethod
    def created(body: dict[str, Any]) -> Outcome:
        return Outcome(Code.CREATED, body)

    @staticmethod
    def done(body: dict[str, Any] | None = None) -> Outcome:
        return Outcome(Code.OK, body if body is not None else {})

    @staticmethod
    def refused(code: Code, detail: str, **extra: Any) -> Outcome:
        assert code not in SUCCESS_CODES
        assert detail
        return Outcome(code, {"detail": detail, **extra})

    @staticmethod
    def of_error(exc: PointsError) -> Outcome:
        return Outcome.refused(exc.code, exc.detail, **exc.extra)

    @property
    def succeeded(self) -> bool:
        return self.code in SUCCESS_CODES

    @property
    def detail(self) -> str:
        return str(self.body.get("detail", self.code.value))

    def as_replay(self, replayed: bool = True) -> Outcome:
        return replace(self, replayed=replayed)


# --------------------------------------------------------------------- account shards


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountCommand:
    """An operation on one member account; `(program_id, member_id)` picks the shard."""

    kind: ClassVar[OpKind]
    program_id: str
    member_id: str
    # Scoped to (program, member); empty for operations that are not keyed.
    key: str = ""
    request_hash: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Credit(AccountCommand):
    kind: ClassVar[OpKind] = OpKind.CREDIT
    points: int
    reason: str
    expires_at: datetime | None = None
    # The caller is a `service` key: the credit counts against the program's
    # service_credit_points_per_day limit. Who calls is not part of the request, so it is
    # not in the request hash.
    by_service: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Debit(AccountCommand):
    kind: ClassVar[OpKind] = OpKind.DEBIT
    points: int
    reason: str
    # Set by the redemption saga on its debit: the redemption paid (it counts against the
    # program's redemptions_per_hour limit, and a review of it resumes the saga). Not in
    # the request hash (the saga hashes the redemption id).
    redemption_id: uuid.UUID | None = None
    reward_id: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Refund(AccountCommand):
    """Give back everything a debit took, into the lots it took it from (the saga's
    compensation)."""

    kind: ClassVar[OpKind] = OpKind.REFUND
    points: int
    reason: str
    refund_of: uuid.UUID


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyEvent(AccountCommand):
    kind: ClassVar[OpKind] = OpKind.EVENT
    event: EventIn
    dry_run: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Reverse(AccountCommand):
    """Claw back what an event earned, in proportion to `amount` (None: all of it)."""

    kind: ClassVar[OpKind] = OpKind.REVERSE
    event_id: str
    amount: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Confirm(AccountCommand):
    kind: ClassVar[OpKind] = OpKind.CONFIRM
    event_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Expire(AccountCommand):
    """Write off the account's points past expiry (the shard's expiry pass)."""

    kind: ClassVar[OpKind] = OpKind.EXPIRE


@dataclass(frozen=True, slots=True, kw_only=True)
class Retier(AccountCommand):
    """Re-decide the member's tier without an event (the shard's tier pass)."""

    kind: ClassVar[OpKind] = OpKind.RETIER


@dataclass(frozen=True, slots=True, kw_only=True)
class DecideReview(AccountCommand):
    """An operator's decision on a review of this member (`decision`: approve or reject).
    Idempotent by the review's state, not by a key: deciding again the same way answers the
    decision as it was made."""

    kind: ClassVar[OpKind] = OpKind.DECIDE
    review_id: uuid.UUID
    decision: str
    reason: str


# --------------------------------------------------------------------- reward shards


@dataclass(frozen=True, slots=True, kw_only=True)
class RewardCommand:
    """An operation on one reward; `(program_id, reward_id)` picks the reward shard."""

    kind: ClassVar[OpKind]
    program_id: str
    reward_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PutReward(RewardCommand):
    kind: ClassVar[OpKind] = OpKind.PUT_REWARD
    name: str
    cost_points: int
    # Units stocked in all; None: unlimited.
    stock: int | None
    per_member_limit: int | None
    active: bool
    fulfillment: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Restock(RewardCommand):
    kind: ClassVar[OpKind] = OpKind.RESTOCK
    quantity: int
    key: str
    request_hash: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Redeem(RewardCommand):
    kind: ClassVar[OpKind] = OpKind.REDEEM
    member_id: str
    quantity: int
    key: str
    request_hash: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel(RewardCommand):
    kind: ClassVar[OpKind] = OpKind.CANCEL
    redemption_id: uuid.UUID


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume(RewardCommand):
    """Drive a redemption on now (its review was decided): answers its view."""

    kind: ClassVar[OpKind] = OpKind.RESUME
    redemption_id: uuid.UUID


# --------------------------------------------------------------------- on the wire
#
# Ray pickles every call with cloudpickle, whose per-object hook runs in Python for any
# instance of a class (a dataclass costs ~2 µs to pickle and ~1.5 µs to unpickle, ten times
# a tuple of builtins; measured here). Across the process boundary a command therefore
# travels as `(kind, values)` and an outcome as `(code, body, replayed)`: builtins only. Both
# ends convert at the edge (ShardClient, the shard actors), so everything else handles the
# typed values.

CommandT = AccountCommand | RewardCommand
Wire = tuple[Any, ...]

_COMMAND_TYPES: dict[str, type[Any]] = {
    cls.kind.value: cls
    for cls in (
        Credit,
        Debit,
        Refund,
        ApplyEvent,
        Reverse,
        Confirm,
        Expire,
        Retier,
        DecideReview,
        PutReward,
        Restock,
        Redeem,
        Cancel,
        Resume,
    )
}
_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in _COMMAND_TYPES.values()
}
_VALUES = {cls: attrgetter(*names) for cls, names in _FIELD_NAMES.items()}
_EVENT_VALUES = attrgetter("event_id", "member_id", "type", "occurred_at", "attributes")
_CODES: dict[str, Code] = {code.value: code for code in Code}
assert set(_COMMAND_TYPES) == {kind.value for kind in OpKind}


def command_to_wire(command: CommandT, request_id: str = "") -> Wire:
    """`(kind, values, request_id)`: the request id travels beside the command, for the
    shard's log lines (actors/tracing.py); it is no part of the command."""
    values = _VALUES[type(command)](command)
    if isinstance(command, ApplyEvent):  # the event, a dataclass too, as a tuple
        values = tuple(_EVENT_VALUES(v) if isinstance(v, EventIn) else v for v in values)
    return (command.kind.value, values, request_id)


def request_id_of_wire(wire: Wire) -> str:
    """The request id a command in wire form came with ("" when none)."""
    return str(wire[2]) if len(wire) > 2 else ""


def command_from_wire(wire: Wire) -> Any:
    kind, values = wire[0], wire[1]
    cls = _COMMAND_TYPES[kind]
    named = dict(zip(_FIELD_NAMES[cls], values, strict=True))
    if cls is ApplyEvent:
        named["event"] = EventIn(*named["event"])
    command = cls(**named)
    assert command.kind.value == kind
    return command


def outcome_to_wire(outcome: Outcome) -> Wire:
    return (outcome.code.value, outcome.body, outcome.replayed)


def outcome_from_wire(wire: Wire) -> Outcome:
    code, body, replayed = wire
    return Outcome(_CODES[code], body, replayed)
