"""PostgreSQL crashes under load: how many errors do clients see, and is anything lost?

    flock /tmp/points-heavy.lock timeout 600 .venv/bin/python -m loadtests.pg_crash_bench

Starts a PostgreSQL of its own (embedded, in a temp dir: it is crashed, so never a shared
one), deploys Points on a local Ray head against it, and runs `--clients` HTTP clients for
`--duration` seconds while PostgreSQL is crashed (`pg_ctl stop -m immediate`: every
connection cut, crash recovery) and started again `--crashes` times, evenly spread.

Each client loops over a mix of requests: credits and debits (writes through the account
shards; a 503 is retried with the same Idempotency-Key until it gets an answer), reads of
members the shards hold and of members nobody wrote (a cold read: the shard's reader asks
PostgreSQL), program writes (the ingress's pool) and /readyz (pool and every shard's ping).

Prints: answers by status and kind, the 503s clients saw (the figure issue 10 quotes:
"with 16 clients and five PostgreSQL crashes in 40 s, clients saw 300-650 503s"), latency
percentiles of the writes, and the books afterwards: every member's balance against its
ledger entries, and one transaction per write that was answered 201 (nothing lost, nothing
doubled). A figure-printing script, not a test: it asserts nothing, it reports.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import statistics
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

from db.embedded import EmbeddedPostgres
from loadtests.bench import free_port, points_service, queue_peaks, with_dbname

PROGRAM = "crash-bench"
MEMBERS = 200
COLD_MEMBERS = 10_000  # never written: every read of one asks PostgreSQL
# The mix of one client's requests (kind, weight).
MIX = (("credit", 40), ("debit", 30), ("read", 10), ("cold_read", 10), ("program", 5), ("ready", 5))
WRITE_ATTEMPTS_MAX = 200
RETRY_PAUSE_S = 0.05
REQUEST_TIMEOUT_S = 30.0


@dataclass
class Figures:
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    timeouts: Counter[str] = field(default_factory=Counter)
    write_latency_s: list[float] = field(default_factory=list)  # to the final answer
    other_latency_s: dict[str, list[float]] = field(default_factory=dict)  # one request each
    details: Counter[tuple[str, str]] = field(default_factory=Counter)  # kind, 503's detail
    answered: dict[str, int] = field(default_factory=dict)  # idempotency key -> status
    points: dict[str, int] = field(default_factory=dict)  # key -> signed points


def crash_schedule(duration_s: float, crashes: int) -> list[float]:
    """Crash times, evenly spread, none at the very start or end."""
    step = duration_s / (crashes + 1)
    return [step * (i + 1) for i in range(crashes)]


def detail(answer: httpx.Response) -> str:
    """A 503's reason, shortened (a problem's detail, or Serve's own text)."""
    try:
        text = str(answer.json().get("detail", answer.text))
    except ValueError:
        text = answer.text
    return text[:90]


async def one_write(
    http: httpx.AsyncClient, kind: str, member: str, key: str, figures: Figures
) -> None:
    points = random.randint(1, 3)
    url = f"/v1/programs/{PROGRAM}/members/{member}/{kind}s"
    started = time.monotonic()
    for _ in range(WRITE_ATTEMPTS_MAX):
        try:
            answer = await http.post(
                url, json={"points": points, "reason": "bench"}, headers={"Idempotency-Key": key}
            )
        except httpx.TimeoutException:
            figures.timeouts[kind] += 1
            continue
        except httpx.TransportError:
            figures.statuses[(kind, 0)] += 1
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        figures.statuses[(kind, answer.status_code)] += 1
        if answer.status_code == 503:
            figures.details[(kind, detail(answer))] += 1
        if answer.status_code != 503:
            figures.answered[key] = answer.status_code
            figures.points[key] = points if kind == "credit" else -points
            figures.write_latency_s.append(time.monotonic() - started)
            return
        await asyncio.sleep(RETRY_PAUSE_S)


async def one_other(http: httpx.AsyncClient, kind: str, client: int, figures: Figures) -> None:
    started = time.monotonic()
    try:
        if kind == "read":
            answer = await http.get(f"/v1/programs/{PROGRAM}/members/m{random.randrange(MEMBERS)}")
        elif kind == "cold_read":
            cold = f"cold{random.randrange(COLD_MEMBERS)}"
            answer = await http.get(f"/v1/programs/{PROGRAM}/members/{cold}")
        elif kind == "program":
            answer = await http.put(
                f"/v1/programs/{PROGRAM}-c{client}", json={"name": f"client {client}"}
            )
        else:
            answer = await http.get("/readyz")
    except httpx.TimeoutException:
        figures.timeouts[kind] += 1
        return
    except httpx.TransportError:
        figures.statuses[(kind, 0)] += 1
        return
    figures.statuses[(kind, answer.status_code)] += 1
    if answer.status_code == 503:
        figures.details[(kind, detail(answer))] += 1
    figures.other_latency_s.setdefault(kind, []).append(time.monotonic() - started)


async def client_loop(
    base_url: str, key: str, client: int, stop_at: float, figures: Figures
) -> None:
    kinds = [kind for kind, _ in MIX]
    weights = [weight for _, weight in MIX]
    token = secrets.token_hex(4)
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=REQUEST_TIMEOUT_S
    ) as http:
        n = 0
        while time.monotonic() < stop_at:
            kind = random.choices(kinds, weights)[0]
            if kind in ("credit", "debit"):
                member = f"m{random.randrange(MEMBERS)}"
                await one_write(http, kind, member, f"{token}-{client}-{n}", figures)
            else:
                await one_other(http, kind, client, figures)
            n += 1


async def seed(base_url: str, key: str) -> None:
    async with httpx.AsyncClient(
        base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60
    ) as http:
        answer = await http.put(f"/v1/programs/{PROGRAM}", json={"name": "crash bench"})
        assert answer.status_code in (200, 201), answer.text
        for start in range(0, MEMBERS, 50):
            answers = await asyncio.gather(
                *(
                    http.post(
                        f"/v1/programs/{PROGRAM}/members/m{i}/credits",
                        json={"points": 1000, "reason": "seed"},
                        headers={"Idempotency-Key": f"seed-{i}"},
                    )
                    for i in range(start, min(start + 50, MEMBERS))
                )
            )
            assert all(a.status_code == 201 for a in answers), [a.text for a in answers]


def crasher(pg: EmbeddedPostgres, times: list[float], t0: float, log: list[str]) -> None:
    for at in times:
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        started = time.monotonic()
        pg.crash_and_restart()
        log.append(f"crash at {at:5.1f} s: back after {time.monotonic() - started:.2f} s")


def books(dsn: str, figures: Figures) -> dict[str, Any]:
    """Balances against ledger entries, and one transaction per answered key."""
    with psycopg.connect(dsn) as conn:
        drift = conn.execute(
            """
            SELECT count(*) FROM accounts a
            WHERE a.program_id = %s AND a.balance <> (
              SELECT coalesce(sum(e.amount), 0) FROM ledger_entries e
              WHERE e.program_id = a.program_id AND e.member_id = a.member_id
                AND e.account = 'member')
            """,
            (PROGRAM,),
        ).fetchone()
        rows = conn.execute(
            "SELECT idempotency_key, count(*) FROM transactions WHERE program_id = %s"
            " AND idempotency_key NOT LIKE 'seed-%%' GROUP BY idempotency_key",
            (PROGRAM,),
        ).fetchall()
        total = conn.execute(
            "SELECT coalesce(sum(balance), 0) FROM accounts WHERE program_id = %s", (PROGRAM,)
        ).fetchone()
    per_key = dict(rows)
    created = {k for k, status in figures.answered.items() if status == 201}
    expected_total = MEMBERS * 1000 + sum(figures.points[k] for k in created)
    return {
        "members whose balance differs from their ledger": drift[0] if drift else None,
        "writes answered 201": len(created),
        "201 writes missing from the ledger": len(created - per_key.keys()),
        "keys with more than one transaction": sum(1 for c in per_key.values() if c > 1),
        "transactions no client was answered 201 for": len(per_key.keys() - created),
        "sum of balances": total[0] if total else None,
        "sum expected from the 201 answers": expected_total,
    }


def report(figures: Figures, crash_log: list[str], book: dict[str, Any], args: Any) -> None:
    print(f"\n{args.clients} clients, {args.crashes} PostgreSQL crashes in {args.duration:.0f} s")
    for line in crash_log:
        print("  " + line)
    kinds = sorted({kind for kind, _ in figures.statuses})
    print("\nanswers by kind and status (0 = connection error):")
    for kind in kinds:
        row = {s: n for (k, s), n in sorted(figures.statuses.items()) if k == kind}
        print(f"  {kind:10s} {row}")
    unavailable = sum(n for (_, s), n in figures.statuses.items() if s == 503)
    print(f"\n503s clients saw: {unavailable}")
    for kind in kinds:
        n = figures.statuses.get((kind, 503), 0)
        if n:
            print(f"  {kind:10s} {n}")
    for (kind, why), n in figures.details.most_common(8):
        print(f"  {n:5d} x {kind}: {why}")
    print(f"timeouts: {sum(figures.timeouts.values())} {dict(figures.timeouts)}")
    latencies = sorted(figures.write_latency_s)
    if latencies:
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(
            f"writes to their final answer (retries included): {len(latencies)}, "
            f"p50 {statistics.median(latencies) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
            f"max {latencies[-1] * 1000:.0f} ms"
        )
    for kind, values in sorted(figures.other_latency_s.items()):
        values.sort()
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        print(f"{kind:10s} p99 {p99 * 1000:.0f} ms, max {values[-1] * 1000:.0f} ms")
    print("\nthe books:")
    for name, value in book.items():
        print(f"  {name}: {value}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--crashes", type=int, default=5)
    parser.add_argument("--duration", type=float, default=40.0)
    parser.add_argument("--profile", choices=("fast", "default"), default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="points-crash-bench-"))
    pg = EmbeddedPostgres(tmp / "pg")
    admin_url = pg.start()
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE points_crash_bench")
        dsn = with_dbname(admin_url, "points_crash_bench")
        key = "pts_bench_" + secrets.token_hex(16)
        redis_url = os.environ.get("POINTS_TEST_REDIS_URL")
        with points_service(dsn, redis_url, key, tmp / "data", free_port(), args.profile) as (
            base_url,
            _settings,
        ):
            asyncio.run(seed(base_url, key))
            figures = Figures()
            crash_log: list[str] = []
            t0 = time.monotonic()
            thread = threading.Thread(
                target=crasher,
                args=(pg, crash_schedule(args.duration, args.crashes), t0, crash_log),
                daemon=True,
            )
            thread.start()

            async def load() -> None:
                stop_at = t0 + args.duration
                await asyncio.gather(
                    *(client_loop(base_url, key, c, stop_at, figures) for c in range(args.clients))
                )

            asyncio.run(load())
            thread.join()
            report(figures, crash_log, books(dsn, figures), args)
            print(f"  queue high-water marks: {queue_peaks(base_url)}")
    finally:
        pg.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
