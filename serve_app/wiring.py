"""The runtime wiring of one ingress replica: its database pool, key cache, and the clients
of the shard actors (created here, or found by name when they already run).

The ingress deployment builds one `Backend` per replica process and installs it
(`install`); the routes find it with `current()` and never create actors or connections
themselves. (Serve hands the replica its own deserialized copy of the FastAPI app, so the
wiring cannot ride on the module's `app.state`.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime
from types import SimpleNamespace
from typing import Any, NoReturn

import ray
import redis.asyncio

from actors import fleet, mover
from actors.earning import EventApplier, ShardApplierFactory
from actors.event_consumer import EventConsumer
from actors.routers import TopologyRouter
from actors.routing import NAMESPACE, SLOTS, reward_shard_name, shard_name
from actors.shard_client import ACTOR_ERRORS, LANE_QUEUED_MAX, ShardClient
from actors.simulation_job import simulation_task
from db.access_repo import AccessRepo, AuditEntry
from db.api_repo import ApiRepo
from db.experiments_repo import ExperimentsRepo
from db.simulations_repo import SimulationsRepo
from db.topology_repo import Kind, TopologyRepo, ensure_topology, shard_rows
from domain.errors import Code, PointsError
from serve_app.auth import KeyRecord, KeyRing, Refusal, Role, key_id_of
from serve_app.ratelimit import Limit, RateLimitConfig, rate_limiter, refusal

log = logging.getLogger("points.wiring")

# Reward shards are pinged this often: a restarted one resumes its recovery pass.
REWARD_KEEPER_INTERVAL_S = 5.0
KEEPER_CALL_TIMEOUT_S = 5.0
# One call in flight per reward shard: requests queue meanwhile and go as one bigger call.
# Measured (flash_bench, one run each): 1 in flight gave 2,178 flash-sale req/s, 2 gave
# 1,988 and 4 gave 1,607; whole sagas 678 / 633 / 634 req/s. Ray's per-call cost in the
# ingress outweighs the overlap more calls would give.
REWARD_CALLS_IN_FLIGHT = 1
EVENT_CONSUMER_NAME = "points-event-consumer"
FORGET_PROGRAM_TIMEOUT_S = 5.0
# Each replica reads the keys changed since its last look this often: a key created,
# revoked or expired anywhere takes effect everywhere within about this (plus a query).
KEY_POLL_INTERVAL_S = 1.0
KEY_LOAD_TIMEOUT_S = 5.0
# A key the replica does not know makes it read the changes at once, at most this often.
KEY_REFRESH_MIN_S = 0.1
# Every this many polls the whole key table is read again (a few hundred bytes a key).
KEY_FULL_RELOAD_POLLS = 30
# A replica that could not read the key table for this long refuses requests (503):
# revocation must take effect within 5 seconds, so stale keys are not trusted.
KEY_TABLE_STALE_S = 5.0


def key_record(row: dict[str, Any]) -> KeyRecord:
    return KeyRecord(
        key_id=row["key_id"],
        key_hash=row["key_hash"],
        role=Role(row["role"]),
        programs=None if row["programs"] is None else frozenset(row["programs"]),
        expires_at=row["expires_at"],
        rate=None if row["rate_per_s"] is None else (row["rate_per_s"], row["rate_burst"]),
        revoked=row["revoked_at"] is not None,
    )


def event_consumer(redis_url: str | None, dsn: str, shard_config: dict[str, Any]) -> Any:
    """The Redis stream consumer (async earning): one per deployment, found by name."""
    stream = shard_config.get("event_stream")
    if not redis_url or not stream:
        return None
    return EventConsumer.options(  # type: ignore[attr-defined]  # an ActorClass, see above
        name=EVENT_CONSUMER_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote(
        redis_url,
        ShardApplierFactory(dsn),
        EVENT_CONSUMER_NAME,
        {"stream": stream, "dead_letter_stream": f"{stream}:dead"},
    )


class Backend:
    def __init__(
        self, dsn: str, redis_url: str | None, shards: int, shard_config: dict[str, Any]
    ) -> None:
        assert ray.is_initialized()
        self.dsn = dsn
        self._repo = ApiRepo(dsn)
        # What-if replay jobs: rows in PostgreSQL, each run by a Ray task started here.
        self.simulations = SimulationsRepo(self._repo.connection)
        self._simulation_runs: set[asyncio.Future[Any]] = set()
        self.redis = (
            redis.asyncio.Redis.from_url(redis_url, socket_timeout=2) if redis_url else None
        )
        self.keys = KeyRing()
        # Rate limits: Redis token buckets, a local fallback while Redis is away.
        self.limiter = rate_limiter(
            redis_url,
            RateLimitConfig.from_settings(SimpleNamespace(**shard_config["rate_limit"])),
        )
        self.access = AccessRepo(self._repo.connection)
        self.experiments = ExperimentsRepo(self._repo.connection)
        self._keys_since: datetime | None = None
        self._keys_used: set[str] = set()
        self._key_poller: asyncio.Task[None] | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = 0.0
        self._keys_lock = asyncio.Lock()
        self._polls = 0
        self._keys_read_at = 0.0
        # The slot map: seeded on a new database from the configured counts; after that the
        # database says how many shards there are (a move changes it).
        ensure_topology(dsn, {"account": shards, "reward": shard_config["reward_shards"]}, SLOTS)
        for kind, rows in shard_rows(dsn).items():
            for row in rows:
                fleet.shard_actor(kind, row.shard, dsn, shard_config, row.runtime_env)
        self.topology = TopologyRepo(dsn)
        self.account_router = TopologyRouter("account", dsn, shard_name)
        self.reward_router = TopologyRouter("reward", dsn, reward_shard_name)
        lane_queued_max = int(shard_config.get("lane_queued_max", LANE_QUEUED_MAX))
        self.client = ShardClient(self.account_router, lane_queued_max=lane_queued_max)
        self.applier = EventApplier(self.client)
        self.rewards = ShardClient(
            self.reward_router,
            route_field="reward_id",
            calls_in_flight=REWARD_CALLS_IN_FLIGHT,
            lane_queued_max=lane_queued_max,
        )
        self.coordinator = mover.coordinator(dsn, shard_config)
        self.event_consumer = event_consumer(redis_url, dsn, shard_config)
        self._keeper: asyncio.Task[None] | None = None
        self._opened = False

    async def repo(self) -> ApiRepo:
        """The database pool (opened on first use, inside the replica's event loop)."""
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.get_running_loop().create_task(self._keep_shards())
        if not self._opened:
            await self._repo.open()
            self._opened = True
        return self._repo

    async def _refresh_keys(self) -> None:
        """Read the key rows changed since the last read (all of them every
        KEY_FULL_RELOAD_POLLS reads: a change whose transaction committed long after it
        stamped changed_at is never missed for long). One read at a time, each applied
        whole: an older read never lands over a newer one."""
        async with self._keys_lock:
            self._polls += 1
            since = None if self._polls % KEY_FULL_RELOAD_POLLS == 0 else self._keys_since
            async with asyncio.timeout(KEY_LOAD_TIMEOUT_S):
                rows, newest = await self.access.keys_changed_since(since)
            if since is None:
                self.keys.replace(key_record(row) for row in rows)
            else:
                self.keys.apply(key_record(row) for row in rows)
            self._keys_since = newest
            self._keys_read_at = time.monotonic()

    async def _poll_keys(self) -> None:
        """Keep the key table current, and stamp the last use of the keys used since."""
        while True:
            await asyncio.sleep(KEY_POLL_INTERVAL_S)
            try:
                await self._refresh_keys()
                used, self._keys_used = self._keys_used, set()
                async with asyncio.timeout(KEY_LOAD_TIMEOUT_S):
                    await self.access.touch_keys(sorted(used))
            except Exception as exc:  # the database is away: see verify
                log.warning("reading API keys failed: %r", exc)

    async def verify(self, key: str, client: str | None = None) -> KeyRecord | Refusal:
        """The key's record (from the replica's copy of the key table) or its refusal.

        Fails closed: a table not read for KEY_TABLE_STALE_S (the database away) answers
        503 rather than trust keys that may have been revoked meanwhile."""
        if self._key_poller is None or self._key_poller.done():
            await self.repo()
            if not self.keys.loaded:
                try:
                    await asyncio.wait_for(self._refresh_keys(), KEY_LOAD_TIMEOUT_S)
                except Exception as exc:
                    raise PointsError(
                        Code.UNAVAILABLE, "API keys cannot be read yet, retry"
                    ) from exc
            self._key_poller = asyncio.get_running_loop().create_task(self._poll_keys())
            await self.limiter.warm_up()
        if time.monotonic() - self._keys_read_at > KEY_TABLE_STALE_S:
            raise PointsError(Code.UNAVAILABLE, "API keys could not be read again yet, retry")
        found = self.keys.verify(key)
        # A well-formed key this replica does not know yet: perhaps made a moment ago on
        # another replica. Read the changes now, unless its address has used up its failed
        # authentications (a flood of made-up keys stops costing reads), at most one read
        # per KEY_REFRESH_MIN_S, shared by every request waiting for it.
        if (
            found is Refusal.UNKNOWN
            and key_id_of(key) is not None
            and (client is None or (await self.limiter.check_address(client)).allowed)
        ):
            await self._refresh_now()
            found = self.keys.verify(key)
        if isinstance(found, KeyRecord):
            self._keys_used.add(found.key_id)
        return found

    async def keys_changed(self) -> None:
        """A key was made or revoked here: this replica reads the change at once."""
        await self._refresh_now()

    async def _refresh_now(self) -> None:
        """Wait for a read of the key changes that started after this call: join the one
        running if it did, else start one (no sooner than KEY_REFRESH_MIN_S after the
        last)."""
        asked = time.monotonic()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(KEY_LOAD_TIMEOUT_S):
                while True:
                    running = self._refreshing
                    if running is not None and not running.done():
                        await asyncio.shield(running)
                        if self._refreshed_at >= asked:
                            return
                        continue
                    wait = self._refreshed_at + KEY_REFRESH_MIN_S - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                        continue
                    self._refreshed_at = time.monotonic()
                    self._refreshing = asyncio.get_running_loop().create_task(self._refresh_keys())

    async def refuse(self, client: str | None, detail: str) -> NoReturn:
        """401 for a key that is not valid, or 429 once `client` (an address) has failed too
        often. `client` None: nothing to count (no key was sent at all: that costs nothing
        and is what a misconfigured client does, not a guess)."""
        if client is not None:
            decision = await self.limiter.failed_auth(client)
            if not decision.allowed:
                raise refusal(decision)
        raise PointsError(Code.UNAUTHORIZED, detail)

    async def admit(self, key: KeyRecord, program_id: str | None, member_id: str | None) -> None:
        """Take from the key's (and for a write, the member's) rate-limit buckets: one
        Redis round trip; 429 with Retry-After and RateLimit-* when either is empty."""
        member = (program_id, member_id) if program_id and member_id else None
        limit = None if key.rate is None else Limit(key.rate[0], key.rate[1])
        await self.limiter.enforce(key.key_id, limit, member)

    async def admit_batch(
        self, key: KeyRecord, program_id: str, members: list[str], events: int
    ) -> None:
        """The rate limits of a batch of events: a token per event from the key's bucket, one
        from each member's; 429 for the whole batch when either refuses."""
        limit = None if key.rate is None else Limit(key.rate[0], key.rate[1])
        decision = await self.limiter.take_batch(key.key_id, limit, program_id, members, events)
        if not decision.allowed:
            raise refusal(decision)

    async def audit(self, entry: AuditEntry) -> None:
        await self.repo()
        await self.access.record(entry)

    async def _keep_shards(self) -> None:
        """Ping reward shards now and then: a restarted shard starts its recovery pass on
        its first call, even when no redemption arrives for it."""
        while True:
            for _index, handle in await self.shard_handles("reward"):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(handle.ping.remote(), KEEPER_CALL_TIMEOUT_S)
            # A move left running by a coordinator that died: the restarted one resumes it.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.coordinator.kick.remote(), KEEPER_CALL_TIMEOUT_S)
            if self.event_consumer is not None:
                # Idempotent: (re)starts the consumer loop after an actor restart.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        self.event_consumer.start.remote(), KEEPER_CALL_TIMEOUT_S
                    )
            await asyncio.sleep(REWARD_KEEPER_INTERVAL_S)

    def start_simulation(self, simulation_id: str) -> None:
        """Run the queued job in a Ray task (actors/simulation_job.py); the reference is
        kept until it ends, and a failure of the task itself is logged (the job row says
        it failed: the job does, or the staleness rule on read). Ray refusing the task is
        503 (the job's row, queued, fails as stale on read)."""
        try:
            ref = simulation_task.remote(self.dsn, simulation_id)
        except Exception as exc:  # Ray cannot take the task: the queued row goes stale
            log.warning("starting simulation %s failed: %r", simulation_id, exc)
            raise PointsError(
                Code.UNAVAILABLE, "the simulation could not be started, retry"
            ) from exc
        run = asyncio.wrap_future(ref.future())
        self._simulation_runs.add(run)
        run.add_done_callback(self._simulation_ended)

    def _simulation_ended(self, run: asyncio.Future[Any]) -> None:
        self._simulation_runs.discard(run)
        if not run.cancelled() and run.exception() is not None:
            log.warning("simulation task failed: %r", run.exception())

    async def shard_call(self, program_id: str, member_id: str, method: str, *args: Any) -> Any:
        """A read from the member's account shard; unavailable if it cannot answer."""
        try:
            return await self.client.call(program_id, member_id, method, *args)
        except ACTOR_ERRORS as exc:
            raise PointsError(
                Code.UNAVAILABLE, f"account shard unavailable: {type(exc).__name__}"
            ) from exc
        except TimeoutError as exc:
            raise PointsError(Code.UNAVAILABLE, "account shard timed out") from exc
        except Exception as exc:  # the shard's database read failed: retryable
            log.warning("shard %s failed: %r", method, exc)
            raise PointsError(Code.UNAVAILABLE, "account shard could not read, retry") from exc

    async def shard_handles(self, kind: Kind) -> list[tuple[int, Any]]:
        """(index, handle) of every shard of `kind` in the topology, in index order."""
        router = self.account_router if kind == "account" else self.reward_router
        found = []
        for index in await self.topology.shards(kind):
            try:
                found.append((index, router.handle(index)))
            except ValueError:  # in the topology but not running (being created): skip
                log.warning("%s shard %d not found", kind, index)
        return found

    async def ping_shard(self, kind: Kind, index: int, timeout_s: float) -> dict[str, Any]:
        """A shard's ping. A handle to an actor that died for good (a shard retired by a
        move and created again under its name) is dropped and the name looked up again."""
        router = self.account_router if kind == "account" else self.reward_router
        for attempt in range(2):
            try:
                found: dict[str, Any] = await asyncio.wait_for(
                    router.handle(index).ping.remote(), timeout_s
                )
                return found
            except ACTOR_ERRORS:
                router.forget_handle(index)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def forget_program(self, program_id: str) -> None:
        """Tell every account shard to read the program's policy and rules again (each also
        re-reads them within PROGRAM_CONFIG_TTL_S on its own)."""
        with contextlib.suppress(Exception):
            handles = [handle for _, handle in await self.shard_handles("account")]
            await asyncio.wait_for(
                asyncio.gather(*(s.forget_program.remote(program_id) for s in handles)),
                FORGET_PROGRAM_TIMEOUT_S,
            )


_installed: Backend | None = None


def install(wiring: Backend) -> None:
    global _installed
    _installed = wiring


def current() -> Backend:
    assert _installed is not None, "no Backend installed in this process (the ingress does it)"
    return _installed
