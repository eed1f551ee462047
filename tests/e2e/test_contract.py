"""The HTTP contract against the running service: the OpenAPI document it serves, offline
docs, 405 with Allow, strict bodies, listing what exists, and a bounded run of a contract
fuzzer (schemathesis, every check) that must find nothing."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx

from tests.e2e.conftest import ADMIN_KEY, Service

ROOT = Path(__file__).resolve().parents[2]
FUZZ_TIME_S = int(os.environ.get("POINTS_FUZZ_TIME_S", "60"))
FUZZ_TIMEOUT_S = FUZZ_TIME_S + 60
# A fixed seed keeps CI's run comparable from one commit to the next (the stateful phase
# still follows the service's answers); POINTS_FUZZ_SEED=random explores.
FUZZ_SEED = os.environ.get("POINTS_FUZZ_SEED", "20261129")


async def test_the_served_document_has_security_and_problems(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    debit = document["paths"]["/v1/programs/{program_id}/members/{member_id}/debits"]["post"]
    assert "application/problem+json" in debit["responses"]["409"]["content"]
    assert debit["requestBody"]["required"] is True


async def test_docs_work_offline(service: Service) -> None:
    async with httpx.AsyncClient(base_url=service.url) as anonymous:
        for page in ("/docs", "/redoc"):
            html = (await anonymous.get(page)).text
            # Every script and stylesheet is served by the service itself, none by a CDN.
            assert "cdn." not in html and "https://" not in html.split("<body", 1)[0], page
            for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
                if asset in html:
                    path = html.split(asset)[0].rsplit('"', 1)[1] + asset
                    response = await anonymous.get(path)
                    assert response.status_code == 200 and len(response.content) > 10_000


async def test_a_wrong_method_is_405_with_allow(client: httpx.AsyncClient, program: str) -> None:
    response = await client.delete(f"/v1/programs/{program}")
    assert response.status_code == 405
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "method_not_allowed"
    assert set(response.headers["allow"].split(", ")) >= {"GET", "PUT"}


async def test_ambiguous_or_mistyped_bodies_are_refused(
    client: httpx.AsyncClient, program: str
) -> None:
    path = f"/v1/programs/{program}/members/dup/credits"
    twice = await client.post(
        path,
        content=b'{"points": 1, "points": 2, "reason": "x"}',
        headers={"Content-Type": "application/json", "Idempotency-Key": "k1"},
    )
    assert twice.status_code == 400 and twice.json()["code"] == "bad_request"
    as_text = await client.post(
        path,
        content=b'{"points": 1, "reason": "x"}',
        headers={"Content-Type": "text/plain", "Idempotency-Key": "k2"},
    )
    assert as_text.status_code == 415 and as_text.json()["code"] == "unsupported_media_type"
    whole = await client.post(
        path,
        content=b'{"points": 2.0, "reason": "x"}',
        headers={"Content-Type": "application/json", "Idempotency-Key": "k3"},
    )
    assert whole.status_code == 201 and whole.json()["points"] == 2
    assert (await client.get(f"/v1/programs/{program}/members/dup")).json()["balance"]["total"] == 2


async def test_programs_and_members_are_listed_page_by_page(
    client: httpx.AsyncClient, program: str
) -> None:
    for i in range(5):
        response = await client.post(
            f"/v1/programs/{program}/members/m{i}/credits",
            json={"points": 10 + i, "reason": "seed"},
            headers={"Idempotency-Key": f"seed-{i}"},
        )
        assert response.status_code == 201
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(f"/v1/programs/{program}/members", params=params)).json()
        seen += [item["member_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"m{i}" for i in range(5)]
    programs: list[str] = []
    cursor = None
    while True:
        params = {"limit": 50, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/v1/programs", params=params)).json()
        programs += [item["program_id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert program in programs and programs == sorted(programs)
    none = await client.get(f"/v1/programs/{program}/members", params={"tier": "gold"})
    assert none.json() == {"items": [], "next_cursor": None}


def test_a_contract_fuzzer_with_every_check_finds_nothing(service: Service) -> None:
    """schemathesis, every check and every phase, for FUZZ_TIME_S (POINTS_FUZZ_TIME_S)
    seconds, with schemathesis.toml (which says why 422 is expected for some schema-valid
    input)."""
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            "--config-file",
            str(ROOT / "schemathesis.toml"),
            "run",
            f"{service.url}/openapi.json",
            "--checks",
            "all",
            # Revoked keys stay readable by design (schemathesis.toml says why); --checks
            # all on the command line outranks the file's switch, so it is excluded here.
            "--exclude-checks",
            "use_after_free",
            "-H",
            f"Authorization: Bearer {ADMIN_KEY}",
            "--max-time",
            str(FUZZ_TIME_S),
            "--seed",
            str(secrets.randbelow(2**32)) if FUZZ_SEED == "random" else FUZZ_SEED,
            # One worker: with two, schemathesis 4.32 failed inside itself, not on an
            # answer ("Test Execution Error" folding worker events; "AST constructor
            # recursion depth mismatch" in its coverage phase).
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=FUZZ_TIMEOUT_S,
        cwd=ROOT,
    )
    failures = run.stdout.find("FAILURES")
    summary = run.stdout[failures : failures + 6000] if failures >= 0 else run.stdout[-4000:]
    assert run.returncode == 0, summary
    assert "No issues found" in run.stdout or " passed" in run.stdout, summary
