"""One closed taxonomy of result codes for the whole product.

Every answer an operation gives, and every code the service stores (idempotent answers,
failed redemptions, dead letters), is a `Code`. Nothing below the HTTP layer knows about
HTTP: the ingress maps each code to a status in exactly one place
(`serve_app/problems.py`), and a unit test checks that every answerable code is mapped.
"""

from enum import StrEnum
from typing import Any


class Code(StrEnum):
    # Successes.
    CREATED = "created"  # something new was recorded (a transaction, a reward, ...)
    OK = "ok"  # answered; nothing new was recorded (a read, a no-op, a state change)
    # Business refusals: the request was understood and refused; nothing moved.
    INSUFFICIENT_POINTS = "insufficient_points"
    OUT_OF_STOCK = "out_of_stock"
    LIMIT_EXCEEDED = "limit_exceeded"
    REWARD_INACTIVE = "reward_inactive"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    # The resource is in a state that does not allow this (e.g. cancelling a failed one).
    INVALID_STATE = "invalid_state"
    NOT_FOUND = "not_found"
    VALIDATION_ERROR = "validation_error"
    # The request itself cannot be read: malformed or ambiguous JSON, a missing or invalid
    # required header (Idempotency-Key), a bad cursor.
    BAD_REQUEST = "bad_request"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    # Transient: retry with the same idempotency key.
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"
    # Stored only, never an answer's code: why a redemption failed after its points were
    # debited (the fulfilment webhook refused it) ...
    FULFILLMENT_FAILED = "fulfillment_failed"
    # ... or why a redemption held for review failed: an operator rejected it ...
    REVIEW_REJECTED = "review_rejected"
    # ... and why the event stream consumer dead-lettered an entry on its own.
    DELIVERIES_EXCEEDED = "deliveries_exceeded"
    ENTRY_DELETED = "entry_deleted"
    # Routing only, never an answer's code: the shard asked does not own the request's slot
    # (it moved, or is moving). Nothing was applied; the router resends the request to the
    # slot's owner, and answers `unavailable` if none takes it within its retry budget.
    MOVED = "moved"


SUCCESS_CODES = frozenset({Code.CREATED, Code.OK})
# Codes whose operation may be retried with the same idempotency key.
RETRYABLE_CODES = frozenset({Code.UNAVAILABLE, Code.RATE_LIMITED})
# Codes that are stored but never the code of an answer.
STORED_ONLY_CODES = frozenset(
    {Code.FULFILLMENT_FAILED, Code.REVIEW_REJECTED, Code.DELIVERIES_EXCEEDED, Code.ENTRY_DELETED}
)
# Refusals a client can cause only through the HTTP request itself (never an operation's).
REQUEST_CODES = frozenset(
    {
        Code.BAD_REQUEST,
        Code.PAYLOAD_TOO_LARGE,
        Code.UNSUPPORTED_MEDIA_TYPE,
        Code.METHOD_NOT_ALLOWED,
        Code.RATE_LIMITED,
        Code.UNAUTHORIZED,
        Code.FORBIDDEN,
    }
)
# Codes that pass between actors only (the router turns them into an answer).
ROUTING_CODES = frozenset({Code.MOVED})
# Codes no HTTP answer ever has.
NEVER_ANSWERED_CODES = STORED_ONLY_CODES | ROUTING_CODES
assert not SUCCESS_CODES & (RETRYABLE_CODES | NEVER_ANSWERED_CODES)


class PointsError(Exception):
    """A business outcome or failure with a stable code."""

    def __init__(
        self,
        code: Code,
        detail: str,
        hints: dict[str, str] | None = None,
        *,
        extra: dict[str, Any] | None = None,
    ) -> None:
        assert isinstance(code, Code)
        assert code not in SUCCESS_CODES and code not in STORED_ONLY_CODES
        assert detail
        super().__init__(detail)
        self.code = code
        self.detail = detail
        # Transport-neutral hints the edge may render (rate-limit figures, retry after):
        # serve_app turns them into headers.
        self.hints = hints or {}
        # Fields the answer's body carries besides `detail` (e.g. `limit` of a
        # limit_exceeded refusal: which limit, its value, its window).
        self.extra = extra or {}
        assert "detail" not in self.extra

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES
