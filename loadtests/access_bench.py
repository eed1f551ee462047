"""Benchmark: what access control costs on the hot path, in one run.

    python -m loadtests.access_bench [--duration 10] [--rounds 3] [--members 10000]

Spread debits (wrk, unique Idempotency-Keys, over `--members` members) sent with a
`service` key limited to the benchmark's program, whose policy has every risk limit on
(velocity limits and a review threshold, all set high enough that no debit is refused or
held: the checks run, nothing trips). Two configurations, measured alternately for
`--rounds` rounds on the same service (a redeploy switches between them, a rolling update):

- **on**: authentication by role and program scope, rate limits in Redis (the key's bucket
  and the member's bucket, one Lua call per debit), risk checks;
- **off**: the same with `POINTS_RATE_LIMITS=false` (authentication and risk checks stay:
  they cannot be turned off).

It prints each run's throughput, p50/p99 and non-2xx answers, the medians, and the ratio of
the medians on/off (the target: at least 0.90). Then a flood of `--bad-keys` requests, each
with a different made-up key of the right form, `--bad-concurrency` at a time: how fast they
are answered, how many 401 and 429, and how many database transactions the service ran
meanwhile next to an idle window of the same length (its pollers run either way): a
made-up key must cost no lookup. Every figure is measured during the run; the
database is created for the run and dropped at the end (see loadtests/bench.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg

from loadtests.bench import (
    DEFAULT_ADMIN_URL,
    PROGRAM,
    LoadConfig,
    WrkResult,
    bench_database,
    debits,
    free_port,
    measure,
    points_service,
    port_open,
    seed_points,
    server_version,
)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/14"
# Risk limits on, none of them reached by the benchmark's debits (1 point each).
RISK = {
    "debit_points_per_day": 10**12,
    "redemptions_per_hour": 10**6,
    "service_credit_points_per_day": 10**12,
    "review_above_points": 10**9,
}
TARGET_RATIO = 0.90


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.access_bench")
    parser.add_argument("--duration", type=float, default=10, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="on/off pairs")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=5)
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--seed-concurrency", type=int, default=64)
    parser.add_argument("--database-url", help=f"admin URL (default {DEFAULT_ADMIN_URL})")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    parser.add_argument("--bad-keys", type=int, default=2000)
    parser.add_argument("--bad-concurrency", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser.parse_args(argv)


def service_key(url: str, admin_key: str) -> str:
    """The program's risk policy on, and a service key limited to it."""
    with httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=30
    ) as client:
        program = client.get(f"/v1/programs/{PROGRAM}").json()
        policy = {**program["policy"], "risk": RISK}
        answer = client.put(
            f"/v1/programs/{PROGRAM}", json={"name": program["name"], "policy": policy}
        )
        answer.raise_for_status()
        made = client.post(
            "/v1/keys", json={"name": "bench backend", "role": "service", "programs": [PROGRAM]}
        )
        made.raise_for_status()
        return str(made.json()["key"])


def transactions(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        ).fetchone()
    assert row is not None
    return int(row[0])


STATS_FLUSH_S = 1.5  # PostgreSQL publishes a backend's counts within about a second


def bad_key_flood(url: str, dsn: str, count: int, concurrency: int) -> dict[str, Any]:
    """`count` requests with different made-up keys; the database's transactions meanwhile
    against an idle window as long."""
    from serve_app.auth import new_key

    async def flood() -> tuple[float, list[int]]:
        limits = httpx.Limits(max_connections=concurrency)
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:

            async def one() -> int:
                async with gate:
                    headers = {"Authorization": f"Bearer {new_key()}"}
                    return (await http.get("/v1/programs", headers=headers)).status_code

            started = time.perf_counter()
            statuses = await asyncio.gather(*(one() for _ in range(count)))
            return time.perf_counter() - started, list(statuses)

    time.sleep(STATS_FLUSH_S)
    before = transactions(dsn)
    seconds, statuses = asyncio.run(flood())
    time.sleep(STATS_FLUSH_S)
    during = transactions(dsn) - before
    before = transactions(dsn)
    time.sleep(seconds + STATS_FLUSH_S)
    idle = transactions(dsn) - before
    return {
        "requests": count,
        "seconds": round(seconds, 2),
        "per_s": round(count / seconds),
        "status_401": statuses.count(401),
        "status_429": statuses.count(429),
        "other": len(statuses) - statuses.count(401) - statuses.count(429),
        "db_transactions_during": during,
        "db_transactions_idle_window": idle,
    }


def figures_of(result: WrkResult) -> dict[str, Any]:
    return {
        "rps": round(result.rps, 1),
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "non_2xx": result.non_2xx,
        "socket_errors": sum(result.socket_errors.values()),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from serve_app import runtime
    from serve_app.auth import new_key

    admin_url = args.database_url
    if admin_url is None and port_open("127.0.0.1", 5432):
        admin_url = DEFAULT_ADMIN_URL
    admin_key = new_key()
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory(prefix="points-access-bench-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "lua").mkdir()
        with bench_database(admin_url, tmp) as dsn:
            print(f"database: {urlsplit(dsn).path.lstrip('/')} (PostgreSQL {server_version(dsn)})")
            port = free_port()
            with points_service(dsn, args.redis_url, admin_key, tmp / "data", port, None) as (
                url,
                settings,
            ):
                members = [f"m{i}" for i in range(args.members)]
                seconds, _ = seed_points(
                    url, admin_key, members, args.seed_concurrency, secrets.token_hex(4)
                )
                print(f"  seeded {len(members):,} members in {seconds:.1f} s", flush=True)
                key = service_key(url, admin_key)
                cfg = LoadConfig(
                    connections=args.connections,
                    threads=args.threads,
                    duration_s=args.duration,
                    warmup_s=args.warmup,
                    timeout_s=args.timeout,
                    key=key,
                    script_dir=tmp / "lua",
                    run_token=secrets.token_hex(4),
                )
                spread = debits(cfg, args.members)
                for round_ in range(args.rounds):
                    for mode in ("on", "off"):
                        configured = settings.model_copy(update={"rate_limits": mode == "on"})
                        runtime.deploy(configured, dsn, args.redis_url)
                        result = measure(cfg, url, spread)
                        runs[mode].append(figures_of(result))
                        print(
                            f"  round {round_ + 1} rate limits {mode:>3}:"
                            f" {result.rps:8.0f} debits/s"
                            f"  p50 {result.p50_ms:6.1f} ms  p99 {result.p99_ms:6.1f} ms"
                            f"  non-2xx {result.failures}",
                            flush=True,
                        )
                runtime.deploy(settings, dsn, args.redis_url)  # rate limits on again
                flooded = bad_key_flood(url, dsn, args.bad_keys, args.bad_concurrency)
    medians = {mode: statistics.median(r["rps"] for r in runs[mode]) for mode in runs}
    ratio = medians["on"] / medians["off"]
    report = {
        "runs": runs,
        "median_rps": medians,
        "median_p99_ms": {m: statistics.median(r["p99_ms"] for r in runs[m]) for m in runs},
        "on_over_off": round(ratio, 3),
        "duration_s": args.duration,
        "members": args.members,
        "bad_keys": flooded,
    }
    print(
        f"\nspread debits, service key, risk checks on: median {medians['on']:.0f}/s with rate"
        f" limits, {medians['off']:.0f}/s without: {ratio:.1%} (target ≥ {TARGET_RATIO:.0%})"
    )
    print(
        f"{flooded['requests']:,} requests with made-up keys in {flooded['seconds']} s"
        f" ({flooded['per_s']:,}/s): {flooded['status_401']} × 401, {flooded['status_429']}"
        f" × 429, {flooded['other']} other; database transactions meanwhile"
        f" {flooded['db_transactions_during']} (idle window as long:"
        f" {flooded['db_transactions_idle_window']})"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
