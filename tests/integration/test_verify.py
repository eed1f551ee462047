"""The post-run verifier finds nothing on honest data and flags each kind of corruption."""

import asyncio
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from actors.shard_core import ShardCore
from db.engine import migrate
from db.ledger_repo import LedgerRepo
from loadtests.verify import main as verify_main
from tests.conftest import temporary_database
from tests.integration.test_shard_core import op


@pytest.fixture
def fresh_db(pg_admin_url: str) -> Iterator[str]:
    with temporary_database(pg_admin_url, "points_verify") as url:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO programs (program_id, name) VALUES ('shop', 'Shop')")
        yield url


async def activity(url: str) -> None:
    core = ShardCore(LedgerRepo(url))
    try:
        await asyncio.gather(
            *(core.submit(op("credit", "shop", f"m{i}", 50, "c")) for i in range(20))
        )
        await asyncio.gather(
            *(core.submit(op("debit", "shop", f"m{i % 20}", 7, f"d{i}")) for i in range(100))
        )
    finally:
        await core.close()


def test_honest_ledger_passes(fresh_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(activity(fresh_db))
    assert verify_main(["--database-url", fresh_db]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and "FAIL" not in out


@pytest.mark.parametrize(
    ("corruption", "failed_check"),
    [
        (
            "INSERT INTO ledger_entries"
            " (txn_id, program_id, account, member_id, amount, created_at)"
            " SELECT txn_id, program_id, 'member', member_id, 1, now() FROM transactions LIMIT 1",
            "balance equals the sum of the member's ledger entries",
        ),
        (
            "UPDATE lots SET remaining = remaining + 1 WHERE lot_id ="
            " (SELECT lot_id FROM lots WHERE remaining < original LIMIT 1)",
            "balance equals the sum of the member's lots",
        ),
        (
            "UPDATE accounts SET lifetime_spent = lifetime_spent + 1 WHERE member_id = 'm1'",
            "lifetime totals equal the member's credits and debits",
        ),
    ],
)
def test_each_corruption_is_reported(
    fresh_db: str, corruption: str, failed_check: str, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(activity(fresh_db))
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(corruption)  # type: ignore[arg-type]
    assert verify_main(["--database-url", fresh_db]) == 1
    assert f"FAIL {failed_check}" in capsys.readouterr().out


def test_a_duplicated_key_is_reported(fresh_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(activity(fresh_db))
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        txn = uuid.uuid4()
        conn.execute(
            "INSERT INTO transactions (txn_id, program_id, member_id, kind, points, reason,"
            " balance_after, created_at, idempotency_key, allocations)"
            " VALUES (%s, 'shop', 'm0', 'credit', 1, 'dup', 0, now(), 'c', '[]')",
            (txn,),
        )
    assert verify_main(["--database-url", fresh_db]) == 1
    assert "FAIL no idempotency key moved points twice" in capsys.readouterr().out
