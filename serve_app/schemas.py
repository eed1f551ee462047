"""Request bodies. Strict: integers are integers (no floats, no strings), unknown fields refused."""

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)

from actors.routing import SLOTS
from domain.limits import (
    EVENT_TYPE_PATTERN,
    EVENTS_PER_BATCH_MAX,
    EXPIRY_HORIZON_S,
    ID_LENGTH_MAX,
    ID_PATTERN,
    POINTS_PER_OPERATION_MAX,
    PROGRAM_NAME_LENGTH_MAX,
    REASON_LENGTH_MAX,
    RULES_PER_SET_MAX,
    SIMULATION_TOP_MEMBERS_DEFAULT,
    SIMULATION_TOP_MEMBERS_MAX,
)
from domain.rewards import QUANTITY_MAX, STOCK_MAX

EFFECTIVE_FROM_YEAR_MAX = 9000
# PostgreSQL text cannot hold NUL; refuse it here rather than fail a whole group commit.
NO_NUL = r"^[^\x00]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _text_only(value: object) -> object:
    """Bodies are validated from parsed JSON (serve_app/http.py), where pydantic's lax mode
    would read a number as a Unix time: a date-time is RFC 3339 text, nothing else."""
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 date-time string")
    return value


# An RFC 3339 date-time with a zone, given as a JSON string.
JsonDateTime = Annotated[AwareDatetime, BeforeValidator(_text_only)]


class ProgramPut(_Strict):
    name: str = Field(min_length=1, max_length=PROGRAM_NAME_LENGTH_MAX, pattern=NO_NUL)
    # Time zone, expiry, pending, debt, caps and tiers (see docs/earning.md); omitted: kept.
    policy: dict[str, Any] | None = None


class RulesPut(_Strict):
    rules: list[dict[str, Any]] = Field(max_length=RULES_PER_SET_MAX)
    # Events that occur from then on use this version (default: now).
    effective_from: JsonDateTime | None = None

    @field_validator("effective_from")
    @classmethod
    def _effective_from_in_range(cls, value: datetime | None) -> datetime | None:
        # Years 1970..9000 in UTC: PostgreSQL and Python both hold them (year 1 with a
        # +14:00 offset, or 9999-12-31 with -14:00, does not fit a datetime in UTC).
        if value is not None:
            try:
                year = value.astimezone(UTC).year
            except OverflowError:
                year = 0
            if not 1970 <= year <= EFFECTIVE_FROM_YEAR_MAX:
                raise ValueError(f"effective_from must be in years 1970..{EFFECTIVE_FROM_YEAR_MAX}")
        return value


def _year_in_range(value: datetime, field: str) -> datetime:
    # Years 1970..9000 in UTC: PostgreSQL and Python both hold them (see RulesPut).
    try:
        year = value.astimezone(UTC).year
    except OverflowError:
        year = 0
    if not 1970 <= year <= EFFECTIVE_FROM_YEAR_MAX:
        raise ValueError(f"{field} must be in years 1970..{EFFECTIVE_FROM_YEAR_MAX}")
    return value


class SimulationIn(_Strict):
    """A what-if replay: the candidate rules (as PUT /rules takes them) over the events that
    occurred in [from, to)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False)
    rules: list[dict[str, Any]] = Field(max_length=RULES_PER_SET_MAX)
    from_: JsonDateTime = Field(alias="from", description="window start (inclusive)")
    to: JsonDateTime = Field(description="window end (exclusive)")
    top_members: StrictInt = Field(
        default=SIMULATION_TOP_MEMBERS_DEFAULT,
        ge=1,
        le=SIMULATION_TOP_MEMBERS_MAX,
        description="how many of the most affected members to list",
    )

    @field_validator("from_", "to")
    @classmethod
    def _in_range(cls, value: datetime) -> datetime:
        return _year_in_range(value, "from and to")


class ReverseIn(_Strict):
    # Part of the event's `amount` attribute refunded (int minor units or decimal string);
    # omitted: the whole event.
    amount: StrictInt | str | None = None


class CreditIn(_Strict):
    points: StrictInt = Field(ge=1, le=POINTS_PER_OPERATION_MAX)
    reason: str = Field(min_length=1, max_length=REASON_LENGTH_MAX, pattern=NO_NUL)
    expires_at: JsonDateTime | None = None

    @field_validator("expires_at")
    @classmethod
    def _bounded(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.year < 2000:
            raise ValueError("expires_at must be a date after 2000-01-01")
        from datetime import UTC

        if value - datetime.now(UTC) > timedelta(seconds=EXPIRY_HORIZON_S):
            raise ValueError("expires_at must be within 100 years")
        return value.astimezone(UTC)


class DebitIn(_Strict):
    points: StrictInt = Field(ge=1, le=POINTS_PER_OPERATION_MAX)
    reason: str = Field(min_length=1, max_length=REASON_LENGTH_MAX, pattern=NO_NUL)


class FulfillmentNone(_Strict):
    type: Literal["none"]


class FulfillmentWebhook(_Strict):
    type: Literal["webhook"]
    # Visible ASCII only (percent-encode the rest): the same set in Python's regex and in
    # JSON Schema's (ECMA-262) regex, whose \s differ (U+0085 is whitespace in one only).
    url: str = Field(min_length=8, max_length=2000, pattern=r"^https?://[!-~]+$")


class RewardPut(_Strict):
    name: str = Field(min_length=1, max_length=PROGRAM_NAME_LENGTH_MAX, pattern=NO_NUL)
    cost_points: StrictInt = Field(ge=1, le=POINTS_PER_OPERATION_MAX)
    # Units stocked in all (null: unlimited). Restocks add to it; redemptions never change
    # it: the units left are `stock` in the reward's view.
    stock: StrictInt | None = Field(ge=0, le=STOCK_MAX)
    per_member_limit: StrictInt | None = Field(default=None, ge=1, le=QUANTITY_MAX)
    active: StrictBool = True
    fulfillment: Annotated[FulfillmentNone | FulfillmentWebhook, Field(discriminator="type")] = (
        FulfillmentNone(type="none")
    )


class RestockIn(_Strict):
    quantity: StrictInt = Field(ge=1, le=QUANTITY_MAX)


class RedemptionIn(_Strict):
    member_id: str = Field(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN)
    reward_id: str = Field(min_length=1, max_length=ID_LENGTH_MAX, pattern=ID_PATTERN)
    quantity: StrictInt = Field(default=1, ge=1, le=QUANTITY_MAX)


class ReviewDecisionIn(_Strict):
    """An operator's decision on a review: why (kept with the review)."""

    reason: str = Field(min_length=1, max_length=REASON_LENGTH_MAX, pattern=NO_NUL)


class EventBody(_Strict):
    """A business event (documentation of what domain.events.parse_event accepts; that
    function is the one parser of events, for the API and the Redis stream alike)."""

    id: str = Field(pattern=ID_PATTERN, max_length=ID_LENGTH_MAX, description="dedup key")
    member_id: str = Field(pattern=ID_PATTERN, max_length=ID_LENGTH_MAX)
    type: str = Field(pattern=EVENT_TYPE_PATTERN, description="a type the program's rules know")
    occurred_at: JsonDateTime = Field(
        description="RFC 3339; at most 5 minutes ahead, at most 35 days back"
    )
    attributes: dict[str, Any] | None = Field(
        default=None, description="amounts as integer minor units or decimal strings"
    )


class EventBatchIn(_Strict):
    # Each item is an event; an item that is not a valid event gets its own 422 result and
    # the others still apply, so the batch itself takes any JSON value per item.
    events: list[EventBody | Any] = Field(min_length=1, max_length=EVENTS_PER_BATCH_MAX)


# The longest release name an upgrade takes.
VERSION_LENGTH_MAX = 64


class TopologyPut(_Strict):
    """A move: the shard counts to move to (`points scale`; omitted: the current count);
    with `version`, an upgrade: every slot moves to a new generation of shards that run the
    code of the ingress taking this request, first only `canary_slots` of each kind (then
    the move pauses: `action` promote or rollback). `action` alone acts on a paused canary."""

    account_shards: StrictInt | None = Field(default=None, ge=1, le=SLOTS)
    reward_shards: StrictInt | None = Field(default=None, ge=1, le=SLOTS)
    version: str | None = Field(
        default=None, min_length=1, max_length=VERSION_LENGTH_MAX, pattern=r"^[A-Za-z0-9._+-]+$"
    )
    canary_slots: StrictInt | None = Field(default=None, ge=1, le=SLOTS)
    action: Literal["promote", "rollback"] | None = None

    @model_validator(mode="after")
    def _one_kind_of_request(self) -> "TopologyPut":
        if self.canary_slots is not None and self.version is None:
            raise ValueError("canary_slots needs a version (a canary is part of an upgrade)")
        if self.action is not None and (
            self.version or self.account_shards or self.reward_shards or self.canary_slots
        ):
            raise ValueError("action acts on the paused canary alone: give no other field")
        return self


class RateLimitIn(_Strict):
    per_s: StrictInt = Field(ge=1, le=1_000_000, description="tokens added per second")
    burst: StrictInt = Field(ge=1, le=10_000_000, description="bucket size")


class KeyIn(_Strict):
    name: str = Field(min_length=1, max_length=200, pattern=NO_NUL)
    role: Literal["admin", "operator", "service", "viewer"]
    programs: list[Annotated[str, Field(pattern=ID_PATTERN, max_length=ID_LENGTH_MAX)]] | None = (
        Field(default=None, min_length=1, max_length=1000, description="null: every program")
    )
    expires_at: JsonDateTime | None = Field(default=None, description="null: never")
    rate_limit: RateLimitIn | None = Field(default=None, description="null: the default")

    @field_validator("expires_at")
    @classmethod
    def _in_the_future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value <= datetime.now(UTC):
            raise ValueError("expires_at must be in the future")
        return value


class ArmIn(_Strict):
    name: str = Field(min_length=1, max_length=64)
    rule_version: int = Field(ge=1)
    weight: int = Field(ge=1, le=100)


class ExperimentPut(_Strict):
    """Arms (the first is the control; weights add up to 100) and the window."""

    arms: list[ArmIn] = Field(min_length=2, max_length=10)
    starts_at: JsonDateTime
    ends_at: JsonDateTime


class ExperimentEnd(_Strict):
    # An arm whose rules become a new rule set version, in effect now; null: none.
    promote: str | None = None
