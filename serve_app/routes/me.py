"""Who am I: the calling key as the API shows keys, and what its role may call.

Every role may ask (a key that works may know itself). The console signs in with it: the
answer names the role and lists the routes the key may call, so that the console offers
only what the key may do (serve_app/access.py is the one source of that list)."""

from fastapi import APIRouter, Request
from starlette.responses import Response

from domain.errors import Code, PointsError
from serve_app import access
from serve_app.http import authenticate, backend
from serve_app.openapi import route
from serve_app.problems import JsonResponse
from serve_app.responses import Me

router = APIRouter(tags=["keys"])


@router.get("/v1/me", response_model=Me, openapi_extra=route(validated=False))
async def who_am_i(request: Request) -> Response:
    """The calling key: id, name, role, programs (null: every one), expiry, rate limit,
    and `routes`, every route ("METHOD /template") it may call."""
    caller = await authenticate(request)
    await backend(request).repo()
    found = await backend(request).access.get_key(caller.key_id)
    if found is None:  # revoked and gone while this replica still trusted it (~1 s)
        raise PointsError(Code.UNAUTHORIZED, "invalid API key")
    routes = access.routes_for(caller.role, limited_to_programs=caller.programs is not None)
    return JsonResponse({**found, "routes": routes})
