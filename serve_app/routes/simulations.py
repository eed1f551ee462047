"""What-if replays of candidate earning rules (docs/simulations.md).

POST answers 202 at once with the queued job (and its Location); the replay runs in a Ray
task started by this replica (actors/simulation_job.py) and writes its progress and result
to the job's row, so a GET on any replica shows them.
"""

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from domain.errors import Code, PointsError
from domain.rules import compile_rule_set, rule_set_to_json
from domain.simulation import check_window
from serve_app.http import authenticate, backend, body_of, not_found
from serve_app.openapi import route
from serve_app.problems import JsonResponse
from serve_app.responses import SimulationJob
from serve_app.routes.params import ProgramId
from serve_app.schemas import SimulationIn

router = APIRouter(tags=["simulations"])

SimulationId = Annotated[uuid.UUID, Path(description="the id POST answered")]
LOCATION_HEADER = {
    "Location": {
        "description": "the job's URL (GET it for status, progress and result)",
        "schema": {"type": "string"},
    }
}


def job_path(program_id: str, simulation_id: str) -> str:
    return f"/v1/programs/{program_id}/simulations/{simulation_id}"


@router.post(
    "/v1/programs/{program_id}/simulations",
    response_model=SimulationJob,
    status_code=202,
    responses={202: {"description": "the job, queued", "headers": LOCATION_HEADER}},
    openapi_extra=route(Code.NOT_FOUND, body=SimulationIn),
)
async def create_simulation(program_id: ProgramId, request: Request) -> Response:
    """Replay the events that occurred in [from, to) through the candidate rules (nothing
    is written to the ledger) and compare with what they were awarded. A window reversed,
    longer than 366 days or with no event, or an invalid rule set: 422."""
    caller = await authenticate(request)
    body = await body_of(request, SimulationIn)
    check_window(body.from_, body.to)
    candidate = compile_rule_set(body.rules, 1)  # validates; raises validation_error
    wiring = backend(request)
    repo = await wiring.repo()
    if await repo.get_program(program_id) is None:
        raise not_found("program", program_id)
    if not await wiring.simulations.has_events(program_id, body.from_, body.to):
        raise PointsError(
            Code.VALIDATION_ERROR,
            "no event of this program occurred in the window: nothing to replay",
        )
    job = await wiring.simulations.create(
        program_id,
        rule_set_to_json(candidate),
        body.from_,
        body.to,
        body.top_members,
        caller.key_id,
    )
    wiring.start_simulation(job["simulation_id"])
    return JsonResponse(
        job,
        status_code=202,
        headers={"Location": job_path(program_id, job["simulation_id"])},
    )


@router.get(
    "/v1/programs/{program_id}/simulations/{simulation_id}",
    response_model=SimulationJob,
    openapi_extra=route(Code.NOT_FOUND),
)
async def get_simulation(
    program_id: ProgramId, simulation_id: SimulationId, request: Request
) -> Response:
    """A job's status (queued, running, done, failed), progress and, once done, result."""
    await authenticate(request)
    wiring = backend(request)
    await wiring.repo()
    job = await wiring.simulations.get(program_id, simulation_id)
    if job is None:
        raise not_found("simulation", simulation_id)
    return JsonResponse(job)
