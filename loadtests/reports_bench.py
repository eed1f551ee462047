"""Benchmark: each report on 10^6 transactions and 10^5 members, and what keeping the
rollups costs a group commit.

    python -m loadtests.reports_bench [--members 100000] [--calls 5] [--commits 5]
        [--database-url ADMIN_URL] [--keep] [--json out.json]

What: a fresh database (migrated to head) gets one program with a point value, a breakage
estimate and a time zone, and --members members with 10 transactions each, generated in
bulk by SQL (faster than the shard path, ~1 min instead of ~4): six credits of one lot each
(three of them later taken whole by three debits, one expired whole by an `expire`, one
expiring a year after it was earned, one never), so every member's balance is the sum of
their lots and of their ledger legs, each transaction's two legs sum to zero, and every
allocation names the lot it took from. Members join over 24 months (one cohort a day),
their activity spans 60 days each; a third redeemed (completed redemptions for their first
debit, a ninth for the second too), some redemptions failed or were cancelled; tiers are
spread. The rollups are then filled by the migration's own backfill statements, and the
tables vacuumed and analyzed (as autovacuum would).

Then each report is read as the route reads it (db/reports_repo.py, then the math of
domain/reports.py, in-process: no HTTP) --calls times, and its median printed, over its
widest usual window (27 months by month; liability also 400 days by day).

Commit cost: --commits group commits of 1000 operations each (500 credits and 500 debits of
existing members, through ShardCore and LedgerRepo) are timed with the rollup writers in
LEDGER_WRITERS and as many without them, alternating; then as many again without them and
without the three indexes 0009 added (dropped: the commit as it was at 0008). The
differences of the medians are the rollups' and the indexes' cost per commit (the reports
are timed before the drop).

The database is dropped at the end unless --keep. Every figure printed is measured during
this run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from rich.console import Console

import db.ledger_repo as ledger_repo
from actors.protocol import Credit, Debit
from actors.shard_core import ShardCore
from db.api_repo import ApiRepo
from db.engine import libpq_url, migrate
from db.reports_repo import BACKFILL_CHAIN, BACKFILL_DAILY_FLOWS, BACKFILL_DAILY_LOTS, ReportsRepo
from domain import reports
from domain.idempotency import request_hash
from domain.policy import parse_policy
from loadtests.backup_bench import database
from loadtests.bench import DEFAULT_ADMIN_URL

PROGRAM = "reports-bench"
TXNS_PER_MEMBER = 10
COHORT_DAYS = 730  # members join over 24 months ...
QUIET_DAYS = 61  # ... ending this long ago: their 60 days of activity reach up to now
COMMIT_OPS = 1000
POLICY = {
    "time_zone": "Europe/Paris",
    "point_value": {
        "currency": "EUR",
        "values": [
            {"from": "2020-01-01T00:00:00Z", "minor_units_per_point": "0.5"},
            {"from": "2025-06-01T00:00:00Z", "minor_units_per_point": "0.6"},
        ],
    },
    "breakage_rate": "0.15",
}
REWARDS = 5

# Per member m (points p = 100 + m % 50, joined at c): transaction k's kind, its time after
# c, and for a credit its lot's expiry after c (NULL: never); debit k takes lot k - 6 whole,
# the expire takes lot 3 at its expiry.
_SERIES = f"""
    SELECT m, k, 'm' || m AS member_id, 100 + m %% 50 AS p,
           %(base)s::timestamptz + (m %% {COHORT_DAYS}) * interval '1 day'
             + (m %% 24) * interval '1 hour' AS c,
           md5('t' || m || '-' || k)::uuid AS txn_id,
           CASE WHEN k < 6 THEN 'credit' WHEN k < 9 THEN 'debit' ELSE 'expire' END AS kind,
           CASE WHEN k < 6 THEN k * 10 WHEN k < 9 THEN 45 + k ELSE 60 END AS after_days
    FROM generate_series(0, %(members)s - 1) m, generate_series(0, 9) k
"""
_LOT_EXPIRY = "CASE k WHEN 3 THEN 60 WHEN 4 THEN 405 ELSE NULL END"
_BALANCE_AFTER = "CASE WHEN k < 6 THEN (k + 1) * p WHEN k < 9 THEN (11 - k) * p ELSE 2 * p END"
_ALLOCATION = (
    "CASE WHEN k BETWEEN 6 AND 8 THEN jsonb_build_array(jsonb_build_array("
    "md5('l' || m || '-' || (k - 6))::uuid::text, p))"
    " WHEN k = 9 THEN jsonb_build_array(jsonb_build_array(md5('l' || m || '-3')::uuid::text, p))"
    " ELSE '[]'::jsonb END"
)
GENERATE = [
    (
        "accounts",
        f"""
        INSERT INTO accounts (program_id, member_id, balance, version, lifetime_earned,
                              lifetime_spent, created_at, updated_at, tier)
        SELECT %(program)s, member_id, 2 * p, 1, 6 * p, 3 * p, c, c + interval '60 days',
               CASE WHEN m %% 10 = 0 THEN 'gold' WHEN m %% 3 = 0 THEN 'silver' ELSE 'member' END
        FROM ({_SERIES}) s WHERE k = 0
        """,
    ),
    (
        "transactions",
        f"""
        INSERT INTO transactions (txn_id, program_id, member_id, kind, points, reason,
                                  balance_after, created_at, expires_at, allocations)
        SELECT txn_id, %(program)s, member_id, kind, p, 'bench', {_BALANCE_AFTER},
               c + after_days * interval '1 day',
               c + after_days * interval '1 day' + ({_LOT_EXPIRY}) * interval '1 day',
               {_ALLOCATION}
        FROM ({_SERIES}) s
        """,
    ),
    (
        "ledger_entries",
        f"""
        INSERT INTO ledger_entries (txn_id, program_id, account, member_id, amount, created_at)
        SELECT txn_id, %(program)s, leg.account, leg.member_id, leg.amount,
               c + after_days * interval '1 day'
        FROM ({_SERIES}) s CROSS JOIN LATERAL (VALUES
            ('member', member_id, CASE WHEN kind = 'credit' THEN p ELSE -p END),
            ('system:' || CASE kind WHEN 'credit' THEN 'issued' WHEN 'debit' THEN 'redeemed'
                                    ELSE 'expired' END,
             NULL, CASE WHEN kind = 'credit' THEN -p ELSE p END)
        ) AS leg(account, member_id, amount)
        """,
    ),
    (
        "lots",
        f"""
        INSERT INTO lots (lot_id, program_id, member_id, txn_id, original, remaining,
                          expires_at, created_at)
        SELECT md5('l' || m || '-' || k)::uuid, %(program)s, member_id, txn_id, p,
               CASE WHEN k >= 4 THEN p ELSE 0 END,
               c + after_days * interval '1 day' + ({_LOT_EXPIRY}) * interval '1 day',
               c + after_days * interval '1 day'
        FROM ({_SERIES}) s WHERE k < 6
        """,
    ),
    (
        "rewards",
        """
        INSERT INTO rewards (program_id, reward_id, name, cost_points, stocked, reserved,
                             redeemed, active, fulfillment, version, created_at, updated_at)
        SELECT %(program)s, 'reward-' || r, 'Reward ' || r, 100 + 25 * r, NULL, 0, 0, true,
               '{}', 1, %(base)s, %(base)s
        FROM generate_series(0, %(rewards)s - 1) r
        """,
    ),
    (
        "redemptions",
        f"""
        INSERT INTO redemptions (redemption_id, program_id, reward_id, member_id, slot,
                                 idempotency_key, request_hash, quantity, cost_points, points,
                                 status, stock_state, debit_txn_id, fulfillment, attempts,
                                 failure_code, created_at, updated_at)
        SELECT md5('r' || m || '-' || k)::uuid, %(program)s, 'reward-' || (m %% %(rewards)s),
               member_id, 0, 'bench-' || k, 'h', 1, p, p,
               CASE WHEN k IN (6, 7) THEN 'completed' WHEN m %% 11 = 0 THEN 'failed'
                    ELSE 'cancelled' END,
               CASE WHEN k IN (6, 7) THEN 'redeemed' ELSE 'released' END,
               CASE WHEN k IN (6, 7) THEN txn_id END, '{{}}', 1,
               CASE WHEN k = 8 AND m %% 11 = 0 THEN 'fulfillment_failed' END,
               c + after_days * interval '1 day', c + after_days * interval '1 day'
        FROM ({_SERIES}) s
        WHERE (k = 6 AND m %% 3 = 0) OR (k = 7 AND m %% 9 = 0)
           OR (k = 8 AND (m %% 11 = 0 OR m %% 13 = 0))
        """,
    ),
]


def generate(url: str, members: int, console: Console) -> dict[str, float]:
    """The program and its ledger, by SQL; the rollups by the migration's backfill."""
    base = datetime.now(UTC) - timedelta(days=COHORT_DAYS + QUIET_DAYS)
    params = {"program": PROGRAM, "members": members, "base": base, "rewards": REWARDS}
    seconds: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO programs (program_id, name, policy) VALUES (%s, 'Reports bench', %s)",
            (PROGRAM, Jsonb(POLICY)),
        )
        for table, statement in GENERATE:
            started = time.perf_counter()
            conn.execute(statement, params)  # type: ignore[arg-type]
            seconds[table] = time.perf_counter() - started
            console.print(f"  {table:<16} {seconds[table]:6.1f} s")
        started = time.perf_counter()
        conn.execute(BACKFILL_DAILY_FLOWS, {"chain": BACKFILL_CHAIN})
        conn.execute(BACKFILL_DAILY_LOTS, {"chain": BACKFILL_CHAIN})
        seconds["rollups"] = time.perf_counter() - started
        console.print(f"  {'rollups':<16} {seconds['rollups']:6.1f} s")
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE")
        seconds["vacuum_analyze"] = time.perf_counter() - started
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM transactions), (SELECT count(*) FROM accounts),"
            " (SELECT count(*) FROM redemptions), (SELECT count(*) FROM report_daily_flows),"
            " (SELECT count(*) FROM report_daily_lots)"
        ).fetchone()
    assert counts is not None
    console.print(
        f"  {counts[0]:,} transactions, {counts[1]:,} members, {counts[2]:,} redemptions;"
        f" rollup rows: {counts[3]:,} flows, {counts[4]:,} lots"
    )
    return seconds


async def time_reports(url: str, calls: int) -> dict[str, float]:
    """The median seconds of each report (repository read + math), over `calls` calls."""
    api = ApiRepo(url)
    await api.open()
    repo = ReportsRepo(api)
    today = datetime.now(UTC).date()
    wide = today - timedelta(days=27 * 31)
    policy = parse_policy(POLICY)

    def win(first: Any, granularity: str, ahead: bool = False) -> reports.Window:
        return reports.window(first, None if ahead else today, granularity, today, ahead=ahead)

    async def liability(w: reports.Window) -> object:
        found = await repo.liability(PROGRAM, w.start, w.end)
        assert found is not None
        snap, *rest = found
        return reports.liability(PROGRAM, policy, w, snap.as_of, *rest)

    async def breakage(w: reports.Window) -> object:
        found = await repo.breakage(PROGRAM, w.start, w.end)
        assert found is not None
        snap, *rest = found
        return reports.breakage(PROGRAM, policy, w, snap.as_of, *rest)

    async def expiring(w: reports.Window) -> object:
        found = await repo.expiring(PROGRAM, w.start, w.end)
        assert found is not None
        snap, *rest = found
        return reports.expiring(PROGRAM, w, snap.as_of, *rest)

    async def funnel(w: reports.Window) -> object:
        found = await repo.funnel(PROGRAM, w.start, w.end)
        assert found is not None
        snap, *rest = found
        return reports.funnel(PROGRAM, w, snap.as_of, *rest)

    async def rewards(w: reports.Window) -> object:
        found = await repo.rewards(PROGRAM, w.start, w.end)
        assert found is not None
        snap, *rest = found
        return reports.rewards(PROGRAM, policy, w, snap.as_of, *rest)

    async def members(w: reports.Window) -> object:
        found = await repo.members(PROGRAM, w.start, w.end)
        assert found is not None
        snap, *rest = found
        return reports.members(PROGRAM, w, snap.as_of, *rest)

    cases: list[tuple[str, Callable[[reports.Window], Awaitable[object]], reports.Window]] = [
        ("liability (27 months by month)", liability, win(wide, "month")),
        ("liability (400 days by day)", liability, win(today - timedelta(days=399), "day")),
        ("breakage (27 months by month)", breakage, win(wide, "month")),
        ("expiring (next 12 months)", expiring, win(None, "month", ahead=True)),
        ("funnel (27 months by month)", funnel, win(wide, "month")),
        ("rewards (27 months by month)", rewards, win(wide, "month")),
        ("members (27 months by month)", members, win(wide, "month")),
    ]
    medians: dict[str, float] = {}
    try:
        for name, read, window in cases:
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                await read(window)
                times.append(time.perf_counter() - started)
            medians[name] = statistics.median(times)
    finally:
        await api.close()
    return medians


class TimedRepo(ledger_repo.LedgerRepo):
    """A LedgerRepo that times each commit."""

    seconds: list[float]

    async def commit_batch(self, batch: ledger_repo.BatchWrite, now: datetime) -> None:
        started = time.perf_counter()
        await super().commit_batch(batch, now)
        if not batch.empty:
            self.seconds.append(time.perf_counter() - started)


INDEXES_0009 = ("transactions_by_time", "redemptions_by_time", "lots_open_by_expiry")


async def commit_costs(url: str, members: int, commits: int) -> dict[str, float]:
    """Median seconds of a group commit of COMMIT_OPS credits and debits: with the rollup writers,
    without them (alternating, so that both see the same database), then without them and
    without the indexes 0009 added (dropped for this: the commit as it was at 0008)."""
    rollups = {"_upsert_daily_flows", "_upsert_daily_lots"}
    full = ledger_repo.LEDGER_WRITERS
    bare = tuple(w for w in full if w.write.__name__ not in rollups)
    assert len(full) - len(bare) == len(rollups)
    times: dict[str, list[float]] = {"with_rollups": [], "without_rollups": [], "at_0008": []}
    repo = TimedRepo(url)
    repo.seconds = []
    commits_seen: list[int] = []
    core = ShardCore(repo, batch_max=COMMIT_OPS)

    async def one_commit(round_: int) -> float:
        first = (round_ * COMMIT_OPS) % members
        ops = []
        for i in range(COMMIT_OPS):
            # Half credits (a new lot each), half debits (taking from old lots: the lots
            # rollup reads their cohorts back).
            member = f"m{(first + i) % members}"
            kind, cls = ("credit", Credit) if i % 2 == 0 else ("debit", Debit)
            fields = {"points": 7, "reason": "commit bench"}
            hashed = request_hash(kind, {"program_id": PROGRAM, "member_id": member, **fields})
            ops.append(
                cls(
                    program_id=PROGRAM,
                    member_id=member,
                    key=f"cb-{round_}",
                    request_hash=hashed,
                    **fields,  # type: ignore[arg-type]
                )
            )
        # Queued at once: one group commit of them all (loading the accounts before it is
        # not timed: only commit_batch is).
        repo.seconds.clear()
        outcomes = await asyncio.gather(*(core.enqueue(op) for op in ops))
        assert all(o.succeeded for o in outcomes), outcomes[:3]
        commits_seen.append(len(repo.seconds))
        return sum(repo.seconds) / len(repo.seconds)

    try:
        await one_commit(0)  # warms the caches
        for round_ in range(1, 2 * commits + 1):
            with_rollups = round_ % 2 == 1
            ledger_repo.LEDGER_WRITERS = full if with_rollups else bare
            seconds = await one_commit(round_)
            times["with_rollups" if with_rollups else "without_rollups"].append(seconds)
        with psycopg.connect(url, autocommit=True) as conn:
            for index in INDEXES_0009:
                conn.execute(f"DROP INDEX {index}")  # type: ignore[arg-type]
        ledger_repo.LEDGER_WRITERS = bare
        for round_ in range(2 * commits + 1, 3 * commits + 1):
            times["at_0008"].append(await one_commit(round_))
    finally:
        ledger_repo.LEDGER_WRITERS = full
        await core.close()
    result = {label: statistics.median(values) for label, values in times.items()}
    result["ops_per_commit"] = COMMIT_OPS * len(commits_seen) / sum(commits_seen)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.reports_bench", description=__doc__)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=5, help="calls per report (median)")
    parser.add_argument("--commits", type=int, default=5, help="commits timed each way")
    parser.add_argument("--database-url", default=DEFAULT_ADMIN_URL, help="admin URL")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    assert args.members > 0 and args.calls > 0 and args.commits > 0
    console = Console()
    figures: dict[str, Any] = {"members": args.members}
    with database(libpq_url(args.database_url), "points_reports_bench", args.keep) as url:
        console.print(f"database {url}")
        migrate(url)
        console.print(f"generating {args.members * TXNS_PER_MEMBER:,} transactions:")
        figures["generate_s"] = generate(url, args.members, console)
        figures["report_median_s"] = asyncio.run(time_reports(url, args.calls))
        console.print(f"\nreports, median of {args.calls} calls (repository read + math):")
        for name, seconds in figures["report_median_s"].items():
            console.print(f"  {name:<34} {seconds * 1000:8.1f} ms")
        costs = asyncio.run(commit_costs(url, args.members, args.commits))
        figures["commit_median_s"] = costs
        extra = costs["with_rollups"] - costs["without_rollups"]
        indexes = costs["without_rollups"] - costs["at_0008"]
        console.print(
            f"\ngroup commit of {costs['ops_per_commit']:.0f} credits and debits,"
            f" median of {args.commits}:"
        )
        console.print(
            f"  as at 0008 (no rollups, no 0009 indexes) {costs['at_0008'] * 1000:8.1f} ms"
        )
        console.print(f"  without the rollup writers  {costs['without_rollups'] * 1000:8.1f} ms")
        console.print(f"  with the rollup writers     {costs['with_rollups'] * 1000:8.1f} ms")
        console.print(f"  the rollups' cost           {extra * 1000:8.1f} ms per commit")
        console.print(f"  the 0009 indexes' cost      {indexes * 1000:8.1f} ms per commit")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
