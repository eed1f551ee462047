"""Experiments of earning rules (domain/experiments.py): create, read, end (promoting an
arm's rules), and results per arm against the control."""

from datetime import datetime

from fastapi import APIRouter, Request
from starlette.responses import Response

from domain.errors import Code
from domain.experiments import ArmStats, arm_results, parse_experiment
from serve_app.http import audit_entry, authenticate, backend, body_of, not_found
from serve_app.openapi import route
from serve_app.problems import JsonResponse
from serve_app.responses import Experiment, ExperimentResults, Experiments
from serve_app.routes.params import ProgramId
from serve_app.schemas import ExperimentEnd, ExperimentPut

router = APIRouter(tags=["experiments"])

E = "/v1/programs/{program_id}/experiments/{experiment_id}"


@router.put(
    E,
    response_model=Experiment,
    status_code=201,
    openapi_extra=route(Code.NOT_FOUND, Code.INVALID_STATE, body=ExperimentPut),
)
async def put_experiment(program_id: ProgramId, experiment_id: str, request: Request) -> Response:
    """Create an experiment (201); the same body again answers it (200). Members are
    assigned to arms by a stable hash; their events inside the window are scored by their
    arm's rule set version."""
    caller = await authenticate(request)
    body = await body_of(request, ExperimentPut)
    wiring = backend(request)
    versions = await wiring.experiments.rule_versions(program_id)
    if versions is None:
        raise not_found("program", program_id)
    experiment = parse_experiment(
        program_id,
        experiment_id,
        [arm.model_dump() for arm in body.arms],
        body.starts_at,
        body.ends_at,
        versions,
    )
    view, created = await wiring.experiments.put(
        experiment, audit_entry(caller, "experiment.put", program_id, experiment_id)
    )
    if created:
        await wiring.forget_program(program_id)
    return JsonResponse(view, status_code=201 if created else 200)


@router.get(
    "/v1/programs/{program_id}/experiments",
    response_model=Experiments,
    openapi_extra=route(Code.NOT_FOUND),
)
async def list_experiments(program_id: ProgramId, request: Request) -> Response:
    """The program's experiments, newest first."""
    await authenticate(request)
    wiring = backend(request)
    if await wiring.experiments.rule_versions(program_id) is None:
        raise not_found("program", program_id)
    return JsonResponse({"items": await wiring.experiments.list(program_id)})


@router.get(E, response_model=Experiment, openapi_extra=route(Code.NOT_FOUND))
async def get_experiment(program_id: ProgramId, experiment_id: str, request: Request) -> Response:
    await authenticate(request)
    found = await backend(request).experiments.get(program_id, experiment_id)
    if found is None:
        raise not_found("experiment", experiment_id)
    return JsonResponse(found)


@router.post(
    E + "/end",
    response_model=Experiment,
    openapi_extra=route(Code.NOT_FOUND, Code.INVALID_STATE, body=ExperimentEnd),
)
async def end_experiment(program_id: ProgramId, experiment_id: str, request: Request) -> Response:
    """End the experiment now; `promote` an arm to make its rules a new rule set version
    in effect from now. Again with the same promotion: answered as it is."""
    caller = await authenticate(request)
    body = await body_of(request, ExperimentEnd)
    wiring = backend(request)
    ended = await wiring.experiments.end(
        program_id,
        experiment_id,
        body.promote,
        audit_entry(caller, "experiment.end", program_id, experiment_id),
    )
    if ended is None:
        raise not_found("experiment", experiment_id)
    await wiring.forget_program(program_id)
    return JsonResponse(ended)


@router.get(E + "/results", response_model=ExperimentResults, openapi_extra=route(Code.NOT_FOUND))
async def experiment_results(
    program_id: ProgramId, experiment_id: str, request: Request
) -> Response:
    """Per arm: members, events, points per member, redemption rate (completed
    redemptions inside the window), and against the control the differences with their
    95% confidence intervals."""
    await authenticate(request)
    wiring = backend(request)
    found = await wiring.experiments.get(program_id, experiment_id)
    if found is None:
        raise not_found("experiment", experiment_id)
    stats = await wiring.experiments.arm_stats(
        program_id,
        experiment_id,
        datetime.fromisoformat(found["starts_at"]),
        datetime.fromisoformat(found["ends_at"]),
    )
    arms = [stats.get(arm["name"], ArmStats(arm["name"], 0, 0, 0, 0, 0)) for arm in found["arms"]]
    return JsonResponse(
        {
            "experiment_id": experiment_id,
            "status": found["status"],
            "window": {"from": found["starts_at"], "to": found["ends_at"]},
            "arms": arm_results(arms),
        }
    )
