"""GET /v1/programs/{program_id}/reports/... through HTTP: JSON and CSV, reconciled with the
ledger summary, the read roles, and a 4xx problem for each kind of bad input."""

import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ADMIN_KEY, Service

ROOT = Path(__file__).resolve().parents[2]
FUZZ_TIME_S = 30

REPORTS = ("liability", "breakage", "expiring", "funnel", "rewards", "members")


def key() -> dict[str, str]:
    return {"Idempotency-Key": secrets.token_hex(8)}


async def test_reports_in_json_and_csv(
    client: httpx.AsyncClient, program: str, service: Service
) -> None:
    p = f"/v1/programs/{program}"
    policy = {
        "time_zone": "Europe/Paris",
        "point_value": {
            "currency": "EUR",
            "values": [{"from": "2020-01-01T00:00:00Z", "minor_units_per_point": "0.5"}],
        },
        "breakage_rate": "0.25",
    }
    put = await client.put(p, json={"name": "E2E", "policy": policy})
    assert put.status_code == 200, put.text
    assert put.json()["policy"]["point_value"]["values"][0]["minor_units_per_point"] == "0.5"
    for member, points in (("a", 100), ("b", 200), ("c", 300)):
        answer = await client.post(
            p + f"/members/{member}/credits", json={"points": points, "reason": "r"}, headers=key()
        )
        assert answer.status_code == 201, answer.text
    reward = {"name": "Cap", "cost_points": 150, "stock": 5}
    assert (await client.put(p + "/rewards/cap", json=reward)).status_code == 201
    redeemed = await client.post(
        p + "/redemptions", json={"member_id": "c", "reward_id": "cap"}, headers=key()
    )
    assert redeemed.status_code == 201, redeemed.text

    books = (await client.get(p + "/ledger/summary")).json()
    liability = await client.get(p + "/reports/liability", params={"granularity": "day"})
    assert liability.status_code == 200, liability.text
    view = liability.json()
    last = view["rows"][-1]
    assert last["closing"] == books["outstanding"]["total"] == 450
    assert sum(row["issued"] for row in view["rows"]) == 600
    assert last["closing_money"] == "225"
    assert last["deferred_revenue_money"] == "168.75"  # 225 x (1 - 0.25)
    assert view["currency"] == "EUR" and view["breakage_rate_source"] == "policy"
    assert view["as_of"].endswith("Z")

    breakage = (await client.get(p + "/reports/breakage")).json()
    assert breakage["totals"]["issued"] == 600 and breakage["totals"]["outstanding"] == 450
    funnel = (await client.get(p + "/reports/funnel")).json()
    assert funnel["cheapest_reward_points"] == 150
    assert funnel["rows"][-1]["earned"] == 3 and funnel["rows"][-1]["reached_reward"] == 2
    assert funnel["rows"][-1]["redeemed_once"] == 1
    rewards = (await client.get(p + "/reports/rewards")).json()
    assert rewards["time_zone"] == "Europe/Paris"
    assert rewards["rows"][0]["reward_id"] == "cap" and rewards["rows"][0]["completed"] == 1
    assert sum(map(sum, rewards["heatmap"]["counts"])) == 1
    members = (await client.get(p + "/reports/members")).json()
    assert members["members"] == 3 and members["active"] == {"30d": 3, "90d": 3}
    expiring = (await client.get(p + "/reports/expiring")).json()
    assert len(expiring["rows"]) == 12 and expiring["total_points"] == 0

    for name in REPORTS:
        as_csv = await client.get(p + f"/reports/{name}", headers={"Accept": "text/csv"})
        assert as_csv.status_code == 200, (name, as_csv.text)
        assert as_csv.headers["content-type"].startswith("text/csv")
        assert "attachment" in as_csv.headers["content-disposition"]
        assert len(as_csv.text.splitlines()) >= 2
    as_csv = await client.get(
        p + "/reports/liability", params={"granularity": "day"}, headers={"Accept": "text/csv"}
    )
    header, *lines = as_csv.text.splitlines()
    assert header.startswith("period,opening,issued,redeemed,expired,reversed,adjusted,closing")
    assert lines[-1].split(",")[7] == "450"


@pytest.mark.parametrize(
    ("path", "params", "status", "says"),
    [
        ("liability", {"from": "2026-02-01", "to": "2026-01-01"}, 422, "not be after"),
        (
            "liability",
            {"from": "2020-01-01", "to": "2026-01-01", "granularity": "day"},
            422,
            "at most",
        ),
        (
            "breakage",
            {"from": "2000-01-01", "to": "2026-01-01", "granularity": "week"},
            422,
            "at most",
        ),
        ("funnel", {"from": "1990-01-01", "to": "2026-01-01"}, 422, "at most"),
        ("members", {"granularity": "year"}, 422, "granularity"),
        ("rewards", {"from": "2026-01-32"}, 422, "valid date"),
        ("expiring", {"to": "tomorrow"}, 422, "to"),
        ("nonsense", {}, 404, ""),
    ],
)
async def test_bad_input_is_a_problem(
    client: httpx.AsyncClient,
    program: str,
    path: str,
    params: dict[str, str],
    status: int,
    says: str,
) -> None:
    answer = await client.get(f"/v1/programs/{program}/reports/{path}", params=params)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["code"] == ("not_found" if status == 404 else "validation_error")
    assert says in answer.text


async def test_unknown_program_and_roles(
    client: httpx.AsyncClient, program: str, service: Service
) -> None:
    assert (await client.get("/v1/programs/no-such/reports/liability")).status_code == 404
    made = {}
    for role in ("viewer", "service"):
        created = await client.post("/v1/keys", json={"name": role, "role": role})
        assert created.status_code == 201, created.text
        made[role] = created.json()["key"]
    for role, expected in (("viewer", 200), ("service", 403)):
        async with httpx.AsyncClient(
            base_url=service.url, headers={"Authorization": f"Bearer {made[role]}"}, timeout=60
        ) as other:
            answer = await other.get(f"/v1/programs/{program}/reports/members")
            assert answer.status_code == expected, (role, answer.text)


async def test_a_contract_fuzzer_finds_nothing_in_the_reports(
    client: httpx.AsyncClient, program: str, service: Service, tmp_path: Path
) -> None:
    """schemathesis, every check, on the report routes only (the whole API's run is
    tests/e2e/test_contract.py), on a program with activity, with schemathesis.toml (why
    422 answers schema-valid windows)."""
    credit = await client.post(
        f"/v1/programs/{program}/members/a/credits",
        json={"points": 100, "reason": "r", "expires_at": "2099-01-01T00:00:00Z"},
        headers=key(),
    )
    assert credit.status_code == 201, credit.text
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        f'parameters = {{ "path.program_id" = "{program}" }}\n'
        + (ROOT / "schemathesis.toml").read_text()
    )
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            "--config-file",
            str(config),
            "run",
            f"{service.url}/openapi.json",
            "--checks",
            "all",
            "--exclude-checks",
            "use_after_free",
            "--include-path-regex",
            "/reports/",
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
        cwd=ROOT,
    )
    failures = run.stdout.find("FAILURES")
    summary = run.stdout[failures : failures + 6000] if failures >= 0 else run.stdout[-4000:]
    assert run.returncode == 0, summary
    assert "Tested: 6" in run.stdout, summary
