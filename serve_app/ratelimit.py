"""Rate limits: token buckets kept in Redis, with a local fallback per replica.

Contract:
- `RateLimiter.take(key_id, limit, member)` decides one request in ONE Redis round trip
  (concurrent requests share pipelines: `ScriptPipeline`): a Lua script takes a token from
  the key's bucket and, for a write (`member` given), from the member's bucket
  `(program_id, member_id)` too, atomically, from both or from neither. The
  `Decision` carries the figures of the bucket that refused, or of the one with the fewest
  tokens left when both allowed; `rate_limit_headers` renders them as `RateLimit-Limit`,
  `RateLimit-Remaining`, `RateLimit-Reset` (draft-ietf-httpapi-ratelimit-headers, integer
  seconds) plus `Retry-After` when refused, and `refusal` turns a refusal into
  `PointsError(Code.RATE_LIMITED)` naming the bucket, its headers as hints.
- `check_address(address)` (before any key lookup: refused once an address has used up its
  failures) and `failed_auth(address)` (after a failed authentication: takes one) throttle
  repeated failed authentication per client address (`client_address` says which) with
  the same machinery.
- Never an exception, never a 5xx because of Redis: when Redis fails or does not answer
  within `redis_timeout_ms`, the request is decided by the LOCAL fallback below, and Redis is
  tried again only after `redis_retry_s` (one probe at a time), so a dead Redis costs one
  timeout per second per replica, not one per request. One warning when an outage starts,
  one info line when Redis answers again.

Why a token bucket: a client may burst up to `burst` requests, then is held to `per_s` on
average; the answer says exactly when the next token is due (Retry-After), and a bucket is
two numbers. Each bucket is a Redis hash `{t: tokens, u: microseconds of the last take}`
refilled lazily at the next take, with a PEXPIRE of the time it takes to fill up again: a
full bucket and a missing one mean the same, so idle buckets vanish by themselves. The
script reads the time from Redis (`TIME`), never from the replicas, whose clocks differ. A
refused take writes nothing.

Why this local fallback: when Redis is unreachable the replicas cannot share buckets, so
each replica keeps in-process buckets with the same rule (`LocalBuckets`) and a share of
each limit: rate and burst divided by `fallback_replicas` (the configured ingress replica
count by default), so the service as a whole stays near the configured limits while the
load is spread over the replicas. It is approximate (an autoscaled-up fleet lets through
more, a skewed spread less), which is fine for a few seconds of outage and far better than
refusing everything or limiting nothing. The local buckets are bounded
(`LOCAL_BUCKETS_MAX`, oldest dropped first) and are not reconciled with Redis afterwards.

Why the timeout is 20 ms by default: a take against a Redis on the same host answers in
about 0.2 ms alone, but a take's latency is mostly the replica's own event loop: with 256
takes in flight in one process their p99 was 13 ms (loadtests/ratelimit_bench.py), and an
ingress replica under full load runs its requests' other work in between. A late take is
decided locally; only TIMEOUTS_TO_TRIP timeouts in a row (or a refused connection) count as
an outage, so a busy loop does not flap to the fallback, while a Redis that stopped
answering costs at most the timeout to the requests in flight when it stopped.

Key names: `<prefix>k:<key id>`, `<prefix>m:<program id>/<member id>` (ids never contain
`/`), `<prefix>a:<client address>`. All of one request's keys go to one Redis: this needs a
single Redis (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actors.metrics import HttpMetrics
from domain.errors import Code, PointsError

log = logging.getLogger("points.ratelimit")

KEY_PREFIX = "points:rl:"
BUCKET_KEY = "key"
BUCKET_MEMBER = "member"
BUCKET_ADDRESS = "address"
# In-process buckets of the fallback; past this many, the least recently used is dropped
# (dropping a bucket refills it: only during an outage, and bounded memory matters more).
LOCAL_BUCKETS_MAX = 50_000
# Connections from one replica to Redis. A take holds one for a round trip (well under a
# millisecond), so even at the timeout this serves thousands of takes a second; a take that
# waits longer than the timeout for a connection is decided locally, like a slow Redis.
REDIS_CONNECTIONS_MAX = 64
# Timeouts in a row (no answer between) that make an outage (see _redis_failed).
TIMEOUTS_TO_TRIP = 3
# Takes sent in one pipeline (more wait for the next): bounds one reply's size.
PIPELINE_COMMANDS_MAX = 512
# An address longer than this (IPv6 with a zone is under 64) is not an address.
ADDRESS_LENGTH_MAX = 64
# Distinct limits whose fallback share is kept (key limits are few distinct values).
SHARES_CACHED_MAX = 1_024
# `warm_up`: loading the script on a fresh connection, once per replica.
WARM_UP_TIMEOUT_S = 2.0
US_PER_S = 1_000_000
MS_PER_S = 1_000

# KEYS: 1 or 2 bucket hashes. ARGV[1]: tokens to take (0: look only, refused below one
# token). ARGV[2i], ARGV[2i+1]: bucket i's refill rate (tokens per second) and burst.
# Returns {allowed 0|1, bucket index (1-based), tokens left (floored), reset ms, retry ms}:
# the refusing bucket's figures, or, when allowed, those of the bucket with the fewest
# tokens left. Reset: until full again; until `need` tokens when refused.
# Numbers are written with %.17g / %.0f: Lua's own number-to-string keeps 14 digits, and
# a time in microseconds has 16.
TAKE_SCRIPT = """
local now = redis.call('TIME')
local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
local cost = tonumber(ARGV[1])
local need = math.max(cost, 1)
local tokens = {}
for i = 1, #KEYS do
  local rate_us = tonumber(ARGV[2 * i]) / 1000000
  local burst = tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', KEYS[i], 't', 'u')
  local t = burst
  if state[1] and state[2] then
    local elapsed_us = math.max(0, now_us - tonumber(state[2]))
    t = math.min(burst, tonumber(state[1]) + elapsed_us * rate_us)
  end
  if t < need then
    local wait_ms = math.ceil((need - t) / (rate_us * 1000))
    return {0, i, math.floor(t), wait_ms, wait_ms}
  end
  tokens[i] = t
end
local worst = 1
for i = 1, #KEYS do
  local left = tokens[i] - cost
  local rate_ms = tonumber(ARGV[2 * i]) / 1000
  local burst = tonumber(ARGV[2 * i + 1])
  if cost > 0 then
    redis.call('HSET', KEYS[i], 't', string.format('%.17g', left),
               'u', string.format('%.0f', now_us))
    redis.call('PEXPIRE', KEYS[i], math.ceil((burst - left) / rate_ms) + 1)
  end
  tokens[i] = left
  if left < tokens[worst] then worst = i end
end
local rate_ms = tonumber(ARGV[2 * worst]) / 1000
local burst = tonumber(ARGV[2 * worst + 1])
return {1, worst, math.floor(tokens[worst]), math.ceil((burst - tokens[worst]) / rate_ms), 0}
"""


@dataclass(frozen=True, slots=True)
class Limit:
    """A token bucket's shape: refills `per_s` tokens a second, holds at most `burst`."""

    per_s: float
    burst: int

    def __post_init__(self) -> None:
        assert self.per_s > 0, self
        assert self.burst >= 1, self

    def share(self, parts: int) -> Limit:
        """This limit split evenly over `parts` replicas (at least one token of burst)."""
        assert parts >= 1
        if parts == 1:
            return self
        return Limit(self.per_s / parts, max(1, self.burst // parts))


@dataclass(frozen=True, slots=True)
class Decision:
    """One request's verdict and the figures of the bucket that decided it.

    `limit` is that bucket's burst (what the draft calls the quota), `remaining` its whole
    tokens left, `reset_s` the seconds until it is full again (when refused: until the
    next token), `retry_after_s` 0 when allowed. `local`: decided by the fallback."""

    allowed: bool
    bucket: str
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float
    local: bool = False


# The answer when rate limits are off: allowed, no figures, no headers.
UNLIMITED = Decision(True, "", 0, 0, 0.0, 0.0)


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """The draft's headers for a decision (none when rate limits are off), integer seconds
    rounded up so a client that waits that long finds the token there."""
    if decision is UNLIMITED:
        return {}
    headers = {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(math.ceil(decision.reset_s)),
    }
    if not decision.allowed:
        headers["Retry-After"] = str(max(1, math.ceil(decision.retry_after_s)))
    return headers


# `points_rate_limited_total`'s `limit` label per bucket (docs/metrics.md).
LIMIT_LABELS = {BUCKET_KEY: "key", BUCKET_MEMBER: "member", BUCKET_ADDRESS: "auth"}


@functools.cache
def _limited() -> HttpMetrics:
    return HttpMetrics()


def refusal(decision: Decision) -> PointsError:
    """The 429 problem for a refused decision; the headers ride along as hints."""
    assert not decision.allowed
    what = {
        BUCKET_KEY: "this API key's request rate",
        BUCKET_MEMBER: "the write rate for this member",
        BUCKET_ADDRESS: "failed authentications from this client address",
    }.get(decision.bucket, decision.bucket)
    retry_s = max(1, math.ceil(decision.retry_after_s))
    _limited().rate_limited(LIMIT_LABELS.get(decision.bucket, decision.bucket))
    return PointsError(
        Code.RATE_LIMITED,
        f"rate limited: {what} is over its limit ({decision.bucket} bucket);"
        f" retry after {retry_s} s",
        hints=rate_limit_headers(decision),
    )


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """What the limiter needs from the settings (serve_app/settings.py explains each)."""

    enabled: bool
    key: Limit
    member: Limit
    auth_failures: Limit
    redis_timeout_ms: float
    redis_retry_s: float
    fallback_replicas: int

    def __post_init__(self) -> None:
        assert self.redis_timeout_ms > 0 and self.redis_retry_s > 0
        assert self.fallback_replicas >= 1

    @classmethod
    def from_settings(cls, settings: Any) -> RateLimitConfig:
        """From `serve_app.settings.Settings` (duck-typed: no import cycle, no pydantic)."""
        return cls(
            enabled=settings.rate_limits,
            key=Limit(settings.rate_limit_key_per_s, settings.rate_limit_key_burst),
            member=Limit(settings.rate_limit_member_per_s, settings.rate_limit_member_burst),
            auth_failures=Limit(settings.auth_failures_per_min / 60, settings.auth_failures_burst),
            redis_timeout_ms=settings.rate_limit_redis_timeout_ms,
            redis_retry_s=settings.rate_limit_redis_retry_s,
            fallback_replicas=settings.rate_limit_fallback_replicas or settings.replicas,
        )


class LocalBuckets:
    """In-process token buckets with the script's rule, on an injected monotonic clock."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, size_max: int = LOCAL_BUCKETS_MAX
    ) -> None:
        assert size_max >= 2  # a request's two buckets must fit
        self._clock = clock
        self._size_max = size_max
        # name -> [tokens, clock reading of the last take]; insertion order = recency.
        self._buckets: dict[str, list[float]] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(
        self, names: Sequence[str], labels: Sequence[str], limits: Sequence[Limit], cost: int
    ) -> Decision:
        """Take `cost` tokens from every bucket, or none if one has too few (cost 0: only
        look, refused below one token)."""
        assert len(names) == len(labels) == len(limits) >= 1 and cost >= 0
        now = self._clock()
        need = max(cost, 1)
        tokens: list[float] = []
        for name, label, limit in zip(names, labels, limits, strict=True):
            state = self._buckets.get(name)
            t = float(limit.burst)
            if state is not None:
                t = min(t, state[0] + max(0.0, now - state[1]) * limit.per_s)
            if t < need:
                wait_s = (need - t) / limit.per_s
                return Decision(False, label, limit.burst, int(t), wait_s, wait_s, local=True)
            tokens.append(t)
        worst = 0
        for i, name in enumerate(names):
            tokens[i] -= cost
            if cost > 0:
                self._buckets.pop(name, None)  # re-inserted last: most recently used
                self._buckets[name] = [tokens[i], now]
            if tokens[i] < tokens[worst]:
                worst = i
        while len(self._buckets) > self._size_max:
            del self._buckets[next(iter(self._buckets))]
        limit = limits[worst]
        reset_s = (limit.burst - tokens[worst]) / limit.per_s
        decision = Decision(
            True, labels[worst], limit.burst, int(tokens[worst]), reset_s, 0.0, local=True
        )
        assert 0 <= decision.remaining <= decision.limit
        return decision


class ScriptPipeline:
    """Runs the take script for concurrent requests in shared pipelines.

    A request's take is one EVALSHA; takes that arrive while a pipeline is out are sent
    together in the next (at most PIPELINE_COMMANDS_MAX each, one pipeline out at a time),
    so each request still costs exactly one round trip, but the client's per-command
    overhead is paid once a batch: measured (loadtests/ratelimit_bench.py) about 40 µs of
    CPU per take with 16-256 in flight, against 100-120 µs for one EVALSHA call each. A
    reply NOSCRIPT (a restarted or flushed Redis) loads the script and runs those again."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self._client = client
        self.sha = hashlib.sha1(TAKE_SCRIPT.encode()).hexdigest()
        self._pending: list[tuple[Sequence[str | float | int], asyncio.Future[Any]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def call(self, args: Sequence[str | float | int]) -> Any:
        """EVALSHA of the script with `args` (numkeys, keys..., argv...): its reply."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((args, future))
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:PIPELINE_COMMANDS_MAX]
                del self._pending[:PIPELINE_COMMANDS_MAX]
                try:
                    replies = await self._run([args for args, _ in batch])
                except Exception as exc:  # every waiter learns it; they decide locally
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:  # cancelled (the loop is closing): so are the waiters
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), reply in zip(batch, replies, strict=True):
                    if future.done():  # its request timed out meanwhile
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self._flusher = None

    async def _run(self, commands: list[Sequence[str | float | int]]) -> list[Any]:
        replies = await self._pipeline(commands)
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            self.sha = await self._client.script_load(TAKE_SCRIPT)
            again = await self._pipeline([commands[i] for i in missing])
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, commands: list[Sequence[str | float | int]]) -> list[Any]:
        pipe = self._client.pipeline(transaction=False)
        for args in commands:
            pipe.evalsha(self.sha, *args)  # type: ignore[arg-type]
        return list(await pipe.execute(raise_on_error=False))


class RateLimiter:
    """Token buckets in Redis (one script call per decision), local when Redis is not there.

    `redis_client` None: always local (no Redis configured). Build the client with
    `redis_client_for` (timeouts, no retries); `clock` drives the back-off and the local
    buckets (tests inject one)."""

    def __init__(
        self,
        redis_client: redis.asyncio.Redis | None,
        config: RateLimitConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        local: LocalBuckets | None = None,
        prefix: str = KEY_PREFIX,
    ) -> None:
        self.config = config
        self._redis = redis_client
        self._pipeline = ScriptPipeline(redis_client) if redis_client is not None else None
        self._timeout_s = config.redis_timeout_ms / MS_PER_S
        self._clock = clock
        self._local = local if local is not None else LocalBuckets(clock)
        self._prefix = prefix
        self._shares: dict[Limit, Limit] = {}
        # Redis is tried when the clock reaches this; while `_down`, one probe at a time.
        self._retry_at = 0.0
        self._down = False
        self._outage_started = 0.0
        self._timeouts = 0  # in a row, while up (see _redis_failed)
        self._dropping: asyncio.Task[None] | None = None

    @property
    def redis_down(self) -> bool:
        return self._down

    async def take(
        self, key_id: str, limit: Limit | None, member: tuple[str, str] | None
    ) -> Decision:
        """One request of API key `key_id` (its own `limit`, or the default); a write that
        moves a member's points also passes `member` = (program_id, member_id)."""
        if not self.config.enabled:
            return UNLIMITED
        key_limit = limit or self.config.key
        key_name = f"{self._prefix}k:{key_id}"
        if member is None:
            return await self._decide((key_name,), (BUCKET_KEY,), (key_limit,), 1)
        member_name = f"{self._prefix}m:{member[0]}/{member[1]}"
        return await self._decide(
            (key_name, member_name),
            (BUCKET_KEY, BUCKET_MEMBER),
            (key_limit, self.config.member),
            1,
        )

    async def take_batch(
        self, key_id: str, limit: Limit | None, program_id: str, members: Sequence[str], events: int
    ) -> Decision:
        """A batch of `events` events (a write to each of `members`): the key's bucket gives
        one token per event (at most its burst: a batch larger than the bucket takes it
        whole), then each member's bucket one token. Two round trips: the key's tokens are
        spent even when a member's bucket refuses (the batch is refused whole)."""
        if not self.config.enabled:
            return UNLIMITED
        key_limit = limit or self.config.key
        cost = max(1, min(events, key_limit.burst))
        decision = await self._decide(
            (f"{self._prefix}k:{key_id}",), (BUCKET_KEY,), (key_limit,), cost
        )
        if not decision.allowed or not members:
            return decision
        distinct = sorted(set(members))
        return await self._decide(
            tuple(f"{self._prefix}m:{program_id}/{member}" for member in distinct),
            (BUCKET_MEMBER,) * len(distinct),
            (self.config.member,) * len(distinct),
            1,
        )

    async def enforce(
        self, key_id: str, limit: Limit | None, member: tuple[str, str] | None
    ) -> dict[str, str]:
        """`take`, raising the 429 problem when refused; returns the headers to send."""
        decision = await self.take(key_id, limit, member)
        if not decision.allowed:
            raise refusal(decision)
        return rate_limit_headers(decision)

    async def check_address(self, address: str) -> Decision:
        """Before looking a key up: refused while `address` has no failures left (takes
        nothing)."""
        if not self.config.enabled:
            return UNLIMITED
        return await self._decide(
            (f"{self._prefix}a:{address}",), (BUCKET_ADDRESS,), (self.config.auth_failures,), 0
        )

    async def failed_auth(self, address: str) -> Decision:
        """After a failed authentication from `address`: takes one failure (refused once
        there are none left)."""
        if not self.config.enabled:
            return UNLIMITED
        return await self._decide(
            (f"{self._prefix}a:{address}",), (BUCKET_ADDRESS,), (self.config.auth_failures,), 1
        )

    async def warm_up(self, timeout_s: float = WARM_UP_TIMEOUT_S) -> bool:
        """Load the script and open a connection before the first request (a replica's
        start), under a generous timeout: a fresh connection's handshake and the script's
        first load take several round trips, which the per-request timeout is not sized
        for. Returns whether Redis answered; never raises."""
        if self._redis is None:
            return False
        try:
            async with asyncio.timeout(timeout_s):
                await self._redis.script_load(TAKE_SCRIPT)
        except (RedisError, OSError, TimeoutError) as exc:
            self._redis_failed(exc)
            return False
        return True

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()

    async def _decide(
        self, names: tuple[str, ...], labels: tuple[str, ...], limits: tuple[Limit, ...], cost: int
    ) -> Decision:
        if self._pipeline is not None:
            now = self._clock()
            if now >= self._retry_at:
                if self._down:  # one probe per back-off: the others stay local meanwhile
                    self._retry_at = now + self.config.redis_retry_s
                args: list[str | float | int] = [len(names), *names, cost]
                for limit in limits:
                    args.append(limit.per_s)
                    args.append(limit.burst)
                try:
                    async with asyncio.timeout(self._timeout_s):
                        reply = await self._pipeline.call(args)
                except (RedisError, OSError, TimeoutError) as exc:
                    self._redis_failed(exc)
                else:
                    self._timeouts = 0
                    if self._down:
                        self._redis_back()
                    return _decision_of(reply, labels, limits)
        return self._local.take(names, labels, [self._share(limit) for limit in limits], cost)

    def _share(self, limit: Limit) -> Limit:
        share = self._shares.get(limit)
        if share is None:
            if len(self._shares) >= SHARES_CACHED_MAX:
                self._shares.clear()
            share = self._shares[limit] = limit.share(self.config.fallback_replicas)
        return share

    def _drop_connections(self) -> None:
        assert self._redis is not None
        pool = self._redis.connection_pool
        self._dropping = asyncio.get_running_loop().create_task(
            pool.disconnect(inuse_connections=False)
        )

    def _redis_failed(self, exc: BaseException) -> None:
        """Decide whether this failure starts an outage. A refused or broken connection
        does at once. A timeout does only after TIMEOUTS_TO_TRIP in a row with no answer
        between: an event loop busy with other requests can make one take late while
        Redis is fine (its answer waits in the socket), and each such request is decided
        locally anyway; a Redis that stopped answering makes every take time out."""
        now = self._clock()
        if not self._down and isinstance(exc, TimeoutError | RedisTimeoutError):
            self._timeouts += 1
            if self._timeouts < TIMEOUTS_TO_TRIP:
                return
        self._retry_at = now + self.config.redis_retry_s
        if not self._down:
            self._down = True
            self._outage_started = now
            log.warning(
                "rate limits: Redis failed (%s: %s); deciding locally (limits / %d replicas),"
                " trying Redis again every %.1f s",
                type(exc).__name__,
                str(exc) or "no answer in time",
                self.config.fallback_replicas,
                self.config.redis_retry_s,
            )
            # Idle pooled connections would each fail once after a Redis restart
            # ("connection closed by server"): close them now (no round trip).
            self._drop_connections()

    def _redis_back(self) -> None:
        self._down = False
        self._retry_at = 0.0  # the probe's back-off is over: every request uses Redis
        log.info(
            "rate limits: Redis answers again after %.1f s; buckets are shared again",
            self._clock() - self._outage_started,
        )


def _decision_of(reply: Any, labels: Sequence[str], limits: Sequence[Limit]) -> Decision:
    allowed, index, remaining, reset_ms, retry_ms = (int(x) for x in reply)
    assert 1 <= index <= len(labels), reply
    limit = limits[index - 1]
    return Decision(
        allowed == 1,
        labels[index - 1],
        limit.burst,
        max(0, remaining),
        reset_ms / MS_PER_S,
        retry_ms / MS_PER_S,
    )


def client_address(peer: str | None, forwarded_for: str | None) -> str:
    """The client address the failed-authentication limiter counts by.

    In the fast profile every request reaches a replica from HAProxy on the same node (a
    loopback peer), which sets X-Forwarded-For to the address it saw, replacing whatever
    the client sent (serve_app/listeners.py): that is the client. From any other peer
    (a replica port reached directly, Serve's own proxy) the peer is the client, and an
    X-Forwarded-For it sent is not believed."""
    if peer and forwarded_for and _is_loopback(peer):
        candidate = forwarded_for.rsplit(",", 1)[-1].strip()
        if candidate and len(candidate) <= ADDRESS_LENGTH_MAX:
            return candidate
    return peer or "unknown"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redis_client_for(url: str, timeout_ms: float) -> redis.asyncio.Redis:
    """A Redis client for the limiter alone: its own bounded pool, socket timeouts of
    `timeout_ms`, and no retries (redis-py retries three times by default: a dead Redis
    would cost each request three attempts)."""
    timeout_s = timeout_ms / MS_PER_S
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_CONNECTIONS_MAX,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        # No CLIENT SETINFO on connect: a new connection answers after one round trip less.
        driver_info=None,
    )
    return redis.asyncio.Redis(connection_pool=pool)


def rate_limiter(redis_url: str | None, config: RateLimitConfig) -> RateLimiter:
    """The limiter an ingress replica uses: Redis at `redis_url`, local when there is none."""
    client = redis_client_for(redis_url, config.redis_timeout_ms) if redis_url else None
    return RateLimiter(client, config)
