"""Migration 0007 (risk control) over data the previous version wrote: accounts start with
nothing held and empty counters, stored idempotent answers replay byte for byte, a
redemption reads back unchanged, and the downgrade restores the previous schema.

The rows are written by SQL on a database at revision 0006 (as the previous version's
shards wrote them); the expected answer is literal bytes, not computed by the code under
test.
"""

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from alembic import command
from psycopg.types.json import Jsonb

from actors.protocol import Debit
from actors.shard_core import ShardCore
from db.engine import alembic_config, migrate
from db.ledger_repo import LedgerRepo
from db.reward_repo import REDEMPTION_COLUMNS, redemption_from_row
from domain.errors import Code
from domain.idempotency import request_hash
from domain.rewards import redemption_view
from serve_app.problems import outcome_response
from tests.conftest import temporary_database

PROGRAM, MEMBER = "shop", "alice"
TXN = "0190f1d2-0000-7000-8000-000000000001"
LOT = "0190f1d2-0000-7000-8000-000000000002"
CREDIT_TXN = "0190f1d2-0000-7000-8000-000000000003"
REDEMPTION = "5b7f0f4e-1d2c-4b3a-8e9f-0a1b2c3d4e5f"
STORED = {
    "transaction_id": TXN,
    "type": "debit",
    "points": 120,
    "balance_after": 380,
    "balance": {"available": 380, "total": 380},
}
# The previous version's answer to a replay: JSONB orders keys by length, then bytewise.
STORED_BYTES = (
    b'{"type":"debit","points":120,"balance":{"total":380,"available":380},'
    b'"balance_after":380,"transaction_id":"0190f1d2-0000-7000-8000-000000000001"}'
)


def _hash(points: int) -> str:
    fields = {"program_id": PROGRAM, "member_id": MEMBER, "points": points, "reason": "r"}
    return request_hash("debit", fields)


@pytest.fixture
def old_database(pg_admin_url: str) -> Iterator[str]:
    with temporary_database(pg_admin_url, "points_upgrade7") as url:
        migrate(url, "0006")
        with psycopg.connect(url, autocommit=True) as conn:
            sql: list[tuple[str, tuple[Any, ...]]] = [
                ("INSERT INTO programs (program_id, name) VALUES (%s, 'Shop')", (PROGRAM,)),
                (
                    "INSERT INTO accounts (program_id, member_id, balance, version,"
                    " lifetime_earned, lifetime_spent, created_at, updated_at)"
                    " VALUES (%s, %s, 380, 3, 500, 120, now(), now())",
                    (PROGRAM, MEMBER),
                ),
                (
                    "INSERT INTO transactions (txn_id, program_id, member_id, kind, points,"
                    " reason, balance_after, created_at, allocations)"
                    " VALUES (%s, %s, %s, 'credit', 500, 'r', 500, now(), %s)",
                    (CREDIT_TXN, PROGRAM, MEMBER, Jsonb([[LOT, 500]])),
                ),
                (
                    "INSERT INTO lots (lot_id, program_id, member_id, txn_id, original,"
                    " remaining, created_at) VALUES (%s, %s, %s, %s, 500, 380, now())",
                    (LOT, PROGRAM, MEMBER, CREDIT_TXN),
                ),
                (
                    "INSERT INTO idempotency_keys (program_id, member_id, key, request_hash,"
                    " code, response, created_at) VALUES (%s, %s, 'k1', %s, 'created', %s,"
                    " now())",
                    (PROGRAM, MEMBER, _hash(120), Jsonb(STORED)),
                ),
                (
                    "INSERT INTO rewards (program_id, reward_id, name, cost_points, stocked,"
                    " reserved, redeemed, active, fulfillment, version, created_at,"
                    " updated_at) VALUES (%s, 'mug', 'Mug', 120, 10, 0, 1, true, %s, 2,"
                    " now(), now())",
                    (PROGRAM, Jsonb({"type": "none"})),
                ),
                (
                    "INSERT INTO redemptions (redemption_id, program_id, reward_id, member_id,"
                    " slot, idempotency_key, request_hash, quantity, cost_points, points,"
                    " status, stock_state, fulfillment, attempts, created_at, updated_at)"
                    " VALUES (%s, %s, 'mug', %s, 0, 'r1', 'h', 1, 120, 120, 'completed',"
                    " 'redeemed', %s, 0, now(), now())",
                    (REDEMPTION, PROGRAM, MEMBER, Jsonb({"type": "none"})),
                ),
            ]
            for statement, params in sql:
                conn.execute(statement, params)  # type: ignore[arg-type]
        yield url


def _redemption_view(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        cur = conn.cursor(row_factory=psycopg.rows.dict_row)
        row = cur.execute(
            f"SELECT {REDEMPTION_COLUMNS} FROM redemptions",  # type: ignore[arg-type]
        ).fetchone()
    assert row is not None
    return redemption_view(redemption_from_row(row))


async def test_old_data_reads_and_replays_the_same_after_the_upgrade(old_database: str) -> None:
    migrate(old_database)
    with psycopg.connect(old_database) as conn:
        assert conn.execute("SELECT held, velocity FROM accounts").fetchall() == [(0, {})]
    view = _redemption_view(old_database)
    assert "review_id" not in view and view["status"] == "completed"
    core = ShardCore(LedgerRepo(old_database))
    try:
        replay = await core.submit(
            Debit(
                program_id=PROGRAM,
                member_id=MEMBER,
                points=120,
                reason="r",
                key="k1",
                request_hash=_hash(120),
            )
        )
        assert replay.replayed
        response = outcome_response(replay)
        assert (response.status_code, bytes(response.body)) == (201, STORED_BYTES)
        # The account written by the previous version takes new debits (no policy: no
        # limits, no reviews) and its books stay whole.
        fresh = await core.submit(
            Debit(
                program_id=PROGRAM,
                member_id=MEMBER,
                points=80,
                reason="r",
                key="k2",
                request_hash=_hash(80),
            )
        )
        assert fresh.code is Code.CREATED and fresh.body["balance"]["available"] == 300
    finally:
        await core.close()


def test_the_downgrade_restores_the_previous_schema(old_database: str) -> None:
    migrate(old_database)
    command.downgrade(alembic_config(old_database), "0006")
    with psycopg.connect(old_database) as conn:
        columns = {
            row[0]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_name IN ('accounts', 'redemptions')"
            ).fetchall()
        }
        assert not {"held", "velocity", "review_id", "failure_extra"} & columns
        assert conn.execute("SELECT to_regclass('reviews')").fetchone() == (None,)
    migrate(old_database)
    assert uuid.UUID(_redemption_view(old_database)["id"]) == uuid.UUID(REDEMPTION)
