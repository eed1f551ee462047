"""Benchmark: live scaling of the account shards, in one run.

    python -m loadtests.scale_bench [--duration 10] [--members 10000] [--json out.json]

What it prints, every figure measured during this run:

1. Spread debits (wrk, unique Idempotency-Keys, over `--members` members) with 2 account
   shards, then the same after `PUT /v1/admin/topology` moved to 4: throughput, p50/p99,
   non-2xx answers, and CPU per debit by process kind (ingress replica, account shard,
   PostgreSQL, ...): the inputs of the capacity model in docs/scaling.md. On a 2-core
   machine the point of 4 shards is that throughput does not fall.
2. The same load in steady state, then while the shards move 4 -> 2 -> 4 -> ... back to
   back for the whole window: p50/p99 and non-2xx answers (a request whose slot is handed
   off waits for it; the worst it may see is a 503 with Retry-After), with how many moves
   and slot hand-offs happened meanwhile.

The database is created for the run and dropped at the end; see loadtests/bench.py (whose
wrk, CPU meter and service helpers this reuses).
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from loadtests.bench import (
    DEFAULT_ADMIN_URL,
    LoadConfig,
    WrkResult,
    bench_database,
    debits,
    free_port,
    measure,
    points_service,
    port_open,
    run_wrk,
    seed_points,
    server_version,
)

MOVE_TIMEOUT_S = 120.0
# CPU per debit is shown for the process kinds that use at least this much of one CPU.
CPU_SHOWN_MIN_PCT = 1.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtests.scale_bench")
    parser.add_argument("--duration", type=float, default=10, help="seconds per phase")
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=10, help="wrk request timeout, s")
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--seed-concurrency", type=int, default=64)
    parser.add_argument("--database-url", help=f"admin URL (default {DEFAULT_ADMIN_URL})")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="only measure one ingress replica at rising concurrency (the autoscaling target)",
    )
    return parser.parse_args(argv)


def move_to(client: httpx.Client, accounts: int) -> dict[str, Any]:
    """Start a move and wait for it; returns the finished move's figures."""
    started = client.put("/v1/admin/topology", json={"account_shards": accounts})
    if started.status_code != 202:
        raise RuntimeError(f"move refused: {started.status_code} {started.text}")
    move = started.json()["move"]
    t0 = time.perf_counter()
    if move is None:  # nothing to hand off: done before the answer was written
        return {"to": accounts, "slots": 0, "seconds": 0.0}
    while time.perf_counter() - t0 < MOVE_TIMEOUT_S:
        view = client.get("/v1/admin/topology").json()
        if view["move"] is None:
            return {
                "to": accounts,
                "slots": move["slots_total"],
                "seconds": round(time.perf_counter() - t0, 2),
            }
        time.sleep(0.05)
    raise RuntimeError("move did not finish in time")


def cpu_per_debit(result: WrkResult) -> dict[str, float]:
    """µs of CPU per debit by process kind (% of one CPU / debits per second)."""
    return {
        label: round(pct / 100 / result.rps * 1e6, 1)
        for label, pct in result.cpu_by_process.items()
        if pct >= CPU_SHOWN_MIN_PCT and result.rps > 0
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    admin_url = args.database_url
    if admin_url is None and port_open("127.0.0.1", 5432):
        admin_url = DEFAULT_ADMIN_URL
    from serve_app.auth import new_key

    key = new_key()
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="points-scale-bench-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "lua").mkdir()
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
        with bench_database(admin_url, tmp) as dsn:
            print(f"database: {urlsplit(dsn).path.lstrip('/')} (PostgreSQL {server_version(dsn)})")
            with points_service(dsn, None, key, tmp / "data", free_port(), None) as (url, _):
                figures = sweep(args, cfg, url, key) if args.sweep else run(args, cfg, url, key)
    if args.sweep:
        print_sweep(figures)
    else:
        print_report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


def run(args: argparse.Namespace, cfg: LoadConfig, url: str, key: str) -> dict[str, Any]:
    members = [f"m{i}" for i in range(args.members)]
    seconds, _ = seed_points(url, key, members, args.seed_concurrency, cfg.token())
    print(f"  seeded {len(members):,} members in {seconds:.1f} s", flush=True)
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    spread = debits(cfg, args.members)
    figures: dict[str, Any] = {"duration_s": args.duration, "members": args.members}
    with client:
        print("  (1) spread debits, 2 account shards", flush=True)
        two = measure(cfg, url, spread)
        figures["moves"] = [move_to(client, 4)]
        print("  (1) spread debits, 4 account shards", flush=True)
        four = measure(cfg, url, spread)
        print("  (2) steady state, 4 account shards", flush=True)
        steady = measure(cfg, url, spread)
        print("  (2) while moving 4 -> 2 -> 4 -> ... back to back", flush=True)
        moving, moves = under_moves(cfg, url, client, spread)
        figures["moves"] += moves
    for name, result in (("two", two), ("four", four), ("steady", steady), ("moving", moving)):
        figures[name] = {
            **{k: v for k, v in asdict(result).items() if k != "output"},
            "cpu_us_per_debit": cpu_per_debit(result),
        }
    figures["four_over_two"] = round(four.rps / two.rps, 3)
    figures["moving_over_steady_p99"] = round(moving.p99_ms / steady.p99_ms, 2)
    figures["moves_during_window"] = len(moves)
    return figures


# Requests in flight (wrk connections) against one ingress replica, for --sweep.
SWEEP_CONNECTIONS = (4, 8, 16, 32, 64, 128)


def sweep(args: argparse.Namespace, cfg: LoadConfig, url: str, key: str) -> dict[str, Any]:
    """Spread debits at rising concurrency against one replica: where throughput stops
    growing and only latency does is the replica's target of requests in flight."""
    members = [f"m{i}" for i in range(args.members)]
    seed_points(url, key, members, args.seed_concurrency, cfg.token())
    spread = debits(cfg, args.members)
    rows = []
    for connections in SWEEP_CONNECTIONS:
        cfg.connections = connections
        cfg.threads = min(args.threads, connections)
        print(f"  {connections} connections", flush=True)
        result = measure(cfg, url, spread)
        rows.append(
            {
                "connections": connections,
                "rps": round(result.rps),
                "p50_ms": result.p50_ms,
                "p99_ms": result.p99_ms,
                "non_2xx": result.non_2xx,
            }
        )
    return {"duration_s": args.duration, "members": args.members, "sweep": rows}


def print_sweep(figures: dict[str, Any]) -> None:
    print(f"\nOne ingress replica, spread debits, {figures['duration_s']:g} s per step (one run)")
    top = max(row["rps"] for row in figures["sweep"])
    for row in figures["sweep"]:
        print(
            f"  {row['connections']:>4} in flight  {row['rps']:>7,} req/s"
            f" ({100 * row['rps'] / top:>3.0f}% of the best)  p50 {row['p50_ms']:>6.1f} ms"
            f"  p99 {row['p99_ms']:>7.1f} ms  non-2xx {row['non_2xx']}"
        )


def under_moves(
    cfg: LoadConfig, url: str, client: httpx.Client, spread: Any
) -> tuple[WrkResult, list[dict[str, Any]]]:
    """wrk for the phase's duration while moves run back to back in this thread's twin."""
    moves: list[dict[str, Any]] = []
    done = threading.Event()

    def keep_moving() -> None:
        target = 2
        while not done.is_set():
            moves.append(move_to(client, target))
            target = 6 - target  # 2, 4, 2, ...

    script = spread()
    mover = threading.Thread(target=keep_moving)
    mover.start()
    try:
        result = run_wrk(cfg, url, cfg.duration_s, script)
    finally:
        done.set()
        mover.join(MOVE_TIMEOUT_S)
    return result, moves


def print_report(figures: dict[str, Any]) -> None:
    print(
        f"\nLive scaling, spread debits over {figures['members']:,} members, "
        f"{figures['duration_s']:g} s per phase (one run)"
    )
    for name, title in (
        ("two", "2 account shards"),
        ("four", "4 account shards"),
        ("steady", "steady state (4 shards)"),
        ("moving", "while moving back to back"),
    ):
        result = figures[name]
        print(
            f"  {title:<28} {result['rps']:>8,.0f} req/s  p50 {result['p50_ms']:>6.1f} ms"
            f"  p99 {result['p99_ms']:>7.1f} ms  non-2xx {result['non_2xx']:>5}"
            f"  socket errors {sum(result['socket_errors'].values())}"
        )
    print(f"  4 shards / 2 shards throughput: {figures['four_over_two']:.2f}")
    print(f"  p99 while moving / steady: {figures['moving_over_steady_p99']:.2f}")
    slots = sum(m["slots"] for m in figures["moves"][1:])
    print(
        f"  moves during the window: {figures['moves_during_window']}"
        f" ({slots} slot hand-offs; each move took"
        f" {', '.join(str(m['seconds']) for m in figures['moves'][1:])} s)"
    )
    print("  CPU per debit (µs, by process kind):")
    for name in ("two", "four"):
        cpu = ", ".join(f"{k} {v:g}" for k, v in figures[name]["cpu_us_per_debit"].items())
        print(f"    {name} shards: {cpu}")


if __name__ == "__main__":
    raise SystemExit(main())
