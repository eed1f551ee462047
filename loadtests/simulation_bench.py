"""Benchmark: a what-if replay job over 10^5 stored events (the job's wall time, events/s).

    python -m loadtests.simulation_bench [--events 100000] [--members 10000] [--days 90]
        [--database-url ADMIN_URL] [--keep] [--json out.json]

What: a fresh database (created on the given PostgreSQL, migrated, dropped at the end unless
--keep) gets one program (time zone, program caps, three tiers with multipliers) with a
rule set of four rules (per-amount orders with caps, a conditional bonus, a tier
multiplier, daily-capped check-ins), --members accounts with tier changes, and --events
events, written in bulk by SQL (generate_series): orders (70%) and check-ins spread over
--days days, plausible attributes (amount in minor units, channel), the points and the
explanation the current rules would give without caps. Nothing else (ledger, lots) is
written: the replay reads events, tier changes, accounts and the program only.

Then one job is created (its row, queued) with a candidate that doubles the order rate and
raises the bonus, over the whole window, and `actors.simulation_job.run_simulation` runs it
in this process, as the Ray task does: claim, count, tier changes, the events in
application order through a server-side cursor, the pure replay, progress every
SIMULATION_PAGE_EVENTS events, the result. Its wall time is the figure; the target is
10^5 events in at most 10 s. Every figure printed is measured during this run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from actors.simulation_job import run_simulation
from db.engine import libpq_url, migrate
from loadtests.backup_bench import database
from loadtests.bench import DEFAULT_ADMIN_URL

PROGRAM = "sim-bench"
TARGET_S = 10.0
END = datetime(2026, 11, 1, tzinfo=UTC)
POLICY = {
    "time_zone": "Asia/Shanghai",
    "caps": {"per_member_day": 5000},
    "tiers": {
        "basis": "lifetime",
        "tiers": [
            {"name": "member", "threshold": 0, "multiplier": "1"},
            {"name": "silver", "threshold": 2000, "multiplier": "1.2"},
            {"name": "gold", "threshold": 10000, "multiplier": "1.5"},
        ],
    },
}
RULES: list[dict[str, Any]] = [
    {
        "id": "order_points",
        "event_type": "order",
        "award": {"type": "per_amount", "attribute": "amount", "rate": "0.01"},
        "caps": {"per_event": 2000},
        "priority": 10,
    },
    {
        "id": "app_bonus",
        "event_type": "order",
        "condition": "attributes.amount >= 100000 and attributes.channel == 'app'",
        "award": {"type": "fixed", "points": 50},
        "priority": 20,
    },
    {
        "id": "weekend",
        "event_type": "order",
        "condition": "weekday >= 6",
        "award": {"type": "multiplier", "factor": "2"},
        "priority": 30,
    },
    {
        "id": "check_in",
        "event_type": "check_in",
        "award": {"type": "fixed", "points": 10},
        "caps": {"per_member_day": 10},
    },
]


def candidate() -> list[dict[str, Any]]:
    changed = {
        "order_points": {"type": "per_amount", "attribute": "amount", "rate": "0.02"},
        "app_bonus": {"type": "fixed", "points": 80},
    }
    return [{**rule, "award": changed.get(rule["id"], rule["award"])} for rule in RULES]


def seed(url: str, events: int, members: int, days: int) -> float:
    """The program, accounts, tier changes and events; returns the seconds it took."""
    start = END - timedelta(days=days)
    began = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO programs (program_id, name, policy) VALUES (%s, 'bench', %s)",
            (PROGRAM, Jsonb(POLICY)),
        )
        conn.execute(
            "INSERT INTO rule_sets (program_id, version, rules, effective_from, created_at)"
            " VALUES (%s, 1, %s, %s, %s)",
            (PROGRAM, Jsonb(RULES), start - timedelta(days=30), start),
        )
        conn.execute(
            "INSERT INTO accounts (program_id, member_id, balance, version, lifetime_earned,"
            " lifetime_spent, tier)"
            " SELECT %s, 'm' || i, 0, 1, 0, 0,"
            " CASE WHEN i %% 10 = 0 THEN 'gold' WHEN i %% 3 = 0 THEN 'silver' ELSE 'member' END"
            " FROM generate_series(1, %s) AS i",
            (PROGRAM, members),
        )
        # Every member became 'member' at the start; a third silver, a tenth gold later on.
        conn.execute(
            "INSERT INTO tier_changes (program_id, member_id, from_tier, to_tier, reason,"
            " changed_at)"
            " SELECT %(p)s, 'm' || i, NULL, 'member', 'bench', %(start)s"
            " FROM generate_series(1, %(n)s) AS i"
            " UNION ALL SELECT %(p)s, 'm' || i, 'member', 'silver', 'bench', %(mid)s"
            " FROM generate_series(1, %(n)s) AS i WHERE i %% 3 = 0 OR i %% 10 = 0"
            " UNION ALL SELECT %(p)s, 'm' || i, 'silver', 'gold', 'bench', %(late)s"
            " FROM generate_series(1, %(n)s) AS i WHERE i %% 10 = 0",
            {
                "p": PROGRAM,
                "n": members,
                "start": start,
                "mid": start + timedelta(days=days // 3),
                "late": start + timedelta(days=2 * days // 3),
            },
        )
        conn.execute(
            """
            INSERT INTO events (program_id, event_id, member_id, type, occurred_at, attributes,
                                rule_version, points, explanation, created_at)
            SELECT %(p)s, 'ev-' || i, 'm' || (1 + (i::bigint * 7919) %% %(members)s), kind, at,
                   CASE WHEN kind = 'order'
                        THEN jsonb_build_object('amount', amount, 'channel',
                                                CASE WHEN i %% 2 = 0 THEN 'app' ELSE 'web' END)
                        ELSE '{}'::jsonb END,
                   1, points,
                   jsonb_build_array(jsonb_build_object(
                       'rule_id', CASE WHEN kind = 'order' THEN 'order_points' ELSE 'check_in'
                                  END,
                       'matched', true, 'points', points, 'note', 'bench')),
                   at + interval '2 seconds'
            FROM (
                SELECT i, kind, amount, at,
                       CASE WHEN kind = 'order' THEN least(amount / 100, 2000) ELSE 10 END
                       AS points
                FROM (
                    SELECT i,
                           CASE WHEN i %% 10 < 7 THEN 'order' ELSE 'check_in' END AS kind,
                           ((i::bigint * 104729) %% 250000)::int + 100 AS amount,
                           %(start)s::timestamptz
                           + ((i - 1)::float8 / %(events)s) * %(span)s * interval '1 second' AS at
                    FROM generate_series(1, %(events)s) AS i
                ) raw
            ) scored
            """,
            {
                "p": PROGRAM,
                "members": members,
                "events": events,
                "start": start,
                "span": days * 86400,
            },
        )
        conn.execute("ANALYZE")
    return time.perf_counter() - began


def run(url: str, days: int) -> tuple[float, dict[str, Any]]:
    job_id = uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO simulations (simulation_id, program_id, status, rules, window_from,"
            " window_to, top_members, created_at, heartbeat_at)"
            " VALUES (%s, %s, 'queued', %s, %s, %s, 10, now(), now())",
            (job_id, PROGRAM, Jsonb(candidate()), END - timedelta(days=days), END),
        )
    began = time.perf_counter()
    status = run_simulation(url, job_id)
    elapsed = time.perf_counter() - began
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT status, events_done, events_total, result, error FROM simulations"
            " WHERE simulation_id = %s",
            (job_id,),
        ).fetchone()
    assert row is not None
    assert status == "done" and row[0] == "done", row
    return elapsed, {"events_done": row[1], "events_total": row[2], "result": row[3]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.simulation_bench", description=__doc__
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--database-url", default=DEFAULT_ADMIN_URL, help="admin URL")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    assert args.events > 0 and args.members > 0 and 1 <= args.days <= 366
    with database(args.database_url, "points_simbench", args.keep) as url:
        url = libpq_url(url)
        migrate(url)
        seeded_s = seed(url, args.events, args.members, args.days)
        print(f"seeded {args.events} events, {args.members} members in {seeded_s:.1f} s")
        elapsed, job = run(url, args.days)
        result = job["result"]
        rate = job["events_done"] / elapsed
        figures = {
            "events": job["events_done"],
            "members": result["members"],
            "job_s": round(elapsed, 2),
            "events_per_s": round(rate),
            "target_s": TARGET_S,
            "within_target": elapsed <= TARGET_S,
            "difference": result["difference"],
            "events_changed": result["events_changed"],
            "tiers_from": result["tiers_from"],
        }
        print(json.dumps(figures, indent=2))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if elapsed <= TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
