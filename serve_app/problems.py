"""RFC 9457 problem details: the one place a `Code` becomes an HTTP answer."""

from typing import Any

import orjson
from starlette.responses import JSONResponse, Response

from actors.protocol import Outcome
from domain.errors import NEVER_ANSWERED_CODES, Code

PROBLEM_TYPE_BASE = "https://points.dev/problems/"
RETRY_AFTER_S = 1

# The one place a code becomes an HTTP status. Business refusals are 4xx, never 500;
# overload and dependency outages are 503 (with Retry-After).
HTTP_STATUS: dict[Code, int] = {
    Code.CREATED: 201,
    Code.OK: 200,
    Code.INSUFFICIENT_POINTS: 409,
    Code.OUT_OF_STOCK: 409,
    Code.LIMIT_EXCEEDED: 409,
    Code.REWARD_INACTIVE: 409,
    Code.IDEMPOTENCY_CONFLICT: 409,
    Code.INVALID_STATE: 409,
    Code.NOT_FOUND: 404,
    Code.VALIDATION_ERROR: 422,
    Code.BAD_REQUEST: 400,
    Code.PAYLOAD_TOO_LARGE: 413,
    Code.UNSUPPORTED_MEDIA_TYPE: 415,
    Code.METHOD_NOT_ALLOWED: 405,
    Code.RATE_LIMITED: 429,
    Code.UNAUTHORIZED: 401,
    Code.FORBIDDEN: 403,
    Code.UNAVAILABLE: 503,
    Code.INTERNAL: 500,
}
assert set(HTTP_STATUS) == set(Code) - NEVER_ANSWERED_CODES

TITLES: dict[Code, str] = {
    Code.INSUFFICIENT_POINTS: "Insufficient points",
    Code.OUT_OF_STOCK: "Out of stock",
    Code.LIMIT_EXCEEDED: "Limit exceeded",
    Code.REWARD_INACTIVE: "Reward inactive",
    Code.IDEMPOTENCY_CONFLICT: "Idempotency key reused with a different request",
    Code.INVALID_STATE: "Not allowed in the resource's current state",
    Code.NOT_FOUND: "Not found",
    Code.VALIDATION_ERROR: "Invalid request",
    Code.BAD_REQUEST: "Malformed request",
    Code.PAYLOAD_TOO_LARGE: "Request body too large",
    Code.UNSUPPORTED_MEDIA_TYPE: "Unsupported media type",
    Code.METHOD_NOT_ALLOWED: "Method not allowed",
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


class JsonResponse(JSONResponse):
    """JSON by orjson. A JSONResponse subclass, so FastAPI documents each route's
    response model under application/json (any other class is documented as a string)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def problem_of(outcome: Outcome) -> dict[str, Any]:
    """The problem document of a refused outcome (its body is `detail` and extra fields)."""
    assert not outcome.succeeded
    extra = {k: v for k, v in outcome.body.items() if k != "detail"}
    return problem_body(outcome.code, outcome.detail, **extra)


def outcome_response(outcome: Outcome) -> Response:
    """The one renderer of an operation's outcome: status from its code, JSON or problem."""
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
    if outcome.succeeded:
        return JsonResponse(outcome.body, status_code=HTTP_STATUS[outcome.code], headers=headers)
    extra = {k: v for k, v in outcome.body.items() if k != "detail"}
    return problem_response(outcome.code, outcome.detail, headers=headers, **extra)


def outcome_entry(outcome: Outcome) -> dict[str, Any]:
    """An outcome as one entry of a batch answer: {"status", "body"[, "replayed"]}."""
    status = HTTP_STATUS[outcome.code]
    body = outcome.body if outcome.succeeded else problem_of(outcome)
    entry: dict[str, Any] = {"status": status, "body": body}
    if outcome.replayed:
        entry["replayed"] = True
    return entry
