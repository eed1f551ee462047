"""Rule set versions of a program (a PUT adds a version; it never edits an old one)."""

from fastapi import APIRouter, Request
from starlette.responses import Response

from domain.errors import Code
from domain.rules import compile_rule_set, rule_set_to_json
from serve_app.http import audit_entry, authenticate, backend, body_of, not_found
from serve_app.openapi import route
from serve_app.problems import JsonResponse
from serve_app.responses import RuleSet, RuleSets
from serve_app.routes.params import LIMIT_DEFAULT, Limit, ProgramId
from serve_app.schemas import RulesPut

router = APIRouter(tags=["rules"])


@router.put(
    "/v1/programs/{program_id}/rules",
    response_model=RuleSet,
    status_code=201,
    openapi_extra=route(Code.NOT_FOUND, body=RulesPut),
)
async def put_rules(program_id: ProgramId, request: Request) -> Response:
    """A new version of the program's rule set, in effect from `effective_from` (now)."""
    caller = await authenticate(request)
    body = await body_of(request, RulesPut)
    compiled = compile_rule_set(body.rules, 1)  # validates; raises validation_error
    wiring = backend(request)
    rule_set = await (await wiring.repo()).add_rule_set(
        program_id,
        rule_set_to_json(compiled),
        body.effective_from,
        audit_entry(caller, "rules.put", program_id, program_id),
    )
    if rule_set is None:
        raise not_found("program", program_id)
    await wiring.forget_program(program_id)
    return JsonResponse(rule_set, status_code=201)


@router.get(
    "/v1/programs/{program_id}/rules",
    response_model=RuleSets,
    openapi_extra=route(Code.NOT_FOUND),
)
async def list_rules(
    program_id: ProgramId, request: Request, limit: Limit = LIMIT_DEFAULT
) -> Response:
    """Rule set versions, newest first (a version may start later: effective_from)."""
    await authenticate(request)
    repo = await backend(request).repo()
    if await repo.get_program(program_id) is None:
        raise not_found("program", program_id)
    return JsonResponse({"items": await repo.list_rule_sets(program_id, limit)})
