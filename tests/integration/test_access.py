"""Keys and the audit log against PostgreSQL; migration 0006 over a 0005 database."""

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from alembic import command

from db.access_repo import AccessRepo, AuditEntry
from db.api_repo import ApiRepo, ensure_admin_key
from db.engine import alembic_config, migrate
from serve_app.auth import KeyRecord, KeyRing, Refusal, Role, hash_key, key_prefix, new_key
from serve_app.wiring import key_record
from tests.conftest import temporary_database


@pytest.fixture
async def repos(database_url: str) -> AsyncIterator[tuple[ApiRepo, AccessRepo]]:
    api = ApiRepo(database_url)
    await api.open()
    try:
        yield api, AccessRepo(api.connection)
    finally:
        await api.close()


def admin_entry(action: str, program_id: str | None, target: str | None) -> AuditEntry:
    return AuditEntry(
        key_id="admin", role="admin", action=action, program_id=program_id, target=target
    )


async def _new_key(
    access: AccessRepo, role: str, programs: list[str] | None = None, **extra: object
) -> tuple[str, dict[str, object]]:
    from serve_app.auth import new_key_id

    key_id = new_key_id()
    key = new_key(key_id)
    view = await access.create_key(
        key_id=key_id,
        key_hash=hash_key(key),
        role=role,
        name=f"{role} key",
        prefix=key_prefix(key_id),
        programs=programs,
        expires_at=extra.get("expires_at"),  # type: ignore[arg-type]
        rate=extra.get("rate"),  # type: ignore[arg-type]
        audit=admin_entry("key.create", None, key_id),
    )
    return key, view


async def test_a_key_made_is_read_by_the_ring_and_a_revocation_reaches_it(
    repos: tuple[ApiRepo, AccessRepo],
) -> None:
    _, access = repos
    key, view = await _new_key(access, "service", ["shop"], rate=(5, 10))
    assert view["prefix"] == f"pts_{view['id']}" and "key" not in view and "key_hash" not in view
    assert view["programs"] == ["shop"] and view["rate_limit"] == {"per_s": 5, "burst": 10}
    ring = KeyRing()
    rows, since = await access.keys_changed_since(None)
    ring.apply(key_record(row) for row in rows)
    found = ring.verify(key)
    assert isinstance(found, KeyRecord) and found.role is Role.SERVICE
    assert found.programs == frozenset({"shop"}) and found.rate == (5, 10)
    revoked = await access.revoke_key(str(view["id"]), admin_entry("key.revoke", None, "x"))
    assert revoked is not None and revoked["revoked_at"] is not None
    # Revoking again keeps the first time (idempotent).
    again = await access.revoke_key(str(view["id"]), admin_entry("key.revoke", None, "x"))
    assert again == revoked
    rows, _ = await access.keys_changed_since(since)
    assert str(view["id"]) in {row["key_id"] for row in rows}
    ring.apply(key_record(row) for row in rows)
    assert ring.verify(key) is Refusal.UNKNOWN
    assert await access.revoke_key("nosuchkey", admin_entry("key.revoke", None, "x")) is None


async def test_lists_of_keys_are_paged_and_scoped(repos: tuple[ApiRepo, AccessRepo]) -> None:
    _, access = repos
    prog = f"p{datetime.now().timestamp():.0f}"
    _, mine = await _new_key(access, "viewer", [prog])
    _, wider = await _new_key(access, "viewer", [prog, "elsewhere"])
    scoped, _ = await access.list_keys(within=frozenset({prog}), limit=100, after=None)
    ids = {item["id"] for item in scoped}
    assert mine["id"] in ids and wider["id"] not in ids
    assert all(item["programs"] and set(item["programs"]) <= {prog} for item in scoped)
    seen: list[str] = []
    after = None
    while True:
        page, after = await access.list_keys(within=None, limit=2, after=after)
        seen += [str(item["id"]) for item in page]
        if after is None:
            break
    assert seen == sorted(seen) and {mine["id"], wider["id"]} <= set(seen)


async def test_last_use_is_stamped_without_telling_replicas(
    repos: tuple[ApiRepo, AccessRepo],
) -> None:
    _, access = repos
    _, view = await _new_key(access, "viewer")
    _, since = await access.keys_changed_since(None)
    await asyncio.sleep(0.01)
    await access.touch_keys([str(view["id"])])
    found = await access.get_key(str(view["id"]))
    assert found is not None and found["last_used_at"] is not None
    rows, _ = await access.keys_changed_since(since)
    # Within the overlap rows are read again; what matters is changed_at did not move.
    assert all(row["changed_at"] <= since for row in rows if row["key_id"] == view["id"])


async def test_program_changes_are_audited_in_their_transaction_and_replays_once(
    repos: tuple[ApiRepo, AccessRepo],
) -> None:
    api, access = repos
    prog = f"audit{datetime.now().timestamp():.0f}"
    entry = AuditEntry(
        key_id="op1", role="operator", action="program.put", program_id=prog, target=prog
    )
    await api.put_program(prog, "First", None, entry)
    await api.put_program(prog, "Second", None, entry)
    items, _ = await access.list_audit(
        within=None, programs_only=False, program_id=prog, since=None, limit=10, before_id=None
    )
    assert [item["after"]["name"] for item in items] == ["Second", "First"]
    assert items[0]["before"]["name"] == "First" and items[1]["before"] is None
    assert items[0]["key_id"] == "op1" and items[0]["role"] == "operator"
    keyed = AuditEntry(
        key_id="op1",
        role="operator",
        action="reward.restock",
        program_id=prog,
        target="mug",
        after={"quantity": 5},
        request_key="k1",
    )
    await access.record(keyed)
    await access.record(keyed)  # a replay of the same keyed request
    items, _ = await access.list_audit(
        within=frozenset({prog}),
        programs_only=True,
        program_id=None,
        since=None,
        limit=10,
        before_id=None,
    )
    assert [item["action"] for item in items] == ["reward.restock", "program.put", "program.put"]
    # Another program's operator sees none of it; a key change is outside every program.
    others, _ = await access.list_audit(
        within=frozenset({"other"}),
        programs_only=True,
        program_id=None,
        since=None,
        limit=10,
        before_id=None,
    )
    assert others == []
    first, cursor = await access.list_audit(
        within=None, programs_only=False, program_id=prog, since=None, limit=2, before_id=None
    )
    assert cursor is not None
    from db.access_repo import decode_audit_cursor

    rest, end = await access.list_audit(
        within=None,
        programs_only=False,
        program_id=prog,
        since=None,
        limit=2,
        before_id=decode_audit_cursor(cursor),
    )
    assert end is None and [i["id"] for i in first + rest] == sorted(
        [i["id"] for i in first + rest], reverse=True
    )
    later, _ = await access.list_audit(
        within=None,
        programs_only=False,
        program_id=prog,
        since=datetime.now(UTC) + timedelta(hours=1),
        limit=10,
        before_id=None,
    )
    assert later == []


def test_the_audit_log_is_append_only(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO audit_log (key_id, role, action) VALUES ('k', 'admin', 'x')")
        for statement in (
            "UPDATE audit_log SET action = 'y'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
        ):
            with pytest.raises(psycopg.errors.RestrictViolation):
                conn.execute(statement)  # type: ignore[arg-type]


@pytest.fixture
def database_at_0005(pg_admin_url: str) -> Iterator[str]:
    with temporary_database(pg_admin_url, "points_upgrade6") as url:
        migrate(url, "0005")
        yield url


def test_0006_keeps_the_keys_the_previous_version_wrote(database_at_0005: str) -> None:
    """The admin key 0005 stored (hash and role only) still authenticates after 0006."""
    old_key = "pts_" + "Q" * 43  # the previous version's form: pts_ + token_urlsafe(32)
    with psycopg.connect(database_at_0005, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO api_keys (key_id, key_hash, role) VALUES ('admin', %s, 'admin')",
            (hash_key(old_key),),
        )
    migrate(database_at_0005)
    with psycopg.connect(database_at_0005, autocommit=True) as conn:
        row = conn.execute(
            "SELECT name, prefix, programs, changed_at IS NOT NULL FROM api_keys"
            " WHERE key_id = 'admin'"
        ).fetchone()
    assert row == ("admin", "pts_…", None, True)

    async def verify() -> KeyRecord | Refusal:
        api = ApiRepo(database_at_0005)
        await api.open()
        try:
            rows, _ = await AccessRepo(api.connection).keys_changed_since(None)
        finally:
            await api.close()
        ring = KeyRing()
        ring.apply(key_record(row) for row in rows)
        return ring.verify(old_key)

    found = asyncio.run(verify())
    assert isinstance(found, KeyRecord) and found.role is Role.ADMIN and found.programs is None
    # Installing the key again (POINTS_ADMIN_KEY at start) works on the new schema.
    ensure_admin_key(database_at_0005, hash_key(old_key))
    command.downgrade(alembic_config(database_at_0005), "0005")
    with psycopg.connect(database_at_0005, autocommit=True) as conn:
        assert conn.execute("SELECT role FROM api_keys").fetchall() == [("admin",)]
