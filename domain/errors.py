"""One error taxonomy for the whole product.

Every failure a caller can see is a `Code`. The HTTP layer maps each code to a status once
(`serve_app/problems.py`), and a unit test checks that every code is mapped.
"""

from enum import StrEnum


class Code(StrEnum):
    INSUFFICIENT_POINTS = "insufficient_points"
    OUT_OF_STOCK = "out_of_stock"
    LIMIT_EXCEEDED = "limit_exceeded"
    REWARD_INACTIVE = "reward_inactive"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    # The resource is in a state that does not allow this (e.g. cancelling a failed one).
    INVALID_STATE = "invalid_state"
    NOT_FOUND = "not_found"
    VALIDATION_ERROR = "validation_error"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


# Codes whose operation may be retried with the same idempotency key.
RETRYABLE_CODES = frozenset({Code.UNAVAILABLE, Code.RATE_LIMITED})


class PointsError(Exception):
    """A business outcome or failure with a stable code."""

    def __init__(self, code: Code, detail: str) -> None:
        assert isinstance(code, Code)
        assert detail
        super().__init__(detail)
        self.code = code
        self.detail = detail

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES


# The one place a code becomes an HTTP status. Business outcomes are 4xx, never 500;
# overload and dependency outages are 503 (with Retry-After, set by the HTTP layer).
HTTP_STATUS: dict[Code, int] = {
    Code.INSUFFICIENT_POINTS: 409,
    Code.OUT_OF_STOCK: 409,
    Code.LIMIT_EXCEEDED: 409,
    Code.REWARD_INACTIVE: 409,
    Code.IDEMPOTENCY_CONFLICT: 409,
    Code.INVALID_STATE: 409,
    Code.NOT_FOUND: 404,
    Code.VALIDATION_ERROR: 422,
    Code.PAYLOAD_TOO_LARGE: 413,
    Code.RATE_LIMITED: 429,
    Code.UNAUTHORIZED: 401,
    Code.FORBIDDEN: 403,
    Code.UNAVAILABLE: 503,
    Code.INTERNAL: 500,
}
