"""The reports' SQL (domain/reports.py does the math): each report reads its sums in one
read-only REPEATABLE READ snapshot, so they agree with each other and with the ledger as of
`as_of` (the snapshot's time).

Liability and breakage read the daily rollups (migration 0009), which the account shards
keep in their group commits (db/ledger_repo.py), so those two never scan the ledger: a few
rows per day. The others read source tables through the indexes 0009 added: lots by
expiry (expiring), accounts and redemptions (funnel, members, rewards), transactions by
time (members' activity).

The backfill statements here are the rollups' definition: the migration fills the rollups
with them, and the integration tests compare the maintained rollups with their SELECTs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from psycopg.rows import dict_row

from db.api_repo import ApiRepo
from domain.limits import REPORT_ACTIVE_WINDOWS_DAYS

# The rollup rows of data written before 0009 (the shards write their own chains).
BACKFILL_CHAIN = "backfill"

# The daily flows, from the transactions: per program, UTC day and kind.
SOURCE_DAILY_FLOWS = """
    SELECT program_id, (created_at AT TIME ZONE 'UTC')::date AS day, kind,
           sum(points)::bigint AS points, count(*)::bigint AS txns
    FROM transactions GROUP BY 1, 2, 3
"""
# The daily lots, from the lots and what expiries and reversals took from them (their
# `allocations`: [[lot_id, points], ...]): per program and UTC day of the lot's creation.
SOURCE_DAILY_LOTS = """
    SELECT l.program_id, (l.created_at AT TIME ZONE 'UTC')::date AS day,
           sum(l.original)::bigint AS issued, sum(l.remaining)::bigint AS remaining,
           coalesce(sum(taken.expired), 0)::bigint AS expired,
           coalesce(sum(taken.reversed), 0)::bigint AS reversed
    FROM lots l LEFT JOIN (
        SELECT (a.value ->> 0)::uuid AS lot_id,
               sum((a.value ->> 1)::bigint) FILTER (WHERE t.kind = 'expire') AS expired,
               sum((a.value ->> 1)::bigint) FILTER (WHERE t.kind = 'reversal') AS reversed
        FROM transactions t CROSS JOIN LATERAL jsonb_array_elements(t.allocations) AS a
        WHERE t.kind IN ('expire', 'reversal')
        GROUP BY 1
    ) taken ON taken.lot_id = l.lot_id
    GROUP BY 1, 2
"""
BACKFILL_DAILY_FLOWS = f"""
    INSERT INTO report_daily_flows (program_id, day, kind, chain, points, txns)
    SELECT program_id, day, kind, %(chain)s, points, txns FROM ({SOURCE_DAILY_FLOWS}) s
"""
BACKFILL_DAILY_LOTS = f"""
    INSERT INTO report_daily_lots (program_id, day, chain, issued, remaining, expired, reversed)
    SELECT program_id, day, %(chain)s, issued, remaining, expired, reversed
    FROM ({SOURCE_DAILY_LOTS}) s
"""
# The rollups summed over chains, as the sources compute them (tests compare the two).
ROLLUP_DAILY_FLOWS = """
    SELECT program_id, day, kind, sum(points)::bigint AS points, sum(txns)::bigint AS txns
    FROM report_daily_flows GROUP BY 1, 2, 3 HAVING sum(txns) > 0
"""
ROLLUP_DAILY_LOTS = """
    SELECT program_id, day, sum(issued)::bigint AS issued,
           sum(remaining)::bigint AS remaining, sum(expired)::bigint AS expired,
           sum(reversed)::bigint AS reversed
    FROM report_daily_lots GROUP BY 1, 2
"""
LOT_SUMS = ("issued", "remaining", "expired", "reversed")


@dataclass(frozen=True)
class Snapshot:
    """What every report reads first: the program's policy and the snapshot's time."""

    policy: dict[str, Any]
    as_of: datetime


class ReportsRepo:
    """Reads for the reports, on the ingress's pool (ApiRepo's checked connections)."""

    def __init__(self, api: ApiRepo) -> None:
        self._connection = api.connection

    async def _begin(self, cur: Any, program_id: str) -> Snapshot | None:
        await cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        await cur.execute(
            "SELECT policy, now() AS as_of FROM programs WHERE program_id = %s", (program_id,)
        )
        row = await cur.fetchone()
        return None if row is None else Snapshot(row["policy"] or {}, row["as_of"])

    async def _cohort_totals(self, cur: Any, program_id: str) -> dict[str, int]:
        await cur.execute(
            "SELECT coalesce(sum(issued), 0)::bigint AS issued,"
            " coalesce(sum(remaining), 0)::bigint AS remaining,"
            " coalesce(sum(expired), 0)::bigint AS expired,"
            " coalesce(sum(reversed), 0)::bigint AS reversed"
            " FROM report_daily_lots WHERE program_id = %s",
            (program_id,),
        )
        row = await cur.fetchone()
        assert row is not None
        return {name: int(row[name]) for name in LOT_SUMS}

    async def liability(
        self, program_id: str, start: date, end: date
    ) -> tuple[Snapshot, dict[str, int], list[tuple[date, str, int]], dict[str, int]] | None:
        """Points by kind before `start` (the opening), by day and kind in [start, end),
        and the cohort totals (the observed breakage). None: no such program."""
        async with self._connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            snap = await self._begin(cur, program_id)
            if snap is None:
                return None
            await cur.execute(
                "SELECT kind, sum(points)::bigint AS points FROM report_daily_flows"
                " WHERE program_id = %s AND day < %s GROUP BY kind",
                (program_id, start),
            )
            opening = {row["kind"]: int(row["points"]) for row in await cur.fetchall()}
            await cur.execute(
                "SELECT day, kind, sum(points)::bigint AS points FROM report_daily_flows"
                " WHERE program_id = %s AND day >= %s AND day < %s GROUP BY day, kind",
                (program_id, start, end),
            )
            daily = [(row["day"], row["kind"], int(row["points"])) for row in await cur.fetchall()]
            totals = await self._cohort_totals(cur, program_id)
        return snap, opening, daily, totals

    async def breakage(
        self, program_id: str, start: date, end: date
    ) -> tuple[Snapshot, list[tuple[date, dict[str, int]]], dict[str, int]] | None:
        """The lots' sums by creation day in [start, end), and over all days."""
        async with self._connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            snap = await self._begin(cur, program_id)
            if snap is None:
                return None
            await cur.execute(
                "SELECT day, sum(issued)::bigint AS issued, sum(remaining)::bigint AS remaining,"
                " sum(expired)::bigint AS expired, sum(reversed)::bigint AS reversed"
                " FROM report_daily_lots WHERE program_id = %s AND day >= %s AND day < %s"
                " GROUP BY day",
                (program_id, start, end),
            )
            daily = [
                (row["day"], {name: int(row[name]) for name in LOT_SUMS})
                for row in await cur.fetchall()
            ]
            totals = await self._cohort_totals(cur, program_id)
        return snap, daily, totals

    async def expiring(
        self, program_id: str, start: date, end: date
    ) -> tuple[Snapshot, list[tuple[date, int, int]], tuple[int, int]] | None:
        """Open lots by the UTC day they expire, from now (or `start`) to `end`; and what
        is left in lots already past their expiry (not yet written off)."""
        async with self._connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            snap = await self._begin(cur, program_id)
            if snap is None:
                return None
            await cur.execute(
                "SELECT (expires_at AT TIME ZONE 'UTC')::date AS day,"
                " sum(remaining)::bigint AS points, count(*) AS lots FROM lots"
                " WHERE program_id = %s AND remaining > 0 AND expires_at IS NOT NULL"
                " AND expires_at > greatest(now(), %s::date AT TIME ZONE 'UTC')"
                " AND expires_at < (%s::date AT TIME ZONE 'UTC') GROUP BY 1",
                (program_id, start, end),
            )
            daily = [
                (row["day"], int(row["points"]), int(row["lots"])) for row in await cur.fetchall()
            ]
            await cur.execute(
                "SELECT coalesce(sum(remaining), 0)::bigint AS points, count(*) AS lots FROM lots"
                " WHERE program_id = %s AND remaining > 0 AND expires_at IS NOT NULL"
                " AND expires_at <= now()",
                (program_id,),
            )
            row = await cur.fetchone()
            assert row is not None
        return snap, daily, (int(row["points"]), int(row["lots"]))

    async def funnel(
        self, program_id: str, start: date, end: date
    ) -> tuple[Snapshot, int | None, list[tuple[date, dict[str, int]]]] | None:
        """Members who earned, by the UTC day of their account's creation (their first
        credit) in [start, end): how many, how many reached the cheapest active reward,
        redeemed once (a completed redemption), twice."""
        async with self._connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            snap = await self._begin(cur, program_id)
            if snap is None:
                return None
            await cur.execute(
                "SELECT min(cost_points) AS cost FROM rewards WHERE program_id = %s AND active",
                (program_id,),
            )
            row = await cur.fetchone()
            cost = None if row is None or row["cost"] is None else int(row["cost"])
            await cur.execute(
                """
                WITH cohort AS (
                    SELECT member_id, created_at, lifetime_earned FROM accounts
                    WHERE program_id = %(p)s AND lifetime_earned > 0
                      AND created_at >= (%(start)s::date AT TIME ZONE 'UTC')
                      AND created_at < (%(end)s::date AT TIME ZONE 'UTC')
                ), redeemed AS (
                    SELECT r.member_id, count(*) AS n FROM redemptions r
                    JOIN cohort c ON c.member_id = r.member_id
                    WHERE r.program_id = %(p)s AND r.status = 'completed'
                    GROUP BY r.member_id
                )
                SELECT (c.created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS earned,
                       count(*) FILTER (WHERE c.lifetime_earned >= %(cost)s::bigint)
                         AS reached_reward,
                       count(*) FILTER (WHERE r.n >= 1) AS redeemed_once,
                       count(*) FILTER (WHERE r.n >= 2) AS redeemed_twice
                FROM cohort c LEFT JOIN redeemed r ON r.member_id = c.member_id
                GROUP BY 1
                """,
                {"p": program_id, "start": start, "end": end, "cost": cost},
            )
            daily = [
                (row.pop("day"), {name: int(value) for name, value in row.items()})
                for row in await cur.fetchall()
            ]
        return snap, cost, daily

    async def rewards(
        self, program_id: str, start: date, end: date
    ) -> tuple[Snapshot, list[dict[str, Any]], list[tuple[int, int, int]], dict[str, int]] | None:
        """Redemptions started in [start, end): by reward and status, by local weekday and
        hour (the program's time zone: its stored policy always names one, UTC by
        default), and failed ones by failure code."""
        window = "program_id = %(p)s AND created_at >= (%(start)s::date AT TIME ZONE 'UTC')"
        window += " AND created_at < (%(end)s::date AT TIME ZONE 'UTC')"
        params = {"p": program_id, "start": start, "end": end}
        async with self._connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            snap = await self._begin(cur, program_id)
            if snap is None:
                return None
            params["tz"] = str(snap.policy.get("time_zone") or "UTC")
            await cur.execute(
                f"""
                SELECT r.reward_id, w.name, count(*) AS redemptions,
                       count(*) FILTER (WHERE r.status = 'completed') AS completed,
                       count(*) FILTER (WHERE r.status = 'cancelled') AS cancelled,
                       count(*) FILTER (WHERE r.status = 'failed') AS failed,
                       count(*) FILTER (WHERE r.status NOT IN ('completed', 'cancelled',
                                                               'failed')) AS in_progress,
                       coalesce(sum(r.points) FILTER (WHERE r.status = 'completed'), 0)
                         AS points
                FROM redemptions r
                LEFT JOIN rewards w ON w.program_id = r.program_id AND w.reward_id = r.reward_id
                WHERE r.{window.replace(" created_at", " r.created_at")}
                GROUP BY r.reward_id, w.name
                """,
                params,
            )
            by_reward = await cur.fetchall()
            await cur.execute(
                f"""
                SELECT extract(isodow FROM created_at AT TIME ZONE %(tz)s)::int AS dow,
                       extract(hour FROM created_at AT TIME ZONE %(tz)s)::int AS hour,
                       count(*) AS n
                FROM redemptions WHERE {window} GROUP BY 1, 2
                """,
                params,
            )
            heat = [(row["dow"], row["hour"], int(row["n"])) for row in await cur.fetchall()]
            await cur.execute(
                f"SELECT coalesce(failure_code, 'unknown') AS code, count(*) AS n"
                f" FROM redemptions WHERE {window} AND status = 'failed' GROUP BY 1",
                params,
            )
            failures = {row["code"]: int(row["n"]) for row in await cur.fetchall()}
        return snap, by_reward, heat, failures

    async def members(
        self, program_id: str, start: date, end: date
    ) -> tuple[Snapshot, dict[int, int], dict[str | None, int], list[tuple[date, int]]] | None:
        """Members who earned or spent in the last N days up to `end` (or now if sooner),
        members by tier now, accounts created per UTC day in [start, end)."""
        widest = max(REPORT_ACTIVE_WINDOWS_DAYS)
        async with self._connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            snap = await self._begin(cur, program_id)
            if snap is None:
                return None
            until = min(snap.as_of, datetime.combine(end, time(0, 0), tzinfo=UTC))
            counts = ", ".join(
                f"count(DISTINCT member_id) FILTER (WHERE created_at >= %(until)s"
                f" - interval '{days} days') AS d{days}"
                for days in REPORT_ACTIVE_WINDOWS_DAYS
            )
            await cur.execute(
                f"SELECT {counts} FROM transactions WHERE program_id = %(p)s"
                " AND created_at >= %(since)s AND created_at < %(until)s"
                " AND kind IN ('credit', 'debit')",
                {"p": program_id, "until": until, "since": until - timedelta(days=widest)},
            )
            row = await cur.fetchone()
            assert row is not None
            active = {days: int(row[f"d{days}"]) for days in REPORT_ACTIVE_WINDOWS_DAYS}
            await cur.execute(
                "SELECT tier, count(*) AS n FROM accounts WHERE program_id = %s GROUP BY tier",
                (program_id,),
            )
            tiers = {row["tier"]: int(row["n"]) for row in await cur.fetchall()}
            await cur.execute(
                "SELECT (created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS n"
                " FROM accounts WHERE program_id = %s AND lifetime_earned > 0"
                " AND created_at >= (%s::date AT TIME ZONE 'UTC')"
                " AND created_at < (%s::date AT TIME ZONE 'UTC') GROUP BY 1",
                (program_id, start, end),
            )
            new = [(row["day"], int(row["n"])) for row in await cur.fetchall()]
        return snap, active, tiers, new
