"""RFC 9457 problem details: the one place a `Code` becomes an HTTP answer."""

from typing import Any

import orjson
from starlette.responses import Response

from domain.errors import HTTP_STATUS, Code

PROBLEM_TYPE_BASE = "https://points.dev/problems/"
RETRY_AFTER_S = 1

TITLES: dict[Code, str] = {
    Code.INSUFFICIENT_POINTS: "Insufficient points",
    Code.OUT_OF_STOCK: "Out of stock",
    Code.LIMIT_EXCEEDED: "Limit exceeded",
    Code.REWARD_INACTIVE: "Reward inactive",
    Code.IDEMPOTENCY_CONFLICT: "Idempotency key reused with a different request",
    Code.INVALID_STATE: "Not allowed in the resource's current state",
    Code.NOT_FOUND: "Not found",
    Code.VALIDATION_ERROR: "Invalid request",
    Code.PAYLOAD_TOO_LARGE: "Request body too large",
    Code.RATE_LIMITED: "Too many requests",
    Code.UNAUTHORIZED: "Missing or invalid API key",
    Code.FORBIDDEN: "Forbidden",
    Code.UNAVAILABLE: "Temporarily unavailable",
    Code.INTERNAL: "Internal error",
}


def problem_body(code: Code, detail: str, **extra: Any) -> dict[str, Any]:
    status = HTTP_STATUS[code]
    return {
        "type": PROBLEM_TYPE_BASE + code.value,
        "title": TITLES[code],
        "status": status,
        "detail": detail,
        "code": code.value,
        **extra,
    }


def problem_response(
    code: Code, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    status = HTTP_STATUS[code]
    all_headers = dict(headers or {})
    if status in (429, 503):
        all_headers.setdefault("Retry-After", str(RETRY_AFTER_S))
    return Response(
        orjson.dumps(problem_body(code, detail, **extra)),
        status_code=status,
        media_type="application/problem+json",
        headers=all_headers,
    )
