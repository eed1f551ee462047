"""The local token buckets (injected clock), the headers and the 429 problem, the limiter
without Redis, and the settings it is built from. Redis itself: tests/integration."""

from __future__ import annotations

import pytest

from domain.errors import Code, PointsError
from serve_app.ratelimit import (
    BUCKET_ADDRESS,
    BUCKET_KEY,
    BUCKET_MEMBER,
    UNLIMITED,
    Decision,
    Limit,
    LocalBuckets,
    RateLimitConfig,
    RateLimiter,
    client_address,
    rate_limit_headers,
    refusal,
)
from serve_app.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config(**changes: object) -> RateLimitConfig:
    values: dict[str, object] = {
        "enabled": True,
        "key": Limit(10, 5),
        "member": Limit(1, 2),
        "auth_failures": Limit(10 / 60, 3),
        "redis_timeout_ms": 10.0,
        "redis_retry_s": 1.0,
        "fallback_replicas": 1,
    }
    values.update(changes)
    return RateLimitConfig(**values)  # type: ignore[arg-type]


def test_a_bucket_allows_its_burst_then_refuses_until_a_token_is_due() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock)
    limit = Limit(2, 3)  # a token every 0.5 s
    remaining = [buckets.take(["b"], ["key"], [limit], 1).remaining for _ in range(3)]
    assert remaining == [2, 1, 0]
    refused = buckets.take(["b"], ["key"], [limit], 1)
    assert not refused.allowed and refused.bucket == "key" and refused.limit == 3
    assert refused.retry_after_s == pytest.approx(0.5) and refused.reset_s == pytest.approx(0.5)
    clock.now += 0.49
    assert not buckets.take(["b"], ["key"], [limit], 1).allowed
    clock.now += 0.01
    allowed = buckets.take(["b"], ["key"], [limit], 1)
    assert allowed.allowed and allowed.remaining == 0 and allowed.local
    # Until full again: three tokens at two a second.
    assert allowed.reset_s == pytest.approx(1.5)


def test_refill_stops_at_the_burst() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock)
    limit = Limit(100, 4)
    buckets.take(["b"], ["key"], [limit], 1)
    clock.now += 3600
    assert [buckets.take(["b"], ["key"], [limit], 1).allowed for _ in range(5)] == [
        True,
        True,
        True,
        True,
        False,
    ]


def test_both_buckets_or_neither() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock)
    key, member = Limit(1, 3), Limit(1, 1)
    first = buckets.take(["k", "m1"], ["key", "member"], [key, member], 1)
    assert first.allowed and first.bucket == "member" and first.remaining == 0
    refused = buckets.take(["k", "m1"], ["key", "member"], [key, member], 1)
    assert not refused.allowed and refused.bucket == "member"
    # The refusal took nothing from the key's bucket: two of three are left.
    assert buckets.take(["k"], ["key"], [key], 0).remaining == 2
    # Another member has its own bucket.
    assert buckets.take(["k", "m2"], ["key", "member"], [key, member], 1).allowed
    assert buckets.take(["k"], ["key"], [key], 1).remaining == 0
    # Now the key refuses, and the member's bucket is not touched.
    refused = buckets.take(["k", "m3"], ["key", "member"], [key, member], 1)
    assert not refused.allowed and refused.bucket == "key"
    assert buckets.take(["m3"], ["member"], [member], 0).remaining == 1


def test_a_look_takes_nothing_and_is_refused_below_one_token() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock)
    limit = Limit(1, 2)
    assert buckets.take(["a"], ["address"], [limit], 0).remaining == 2
    assert len(buckets) == 0  # looking stores nothing
    buckets.take(["a"], ["address"], [limit], 1)
    buckets.take(["a"], ["address"], [limit], 1)
    look = buckets.take(["a"], ["address"], [limit], 0)
    assert not look.allowed and look.retry_after_s == pytest.approx(1.0)


def test_local_buckets_are_bounded_least_recently_used_first() -> None:
    clock = Clock()
    buckets = LocalBuckets(clock, size_max=3)
    limit = Limit(1, 1)
    for name in ("a", "b", "c"):
        buckets.take([name], ["key"], [limit], 1)
    buckets.take(["a"], ["key"], [limit], 1)  # refused: "a" is not refreshed by it
    clock.now += 1
    buckets.take(["a"], ["key"], [limit], 1)  # "a" is the most recent now
    buckets.take(["d"], ["key"], [limit], 1)  # drops "b", the least recently used
    assert len(buckets) == 3
    assert buckets.take(["b"], ["key"], [limit], 0).remaining == 1  # forgotten: full
    assert buckets.take(["c"], ["key"], [limit], 0).remaining == 1  # refilled meanwhile
    assert not buckets.take(["a"], ["key"], [limit], 0).allowed


def test_a_limit_shared_by_replicas() -> None:
    assert Limit(100, 50).share(1) == Limit(100, 50)
    assert Limit(100, 50).share(4) == Limit(25, 12)
    assert Limit(1, 3).share(8) == Limit(1 / 8, 1)  # never less than one token of burst
    with pytest.raises(AssertionError):
        Limit(0, 1)
    with pytest.raises(AssertionError):
        Limit(1, 0)


def test_headers_of_an_allowed_and_a_refused_decision() -> None:
    allowed = Decision(True, BUCKET_KEY, 100, 99, 0.01, 0.0)
    assert rate_limit_headers(allowed) == {
        "RateLimit-Limit": "100",
        "RateLimit-Remaining": "99",
        "RateLimit-Reset": "1",
    }
    refused = Decision(False, BUCKET_MEMBER, 2, 0, 2.2, 2.2)
    assert rate_limit_headers(refused) == {
        "RateLimit-Limit": "2",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "3",
        "Retry-After": "3",
    }
    # A token due in a few milliseconds: never "Retry-After: 0".
    assert rate_limit_headers(Decision(False, BUCKET_KEY, 5, 0, 0.004, 0.004))["Retry-After"] == "1"
    assert rate_limit_headers(UNLIMITED) == {}


@pytest.mark.parametrize(
    ("bucket", "words"),
    [
        (BUCKET_KEY, "API key"),
        (BUCKET_MEMBER, "this member"),
        (BUCKET_ADDRESS, "failed authentications"),
    ],
)
def test_a_refusal_is_a_rate_limited_problem_naming_its_bucket(bucket: str, words: str) -> None:
    error = refusal(Decision(False, bucket, 10, 0, 0.5, 0.5))
    assert isinstance(error, PointsError) and error.code is Code.RATE_LIMITED
    assert words in error.detail and f"({bucket} bucket)" in error.detail
    assert error.hints["Retry-After"] == "1" and error.hints["RateLimit-Remaining"] == "0"
    assert error.retryable


async def test_without_redis_the_limiter_decides_locally() -> None:
    clock = Clock()
    limiter = RateLimiter(None, config(), clock=clock)
    decisions = [await limiter.take("k1", None, ("p", "m")) for _ in range(3)]
    assert [d.allowed for d in decisions] == [True, True, False]
    assert decisions[2].bucket == BUCKET_MEMBER and all(d.local for d in decisions)
    # A key's own limit replaces the default.
    own = [await limiter.take("k2", Limit(1, 1), None) for _ in range(2)]
    assert [d.allowed for d in own] == [True, False]
    with pytest.raises(PointsError) as raised:
        await limiter.enforce("k2", Limit(1, 1), None)
    assert raised.value.hints["Retry-After"] == "1"
    assert (await limiter.enforce("k3", None, None))["RateLimit-Remaining"] == "4"


async def test_failed_authentications_per_address() -> None:
    clock = Clock()
    limiter = RateLimiter(None, config(), clock=clock)
    for _ in range(3):
        assert (await limiter.check_address("10.0.0.1")).allowed
        assert (await limiter.failed_auth("10.0.0.1")).allowed
    check = await limiter.check_address("10.0.0.1")
    assert not check.allowed and check.bucket == BUCKET_ADDRESS
    assert check.retry_after_s == pytest.approx(6.0)  # 10 a minute: one every 6 s
    assert not (await limiter.failed_auth("10.0.0.1")).allowed
    assert (await limiter.check_address("10.0.0.2")).allowed
    clock.now += 6
    assert (await limiter.check_address("10.0.0.1")).allowed


async def test_the_fallback_enforces_a_share_of_each_limit() -> None:
    limiter = RateLimiter(None, config(key=Limit(10, 8), fallback_replicas=4), clock=Clock())
    allowed = [(await limiter.take("k", None, None)).allowed for _ in range(3)]
    assert allowed == [True, True, False]  # 8 / 4 replicas


async def test_switched_off_every_request_passes_without_headers() -> None:
    limiter = RateLimiter(None, config(enabled=False, key=Limit(1, 1)), clock=Clock())
    for _ in range(5):
        assert await limiter.take("k", None, ("p", "m")) is UNLIMITED
        assert await limiter.check_address("a") is UNLIMITED
        assert await limiter.failed_auth("a") is UNLIMITED
    assert await limiter.enforce("k", None, None) == {}


def test_config_from_the_settings() -> None:
    settings = Settings(
        replicas=3,
        rate_limit_key_per_s=7,
        rate_limit_key_burst=9,
        auth_failures_per_min=30,
    )
    built = RateLimitConfig.from_settings(settings)
    assert built.enabled and built.key == Limit(7, 9)
    assert built.member == Limit(2_000, 2_000)
    assert built.auth_failures == Limit(0.5, 20)
    assert built.fallback_replicas == 3  # unset: the ingress replica count
    assert built.redis_timeout_ms == 20.0 and built.redis_retry_s == 1.0
    assert (
        RateLimitConfig.from_settings(Settings(rate_limit_fallback_replicas=2)).fallback_replicas
        == 2
    )
    assert not RateLimitConfig.from_settings(Settings(rate_limits=False)).enabled


def test_the_client_address_behind_haproxy_and_without_it() -> None:
    # HAProxy on the replica's node (a loopback peer) sets X-Forwarded-For.
    assert client_address("127.0.0.1", "203.0.113.9") == "203.0.113.9"
    assert client_address("::1", "198.51.100.1, 203.0.113.9") == "203.0.113.9"
    # Anyone else's X-Forwarded-For is not believed.
    assert client_address("198.51.100.7", "203.0.113.9") == "198.51.100.7"
    assert client_address("198.51.100.7", None) == "198.51.100.7"
    assert client_address("127.0.0.1", None) == "127.0.0.1"
    assert client_address("127.0.0.1", "x" * 65) == "127.0.0.1"
    assert client_address(None, "203.0.113.9") == "unknown"


async def test_a_batch_takes_a_token_per_event_and_one_per_member() -> None:
    clock = Clock()
    limiter = RateLimiter(None, config(key=Limit(1, 10), member=Limit(1, 2)), clock=clock)
    # 4 events for two members: 4 key tokens, 1 from each member.
    first = await limiter.take_batch("k", None, "p", ["a", "b", "a", "a"], 4)
    assert first.allowed
    # The key has 6 left: a batch of 7 is refused by the key's bucket.
    refused = await limiter.take_batch("k", None, "p", ["c"], 7)
    assert not refused.allowed and refused.bucket == BUCKET_KEY
    # A member hammered batch after batch runs out on its own bucket.
    assert (await limiter.take_batch("k", None, "p", ["a"], 1)).allowed
    third = await limiter.take_batch("k", None, "p", ["a"], 1)
    assert not third.allowed and third.bucket == BUCKET_MEMBER
    # A batch larger than the key's bucket takes it whole rather than never passing.
    clock.now += 100
    assert (await limiter.take_batch("k2", Limit(1, 3), "p", [], 1000)).allowed
    assert not (await limiter.take_batch("k2", Limit(1, 3), "p", [], 1)).allowed
