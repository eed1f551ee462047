"""A small flash sale through the real load-test tools: `loadtests.setup` creates 300 members
and a reward with 100 units, then `locust` (headless, in a subprocess) sends every member's
one redemption. Exactly 100 sell, 200 are told out_of_stock, nothing fails, and the books
verify. Keeps loadtests/locustfile.py and loadtests/setup.py working."""

import csv
import os
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from loadtests.setup import main as setup_main
from loadtests.verify import main as verify_main
from tests.e2e.conftest import ADMIN_KEY, Service
from tests.e2e.test_api import assert_books_balance, scalar

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MEMBERS, STOCK = 300, 100


def test_flash_sale_with_locust_sells_exactly_the_stock(
    service: Service, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program = f"flash-ci-{secrets.token_hex(4)}"
    common = ["--program", program, "--members", str(MEMBERS)]
    setup = ["flash_sale", "--host", service.url, "--key", ADMIN_KEY, "--stock", str(STOCK)]
    assert setup_main([*setup, *common]) == 0, capsys.readouterr().out

    csv_prefix = tmp_path / "flash"
    env = {**os.environ, "POINTS_ADMIN_KEY": ADMIN_KEY}
    # -t is only a bound: the run ends by itself once every user has had its answer.
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            "loadtests/locustfile.py",
            "FlashSaleUser",
            "--headless",
            "-u",
            str(MEMBERS),
            "-r",
            "100",
            "-t",
            "30s",
            "--host",
            service.url,
            "--csv",
            str(csv_prefix),
            "--only-summary",
            *common,
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert "all 300 users have had their answer" in output, output
    assert "--run-time limit reached" not in output, output

    with open(f"{csv_prefix}_stats.csv", newline="") as stats_file:
        rows = {row["Name"]: row for row in csv.DictReader(stats_file)}
    counts = {name: int(row["Request Count"]) for name, row in rows.items()}
    assert counts == {
        "redeem [201]": STOCK,
        "redeem [409 out_of_stock]": MEMBERS - STOCK,
        "Aggregated": MEMBERS,
    }, output
    assert all(int(row["Failure Count"]) == 0 for row in rows.values()), output
    assert f"Flash sale: {STOCK} x 201 (units sold), {MEMBERS - STOCK} x out_of_stock" in output

    with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client:
        reward = client.get(f"/v1/programs/{program}/rewards/flash-deal").json()
    assert (reward["stock"], reward["reserved"], reward["redeemed"]) == (0, 0, STOCK)
    assert reward["stocked"] == STOCK
    completed = scalar(
        service,
        "SELECT count(*) FROM redemptions WHERE program_id=%s AND status='completed'",
        program,
    )
    buyers = scalar(
        service, "SELECT count(DISTINCT member_id) FROM redemptions WHERE program_id=%s", program
    )
    assert (completed, buyers) == (STOCK, STOCK)
    points_left = scalar(service, "SELECT sum(balance) FROM accounts WHERE program_id=%s", program)
    assert points_left == MEMBERS * 1_000 - STOCK * 100  # setup's 1,000 each; a unit costs 100
    assert_books_balance(service, program)
    assert verify_main(["--database-url", service.database_url]) == 0, capsys.readouterr().out
