"""Migration 0004: idempotent answers stored by the previous version (HTTP status + body with
the code) replay exactly as they did before the upgrade: same status, same bytes.

The rows are written in the old form, on a database at revision 0003, by SQL (the way the
previous version's shards wrote them). The expected answers are literal bytes, the old
renderer's output, not computed by the code under test.
"""

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
from domain.errors import Code
from domain.idempotency import request_hash
from serve_app.problems import outcome_response
from tests.conftest import temporary_database

PROGRAM, MEMBER = "shop", "alice"
CREATED_BODY = {
    "transaction_id": "0190f1d2-0000-7000-8000-000000000001",
    "type": "debit",
    "points": 120,
    "balance_after": 380,
    "balance": {"available": 380, "total": 380},
}
REFUSED_DETAIL = "balance 380 is less than 100000"


def _hash(key: str, points: int) -> str:
    fields = {"program_id": PROGRAM, "member_id": MEMBER, "points": points, "reason": "r"}
    return request_hash("debit", fields)


# key -> (points of the request, status and body as the previous version stored them)
OLD_ROWS: dict[str, tuple[int, int, dict[str, Any]]] = {
    "redeem-7": (120, 201, CREATED_BODY),
    "redeem-8": (
        100_000,
        409,
        {"code": "insufficient_points", "detail": REFUSED_DETAIL},
    ),
    "noop-1": (5, 200, {"changed": False}),
}
# What the previous version answered to a replay of each (status, exact body bytes). It
# read the body back from JSONB, which orders keys by length, then bytewise.
OLD_ANSWERS: dict[str, tuple[int, bytes]] = {
    "redeem-7": (
        201,
        b'{"type":"debit","points":120,"balance":{"total":380,"available":380},'
        b'"balance_after":380,"transaction_id":"0190f1d2-0000-7000-8000-000000000001"}',
    ),
    "redeem-8": (
        409,
        b'{"type":"https://points.dev/problems/insufficient_points",'
        b'"title":"Insufficient points","status":409,'
        b'"detail":"' + REFUSED_DETAIL.encode() + b'","code":"insufficient_points"}',
    ),
    "noop-1": (200, b'{"changed":false}'),
}


@pytest.fixture
def old_database(pg_admin_url: str) -> Iterator[str]:
    with temporary_database(pg_admin_url, "points_upgrade") as url:
        migrate(url, "0003")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO programs (program_id, name) VALUES (%s, 'Shop')", (PROGRAM,))
            conn.execute(
                "INSERT INTO accounts (program_id, member_id, balance, version, lifetime_earned,"
                " lifetime_spent, created_at, updated_at)"
                " VALUES (%s, %s, 0, 1, 0, 0, now(), now())",
                (PROGRAM, MEMBER),
            )
            for key, (points, status, body) in OLD_ROWS.items():
                conn.execute(
                    "INSERT INTO idempotency_keys (program_id, member_id, key, request_hash,"
                    " status, response, created_at) VALUES (%s, %s, %s, %s, %s, %s, now())",
                    (PROGRAM, MEMBER, key, _hash(key, points), status, Jsonb(body)),
                )
        yield url


def _rows(url: str, columns: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            f"SELECT key, {columns} FROM idempotency_keys ORDER BY key"  # type: ignore[arg-type]
        ).fetchall()


def test_upgrade_converts_statuses_to_codes_and_downgrade_restores_them(old_database: str) -> None:
    before = _rows(old_database, "status, response")
    migrate(old_database)
    assert _rows(old_database, "code, response") == [
        ("noop-1", "ok", {"changed": False}),
        ("redeem-7", "created", CREATED_BODY),
        ("redeem-8", "insufficient_points", {"detail": REFUSED_DETAIL}),
    ]
    command.downgrade(alembic_config(old_database), "0003")
    assert _rows(old_database, "status, response") == before
    migrate(old_database)


async def test_a_key_stored_before_the_upgrade_replays_what_it_answered_before(
    old_database: str,
) -> None:
    migrate(old_database)
    core = ShardCore(LedgerRepo(old_database))
    try:
        for key, (points, _, _) in OLD_ROWS.items():
            command_ = Debit(
                program_id=PROGRAM,
                member_id=MEMBER,
                points=points,
                reason="r",
                key=key,
                request_hash=_hash(key, points),
            )
            outcome = await core.submit(command_)
            assert outcome.replayed is True, (key, outcome)
            response = outcome_response(outcome)
            status, body = OLD_ANSWERS[key]
            assert (response.status_code, bytes(response.body)) == (status, body), key
            assert response.headers["idempotent-replayed"] == "true"
        # A different body under an old key is still a conflict.
        conflict = await core.submit(
            Debit(
                program_id=PROGRAM,
                member_id=MEMBER,
                points=121,
                reason="r",
                key="redeem-7",
                request_hash=_hash("redeem-7", 121),
            )
        )
        assert conflict.code is Code.IDEMPOTENCY_CONFLICT
    finally:
        await core.close()
