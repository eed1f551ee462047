"""The post-run verifier finds nothing on honest data and flags each kind of corruption."""

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest

from actors.protocol import AccountCommand
from actors.shard_core import ShardCore
from db.engine import libpq_url, migrate
from db.ledger_repo import LedgerRepo
from db.verify_repo import CHAIN_SOUND, run_checks
from domain.errors import Code
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
            "balance equals the sum of the member's ledger entries (less debt)",
        ),
        (
            "UPDATE lots SET remaining = remaining + 1 WHERE lot_id ="
            " (SELECT lot_id FROM lots WHERE remaining < original LIMIT 1)",
            "balance equals the sum of the member's lots",
        ),
        (
            "UPDATE accounts SET lifetime_spent = lifetime_spent + 1 WHERE member_id = 'm1'",
            "lifetime totals equal credits less reversals, and debits less refunds",
        ),
        (
            "UPDATE report_daily_flows SET points = points + 1 WHERE kind = 'debit'",
            "the report rollup of flows equals the transactions by day and kind",
        ),
        (
            "UPDATE report_daily_lots SET remaining = remaining - 1",
            "the report rollup of lots equals the lots by cohort day",
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


# ----------------------------------------------------------------------------- rewards

OVERSOLD = "no reward sold beyond its stock"
COUNTERS = "reward counters equal the units its redemptions hold"
PER_MEMBER = "no member holds more of a reward than its per-member limit"
PAID = "completed redemptions were paid once; failed and cancelled ones cost nothing"
REFUND_REFERS = "every refund gives back one debit of the same member, whole"
RECORDED = "a redemption's recorded debit and refund are its member's, for its points"


@dataclass(frozen=True)
class Rewards:
    """A consistent rewards scenario in `fresh_db` (reward 'mug': 30 points, 5 stocked, at
    most 1 per member). m0 redeemed a mug (completed) and redeemed one more that an operator
    cancelled (debited, then refunded); m1 spent 30 points on something else (debit `d1`)."""

    url: str
    completed: uuid.UUID
    cancelled: uuid.UUID
    m1_debit: uuid.UUID


def failed_checks(url: str) -> set[str]:
    return {result.name for result in run_checks(libpq_url(url)) if result.violations}


async def saga_ledger(url: str, completed: uuid.UUID, cancelled: uuid.UUID) -> dict[str, str]:
    """The account side of both sagas, through ShardCore with the keys the saga uses."""
    core = ShardCore(LedgerRepo(url))

    async def txn(request: AccountCommand) -> str:
        answer = await core.submit(request)
        assert answer.code is Code.CREATED, answer
        return str(answer.body["transaction_id"])

    try:
        await txn(op("credit", "shop", "m0", 100, "c0"))
        await txn(op("credit", "shop", "m1", 50, "c1"))
        ids = {"m1_debit": await txn(op("debit", "shop", "m1", 30, "d1"))}
        ids["cancelled_debit"] = await txn(op("debit", "shop", "m0", 30, f"saga {cancelled} debit"))
        ids["cancelled_refund"] = await txn(
            op(
                "refund",
                "shop",
                "m0",
                30,
                f"saga {cancelled} refund",
                refund_of=uuid.UUID(ids["cancelled_debit"]),
            )
        )
        ids["completed_debit"] = await txn(op("debit", "shop", "m0", 30, f"saga {completed} debit"))
        return ids
    finally:
        await core.close()


REDEMPTION = """
    INSERT INTO redemptions (redemption_id, program_id, reward_id, member_id, slot,
        idempotency_key, request_hash, quantity, cost_points, points, status, stock_state,
        compensate_to, debit_txn_id, refund_txn_id, fulfillment, attempts, created_at,
        updated_at)
    VALUES (%s, 'shop', 'mug', %s, 0, %s, 'h', %s, 30, %s, %s, %s, %s, %s, %s, '{}', 1,
        now(), now())
"""


def add_redemption(
    conn: psycopg.Connection,
    member: str,
    status: str,
    stock_state: str,
    *,
    rid: uuid.UUID | None = None,
    compensate_to: str | None = None,
    debit: str | None = None,
    refund: str | None = None,
) -> uuid.UUID:
    """One mug for 30 points."""
    rid = rid or uuid.uuid4()
    conn.execute(
        REDEMPTION,
        (rid, member, f"redeem {rid}", 1, 30, status, stock_state, compensate_to, debit, refund),
    )
    return rid


@pytest.fixture
def rewards(fresh_db: str) -> Rewards:
    completed, cancelled = uuid.uuid4(), uuid.uuid4()
    ids = asyncio.run(saga_ledger(fresh_db, completed, cancelled))
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO rewards (program_id, reward_id, name, cost_points, stocked, reserved,"
            " redeemed, per_member_limit, active, fulfillment, version, created_at, updated_at)"
            " VALUES ('shop', 'mug', 'Mug', 30, 5, 0, 1, 1, true, '{}', 3, now(), now())"
        )
        add_redemption(
            conn, "m0", "completed", "redeemed", rid=completed, debit=ids["completed_debit"]
        )
        add_redemption(
            conn,
            "m0",
            "cancelled",
            "released",
            rid=cancelled,
            compensate_to="cancelled",
            debit=ids["cancelled_debit"],
            refund=ids["cancelled_refund"],
        )
    return Rewards(fresh_db, completed, cancelled, uuid.UUID(ids["m1_debit"]))


def test_consistent_redemptions_pass(rewards: Rewards, capsys: pytest.CaptureFixture[str]) -> None:
    assert failed_checks(rewards.url) == set()
    assert verify_main(["--database-url", rewards.url]) == 0
    assert "FAIL" not in capsys.readouterr().out


def test_an_oversold_reward_is_reported(rewards: Rewards) -> None:
    with psycopg.connect(rewards.url, autocommit=True) as conn:
        conn.execute("ALTER TABLE rewards DROP CONSTRAINT rewards_not_oversold")
        conn.execute("UPDATE rewards SET stocked = 0 WHERE reward_id = 'mug'")
    assert failed_checks(rewards.url) == {OVERSOLD}
    assert verify_main(["--database-url", rewards.url]) == 1


def test_reward_counters_off_from_redemptions_are_reported(rewards: Rewards) -> None:
    with psycopg.connect(rewards.url, autocommit=True) as conn:
        conn.execute("UPDATE rewards SET redeemed = 2 WHERE reward_id = 'mug'")
    assert failed_checks(rewards.url) == {COUNTERS}


def test_a_member_over_the_per_member_limit_is_reported(rewards: Rewards) -> None:
    # m0 holds 2 units of the completed redemption (counters and payment kept consistent).
    with psycopg.connect(rewards.url, autocommit=True) as conn:
        conn.execute(
            "UPDATE redemptions SET quantity = 2, cost_points = 15 WHERE redemption_id = %s",
            (rewards.completed,),
        )
        conn.execute("UPDATE rewards SET redeemed = 2 WHERE reward_id = 'mug'")
    assert failed_checks(rewards.url) == {PER_MEMBER}


def test_a_completed_redemption_without_its_debit_is_reported(rewards: Rewards) -> None:
    # m1 got a mug (counted in the reward's counters) without paying for it.
    with psycopg.connect(rewards.url, autocommit=True) as conn:
        add_redemption(conn, "m1", "completed", "redeemed")
        conn.execute("UPDATE rewards SET redeemed = 2 WHERE reward_id = 'mug'")
    assert failed_checks(rewards.url) == {PAID}


def test_a_cancelled_redemption_not_refunded_is_reported(rewards: Rewards) -> None:
    # The completed redemption is marked cancelled and its unit released, but its debit
    # was never refunded.
    with psycopg.connect(rewards.url, autocommit=True) as conn:
        conn.execute(
            "UPDATE redemptions SET status = 'cancelled', stock_state = 'released',"
            " compensate_to = 'cancelled' WHERE redemption_id = %s",
            (rewards.completed,),
        )
        conn.execute("UPDATE rewards SET redeemed = 0 WHERE reward_id = 'mug'")
    assert failed_checks(rewards.url) == {PAID}


def test_a_refund_of_another_members_debit_is_reported(rewards: Rewards) -> None:
    # m0's refund (30 points) is made to refer to m1's debit of 30 points.
    with psycopg.connect(rewards.url, autocommit=True) as conn:
        conn.execute("ALTER TABLE transactions DISABLE TRIGGER USER")
        conn.execute(
            "UPDATE transactions SET refers_to = %s WHERE idempotency_key = %s",
            (rewards.m1_debit, f"saga {rewards.cancelled} refund"),
        )
        conn.execute("ALTER TABLE transactions ENABLE TRIGGER USER")
    # The refund no longer refers to its redemption's debit either, and the row no longer
    # hashes to its link in the chain.
    assert failed_checks(rewards.url) == {REFUND_REFERS, RECORDED, CHAIN_SOUND}


def test_a_redemption_recording_another_members_debit_is_reported(rewards: Rewards) -> None:
    with psycopg.connect(rewards.url, autocommit=True) as conn:
        conn.execute(
            "UPDATE redemptions SET debit_txn_id = %s WHERE redemption_id = %s",
            (rewards.m1_debit, rewards.completed),
        )
    assert failed_checks(rewards.url) == {RECORDED}


def test_points_verify_reports_each_check_and_fails_on_a_violation(fresh_db: str) -> None:
    from typer.testing import CliRunner

    from serve_app.cli import app

    asyncio.run(activity(fresh_db))
    runner = CliRunner()
    honest = runner.invoke(app, ["verify", "--database-url", fresh_db])
    assert honest.exit_code == 0, honest.output
    assert "0 failed" in honest.output
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("UPDATE accounts SET balance = balance + 1 WHERE member_id = 'm1'")
    broken = runner.invoke(app, ["verify", "--database-url", fresh_db])
    assert broken.exit_code == 1
    # Both the lots and the ledger disagree with that balance now.
    assert "passed, 2 failed" in broken.output
