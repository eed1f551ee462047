"""Earning benchmark: events per second through the batch endpoint and the Redis stream,
each with the e-commerce template's rules evaluated and every award committed durably.

    python -m loadtests.events_bench [--duration 15] [--members 10000] [--stream-events 100000]

Starts the service (local Ray head, fast Serve profile) on a fresh database, creates a
program from the `ecommerce` template, then measures:

(r) one rule evaluation (`domain.rules.evaluate`, an `order` event of the template), in
    this process: median of 5 runs of 20,000 evaluations, in microseconds.
(b) `POST /events/batch`: `--concurrency` clients each sending batches of `--batch` order
    events (new event ids, members drawn from `--members`) for `--duration` seconds.
    Events/s counts events answered 201 (applied and committed).
(s) the Redis stream: `--stream-events` order events XADDed in pipelines of 1,000, timed
    from the first XADD until the consumer group has none left unread or unacknowledged.

The verifier (`loadtests.verify`) then checks every invariant in PostgreSQL. Benchmarks are
noisy on a shared 2-core machine: quote one run's figures, compare within a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import redis

from loadtests.bench import (
    DEFAULT_ADMIN_URL,
    _interrupt,
    bench_database,
    free_port,
    machine_profile,
    points_service,
    port_open,
)

PROGRAM = "bench-shop"
LOCAL_REDIS_URL = "redis://127.0.0.1:6379/14"


def rule_evaluation_us(repeats: int = 5, count: int = 20_000) -> float:
    from domain.earning import member_context
    from domain.policy import parse_policy
    from domain.rules import EventIn, compile_rule_set, evaluate
    from domain.templates import TEMPLATES

    template = TEMPLATES["ecommerce"]
    policy = parse_policy(template["policy"])
    rule_set = compile_rule_set(template["rules"], 1)
    now = datetime.now(UTC)
    event = EventIn("e1", "m1", "order", now, {"amount": 123_456})
    context = member_context({}, policy, now)
    runs = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(count):
            evaluate(rule_set, event, context, policy)
        runs.append((time.perf_counter() - started) / count * 1e6)
    return statistics.median(runs)


def order_events(token: str, start: int, count: int, members: int) -> list[dict[str, Any]]:
    occurred = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    return [
        {
            "id": f"{token}-{start + i}",
            "member_id": f"m{random.randrange(members)}",
            "type": "order",
            "occurred_at": occurred,
            "attributes": {"amount": random.randrange(100, 50_000)},
        }
        for i in range(count)
    ]


async def batch_phase(base_url: str, key: str, args: argparse.Namespace) -> dict[str, Any]:
    token = secrets.token_hex(4)
    counter = 0
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    deadline = time.perf_counter() + args.duration

    async def client_loop(http: httpx.AsyncClient) -> None:
        nonlocal counter
        while time.perf_counter() < deadline:
            start = counter
            counter += args.batch
            events = order_events(token, start, args.batch, args.members)
            sent = time.perf_counter()
            answer = await http.post(
                f"/v1/programs/{PROGRAM}/events/batch", json={"events": events}
            )
            latencies.append((time.perf_counter() - sent) * 1000)
            if answer.status_code != 200:
                statuses[answer.status_code] = statuses.get(answer.status_code, 0) + args.batch
                continue
            for result in answer.json()["results"]:
                statuses[result["status"]] = statuses.get(result["status"], 0) + 1

    headers = {"Authorization": f"Bearer {key}"}
    clients = [
        httpx.AsyncClient(base_url=base_url, headers=headers, timeout=60)
        for _ in range(args.concurrency)
    ]
    started = time.perf_counter()
    try:
        await asyncio.gather(*(client_loop(c) for c in clients))
    finally:
        for c in clients:
            await c.aclose()
    elapsed = time.perf_counter() - started
    applied = statuses.get(201, 0)
    return {
        "events_per_s": applied / elapsed,
        "elapsed_s": elapsed,
        "statuses": statuses,
        "batches": len(latencies),
        "batch_p50_ms": statistics.median(latencies) if latencies else None,
        "batch_p99_ms": sorted(latencies)[int(len(latencies) * 0.99)] if latencies else None,
    }


def stream_phase(redis_url: str, args: argparse.Namespace, stream: str) -> dict[str, Any]:
    client = redis.Redis.from_url(redis_url)
    token = secrets.token_hex(4)
    total = args.stream_events
    started = time.perf_counter()
    for start in range(0, total, 1000):
        pipe = client.pipeline(transaction=False)
        for event in order_events(token, start, min(1000, total - start), args.members):
            pipe.xadd(stream, {"program_id": PROGRAM, "event": json.dumps(event)})
        pipe.execute()
    added_s = time.perf_counter() - started
    deadline = started + args.stream_timeout
    while time.perf_counter() < deadline:
        groups = {g["name"].decode(): g for g in client.xinfo_groups(stream)}
        group = groups.get("points")
        if group is not None and group.get("lag") == 0 and group["pending"] == 0:
            break
        time.sleep(0.05)
    else:
        raise RuntimeError(f"the stream was not drained within {args.stream_timeout} s")
    elapsed = time.perf_counter() - started
    dead = client.xlen(f"{stream}:dead") if client.exists(f"{stream}:dead") else 0
    return {"events_per_s": total / elapsed, "elapsed_s": elapsed, "xadd_s": added_s,
            "dead_letters": dead}  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.events_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--duration", type=float, default=15, help="seconds of batch load")
    parser.add_argument("--concurrency", type=int, default=4, help="batches in flight")
    parser.add_argument("--batch", type=int, default=1000, help="events per batch")
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--stream-events", type=int, default=100_000)
    parser.add_argument("--stream-timeout", type=float, default=300)
    parser.add_argument("--database-url", help=f"admin URL (default {DEFAULT_ADMIN_URL})")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    admin_url = args.database_url
    if admin_url is None and port_open("127.0.0.1", 5432):
        admin_url = DEFAULT_ADMIN_URL
    if not port_open("127.0.0.1", 6379):
        print("the events benchmark needs Redis on 127.0.0.1:6379", file=sys.stderr)
        return 2
    redis_url = LOCAL_REDIS_URL
    from serve_app.auth import new_key
    from serve_app.cli import programs_create

    figures: dict[str, Any] = {}
    print("(r) rule evaluation …", flush=True)
    figures["rule_evaluation_us"] = rule_evaluation_us()
    key = new_key()
    stream = f"points:bench:{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="points-events-") as tmp_name:
        tmp = Path(tmp_name)
        with bench_database(admin_url, tmp) as dsn:
            os.environ["POINTS_EVENT_STREAM"] = stream
            print("starting the Points service (Ray + Serve) …", flush=True)
            with points_service(dsn, redis_url, key, tmp / "data", free_port(), None) as (
                base_url,
                settings,
            ):
                figures["meta"] = machine_profile(settings)
                programs_create(PROGRAM, "ecommerce", None, base_url, key)
                print("  (b) batch endpoint …", flush=True)
                figures["batch"] = asyncio.run(batch_phase(base_url, key, args))
                print("  (s) Redis stream …", flush=True)
                figures["stream"] = stream_phase(redis_url, args, stream)
                redis.Redis.from_url(redis_url).delete(stream, f"{stream}:dead")
            print("running the verifier …", flush=True)
            from loadtests.verify import main as verify_main

            figures["verifier_exit"] = verify_main(["--database-url", dsn])

    batch, stream_figures = figures["batch"], figures["stream"]
    print()
    print(f"(r) one rule evaluation (ecommerce 'order'): {figures['rule_evaluation_us']:.1f} µs")
    print(
        f"(b) batch endpoint: {batch['events_per_s']:,.0f} events/s committed "
        f"({batch['batches']} batches of {args.batch}, {args.concurrency} in flight; "
        f"batch p50 {batch['batch_p50_ms']:.0f} ms, p99 {batch['batch_p99_ms']:.0f} ms; "
        f"answers {batch['statuses']})"
    )
    print(
        f"(s) Redis stream: {stream_figures['events_per_s']:,.0f} events/s "
        f"({args.stream_events:,} events in {stream_figures['elapsed_s']:.1f} s, "
        f"XADD took {stream_figures['xadd_s']:.1f} s; "
        f"dead letters {stream_figures['dead_letters']})"
    )
    print("target: ≥ 10,000 events/s each")
    print(f"verifier exit code: {figures['verifier_exit']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0 if figures["verifier_exit"] == 0 else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: the service and Ray were stopped", file=sys.stderr)
        sys.exit(130)
