"""RateLimiter against a real Redis: counts, headers, refill, per-member buckets, both or
neither, expiry of idle buckets, failed authentications; and a Redis of our own (its own
redis-server on its own port) stopped, frozen and started again in the middle: every
request is still decided, by the local fallback, within the timeout, and Redis is used
again once it is back. The shared Redis (db 15) is never stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from redis.asyncio import Redis

from serve_app.ratelimit import (
    BUCKET_ADDRESS,
    BUCKET_KEY,
    BUCKET_MEMBER,
    TIMEOUTS_TO_TRIP,
    Limit,
    RateLimitConfig,
    RateLimiter,
    rate_limit_headers,
    redis_client_for,
    refusal,
)
from serve_app.runtime import free_port

# Above the default 10 ms: this machine is shared, and a spurious timeout before the
# outage would fail the test for the wrong reason.
TIMEOUT_MS = 50.0
RETRY_S = 0.2
# A decision made while Redis is away may take the timeout, plus scheduling on a busy
# shared machine; never seconds (redis-py's default retries would make it that).
DECISION_SLACK_S = 0.1


def config(**changes: object) -> RateLimitConfig:
    values: dict[str, object] = {
        "enabled": True,
        "key": Limit(1, 5),
        "member": Limit(1, 2),
        "auth_failures": Limit(10 / 60, 20),
        "redis_timeout_ms": TIMEOUT_MS,
        "redis_retry_s": RETRY_S,
        "fallback_replicas": 1,
    }
    values.update(changes)
    return RateLimitConfig(**values)  # type: ignore[arg-type]


@pytest.fixture
def prefix() -> str:
    return f"test:rl:{uuid.uuid4().hex}:"


@pytest.fixture
async def r(redis_url: str, prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_timeout=5)
    yield client
    async for name in client.scan_iter(match=prefix + "*"):
        await client.delete(name)
    await client.aclose()


@pytest.fixture
async def limiter(redis_url: str, prefix: str, r: Redis) -> AsyncIterator[RateLimiter]:
    # Generous timeouts: these tests are about the buckets, not about a slow Redis.
    built = RateLimiter(
        redis_client_for(redis_url, 1000.0), config(redis_timeout_ms=1000.0), prefix=prefix
    )
    yield built
    await built.aclose()


async def test_refuses_past_the_burst_with_the_right_figures(limiter: RateLimiter) -> None:
    decisions = [await limiter.take("k1", None, None) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0]
    assert not any(d.local for d in decisions)
    assert rate_limit_headers(decisions[0]) == {
        "RateLimit-Limit": "5",
        "RateLimit-Remaining": "4",
        "RateLimit-Reset": "1",  # one token short of full at one a second
    }
    assert rate_limit_headers(decisions[4])["RateLimit-Reset"] == "5"
    refused = decisions[5]
    assert refused.bucket == BUCKET_KEY and 0.9 < refused.retry_after_s <= 1.0
    assert rate_limit_headers(refused) == {
        "RateLimit-Limit": "5",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "1",
        "Retry-After": "1",
    }
    error = refusal(refused)
    assert error.hints["Retry-After"] == "1" and "key bucket" in error.detail
    # Another key has its own bucket; a key's own limit replaces the default.
    assert (await limiter.take("k2", None, None)).remaining == 4
    own = [await limiter.take("k3", Limit(1, 2), None) for _ in range(3)]
    assert [d.allowed for d in own] == [True, True, False] and own[0].limit == 2


async def test_tokens_refill_over_time(limiter: RateLimiter) -> None:
    fast = Limit(20, 2)  # a token every 50 ms
    assert all([(await limiter.take("k", fast, None)).allowed for _ in range(2)])
    refused = await limiter.take("k", fast, None)
    assert not refused.allowed and refused.retry_after_s <= 0.05
    await asyncio.sleep(0.06)
    again = await limiter.take("k", fast, None)
    assert again.allowed and again.remaining == 0
    await asyncio.sleep(0.2)  # four tokens' worth, but never past the burst of two
    capped = await limiter.take("k", fast, None)
    assert capped.allowed and capped.remaining == 1


async def test_each_member_has_its_own_bucket(limiter: RateLimiter) -> None:
    member_a, member_b = ("p1", "alice"), ("p1", "bob")
    a = [await limiter.take("k", Limit(1000, 1000), member_a) for _ in range(3)]
    assert [d.allowed for d in a] == [True, True, False]
    assert a[0].bucket == BUCKET_MEMBER and a[0].limit == 2 and a[0].remaining == 1
    assert a[2].bucket == BUCKET_MEMBER
    assert (await limiter.take("k", Limit(1000, 1000), member_b)).allowed
    # The same member id in another program is another member.
    assert (await limiter.take("k", Limit(1000, 1000), ("p2", "alice"))).allowed
    # And another key hitting alice finds her bucket empty: it protects the member.
    assert not (await limiter.take("other", None, member_a)).allowed


async def test_both_buckets_or_neither(limiter: RateLimiter, r: Redis, prefix: str) -> None:
    key = Limit(1, 3)
    # The member refuses: nothing is taken from the key's bucket.
    assert (await limiter.take("k", key, ("p", "m1"))).allowed
    assert (await limiter.take("k", key, ("p", "m1"))).allowed
    refused = await limiter.take("k", key, ("p", "m1"))
    assert not refused.allowed and refused.bucket == BUCKET_MEMBER
    left = await limiter.take("k", key, None)
    assert left.allowed and left.remaining == 0  # 3 - 2 writes - this one
    # The key refuses: a new member's bucket is not even created.
    refused = await limiter.take("k", key, ("p", "m2"))
    assert not refused.allowed and refused.bucket == BUCKET_KEY
    assert await r.exists(f"{prefix}m:p/m2") == 0


async def test_idle_buckets_expire_when_full_again(
    limiter: RateLimiter, r: Redis, prefix: str
) -> None:
    await limiter.take("k", Limit(10, 10), None)  # one token short: full again in 100 ms
    ttl_ms = await r.pttl(f"{prefix}k:k")
    assert 0 < ttl_ms <= 101
    await limiter.take("slow", Limit(1, 10), None)
    assert 500 < await r.pttl(f"{prefix}k:slow") <= 1001
    await asyncio.sleep(0.2)
    assert await r.exists(f"{prefix}k:k") == 0


async def test_failed_authentications_are_counted_per_address(limiter: RateLimiter) -> None:
    for _ in range(20):
        assert (await limiter.check_address("192.0.2.7")).allowed
        assert (await limiter.failed_auth("192.0.2.7")).allowed
    check = await limiter.check_address("192.0.2.7")
    assert not check.allowed and check.bucket == BUCKET_ADDRESS
    assert 5.9 < check.retry_after_s <= 6.0  # 10 a minute: one every 6 s
    assert rate_limit_headers(check)["Retry-After"] == "6"
    assert (await limiter.check_address("192.0.2.8")).allowed
    # Looking does not take: a hundred looks leave a fresh address untouched.
    for _ in range(100):
        await limiter.check_address("192.0.2.9")
    assert (await limiter.failed_auth("192.0.2.9")).remaining == 19


async def test_decisions_are_atomic_under_concurrency(limiter: RateLimiter) -> None:
    decisions = await asyncio.gather(
        *(limiter.take("k", Limit(0.001, 50), ("p", f"m{i % 5}")) for i in range(200))
    )
    # 5 members x 2 member tokens = 10 writes, however they interleave.
    assert sum(d.allowed for d in decisions) == 10


# --- A Redis of our own, stopped in the middle ---------------------------------------


class OwnRedis:
    """redis-server on its own free port (never the shared one), started and stopped by us."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed"
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly"]
        self.proc = subprocess.Popen(
            [binary, *args, "no", "--daemonize", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.RedisError:
                assert time.monotonic() < deadline and self.proc.poll() is None
                time.sleep(0.02)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            server.signal(signal.SIGCONT)
        server.stop()


async def timed_take(limiter: RateLimiter, key_id: str) -> tuple[bool, bool, float]:
    started = time.perf_counter()
    decision = await limiter.take(key_id, Limit(1000, 100_000), ("p", key_id))
    return decision.allowed, decision.local, time.perf_counter() - started


async def until_redis_used(limiter: RateLimiter, key_id: str) -> None:
    async with asyncio.timeout(10):
        while (await timed_take(limiter, key_id))[1]:
            await asyncio.sleep(RETRY_S / 4)


async def test_redis_stopped_in_the_middle(
    own_redis: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = RateLimiter(
        redis_client_for(own_redis.url, TIMEOUT_MS),
        config(member=Limit(1000, 100_000)),
        prefix="rl:",
    )
    caplog.set_level(logging.INFO, logger="points.ratelimit")
    try:
        assert await limiter.warm_up()
        before = [await timed_take(limiter, "k") for _ in range(20)]
        assert all(allowed and not local for allowed, local, _ in before)

        own_redis.stop()
        during = [await timed_take(limiter, "k") for _ in range(300)]
        assert all(allowed and local for allowed, local, _ in during)
        assert max(seconds for *_, seconds in during) < TIMEOUT_MS / 1000 + DECISION_SLACK_S
        assert limiter.redis_down
        # Concurrent requests during the outage are decided too, without an error.
        results = await asyncio.gather(*(timed_take(limiter, f"c{i}") for i in range(100)))
        assert all(local for _, local, _ in results)
        await asyncio.sleep(RETRY_S * 2)  # probes fail: still decided, still local
        assert (await timed_take(limiter, "k"))[1]

        own_redis.start()  # the same port, an empty Redis: SCRIPT LOAD happens again
        await until_redis_used(limiter, "k")
        assert not limiter.redis_down
        assert not (await timed_take(limiter, "k"))[1]
    finally:
        await limiter.aclose()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once per outage
    assert "deciding locally" in warnings[0].getMessage()
    assert sum("answers again" in r.getMessage() for r in caplog.records) == 1


async def test_a_frozen_redis_costs_at_most_the_timeout(own_redis: OwnRedis) -> None:
    limiter = RateLimiter(
        redis_client_for(own_redis.url, TIMEOUT_MS),
        config(key=Limit(1, 4), fallback_replicas=2),
        prefix="rl:",
    )
    try:
        assert await limiter.warm_up()
        assert not (await limiter.take("k", None, None)).local
        own_redis.signal(signal.SIGSTOP)  # accepts connections, never answers
        late = await timed_take(limiter, "late")
        assert late[1] and late[2] < TIMEOUT_MS / 1000 + DECISION_SLACK_S
        # One late answer is not an outage (a busy event loop makes those too).
        assert not limiter.redis_down
        own_redis.signal(signal.SIGCONT)
        await until_redis_used(limiter, "late")
        own_redis.signal(signal.SIGSTOP)
        started = time.perf_counter()
        decisions = [await limiter.take("k", None, None) for _ in range(TIMEOUTS_TO_TRIP + 2)]
        # Each waited at most the timeout, the last ones not at all (the outage is known).
        assert time.perf_counter() - started < TIMEOUTS_TO_TRIP * (
            TIMEOUT_MS / 1000 + DECISION_SLACK_S
        )
        assert limiter.redis_down
        # Decided locally with this replica's share of the limit: 4 / 2 replicas.
        assert all(d.local and d.limit == 2 for d in decisions)
        assert [d.allowed for d in decisions] == [True, True, False, False, False]
        own_redis.signal(signal.SIGCONT)
        await until_redis_used(limiter, "other")
        assert not limiter.redis_down
    finally:
        await limiter.aclose()


async def test_a_flushed_script_is_loaded_again(own_redis: OwnRedis) -> None:
    limiter = RateLimiter(redis_client_for(own_redis.url, 1000.0), config(), prefix="rl:")
    try:
        assert (await limiter.take("k", None, None)).remaining == 4
        redis.Redis(port=own_redis.port).script_flush()
        decision = await limiter.take("k", None, None)
        assert decision.remaining == 3 and not decision.local
    finally:
        await limiter.aclose()
