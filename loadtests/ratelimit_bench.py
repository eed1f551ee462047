"""What one rate-limit decision costs: `RateLimiter.take` against a real Redis.

    python -m loadtests.ratelimit_bench [--redis-url redis://127.0.0.1:6379/15] [--n 20000]

Prints (1) the median and p99 µs of one `take` awaited alone (a key and a member bucket,
as for a write; and a key bucket only, as for a read): the latency a request pays; (2) how
many takes a second one process (one event loop, like one ingress replica) completes with
`--concurrency` takes in flight, and their p99 latency: the CPU cost in the replica, and the
figure to size the Redis timeout by (a take's latency under load is mostly the event loop's
own queue); (3) the local fallback's µs per take. Limits are set high so that no take is
refused. Buckets use a fresh prefix and are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import time

from redis.asyncio import Redis

from serve_app.ratelimit import (
    Limit,
    LocalBuckets,
    RateLimitConfig,
    RateLimiter,
    redis_client_for,
)

HIGH = Limit(1e9, 1_000_000_000)
MEMBERS = 1_000


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


async def sequential(limiter: RateLimiter, n: int, write: bool) -> list[float]:
    took: list[float] = []
    for i in range(n):
        member = ("bench", f"m{i % MEMBERS}") if write else None
        started = time.perf_counter_ns()
        decision = await limiter.take("bench-key", HIGH, member)
        took.append((time.perf_counter_ns() - started) / 1000)
        assert decision.allowed and not decision.local, decision
    return took


async def concurrent(limiter: RateLimiter, n: int, in_flight: int) -> tuple[float, list[float]]:
    took: list[float] = []
    pending = iter(range(n))

    async def worker() -> None:
        for i in pending:
            started = time.perf_counter_ns()
            decision = await limiter.take("bench-key", HIGH, ("bench", f"m{i % MEMBERS}"))
            took.append((time.perf_counter_ns() - started) / 1000)
            assert decision.allowed, decision
            assert not decision.local, "Redis did not answer within the timeout"

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return n / (time.perf_counter() - started), took


def local_cost(n: int) -> float:
    buckets = LocalBuckets()
    names, labels, limits = ["k", "m"], ["key", "member"], [HIGH, HIGH]
    started = time.perf_counter_ns()
    for _ in range(n):
        buckets.take(names, labels, limits, 1)
    return (time.perf_counter_ns() - started) / 1000 / n


async def main(args: argparse.Namespace) -> None:
    prefix = f"bench:rl:{secrets.token_hex(4)}:"
    config = RateLimitConfig(
        enabled=True,
        key=HIGH,
        member=HIGH,
        auth_failures=HIGH,
        redis_timeout_ms=args.timeout_ms,
        redis_retry_s=1.0,
        fallback_replicas=1,
    )
    limiter = RateLimiter(redis_client_for(args.redis_url, args.timeout_ms), config, prefix=prefix)
    assert await limiter.warm_up()
    try:
        await sequential(limiter, 500, True)  # warm: connection, script, interpreter
        for write in (True, False):
            took = await sequential(limiter, args.n, write)
            what = "key + member bucket (a write)" if write else "key bucket only (a read)"
            print(
                f"take, one at a time, {what}: median {statistics.median(took):.0f} µs,"
                f" p99 {percentile(took, 0.99):.0f} µs ({args.n} takes)"
            )
        for in_flight in args.concurrency:
            rate, took = await concurrent(limiter, args.n, in_flight)
            print(
                f"takes/s in one process, {in_flight} in flight: {rate:,.0f}"
                f" (latency median {statistics.median(took):.0f} µs,"
                f" p99 {percentile(took, 0.99):.0f} µs, max {max(took):.0f} µs)"
            )
        print(f"local fallback: {local_cost(args.n):.1f} µs per take")
    finally:
        await limiter.aclose()
        cleanup = Redis.from_url(args.redis_url)
        async for name in cleanup.scan_iter(match=prefix + "*", count=1000):
            await cleanup.delete(name)
        await cleanup.aclose()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 256])
    # Generous, so that the figures show Redis's latency and not the fallback's.
    parser.add_argument("--timeout-ms", type=float, default=1_000.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse()))
