"""The OpenAPI 3.1 document, exact: security, request bodies, required headers, and every
problem each route can answer.

Routes declare what is theirs with `route(...)` (their own problem codes, the body model
they parse by hand, whether an Idempotency-Key is required); `finish(document)` adds what
every route shares once: the bearer security scheme, one `Problem` schema whose `code` is
an enum of the taxonomy, and the problems common to routes of a kind (401 on every /v1
route; 400, 413, 415 on routes with a body; 422 wherever input is validated; 503
everywhere). FastAPI's own 422 `HTTPValidationError` is replaced: our 422 is a problem.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from pydantic import BaseModel

from domain.errors import NEVER_ANSWERED_CODES, REQUEST_CODES, SUCCESS_CODES, Code
from serve_app import access
from serve_app.problems import HTTP_STATUS, PROBLEM_TYPE_BASE, TITLES

BEARER = "bearer"
PROBLEM = "Problem"
PROBLEM_MEDIA_TYPE = "application/problem+json"
X_PROBLEMS = "x-problem-codes"
X_BODY = "x-body-model"
# Problems a route can give whatever it does.
COMMON_CODES = (Code.UNAVAILABLE,)
# Every route that takes a key: no or a bad key (or too many bad ones: 429), a role
# without the right, over a rate limit.
AUTHENTICATED_CODES = (Code.UNAUTHORIZED, Code.FORBIDDEN, Code.RATE_LIMITED)
X_ROLES = "x-roles"
RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": {
        "description": "the bucket's size (burst) of the limit that refused",
        "schema": {"type": "integer"},
    },
    "RateLimit-Remaining": {
        "description": "tokens left in that bucket (0 when refused)",
        "schema": {"type": "integer"},
    },
    "RateLimit-Reset": {
        "description": "seconds until that bucket is full again",
        "schema": {"type": "integer"},
    },
}
INPUT_CODES = (Code.VALIDATION_ERROR,)
BODY_CODES = (Code.BAD_REQUEST, Code.PAYLOAD_TOO_LARGE, Code.UNSUPPORTED_MEDIA_TYPE)
KEYED_CODES = (Code.BAD_REQUEST,)
# Codes an answer can carry as a problem (never a success, never a stored-only code).
PROBLEM_CODES = tuple(c for c in Code if c not in SUCCESS_CODES | NEVER_ANSWERED_CODES)
assert set(REQUEST_CODES) <= set(PROBLEM_CODES)

IDEMPOTENCY_KEY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
    "description": "Scoped to program and member; a retry with the same key and body "
    "returns the original answer (header Idempotent-Replayed: true), a different body "
    "under the same key is 409 idempotency_conflict.",
}

# Body models registered by routes: their JSON schemas go to components.schemas.
_BODY_MODELS: dict[str, type[BaseModel]] = {}


def route(
    *codes: Code,
    body: type[BaseModel] | None = None,
    keyed: bool = False,
    authenticated: bool = True,
    validated: bool = True,
) -> dict[str, Any]:
    """`openapi_extra` for a route: the problems it can answer beyond the shared ones, the
    body it parses (schema documented, parsed strictly by serve_app/http.py), and whether
    it needs an Idempotency-Key."""
    own = list(codes)
    if authenticated:
        own += AUTHENTICATED_CODES
    if validated:
        own += INPUT_CODES
    extra: dict[str, Any] = {}
    if body is not None:
        _BODY_MODELS[body.__name__] = body
        own += BODY_CODES
        extra["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}}
            },
        }
    if keyed:
        own += KEYED_CODES
        extra["parameters"] = [IDEMPOTENCY_KEY_HEADER]
    own += COMMON_CODES
    assert not set(own) & (SUCCESS_CODES | NEVER_ANSWERED_CODES)
    extra[X_PROBLEMS] = sorted({code.value for code in own})
    if not authenticated:
        extra["security"] = []
    return extra


def problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "title": PROBLEM,
        "description": "RFC 9457 problem details. `code` is stable and machine-readable.",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {"type": "string", "format": "uri"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "code": {"type": "string", "enum": [code.value for code in PROBLEM_CODES]},
            "errors": {
                "type": "array",
                "description": "validation errors, one per field",
                "items": {
                    "type": "object",
                    "properties": {
                        "loc": {"type": "array", "items": {"type": "string"}},
                        "msg": {"type": "string"},
                        "type": {"type": ["string", "null"]},
                    },
                },
            },
        },
        "additionalProperties": True,
    }


def _problem_responses(codes: list[str]) -> dict[str, Any]:
    by_status: dict[int, list[Code]] = defaultdict(list)
    for value in codes:
        code = Code(value)
        by_status[HTTP_STATUS[code]].append(code)
    responses: dict[str, Any] = {}
    for status, members in sorted(by_status.items()):
        names = ", ".join(code.value for code in members)
        content: dict[str, Any] = {
            "schema": {"$ref": f"#/components/schemas/{PROBLEM}"},
            "examples": {
                code.value: {
                    "value": {
                        "type": PROBLEM_TYPE_BASE + code.value,
                        "title": TITLES[code],
                        "status": status,
                        "detail": TITLES[code],
                        "code": code.value,
                    }
                }
                for code in members
            },
        }
        response: dict[str, Any] = {"description": names, "content": {PROBLEM_MEDIA_TYPE: content}}
        if status in (429, 503):
            response["headers"] = {
                "Retry-After": {
                    "description": "seconds to wait before retrying (with the same key)",
                    "schema": {"type": "integer"},
                }
            }
        if status == 429:
            response["headers"].update(RATE_LIMIT_HEADERS)
        responses[str(status)] = response
    return responses


def finish(document: dict[str, Any]) -> dict[str, Any]:
    """Post-process FastAPI's document into the exact contract (idempotent)."""
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas[PROBLEM] = problem_schema()
    for name, model in _BODY_MODELS.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for def_name, definition in schema.pop("$defs", {}).items():
            schemas[def_name] = definition
        schemas[name] = schema
    components["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key: Authorization: Bearer <key>",
        }
    }
    document["security"] = [{BEARER: []}]
    for path, path_item in document.get("paths", {}).items():
        for method, operation in path_item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            responses.pop("422", None)
            codes = operation.pop(X_PROBLEMS, None)
            roles = access.allowed(method.upper(), path)
            if roles:  # who may call it (serve_app/access.py); none listed: no key needed
                operation[X_ROLES] = [role.value for role in access.ROLE_ORDER if role in roles]
                who = ", ".join(operation[X_ROLES])
                operation["description"] = (
                    operation.get("description", "").rstrip() + f"\n\nRoles: {who}."
                ).lstrip()
                if "{program_id}" in path and codes is not None:
                    # A key limited to other programs: 404, as if the program did not exist.
                    codes = sorted({*codes, Code.NOT_FOUND.value})
            if codes is not None:
                operation[X_PROBLEMS] = codes
                responses.update(_problem_responses(codes))
    return document
