"""Queries the ingress runs directly, and migrations, against a real PostgreSQL."""

import secrets
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from actors.shard_core import ShardCore
from db.api_repo import ApiRepo, admin_key_installed, ensure_admin_key
from db.engine import migrate
from db.ledger_repo import LedgerRepo
from tests.integration.test_shard_core import op


async def test_programs_upsert_reports_created_then_updated(database_url: str) -> None:
    repo = ApiRepo(database_url)
    await repo.open()
    try:
        pid = f"p-{secrets.token_hex(4)}"
        created, program = await repo.put_program(pid, "First")
        assert created and program["name"] == "First"
        created, program = await repo.put_program(pid, "Renamed")
        assert not created and program["name"] == "Renamed"
        assert (await repo.get_program(pid))["name"] == "Renamed"  # type: ignore[index]
        assert await repo.get_program("nope") is None
    finally:
        await repo.close()


async def test_history_is_newest_first_filtered_and_keyset_paginated(database_url: str) -> None:
    repo = ApiRepo(database_url)
    await repo.open()
    core = ShardCore(LedgerRepo(database_url))
    pid = f"p-{secrets.token_hex(4)}"
    await repo.put_program(pid, "History")
    try:
        for i in range(7):
            await core.submit(op("credit", pid, "m", 10, f"c{i}"))
        for i in range(3):
            await core.submit(op("debit", pid, "m", 1, f"d{i}"))
        seen: list[str] = []
        cursor = None
        while True:
            items, next_cursor = await repo.list_transactions(
                pid, "m", kind=None, since=None, until=None, limit=3, cursor=cursor
            )
            seen += [i["transaction_id"] for i in items]
            if next_cursor is None:
                break
            from db.api_repo import decode_cursor

            cursor = decode_cursor(next_cursor)
        assert len(seen) == len(set(seen)) == 10
        assert seen == sorted(seen, reverse=True)  # uuid7: newest first
        debits, _ = await repo.list_transactions(
            pid, "m", kind="debit", since=None, until=None, limit=50, cursor=None
        )
        assert [d["type"] for d in debits] == ["debit"] * 3
        future, _ = await repo.list_transactions(
            pid,
            "m",
            kind=None,
            since=datetime.now(UTC) + timedelta(hours=1),
            until=None,
            limit=50,
            cursor=None,
        )
        assert future == []
    finally:
        await core.close()
        await repo.close()


def test_admin_key_is_stored_hashed(database_url: str) -> None:
    ensure_admin_key(database_url, "a" * 64)
    assert admin_key_installed(database_url)
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT key_hash FROM api_keys WHERE key_id='admin'").fetchone() == (
            "a" * 64,
        )


def test_migrations_go_down_and_up_again(pg_admin_url: str) -> None:
    from alembic import command

    from db.engine import alembic_config
    from tests.conftest import temporary_database

    with temporary_database(pg_admin_url, "points_mig") as url:
        migrate(url)
        command.downgrade(alembic_config(url), "base")
        with psycopg.connect(url) as conn:
            tables = conn.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema='public'"
                " AND table_name <> 'alembic_version'"
            ).fetchone()
            assert tables == (0,)
        migrate(url)
        with psycopg.connect(url) as conn, pytest.raises(psycopg.errors.RestrictViolation):
            conn.execute("TRUNCATE transactions CASCADE")
