"""Queries the ingress runs directly, and migrations, against a real PostgreSQL."""

import base64
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

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


async def _all_pages(fetch: Any, limit: int) -> list[dict[str, Any]]:
    """Every item of a keyset-paginated list, following next_cursor to the last page."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page, cursor = await fetch(limit=limit, cursor=cursor)
        assert len(page) <= limit
        items += page
        if cursor is None:
            return items
        assert page  # a next_cursor promises another page


async def test_programs_are_listed_by_id_across_pages(database_url: str) -> None:
    repo = ApiRepo(database_url)
    await repo.open()
    try:
        prefix = f"lp-{secrets.token_hex(3)}"
        for i in range(7):
            await repo.put_program(f"{prefix}-{i}", f"Program {i}", {"time_zone": "UTC"})
        with psycopg.connect(database_url) as conn:
            # The database's order (its collation), which the cursor follows too.
            every_id = [
                r[0] for r in conn.execute("SELECT program_id FROM programs ORDER BY program_id")
            ]
        assert len(every_id) >= 7
        for limit in (1, 3, 7, 200):
            listed = await _all_pages(repo.list_programs, limit)
            ids = [p["program_id"] for p in listed]
            assert ids == every_id and len(set(ids)) == len(ids)
        mine = [p for p in listed if p["program_id"].startswith(prefix)]
        assert mine[0] == await repo.get_program(f"{prefix}-0")  # get_program's shape
        assert mine[0]["created_at"].endswith("Z")
        with pytest.raises(ValueError):
            await repo.list_programs(limit=3, cursor="not a cursor!")
    finally:
        await repo.close()


async def test_members_are_listed_by_id_filtered_by_tier(database_url: str) -> None:
    repo = ApiRepo(database_url)
    await repo.open()
    core = ShardCore(LedgerRepo(database_url))
    pid = f"p-{secrets.token_hex(4)}"
    await repo.put_program(pid, "Members")
    try:
        members = [f"m{i:02d}" for i in range(11)]
        for i, member in enumerate(members):
            await core.submit(op("credit", pid, member, 10 + i, f"c-{member}"))
        await core.submit(op("debit", pid, "m03", 4, "d-m03"))
        gold = {"m01", "m04", "m05", "m09"}
        with psycopg.connect(database_url) as conn:
            conn.execute(
                "UPDATE accounts SET tier = 'gold' WHERE program_id = %s AND member_id = ANY(%s)",
                (pid, list(gold)),
            )

        def fetch(tier: str | None) -> Any:
            async def page(limit: int, cursor: str | None) -> Any:
                return await repo.list_members(pid, tier=tier, limit=limit, cursor=cursor)

            return page

        for limit in (1, 4, 11, 50):
            listed = await _all_pages(fetch(None), limit)
            assert [m["member_id"] for m in listed] == members
            golden = await _all_pages(fetch("gold"), limit)
            assert [m["member_id"] for m in golden] == sorted(gold)
        m03 = next(m for m in listed if m["member_id"] == "m03")
        assert set(m03) == {
            "member_id",
            "balance",
            "tier",
            "lifetime_earned",
            "lifetime_spent",
            "created_at",
            "updated_at",
        }
        assert (m03["balance"], m03["lifetime_earned"], m03["lifetime_spent"]) == (9, 13, 4)
        assert m03["tier"] is None and m03["updated_at"].endswith("Z")
        assert all(m["tier"] == "gold" for m in golden)
        assert await repo.list_members(pid, tier="platinum", limit=5, cursor=None) == ([], None)
    finally:
        await core.close()
        await repo.close()


async def test_a_program_without_members_lists_none(database_url: str) -> None:
    repo = ApiRepo(database_url)
    await repo.open()
    try:
        pid = f"p-{secrets.token_hex(4)}"
        await repo.put_program(pid, "Empty")
        assert await repo.list_members(pid, tier=None, limit=10, cursor=None) == ([], None)
        assert await repo.list_members("no-such", tier=None, limit=10, cursor=None) == ([], None)
    finally:
        await repo.close()


@pytest.mark.parametrize(
    "cursor",
    ["not a cursor!", "A" * 201, "gA", base64.urlsafe_b64encode(b"m\x00").decode()],
)
async def test_a_bad_cursor_raises_value_error(database_url: str, cursor: str) -> None:
    repo = ApiRepo(database_url)
    await repo.open()
    try:
        with pytest.raises(ValueError):
            await repo.list_members("p", tier=None, limit=10, cursor=cursor)
        with pytest.raises(ValueError):
            await repo.list_programs(limit=10, cursor=cursor)
    finally:
        await repo.close()
