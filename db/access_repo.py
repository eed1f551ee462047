"""API keys and the audit log: the SQL behind /v1/keys, /v1/audit and the replicas' key
table (serve_app/auth.py KeyRing).

Shares the ingress's pool and its connection checks (db/api_repo.py). The audit log is
append-only (a trigger from migration 0006 refuses UPDATE, DELETE and TRUNCATE); a keyed
write is recorded once however often it is replayed (unique on action, program, target and
Idempotency-Key).
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from domain.limits import CURSOR_LENGTH_MAX, PAGE_SIZE_MAX

# Rows changed this long before the newest change seen are read again at each poll: a
# transaction that stamped changed_at earlier but committed later is not missed.
CHANGED_OVERLAP = timedelta(seconds=5)

KEY_COLUMNS = (
    "key_id, key_hash, role, name, prefix, programs, expires_at, rate_per_s, rate_burst,"
    " created_by, created_at, revoked_at, last_used_at, changed_at"
)
AUDIT_COLUMNS = "audit_id, at, key_id, role, action, program_id, target, before, after"


@dataclass(frozen=True)
class AuditEntry:
    """One administrative change: who (key and role), what, and the state around it."""

    key_id: str
    role: str
    action: str
    program_id: str | None
    target: str | None
    before: Any = None
    after: Any = None
    # A keyed write's Idempotency-Key: a replay is not recorded again.
    request_key: str | None = None


async def record(conn: AsyncConnection[Any], entry: AuditEntry) -> None:
    """Append `entry` (inside the caller's transaction when it has one)."""
    await conn.execute(
        """
        INSERT INTO audit_log (key_id, role, action, program_id, target, request_key,
                               before, after)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING
        """,
        (
            entry.key_id,
            entry.role,
            entry.action,
            entry.program_id,
            entry.target,
            entry.request_key,
            None if entry.before is None else Jsonb(entry.before),
            None if entry.after is None else Jsonb(entry.after),
        ),
    )


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def key_view(row: dict[str, Any]) -> dict[str, Any]:
    """A key as the API shows it: never the secret nor its hash."""
    rate = (
        None
        if row["rate_per_s"] is None
        else {"per_s": row["rate_per_s"], "burst": row["rate_burst"]}
    )
    return {
        "id": row["key_id"],
        "name": row["name"],
        "prefix": row["prefix"],
        "role": row["role"],
        "programs": None if row["programs"] is None else sorted(row["programs"]),
        "expires_at": _iso(row["expires_at"]),
        "rate_limit": rate,
        "created_by": row["created_by"],
        "created_at": _iso(row["created_at"]),
        "revoked_at": _iso(row["revoked_at"]),
        "last_used_at": _iso(row["last_used_at"]),
    }


def audit_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["audit_id"],
        "at": _iso(row["at"]),
        "key_id": row["key_id"],
        "role": row["role"],
        "action": row["action"],
        "program_id": row["program_id"],
        "target": row["target"],
        "before": row["before"],
        "after": row["after"],
    }


def encode_audit_cursor(audit_id: int) -> str:
    return base64.urlsafe_b64encode(str(audit_id).encode()).decode().rstrip("=")


def decode_audit_cursor(cursor: str) -> int:
    """Raises ValueError on anything that is not a cursor this API produced."""
    if len(cursor) > CURSOR_LENGTH_MAX:
        raise ValueError("cursor too long")
    raw = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()).decode()
    if not raw.isdigit():
        raise ValueError("not an audit cursor")
    return int(raw)


class AccessRepo:
    def __init__(
        self, connection: Callable[[], contextlib.AbstractAsyncContextManager[Any]]
    ) -> None:
        # The ingress's checked pooled connections (ApiRepo.connection).
        self._connection = connection

    async def create_key(
        self,
        *,
        key_id: str,
        key_hash: str,
        role: str,
        name: str,
        prefix: str,
        programs: list[str] | None,
        expires_at: datetime | None,
        rate: tuple[int, int] | None,
        audit: AuditEntry,
    ) -> dict[str, Any]:
        async with self._connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"""
                INSERT INTO api_keys (key_id, key_hash, role, name, prefix, programs,
                                      expires_at, rate_per_s, rate_burst, created_by)
                VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {KEY_COLUMNS}
                """,
                (
                    key_id,
                    key_hash,
                    role,
                    name,
                    prefix,
                    programs,
                    expires_at,
                    None if rate is None else rate[0],
                    None if rate is None else rate[1],
                    audit.key_id,
                ),
            )
            row = await cur.fetchone()
            assert row is not None
            view = key_view(row)
            await record(conn, AuditEntry(**{**audit.__dict__, "after": view}))
        return view

    async def get_key(self, key_id: str) -> dict[str, Any] | None:
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = %s", (key_id,))
            row = await cur.fetchone()
        return None if row is None else key_view(row)

    async def list_keys(
        self, *, within: frozenset[str] | None, limit: int, after: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Keys by id, keyset-paginated; with `within`, only keys limited to those programs
        (a program-limited admin sees no key that reaches further than itself)."""
        assert 0 < limit <= PAGE_SIZE_MAX
        scope = None if within is None else sorted(within)
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys"
                " WHERE (%s::text IS NULL OR key_id > %s)"
                " AND (%s::text[] IS NULL OR (programs IS NOT NULL AND programs <@ %s))"
                " ORDER BY key_id LIMIT %s",
                (after, after, scope, scope, limit + 1),
            )
            rows = await cur.fetchall()
        page = rows[:limit]
        next_after = page[-1]["key_id"] if len(rows) > limit else None
        return [key_view(row) for row in page], next_after

    async def revoke_key(self, key_id: str, audit: AuditEntry) -> dict[str, Any] | None:
        """Revoke (idempotent: a revoked key keeps its first revocation time)."""
        async with self._connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_id = %s FOR UPDATE", (key_id,)
            )
            before = await cur.fetchone()
            if before is None:
                return None
            if before["revoked_at"] is not None:
                return key_view(before)
            await cur.execute(
                "UPDATE api_keys SET revoked_at = now(), changed_at = now()"
                f" WHERE key_id = %s RETURNING {KEY_COLUMNS}",
                (key_id,),
            )
            row = await cur.fetchone()
            assert row is not None
            view = key_view(row)
            await record(
                conn, AuditEntry(**{**audit.__dict__, "before": key_view(before), "after": view})
            )
        return view

    async def keys_changed_since(
        self, since: datetime | None
    ) -> tuple[list[dict[str, Any]], datetime | None]:
        """Every key row changed after `since` (all rows when None), revoked ones included,
        and the newest change seen (the next poll's `since`)."""
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT key_id, key_hash, role, programs, expires_at, rate_per_s, rate_burst,"
                " revoked_at, changed_at FROM api_keys"
                " WHERE %s::timestamptz IS NULL OR changed_at > %s",
                (since and since - CHANGED_OVERLAP, since and since - CHANGED_OVERLAP),
            )
            rows = await cur.fetchall()
        newest = max((row["changed_at"] for row in rows), default=since)
        return rows, newest if since is None or newest is None else max(newest, since)

    async def touch_keys(self, key_ids: list[str]) -> None:
        """Stamp last use (not a change replicas need to learn of: changed_at stays)."""
        if not key_ids:
            return
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE api_keys SET last_used_at = now() WHERE key_id = ANY(%s)",
                (sorted(key_ids),),
            )

    async def record(self, entry: AuditEntry) -> None:
        async with self._connection() as conn:
            await record(conn, entry)

    async def list_audit(
        self,
        *,
        within: frozenset[str] | None,
        programs_only: bool,
        program_id: str | None,
        since: datetime | None,
        limit: int,
        before_id: int | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first, keyset-paginated by id; with `within`, only those programs'
        entries; with `programs_only`, no entry outside every program (keys, topology)."""
        assert 0 < limit <= PAGE_SIZE_MAX
        scope = None if within is None else sorted(within)
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {AUDIT_COLUMNS} FROM audit_log"
                " WHERE (%s::text IS NULL OR program_id = %s)"
                " AND (%s::text[] IS NULL OR program_id = ANY(%s))"
                " AND (NOT %s OR program_id IS NOT NULL)"
                " AND (%s::timestamptz IS NULL OR at >= %s)"
                " AND (%s::bigint IS NULL OR audit_id < %s)"
                " ORDER BY audit_id DESC LIMIT %s",
                (
                    program_id,
                    program_id,
                    scope,
                    scope,
                    programs_only,
                    since,
                    since,
                    before_id,
                    before_id,
                    limit + 1,
                ),
            )
            rows = await cur.fetchall()
        page = rows[:limit]
        cursor = encode_audit_cursor(page[-1]["audit_id"]) if len(rows) > limit else None
        return [audit_view(row) for row in page], cursor
