"""The OpenAPI document is the contract: security, bodies, headers, and problems that agree
with the one code -> status map and with the exception handlers."""

from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from domain.errors import NEVER_ANSWERED_CODES, SUCCESS_CODES, Code, PointsError
from serve_app.app import STARLETTE_CODES, app
from serve_app.http import InvalidBody
from serve_app.openapi import PROBLEM_CODES, X_PROBLEMS
from serve_app.problems import HTTP_STATUS

DOCUMENT = app.openapi()
OPERATIONS = [
    (path, method, operation)
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
]
KEYED = {
    ("/v1/programs/{program_id}/members/{member_id}/credits", "post"),
    ("/v1/programs/{program_id}/members/{member_id}/debits", "post"),
    ("/v1/programs/{program_id}/rewards/{reward_id}/restock", "post"),
    ("/v1/programs/{program_id}/redemptions", "post"),
    ("/v1/programs/{program_id}/events/{event_id}/reverse", "post"),
}
WITH_BODY = KEYED | {
    ("/v1/programs/{program_id}", "put"),
    ("/v1/programs/{program_id}/rules", "put"),
    ("/v1/programs/{program_id}/rewards/{reward_id}", "put"),
    ("/v1/programs/{program_id}/events", "post"),
    ("/v1/programs/{program_id}/events/batch", "post"),
}


def test_the_document_is_openapi_3_1_with_a_bearer_scheme() -> None:
    assert DOCUMENT["openapi"].startswith("3.1")
    assert DOCUMENT["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: Authorization: Bearer <key>",
    }
    assert DOCUMENT["security"] == [{"bearer": []}]
    for path, _, operation in OPERATIONS:
        public = path in ("/healthz", "/readyz")
        assert ("security" in operation and operation["security"] == []) is public, path
        # Auth is the security scheme, never a plain header parameter.
        names = {p["name"].lower() for p in operation.get("parameters", [])}
        assert "authorization" not in names, path


def test_the_problem_schema_enumerates_the_taxonomy() -> None:
    problem = DOCUMENT["components"]["schemas"]["Problem"]
    assert set(problem["properties"]["code"]["enum"]) == {c.value for c in PROBLEM_CODES}
    assert set(PROBLEM_CODES) == set(Code) - SUCCESS_CODES - NEVER_ANSWERED_CODES
    assert "HTTPValidationError" not in DOCUMENT["components"]["schemas"]


@pytest.mark.parametrize(("path", "method", "operation"), OPERATIONS, ids=lambda v: str(v)[:60])
def test_each_route_documents_its_answers_exactly(
    path: str, method: str, operation: dict[str, Any]
) -> None:
    responses = operation["responses"]
    successes = [status for status in responses if status.startswith("2")]
    assert successes, path
    for status in successes:
        schema = responses[status]["content"]["application/json"]["schema"]
        assert "$ref" in schema, (path, status)
        name = schema["$ref"].rsplit("/", 1)[1]
        assert DOCUMENT["components"]["schemas"][name].get("examples"), name
    codes = [Code(value) for value in operation[X_PROBLEMS]]
    problem_statuses = {str(HTTP_STATUS[code]) for code in codes}
    documented = {s for s in responses if not s.startswith("2")}
    # Every problem the route declares is documented under its status, and nothing else.
    assert documented == problem_statuses, path
    for status in documented:
        content = responses[status]["content"]
        assert list(content) == ["application/problem+json"], (path, status)
        assert content["application/problem+json"]["schema"] == {
            "$ref": "#/components/schemas/Problem"
        }
        examples = content["application/problem+json"]["examples"]
        assert {e["value"]["code"] for e in examples.values()} == {
            c.value for c in codes if str(HTTP_STATUS[c]) == status
        }
        for example in examples.values():
            assert example["value"]["status"] == int(status)
    if path.startswith("/v1/"):
        assert Code.UNAUTHORIZED in codes and Code.UNAVAILABLE in codes


@pytest.mark.parametrize(("path", "method"), sorted(WITH_BODY))
def test_routes_that_take_a_body_document_it(path: str, method: str) -> None:
    operation = DOCUMENT["paths"][path][method]
    body = operation["requestBody"]
    assert body["required"] is True
    ref = body["content"]["application/json"]["schema"]["$ref"]
    assert ref.rsplit("/", 1)[1] in DOCUMENT["components"]["schemas"]
    codes = set(operation[X_PROBLEMS])
    assert {"bad_request", "payload_too_large", "unsupported_media_type"} <= codes


def test_the_idempotency_key_is_a_required_header_exactly_where_it_is_required() -> None:
    for path, method, operation in OPERATIONS:
        headers = [p for p in operation.get("parameters", []) if p["name"] == "Idempotency-Key"]
        if (path, method) in KEYED:
            assert len(headers) == 1 and headers[0]["required"] is True, path
            assert headers[0]["in"] == "header"
        else:
            assert not headers, path


def test_exception_handlers_and_the_map_agree() -> None:
    handled = set(app.exception_handlers)
    for kind in (PointsError, InvalidBody, RequestValidationError, StarletteHTTPException):
        assert kind in handled, kind
    assert Exception in handled
    for status, code in STARLETTE_CODES.items():
        assert HTTP_STATUS[code] == status
    # One map: every answerable code has exactly one status; success codes are 2xx.
    for code in Code:
        if code in NEVER_ANSWERED_CODES:
            assert code not in HTTP_STATUS
        elif code in SUCCESS_CODES:
            assert 200 <= HTTP_STATUS[code] < 300
        else:
            assert 400 <= HTTP_STATUS[code] < 600
