"""The admin console's files: served at /admin with their security headers, all in the
wheel, Chart.js vendored as its README says, and every route the console names is one the
access matrix knows (so a page is hidden from exactly the roles that would be refused)."""

import hashlib
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serve_app import access, webconsole
from serve_app.auth import Role

ROOT = Path(__file__).parents[2]
CONSOLE = webconsole.CONSOLE_DIR
SCRIPTS = sorted(CONSOLE.glob("js/**/*.js"))


@pytest.fixture(scope="module")
def http() -> TestClient:
    from serve_app.app import create_app

    return TestClient(create_app())


def test_admin_sends_to_the_console_and_serves_its_page(http: TestClient) -> None:
    moved = http.get("/admin", follow_redirects=False)
    assert moved.status_code == 308 and moved.headers["location"] == "/admin/"
    page = http.get("/admin/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "Points console" in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert http.get("/admin/nothing-here.js").status_code == 404


def test_every_asset_the_page_and_the_modules_name_is_served(http: TestClient) -> None:
    index = (CONSOLE / "index.html").read_text()
    named = re.findall(r'(?:src|href)="([^"#]+)"', index)
    assert {"console.css", "vendor/chart.umd.js", "js/app.js"} <= set(named)
    for asset in named:
        answer = http.get(f"/admin/{asset}")
        assert answer.status_code == 200, asset
    for script in SCRIPTS:
        for target in re.findall(r'^import .* from "(\.[^"]+)";$', script.read_text(), re.M):
            assert (script.parent / target).resolve().is_file(), (script, target)
    js = http.get("/admin/js/app.js")
    assert "javascript" in js.headers["content-type"]


def test_nothing_is_loaded_from_the_network() -> None:
    for source in [CONSOLE / "index.html", CONSOLE / "console.css", *SCRIPTS]:
        assert not re.search(r"https?://", source.read_text()), source


def test_the_wheel_carries_every_console_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["serve_app"]
    files = [p.relative_to(CONSOLE.parent).as_posix() for p in CONSOLE.rglob("*") if p.is_file()]
    assert files
    for name in files:
        assert any(fnmatch(name, glob) for glob in globs), f"{name}: not in package-data"


def test_chart_js_is_the_vendored_release_its_readme_names() -> None:
    vendor = CONSOLE / "vendor"
    readme = (vendor / "README.md").read_text()
    digest = hashlib.sha256((vendor / "chart.umd.js").read_bytes()).hexdigest()
    assert digest in readme, "update vendor/README.md with the new file's sha256"
    version = re.search(r"\* Chart\.js v(\S+)", (vendor / "chart.umd.js").read_text()[:200])
    assert version is not None and f"chart.js@{version.group(1)}" in readme
    assert "MIT License" in (vendor / "LICENSE.md").read_text()


def _console_routes() -> set[str]:
    """Every "METHOD /v1/..." the console's pages name (needs, can), with their constants
    (`const P = "..."`, `const M = \\`${P}/...\\``) put in."""
    found: set[str] = set()
    for script in SCRIPTS:
        text = script.read_text()
        constants: dict[str, str] = {}
        for name, value in re.findall(r'^const ([A-Z]) = [`"]([^`"]+)[`"];$', text, re.M):
            for known, expansion in constants.items():
                value = value.replace("${" + known + "}", expansion)
            constants[name] = value
        for raw in re.findall(r'(?:needs: |can\()[`"]((?:GET|POST|PUT|DELETE) [^`"]+)[`"]', text):
            for known, expansion in constants.items():
                raw = raw.replace("${" + known + "}", expansion)
            found.add(raw)
    return found


def test_every_route_the_console_checks_is_in_the_access_matrix() -> None:
    named = _console_routes()
    assert len(named) >= 10, named
    matrix = {f"{method} {path}" for method, path in access.ACCESS}
    assert named - matrix == set(), "the console checks a route the matrix does not have"


def test_me_lists_the_routes_of_the_role() -> None:
    admin = access.routes_for(Role.ADMIN, limited_to_programs=False)
    assert "DELETE /v1/keys/{key_id}" in admin and "PUT /v1/admin/topology" in admin
    assert len(admin) == sum(1 for roles in access.ACCESS.values() if Role.ADMIN in roles)
    scoped = access.routes_for(Role.ADMIN, limited_to_programs=True)
    assert "PUT /v1/admin/topology" not in scoped and "GET /v1/keys" in scoped
    viewer = access.routes_for(Role.VIEWER, limited_to_programs=False)
    assert all(route.startswith("GET ") for route in viewer)
    assert "GET /v1/programs/{program_id}/ledger/summary" in viewer
    service = access.routes_for(Role.SERVICE, limited_to_programs=True)
    assert "POST /v1/programs/{program_id}/redemptions" in service
    assert "POST /v1/programs/{program_id}/redemptions/{redemption_id}/cancel" not in service
    for role in Role:
        assert "GET /v1/me" in access.routes_for(role, limited_to_programs=True)


def test_every_page_module_is_listed_and_the_newer_apis_are_checked() -> None:
    index = (CONSOLE / "js/pages/index.js").read_text()
    for module in sorted((CONSOLE / "js/pages").glob("*.js")):
        if module.name != "index.js":
            assert f'from "./{module.name}";' in index, f"{module.name}: not in pages/index.js"
    named = _console_routes()
    p = "/v1/programs/{program_id}"
    reports = ("liability", "breakage", "expiring", "funnel", "rewards", "members")
    expected = {f"GET {p}/reports/{name}" for name in reports} | {
        f"GET {p}/experiments",
        f"PUT {p}/experiments/{{experiment_id}}",
        f"POST {p}/experiments/{{experiment_id}}/end",
        f"GET {p}/simulations/{{simulation_id}}",
        f"POST {p}/simulations",
    }
    assert expected <= named, expected - named
