"""Reports on a program's ledger: liability, breakage, expiring, funnel, rewards, members.

Each is `GET /v1/programs/{program_id}/reports/<name>` with a window (`from`, `to`: UTC
days, `to` included; `granularity`: day, week or month), JSON by default and CSV to
`Accept: text/csv`. The math is domain/reports.py, the SQL db/reports_repo.py; here:
authenticate, parse the window, read, render. docs/reports.md says what each one means.
"""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from db.reports_repo import ReportsRepo
from domain import reports
from domain.errors import Code
from domain.policy import parse_policy
from serve_app.http import authenticate, backend, not_found
from serve_app.openapi import route
from serve_app.problems import JsonResponse
from serve_app.responses import (
    BreakageReport,
    ExpiringReport,
    FunnelReport,
    LiabilityReport,
    MembersReport,
    RewardsReport,
)
from serve_app.routes.params import ProgramId

router = APIRouter(tags=["reports"])

P = "/v1/programs/{program_id}/reports"
CSV_MEDIA_TYPE = "text/csv"
DAY_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
From = Annotated[
    str | None,
    Query(
        alias="from",
        pattern=DAY_PATTERN,
        description="first UTC day (YYYY-MM-DD); its period's start opens the window",
    ),
]
To = Annotated[
    str | None,
    Query(pattern=DAY_PATTERN, description="last UTC day (YYYY-MM-DD), included"),
]
Granularity = Annotated[
    Literal["day", "week", "month"] | None,
    Query(description="periods of the window: day, week (ISO, Monday first) or month"),
]
# Documented beside the JSON model: the same report as CSV, one line per row.
CSV_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the report (JSON), or CSV to Accept: text/csv",
        "content": {CSV_MEDIA_TYPE: {"schema": {"type": "string"}}},
    }
}
OPENAPI = route(Code.NOT_FOUND)


def _window(
    first: str | None, last: str | None, granularity: str | None, default: str, ahead: bool = False
) -> reports.Window:
    """The report's window from its query (422 validation_error naming what is wrong)."""
    return reports.window(
        reports.parse_day(first, "from"),
        reports.parse_day(last, "to"),
        reports.parse_granularity(granularity, default),
        datetime.now(UTC).date(),
        ahead=ahead,
    )


async def _repo(request: Request) -> ReportsRepo:
    return ReportsRepo(await backend(request).repo())


def _answer(request: Request, view: dict[str, object]) -> Response:
    """JSON, or CSV when the client asks for it (and not for JSON first)."""
    accept = request.headers.get("accept", "")
    if CSV_MEDIA_TYPE in accept and "application/json" not in accept:
        name = f"{view['program_id']}-{view['report']}-{view['from']}-{view['to']}.csv"
        return Response(
            reports.to_csv(view),
            media_type=CSV_MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return JsonResponse(view)


@router.get(
    P + "/liability", response_model=LiabilityReport, responses=CSV_RESPONSE, openapi_extra=OPENAPI
)
async def liability_report(
    program_id: ProgramId,
    request: Request,
    from_: From = None,
    to: To = None,
    granularity: Granularity = None,
) -> Response:
    """The points liability rolled forward per period (opening + issued - redeemed -
    expired - reversed + adjusted = closing), in points and in money at the program's
    point value, with deferred revenue and recognised breakage."""
    await authenticate(request)
    win = _window(from_, to, granularity, reports.MONTH)
    found = await (await _repo(request)).liability(program_id, win.start, win.end)
    if found is None:
        raise not_found("program", program_id)
    snap, opening, daily, totals = found
    policy = parse_policy(snap.policy)
    return _answer(
        request,
        reports.liability(program_id, policy, win, snap.as_of, opening, daily, totals),
    )


@router.get(
    P + "/breakage", response_model=BreakageReport, responses=CSV_RESPONSE, openapi_extra=OPENAPI
)
async def breakage_report(
    program_id: ProgramId,
    request: Request,
    from_: From = None,
    to: To = None,
    granularity: Granularity = None,
) -> Response:
    """Per issue cohort (the period points were earned in): issued, redeemed, expired,
    reversed, outstanding, observed and projected breakage rates."""
    await authenticate(request)
    win = _window(from_, to, granularity, reports.MONTH)
    found = await (await _repo(request)).breakage(program_id, win.start, win.end)
    if found is None:
        raise not_found("program", program_id)
    snap, daily, totals = found
    policy = parse_policy(snap.policy)
    return _answer(request, reports.breakage(program_id, policy, win, snap.as_of, daily, totals))


@router.get(
    P + "/expiring", response_model=ExpiringReport, responses=CSV_RESPONSE, openapi_extra=OPENAPI
)
async def expiring_report(
    program_id: ProgramId,
    request: Request,
    from_: From = None,
    to: To = None,
    granularity: Granularity = None,
) -> Response:
    """Points that will expire per period, from today through the next 12 months by
    default (from the lots: what is left in them, and when they expire)."""
    await authenticate(request)
    win = _window(from_, to, granularity, reports.MONTH, ahead=True)
    found = await (await _repo(request)).expiring(program_id, win.start, win.end)
    if found is None:
        raise not_found("program", program_id)
    snap, daily, overdue = found
    return _answer(request, reports.expiring(program_id, win, snap.as_of, daily, overdue))


@router.get(
    P + "/funnel", response_model=FunnelReport, responses=CSV_RESPONSE, openapi_extra=OPENAPI
)
async def funnel_report(
    program_id: ProgramId,
    request: Request,
    from_: From = None,
    to: To = None,
    granularity: Granularity = None,
) -> Response:
    """Per cohort of members (the period of their first credit): earned, reached the
    cheapest active reward's cost, redeemed once, redeemed twice, with conversion rates."""
    await authenticate(request)
    win = _window(from_, to, granularity, reports.MONTH)
    found = await (await _repo(request)).funnel(program_id, win.start, win.end)
    if found is None:
        raise not_found("program", program_id)
    snap, cost, daily = found
    return _answer(request, reports.funnel(program_id, win, snap.as_of, cost, daily))


@router.get(
    P + "/rewards", response_model=RewardsReport, responses=CSV_RESPONSE, openapi_extra=OPENAPI
)
async def rewards_report(
    program_id: ProgramId,
    request: Request,
    from_: From = None,
    to: To = None,
    granularity: Granularity = None,
) -> Response:
    """Redemptions started in the window, by reward (completed, cancelled, failed, in
    progress) and by weekday x hour in the program's time zone."""
    await authenticate(request)
    win = _window(from_, to, granularity, reports.DAY)
    found = await (await _repo(request)).rewards(program_id, win.start, win.end)
    if found is None:
        raise not_found("program", program_id)
    snap, by_reward, heat, failures = found
    policy = parse_policy(snap.policy)
    return _answer(
        request, reports.rewards(program_id, policy, win, snap.as_of, by_reward, heat, failures)
    )


@router.get(
    P + "/members", response_model=MembersReport, responses=CSV_RESPONSE, openapi_extra=OPENAPI
)
async def members_report(
    program_id: ProgramId,
    request: Request,
    from_: From = None,
    to: To = None,
    granularity: Granularity = None,
) -> Response:
    """Members active (earned or spent) in the 30 and 90 days up to the window's end, the
    tier distribution, and new members per period."""
    await authenticate(request)
    win = _window(from_, to, granularity, reports.MONTH)
    found = await (await _repo(request)).members(program_id, win.start, win.end)
    if found is None:
        raise not_found("program", program_id)
    snap, active, tiers, new = found
    return _answer(request, reports.members(program_id, win, snap.as_of, active, tiers, new))
