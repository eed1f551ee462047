"""Programs: create or update (with their policy), read, list; their books (reconciliation)."""

from fastapi import APIRouter, Request
from starlette.responses import Response

from domain import reconciliation
from domain.errors import Code
from domain.policy import parse_policy, policy_to_json
from serve_app.http import audit_entry, authenticate, backend, body_of, cursor_errors, not_found
from serve_app.openapi import route
from serve_app.problems import JsonResponse
from serve_app.responses import LedgerSummary, Program, ProgramPage
from serve_app.routes.params import LIMIT_DEFAULT, Cursor, Limit, Moment, ProgramId
from serve_app.schemas import ProgramPut

router = APIRouter(tags=["programs"])


def program_view(program: dict[str, object]) -> dict[str, object]:
    """The program with its policy in full (defaults filled in)."""
    policy = program.get("policy") or None
    assert policy is None or isinstance(policy, dict)
    return {**program, "policy": policy_to_json(parse_policy(policy))}


@router.get("/v1/programs", response_model=ProgramPage, openapi_extra=route())
async def list_programs(
    request: Request, limit: Limit = LIMIT_DEFAULT, cursor: Cursor = None
) -> Response:
    """Every program, by id, keyset-paginated."""
    caller = await authenticate(request)
    repo = await backend(request).repo()
    with cursor_errors():  # the repository decodes the cursor
        items, next_cursor = await repo.list_programs(limit, cursor, within=caller.programs)
    return JsonResponse({"items": [program_view(p) for p in items], "next_cursor": next_cursor})


@router.put(
    "/v1/programs/{program_id}",
    response_model=Program,
    status_code=201,
    responses={200: {"model": Program, "description": "the program existed: updated"}},
    openapi_extra=route(body=ProgramPut),
)
async def put_program(program_id: ProgramId, request: Request) -> Response:
    """Create a program (201), or update its name and policy (200)."""
    caller = await authenticate(request)
    body = await body_of(request, ProgramPut)
    policy = None if body.policy is None else policy_to_json(parse_policy(body.policy))
    wiring = backend(request)
    created, program = await (await wiring.repo()).put_program(
        program_id, body.name, policy, audit_entry(caller, "program.put", program_id, program_id)
    )
    if policy is not None:
        await wiring.forget_program(program_id)
    return JsonResponse(program_view(program), status_code=201 if created else 200)


@router.get(
    "/v1/programs/{program_id}", response_model=Program, openapi_extra=route(Code.NOT_FOUND)
)
async def get_program(program_id: ProgramId, request: Request) -> Response:
    await authenticate(request)
    program = await (await backend(request).repo()).get_program(program_id)
    if program is None:
        raise not_found("program", program_id)
    return JsonResponse(program_view(program))


@router.get(
    "/v1/programs/{program_id}/ledger/summary",
    response_model=LedgerSummary,
    openapi_extra=route(Code.NOT_FOUND),
)
async def ledger_summary(program_id: ProgramId, request: Request, at: Moment = None) -> Response:
    """The program's books for reconciliation, as of `at` (default: now), from the ledger:
    what members hold (spendable net of debt, pending, held) against the system accounts'
    negation (`balanced`), what flowed (issued, redeemed, expired, reversed, ...), and, now,
    the accounts table's sums (`agree_with_ledger`)."""
    await authenticate(request)
    found = await (await backend(request).repo()).ledger_summary(program_id, at)
    if found is None:
        raise not_found("program", program_id)
    return JsonResponse(
        reconciliation.summary(program_id, at, found["legs"], found["kinds"], found["accounts"])
    )
