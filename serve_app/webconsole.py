"""The admin console: static files under /admin, served by the API's own app.

The console (serve_app/console/: HTML, CSS, plain ES modules, Chart.js vendored under
vendor/) runs in the browser and calls the same /v1 API with the key the user signs in
with; this module only serves its files. No build step and no network: every asset is in
the package (pyproject.toml package-data), so /admin works offline like /docs does.

Why a strict Content-Security-Policy: the console holds an API key in sessionStorage, so
no script may come from anywhere but these files (no inline script, no CDN, no eval).
Styles allow 'unsafe-inline' because Chart.js sizes its canvases through style attributes.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

CONSOLE_DIR = Path(__file__).parent / "console"
CONSOLE_PATH = "/admin"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate each time (ETag): a new release's console is picked up at once.
    "Cache-Control": "no-cache",
}
assert (CONSOLE_DIR / "index.html").is_file(), "the console's files are missing from the package"


class ConsoleFiles(StaticFiles):
    """StaticFiles (index.html for the directory) with the console's security headers."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(SECURITY_HEADERS)
        return response


def mount(app: FastAPI) -> None:
    """Serve the console at /admin/ (and send /admin there). Not in the OpenAPI document
    and not in the access matrix: the files are public, the data behind them is not."""

    async def to_console() -> Response:
        return RedirectResponse(CONSOLE_PATH + "/", status_code=308)

    app.add_api_route(CONSOLE_PATH, to_console, methods=["GET"], include_in_schema=False)
    app.mount(CONSOLE_PATH, ConsoleFiles(directory=CONSOLE_DIR, html=True), name="console")
