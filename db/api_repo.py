"""Queries the HTTP ingress runs directly: programs, history, API keys, readiness.

Async psycopg 3 with a small pool per ingress replica. Writes that move points never happen
here: they go through the account shards.
"""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row, scalar_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from db.access_repo import AuditEntry, record
from db.ledger_repo import REVIEW_COLUMNS, review_from_row
from db.reward_repo import REDEMPTION_COLUMNS, REWARD_COLUMNS, redemption_from_row, reward_from_row
from domain.limits import CURSOR_LENGTH_MAX, PAGE_SIZE_MAX
from domain.reviews import Review, review_view
from domain.rewards import Redemption, redemption_view, reward_view

# How long a request waits for a pooled connection before it answers 503 (retry).
POOL_TIMEOUT_S = 5.0


def encode_cursor(created_at: datetime, txn_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{txn_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Raises ValueError on anything that is not a cursor this API produced."""
    if len(cursor) > CURSOR_LENGTH_MAX:
        raise ValueError("cursor too long")
    padded = cursor + "=" * (-len(cursor) % 4)
    created, txn = base64.urlsafe_b64decode(padded.encode()).decode().split("|")
    moment = datetime.fromisoformat(created)
    if moment.tzinfo is None:
        raise ValueError("cursor without time zone")
    return moment, uuid.UUID(txn)


T = TypeVar("T")


def _page(
    rows: list[T], limit: int, cursor_after: Callable[[T], str]
) -> tuple[list[T], str | None]:
    """One keyset page from `limit + 1` rows fetched: the page, and the cursor after its
    last row when there is more (None on the last page). Every listing pages this way."""
    assert limit > 0 and len(rows) <= limit + 1
    page = rows[:limit]
    return page, cursor_after(page[-1]) if len(rows) > limit else None


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


class ApiRepo:
    def __init__(self, dsn: str, pool_min: int = 1, pool_max: int = 8) -> None:
        assert dsn and 0 < pool_min <= pool_max
        # No `check=` here: `_connection` checks each connection it takes (see there).
        self._pool = AsyncConnectionPool(
            dsn, min_size=pool_min, max_size=pool_max, open=False, timeout=POOL_TIMEOUT_S
        )

    @property
    def connection(self) -> Callable[[], contextlib.AbstractAsyncContextManager[Any]]:
        """Checked connections, shared with the keys and audit queries (db/access_repo.py)."""
        return self._connection

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection that answered a no-op just now.

        A connection the server closed (a restart, a crash, a failover) fails that check,
        so the statement that would have met it never reaches the server: the connection
        is handed back (the pool sees it is broken, drops it and opens another) and the
        next one is tried at once. psycopg_pool's own `check=` does the same, but sleeps
        between failed checks (1 s, then 2 s, ...): after a restart left every pooled
        connection stale, the first request waited through one sleep per connection and
        ran past the pool's timeout (measured: 2.7 s for the first program write after a
        crash, a 503 with more connections). A check that fails on a new connection means
        the server is down: that error is raised (503 `unavailable`, retry)."""
        for _attempt in range(self._pool.max_size + 1):
            conn = await self._pool.getconn()
            try:
                await AsyncConnectionPool.check_connection(conn)
            except psycopg.Error:
                await self._pool.putconn(conn)  # broken: the pool replaces it
                continue
            try:
                yield conn
                # As the pool's own connection() does: what the block did outside a
                # transaction() block is committed (putconn would roll it back).
                await conn.commit()
            finally:
                await self._pool.putconn(conn)
            return
        raise psycopg.OperationalError("no pooled connection answered")

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    async def ping(self) -> None:
        async with self._connection() as conn:
            await conn.execute("SELECT 1")

    async def put_program(
        self,
        program_id: str,
        name: str,
        policy: dict[str, Any] | None = None,
        audit: AuditEntry | None = None,
    ) -> tuple[bool, dict[str, Any]]:
        """Create or update a program. Returns (created, program).

        `policy` (already validated, canonical JSON) replaces the current one; a different
        policy gets the next version and is kept in program_policies (history). `audit` is
        recorded in the same transaction, with the program before and after.
        """
        async with self._connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            before = None
            if audit is not None:
                await cur.execute(
                    "SELECT program_id, name, policy, policy_version, created_at, updated_at"
                    " FROM programs WHERE program_id = %s FOR UPDATE",
                    (program_id,),
                )
                before = await cur.fetchone()
            await cur.execute(
                """
                INSERT INTO programs (program_id, name, policy) VALUES (%s, %s, %s)
                ON CONFLICT (program_id) DO UPDATE
                  SET name = EXCLUDED.name,
                      policy = CASE WHEN %s THEN EXCLUDED.policy ELSE programs.policy END,
                      policy_version = programs.policy_version
                        + CASE WHEN %s AND programs.policy <> EXCLUDED.policy THEN 1 ELSE 0 END,
                      updated_at = CASE WHEN programs.name = EXCLUDED.name
                                        AND (NOT %s OR programs.policy = EXCLUDED.policy)
                                   THEN programs.updated_at ELSE now() END
                RETURNING program_id, name, policy, policy_version, created_at, updated_at,
                          (xmax = 0) AS created
                """,
                (
                    program_id,
                    name,
                    Jsonb(policy or {}),
                    policy is not None,
                    policy is not None,
                    policy is not None,
                ),
            )
            row = await cur.fetchone()
            assert row is not None
            await conn.execute(
                """
                INSERT INTO program_policies (program_id, version, policy, created_at)
                VALUES (%s, %s, %s, now()) ON CONFLICT DO NOTHING
                """,
                (program_id, row["policy_version"], Jsonb(row["policy"])),
            )
            created = bool(row.pop("created"))
            program = _program(row)
            if audit is not None:
                await record(
                    conn,
                    replace(audit, before=before and _program(before), after=program),
                )
        return created, program

    async def ledger_summary(self, program_id: str, at: datetime | None) -> dict[str, Any] | None:
        """A program's books from its ledger as of `at` (now when None), read in one
        snapshot: the sum of each ledger account, the transactions by kind, and (now only)
        the accounts table's sums. None if the program does not exist."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT 1 AS found FROM programs WHERE program_id = %s", (program_id,)
            )
            if await cur.fetchone() is None:
                return None
            await cur.execute(
                "SELECT account, coalesce(sum(amount), 0)::bigint AS total"
                " FROM ledger_entries WHERE program_id = %s"
                " AND (%s::timestamptz IS NULL OR created_at <= %s) GROUP BY account",
                (program_id, at, at),
            )
            legs = {row["account"]: int(row["total"]) for row in await cur.fetchall()}
            await cur.execute(
                "SELECT kind, count(*) AS n, coalesce(sum(points), 0)::bigint AS points"
                " FROM transactions WHERE program_id = %s"
                " AND (%s::timestamptz IS NULL OR created_at <= %s) GROUP BY kind",
                (program_id, at, at),
            )
            kinds = {
                row["kind"]: {"count": int(row["n"]), "points": int(row["points"])}
                for row in await cur.fetchall()
            }
            accounts = None
            if at is None:
                await cur.execute(
                    "SELECT count(*) AS members,"
                    " coalesce(sum(balance), 0)::bigint AS balance,"
                    " coalesce(sum(debt), 0)::bigint AS debt,"
                    " coalesce(sum(pending), 0)::bigint AS pending,"
                    " coalesce(sum(held), 0)::bigint AS held"
                    " FROM accounts WHERE program_id = %s",
                    (program_id,),
                )
                row = await cur.fetchone()
                assert row is not None
                accounts = {name: int(value) for name, value in row.items()}
        return {"legs": legs, "kinds": kinds, "accounts": accounts}

    async def get_program(self, program_id: str) -> dict[str, Any] | None:
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT program_id, name, policy, policy_version, created_at, updated_at"
                " FROM programs WHERE program_id = %s",
                (program_id,),
            )
            row = await cur.fetchone()
        return None if row is None else _program(row)

    async def list_programs(
        self, limit: int, cursor: str | None, within: frozenset[str] | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """By program id, keyset-paginated; `cursor` is a next_cursor this returned (a bad
        one raises ValueError). next_cursor is None on the last page. With `within`, only
        those programs (a key limited to them)."""
        assert 0 < limit <= PAGE_SIZE_MAX
        after = None if cursor is None else decode_id_cursor(cursor)
        scope = None if within is None else sorted(within)
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT program_id, name, policy, policy_version, created_at, updated_at"
                " FROM programs WHERE (%s::text IS NULL OR program_id > %s)"
                " AND (%s::text[] IS NULL OR program_id = ANY(%s))"
                " ORDER BY program_id LIMIT %s",
                (after, after, scope, scope, limit + 1),
            )
            rows = await cur.fetchall()
        page, next_cursor = _page(rows, limit, lambda row: encode_id_cursor(row["program_id"]))
        return [_program(row) for row in page], next_cursor

    async def list_members(
        self, program_id: str, *, tier: str | None, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A program's member accounts by member id, keyset-paginated, only those in `tier`
        if given; `cursor` as in list_programs. An unknown program has no members."""
        assert 0 < limit <= PAGE_SIZE_MAX
        after = None if cursor is None else decode_id_cursor(cursor)
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT member_id, balance, tier, lifetime_earned, lifetime_spent,"
                " created_at, updated_at FROM accounts WHERE program_id = %s"
                " AND (%s::text IS NULL OR tier = %s)"
                " AND (%s::text IS NULL OR member_id > %s)"
                " ORDER BY member_id LIMIT %s",
                (program_id, tier, tier, after, after, limit + 1),
            )
            rows = await cur.fetchall()
        page, next_cursor = _page(rows, limit, lambda row: encode_id_cursor(row["member_id"]))
        items = [
            {**row, "created_at": _iso(row["created_at"]), "updated_at": _iso(row["updated_at"])}
            for row in page
        ]
        return items, next_cursor

    async def add_rule_set(
        self,
        program_id: str,
        rules: list[dict[str, Any]],
        effective_from: datetime | None,
        audit: AuditEntry | None = None,
    ) -> dict[str, Any] | None:
        """A new rule set version (the next number); None if the program does not exist.
        `audit` is recorded in the same transaction (before: the previous version)."""
        async with self._connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            # Serializes concurrent PUTs of one program's rules (version numbers stay dense).
            await cur.execute(
                "SELECT 1 FROM programs WHERE program_id = %s FOR UPDATE", (program_id,)
            )
            if await cur.fetchone() is None:
                return None
            await cur.execute(
                """
                INSERT INTO rule_sets (program_id, version, rules, effective_from, created_at)
                SELECT %s, coalesce(max(version), 0) + 1, %s, coalesce(%s, now()), now()
                FROM rule_sets WHERE program_id = %s
                RETURNING program_id, version, rules, effective_from, created_at
                """,
                (program_id, Jsonb(rules), effective_from, program_id),
            )
            row = await cur.fetchone()
            assert row is not None
            rule_set = _rule_set(row)
            if audit is not None:
                await cur.execute(
                    "SELECT program_id, version, rules, effective_from, created_at"
                    " FROM rule_sets WHERE program_id = %s AND version = %s",
                    (program_id, row["version"] - 1),
                )
                previous = await cur.fetchone()
                await record(
                    conn,
                    replace(audit, before=previous and _rule_set(previous), after=rule_set),
                )
        return rule_set

    async def list_rule_sets(self, program_id: str, limit: int) -> list[dict[str, Any]]:
        """Newest version first."""
        assert limit > 0
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT program_id, version, rules, effective_from, created_at FROM rule_sets"
                " WHERE program_id = %s ORDER BY version DESC LIMIT %s",
                (program_id, limit),
            )
            return [_rule_set(row) for row in await cur.fetchall()]

    async def event_member(self, program_id: str, event_id: str) -> str | None:
        """Who an applied event belongs to (a reversal is routed to that member's shard)."""
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=scalar_row)
            await cur.execute(
                "SELECT member_id FROM events WHERE program_id = %s AND event_id = %s",
                (program_id, event_id),
            )
            member_id = await cur.fetchone()
        return None if member_id is None else str(member_id)

    async def get_event(self, program_id: str, event_id: str) -> dict[str, Any] | None:
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT program_id, event_id, member_id, type, occurred_at, attributes,"
                " rule_version, points, explanation, txn_id, reversed_amount, reversed_points,"
                " created_at FROM events WHERE program_id = %s AND event_id = %s",
                (program_id, event_id),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        return {
            **row,
            "occurred_at": _iso(row["occurred_at"]),
            "created_at": _iso(row["created_at"]),
            "txn_id": str(row["txn_id"]) if row["txn_id"] else None,
            "why": row.pop("explanation"),
        }

    async def tier_changes(self, program_id: str, member_id: str, limit: int) -> list[Any]:
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT from_tier, to_tier, reason, changed_at FROM tier_changes"
                " WHERE program_id = %s AND member_id = %s ORDER BY change_id DESC LIMIT %s",
                (program_id, member_id, limit),
            )
            return [{**r, "changed_at": _iso(r["changed_at"])} for r in await cur.fetchall()]

    async def account_exists(self, program_id: str, member_id: str) -> bool:
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT 1 FROM accounts WHERE program_id = %s AND member_id = %s",
                (program_id, member_id),
            )
            return await cur.fetchone() is not None

    async def list_transactions(
        self,
        program_id: str,
        member_id: str,
        *,
        kind: str | None,
        since: datetime | None,
        until: datetime | None,
        limit: int,
        cursor: tuple[datetime, uuid.UUID] | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first, keyset-paginated on (created_at, txn_id)."""
        assert limit > 0
        clauses = ["program_id = %s", "member_id = %s"]
        params: list[Any] = [program_id, member_id]
        if kind is not None:
            clauses.append("kind = %s")
            params.append(kind)
        if since is not None:
            clauses.append("created_at >= %s")
            params.append(since)
        if until is not None:
            clauses.append("created_at < %s")
            params.append(until)
        if cursor is not None:
            clauses.append("(created_at, txn_id) < (%s, %s)")
            params.extend(cursor)
        params.append(limit + 1)
        query = (
            "SELECT txn_id, kind, points, reason, balance_after, created_at, expires_at"
            " FROM transactions WHERE "
            + " AND ".join(clauses)
            + " ORDER BY created_at DESC, txn_id DESC LIMIT %s"
        )
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query, params)
            rows = await cur.fetchall()
        page, next_cursor = _page(
            rows, limit, lambda row: encode_cursor(row["created_at"], row["txn_id"])
        )
        items = [
            {
                "transaction_id": str(r["txn_id"]),
                "type": r["kind"],
                "points": r["points"],
                "reason": r["reason"],
                "balance_after": r["balance_after"],
                "created_at": _iso(r["created_at"]),
                "expires_at": _iso(r["expires_at"]),
            }
            for r in page
        ]
        return items, next_cursor

    # ----------------------------------------------------------------- rewards (reads)

    async def list_rewards(
        self, program_id: str, *, limit: int, after: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """By reward id, keyset-paginated (the cursor is the last reward id, encoded)."""
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {REWARD_COLUMNS} FROM rewards WHERE program_id = %s"
                " AND (%s::text IS NULL OR reward_id > %s) ORDER BY reward_id LIMIT %s",
                (program_id, after, after, limit + 1),
            )
            rows = await cur.fetchall()
        rewards, next_cursor = _page(
            [reward_from_row(row) for row in rows], limit, lambda r: encode_id_cursor(r.reward_id)
        )
        return [reward_view(reward) for reward in rewards], next_cursor

    async def get_reward(self, program_id: str, reward_id: str) -> dict[str, Any] | None:
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {REWARD_COLUMNS} FROM rewards WHERE program_id = %s AND reward_id = %s",
                (program_id, reward_id),
            )
            row = await cur.fetchone()
        return None if row is None else reward_view(reward_from_row(row))

    async def get_redemption(self, program_id: str, redemption_id: uuid.UUID) -> Redemption | None:
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {REDEMPTION_COLUMNS} FROM redemptions"
                " WHERE program_id = %s AND redemption_id = %s",
                (program_id, redemption_id),
            )
            row = await cur.fetchone()
        return None if row is None else redemption_from_row(row)

    async def list_member_redemptions(
        self,
        program_id: str,
        member_id: str,
        *,
        limit: int,
        cursor: tuple[datetime, uuid.UUID] | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first, keyset-paginated on (created_at, redemption_id)."""
        rows = await self._newest_first(
            "redemptions",
            REDEMPTION_COLUMNS,
            "redemption_id",
            "program_id = %s AND member_id = %s",
            [program_id, member_id],
            cursor,
            limit,
        )
        found, next_cursor = _page(
            [redemption_from_row(row) for row in rows],
            limit,
            lambda r: encode_cursor(r.created_at, r.redemption_id),
        )
        return [redemption_view(r) for r in found], next_cursor

    async def _newest_first(
        self,
        table: str,
        columns: str,
        id_column: str,
        clauses: str,
        params: list[Any],
        cursor: tuple[datetime, uuid.UUID] | None,
        limit: int,
    ) -> list[dict[str, Any]]:
        """`limit + 1` rows of `table` matching `clauses`, newest first, after `cursor`
        (keyset on created_at, then `id_column`): the rows of one page and whether more."""
        if cursor is not None:
            clauses += f" AND (created_at, {id_column}) < (%s, %s)"
            params = [*params, *cursor]
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {columns} FROM {table} WHERE {clauses}"
                f" ORDER BY created_at DESC, {id_column} DESC LIMIT %s",
                [*params, limit + 1],
            )
            return await cur.fetchall()

    # ----------------------------------------------------------------- reviews (reads)

    async def get_review(self, program_id: str, review_id: uuid.UUID) -> Review | None:
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {REVIEW_COLUMNS} FROM reviews WHERE program_id = %s AND review_id = %s",
                (program_id, review_id),
            )
            row = await cur.fetchone()
        return None if row is None else review_from_row(row)

    async def list_reviews(
        self,
        program_id: str,
        *,
        status: str | None,
        limit: int,
        cursor: tuple[datetime, uuid.UUID] | None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """The program's reviews (only those in `status` if given), newest first,
        keyset-paginated on (created_at, review_id)."""
        assert limit > 0
        clauses = "program_id = %s"
        params: list[Any] = [program_id]
        if status is not None:
            clauses += " AND status = %s"
            params.append(status)
        rows = await self._newest_first(
            "reviews", REVIEW_COLUMNS, "review_id", clauses, params, cursor, limit
        )
        found, next_cursor = _page(
            [review_from_row(row) for row in rows],
            limit,
            lambda r: encode_cursor(r.created_at, r.review_id),
        )
        return [review_view(r) for r in found], next_cursor


def encode_id_cursor(last_id: str) -> str:
    """The cursor of a list ordered by a text id (rewards, programs, members): the last id."""
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_id_cursor(cursor: str) -> str:
    """Raises ValueError on anything that is not a cursor this API produced."""
    if len(cursor) > CURSOR_LENGTH_MAX:
        raise ValueError("cursor too long")
    last_id = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()).decode()
    # PostgreSQL text cannot hold NUL: it would fail the query, not the cursor.
    if "\x00" in last_id:
        raise ValueError("cursor with NUL")
    return last_id


# The rewards route's name for it (serve_app/routes/rewards.py).
decode_reward_cursor = decode_id_cursor


def _program(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "program_id": row["program_id"],
        "name": row["name"],
        "policy": row["policy"],
        "policy_version": row["policy_version"],
        "created_at": _iso(row["created_at"]),
        "updated_at": _iso(row["updated_at"]),
    }


def _rule_set(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "program_id": row["program_id"],
        "version": row["version"],
        "effective_from": _iso(row["effective_from"]),
        "created_at": _iso(row["created_at"]),
        "rules": row["rules"],
    }


def ensure_admin_key(dsn: str, key_hash: str, key_id: str = "admin", prefix: str = "pts_…") -> None:
    """Install (or replace) the admin key's hash. Synchronous: used at start-up."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO api_keys (key_id, key_hash, role, name, prefix)
            VALUES (%s, %s, 'admin', %s, %s)
            ON CONFLICT (key_id) DO UPDATE SET key_hash = EXCLUDED.key_hash,
                -- A revoked key stays revoked: starting again with the same key (it leaked,
                -- someone revoked it) must not bring it back. A different key replaces it.
                revoked_at = CASE WHEN api_keys.key_hash = EXCLUDED.key_hash
                                  THEN api_keys.revoked_at END,
                prefix = EXCLUDED.prefix, changed_at = now()
            """,
            (key_id, key_hash, key_id, prefix),
        )


def admin_key_installed(dsn: str, key_id: str = "admin") -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(
            "SELECT 1 FROM api_keys WHERE key_id = %s AND revoked_at IS NULL", (key_id,)
        )
        return cur.fetchone() is not None
