"""What-if replays through HTTP: events earned through the API, then a simulation with one
rule doubled (202 with a Location, polled to done, exactly that rule's difference), the same
rules (no difference), what a viewer may do, and every refusal as a problem."""

import asyncio
import json
import secrets
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import ADMIN_KEY, Service
from tests.e2e.test_api import scalar
from tests.e2e.test_earning import (
    ORDER_RULES,
    PROJECT_ROOT,
    create_from_template,
    event,
    make_program,
)

POLL_TIMEOUT_S = 60.0
POLL_INTERVAL_S = 0.2
FUZZ_TIME_S = 30


def window(days_before: float = 1, days_after: float = 1) -> dict[str, str]:
    now = datetime.now(UTC)
    return {
        "from": (now - timedelta(days=days_before)).isoformat(),
        "to": (now + timedelta(days=days_after)).isoformat(),
    }


async def poll(client: httpx.AsyncClient, location: str) -> dict[str, Any]:
    """The job once it is done or failed."""
    deadline = asyncio.get_running_loop().time() + POLL_TIMEOUT_S
    while True:
        answer = await client.get(location)
        assert answer.status_code == 200, answer.text
        job: dict[str, Any] = answer.json()
        if job["status"] in ("done", "failed"):
            return job
        assert asyncio.get_running_loop().time() < deadline, job
        await asyncio.sleep(POLL_INTERVAL_S)


async def earned_program(client: httpx.AsyncClient) -> tuple[str, int]:
    """A program with orders and check-ins earned through the API: (id, big orders)."""
    program = await make_program(client)
    events = [event(f"m{i}", amount=40_000 + 30_000 * i) for i in range(6)]
    events += [event(f"m{i}", "check_in") for i in range(3)]
    answer = await client.post(f"/v1/programs/{program}/events/batch", json={"events": events})
    assert answer.status_code == 200, answer.text
    assert all(r["status"] == 201 for r in answer.json()["results"]), answer.text
    return program, 4  # amounts of 100000 or more: m2..m5


async def simulate(client: httpx.AsyncClient, program: str, rules: Any) -> dict[str, Any]:
    answer = await client.post(
        f"/v1/programs/{program}/simulations", json={"rules": rules, **window(), "top_members": 3}
    )
    assert answer.status_code == 202, answer.text
    job = answer.json()
    location = answer.headers["location"]
    assert location == f"/v1/programs/{program}/simulations/{job['simulation_id']}"
    assert job["status"] == "queued" and job["result"] is None
    done = await poll(client, location)
    assert done["status"] == "done", done
    assert done["progress"]["events_done"] == done["progress"]["events_total"] == 9
    return done


async def test_a_doubled_rule_shows_exactly_its_difference(
    client: httpx.AsyncClient, service: Service
) -> None:
    program, big_orders = await earned_program(client)
    before = scalar(service, "SELECT count(*) FROM transactions WHERE program_id = %s", program)
    doubled = [
        {**rule, "award": {"type": "fixed", "points": 100}}
        if rule["id"] == "big_order_bonus"
        else rule
        for rule in ORDER_RULES
    ]
    result = (await simulate(client, program, doubled))["result"]
    by_rule = {row["rule_id"]: row for row in result["by_rule"]}
    assert by_rule["big_order_bonus"] == {
        "rule_id": "big_order_bonus",
        "actual_points": 50 * big_orders,
        "candidate_points": 100 * big_orders,
        "difference": 50 * big_orders,
    }
    assert result["difference"] == 50 * big_orders and result["events_changed"] == big_orders
    assert by_rule["order_points"]["difference"] == by_rule["check_in"]["difference"] == 0
    types = {row["event_type"]: row["difference"] for row in result["by_event_type"]}
    assert types == {"order": 50 * big_orders, "check_in": 0}
    assert [row["member_id"] for row in result["top_members"]] == ["m2", "m3", "m4"]
    assert all(row["difference"] == 50 for row in result["top_members"])
    assert result["tiers_from"]["current"] == result["events"] == 9  # no tiers: current
    # A replay writes nothing to the ledger.
    after = scalar(service, "SELECT count(*) FROM transactions WHERE program_id = %s", program)
    assert after == before

    same = (await simulate(client, program, ORDER_RULES))["result"]
    assert same["difference"] == 0 and same["events_changed"] == 0 and same["top_members"] == []
    assert same["actual_points"] == same["candidate_points"] == result["actual_points"]


async def test_refusals_are_problems(client: httpx.AsyncClient, service: Service) -> None:
    program, _ = await earned_program(client)
    url = f"/v1/programs/{program}/simulations"
    now = datetime.now(UTC)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"rules": ORDER_RULES, **window(-1, 1)}, 422, "reversed"),  # from after to
        (
            {
                "rules": ORDER_RULES,
                "from": (now - timedelta(days=400)).isoformat(),
                "to": now.isoformat(),
            },
            422,
            "366 days",
        ),
        ({"rules": [{"id": "x", "event_type": "order"}], **window()}, 422, "award"),
        ({"rules": ORDER_RULES, **window(30, -29)}, 422, "no event"),
        ({"rules": ORDER_RULES, **window(), "top_members": 0}, 422, "top_members"),
        ({"rules": ORDER_RULES, "from": "yesterday", "to": now.isoformat()}, 422, "from"),
        ({"rules": ORDER_RULES, **window(), "extra": 1}, 422, "extra"),
    ]
    for body, status, words in cases:
        answer = await client.post(url, json=body)
        assert answer.status_code == status, (body, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["code"] == "validation_error"
        assert words in answer.text, (words, answer.text)
    missing = await client.post(
        f"/v1/programs/nope-{secrets.token_hex(3)}/simulations",
        json={"rules": ORDER_RULES, **window()},
    )
    assert missing.status_code == 404 and missing.json()["code"] == "not_found"
    unknown = await client.get(f"{url}/{'0' * 8}-0000-4000-8000-{'0' * 12}")
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    malformed = await client.get(f"{url}/not-a-uuid")
    assert malformed.status_code == 422 and malformed.json()["code"] == "validation_error"
    assert scalar(service, "SELECT count(*) FROM simulations WHERE program_id = %s", program) == 0


async def test_a_viewer_reads_jobs_but_may_not_start_one(
    client: httpx.AsyncClient, service: Service
) -> None:
    program, _ = await earned_program(client)
    made = await client.post(
        "/v1/keys", json={"name": "sim viewer", "role": "viewer", "programs": [program]}
    )
    assert made.status_code == 201, made.text
    viewer = {"Authorization": f"Bearer {made.json()['key']}"}
    started = await client.post(
        f"/v1/programs/{program}/simulations", json={"rules": ORDER_RULES, **window()}
    )
    assert started.status_code == 202, started.text
    refused = await client.post(
        f"/v1/programs/{program}/simulations",
        json={"rules": ORDER_RULES, **window()},
        headers=viewer,
    )
    assert refused.status_code == 403 and refused.json()["code"] == "forbidden"
    seen = await client.get(started.headers["location"], headers=viewer)
    assert (
        seen.status_code == 200 and seen.json()["simulation_id"] == started.json()["simulation_id"]
    )
    assert (await poll(client, started.headers["location"]))["status"] == "done"


def readme_block(heading: str, document: str = "README.md") -> str:
    """The first bash block after `heading` in `document`, as a user would paste it."""
    text = (PROJECT_ROOT / document).read_text()
    after = text[text.index(heading) :]
    start = after.index("```bash\n") + len("```bash\n")
    return after[start : after.index("```\n", start)]


async def test_the_documented_commands_work_as_written(
    client: httpx.AsyncClient, service: Service
) -> None:
    # The README's program and events: myshop from the e-commerce template, order-1
    # (12990) and two check-ins, earned just now.
    create_from_template(service, "myshop", "ecommerce")
    now = datetime.now(UTC).isoformat()
    events = [
        {
            "id": "order-1",
            "member_id": "dave",
            "type": "order",
            "occurred_at": now,
            "attributes": {"amount": 12990},
        },
        {"id": "ci-1", "member_id": "dave", "type": "check_in", "occurred_at": now},
        {"id": "ci-2", "member_id": "dave", "type": "check_in", "occurred_at": now},
    ]
    answer = await client.post("/v1/programs/myshop/events/batch", json={"events": events})
    assert [r["status"] for r in answer.json()["results"]] == [201] * 3, answer.text
    for document, heading in (
        ("README.md", "### What if the rules changed?"),
        ("docs/simulations.md", "## Asking for one"),
    ):
        script = (
            f"export POINTS={service.url} KEY={ADMIN_KEY}\n"
            'auth=(-H "Authorization: Bearer $KEY" -H "Content-Type: application/json"'
            " -w '\\nHTTP %{http_code}\\n')\n"
            + readme_block(heading, document)
            + "sleep 5\n"
            + 'curl -s $POINTS$loc "${auth[@]}"\n'
        )
        ran = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        last = ran.stdout.strip().rsplit("\n", 2)
        assert last[-1] == "HTTP 200", ran.stdout
        job = json.loads(last[-2])
        assert job["status"] == "done", job
        result = job["result"]
        assert result["difference"] == 130 and result["events"] == 3, document
        rules = {row["rule_id"]: row["difference"] for row in result["by_rule"]}
        assert rules == {"order_points": 130, "daily_check_in": 0}


def test_a_contract_fuzzer_on_the_simulation_routes_finds_nothing(service: Service) -> None:
    """tests/e2e/test_contract.py's fuzzer run (every check, schemathesis.toml), on these
    two routes only and for FUZZ_TIME_S: a quick check of their contract on its own."""
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            "--config-file",
            str(PROJECT_ROOT / "schemathesis.toml"),
            "run",
            f"{service.url}/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            "use_after_free",
            "--include-tag",
            "simulations",
            "-H",
            f"Authorization: Bearer {ADMIN_KEY}",
            "--max-time",
            str(FUZZ_TIME_S),
            "--seed",
            "20261130",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=FUZZ_TIME_S + 60,
        cwd=PROJECT_ROOT,
    )
    failures = run.stdout.find("FAILURES")
    summary = run.stdout[failures : failures + 6000] if failures >= 0 else run.stdout[-4000:]
    assert run.returncode == 0, summary
