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
from typing import Any

import ray
import redis.asyncio

from actors.account_shard import AccountShard
from actors.earning import EventApplier, ShardApplierFactory
from actors.event_consumer import EventConsumer
from actors.reward_shard import RewardShard
from actors.routing import NAMESPACE, reward_shard_name, shard_name
from actors.shard_client import ACTOR_ERRORS, ShardClient
from db.api_repo import ApiRepo
from domain.errors import Code, PointsError
from serve_app.auth import KeyCache

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
# Shards spread over the cluster's nodes (Ray's SPREAD strategy: round robin over the nodes),
# so a node added before `points scale` takes new shards. But Ray applies a strategy only to
# an actor that asks for some resource: one that asks for none (num_cpus=0) goes to a node
# picked at random, SPREAD or not. Measured on a head and two workers (Ray 2.60, the local
# cluster of tests/cluster), sets of 2 + 2 detached shard-like actors: with num_cpus=0, of
# 60 sets, the first 2 shared a node in 21 and all 4 shared one node once (a soft node
# affinity was ignored too); with SHARD_CPUS, every set went round robin (8 of 8: three
# nodes, then the 4th on the 1st's node). Hence a token CPU share: the most shards there can
# be (1024 account + 1024 reward) hold 0.2 of a CPU.
SHARD_PLACEMENT = "SPREAD"
SHARD_CPUS = 0.0001


def account_shards(dsn: str, shards: int, shard_config: dict[str, Any]) -> list[Any]:
    """Handles of the account shard actors (created detached if they do not run yet)."""
    assert shards > 0
    # mypy keeps a decorated class's own type (it ignores class decorators' return types), so
    # it does not see the ActorClass that @ray.remote made: hence the attr-defined ignores.
    return [
        AccountShard.options(  # type: ignore[attr-defined]
            name=shard_name(i),
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            scheduling_strategy=SHARD_PLACEMENT,
            num_cpus=SHARD_CPUS,
        ).remote(i, dsn, shard_config)
        for i in range(shards)
    ]


def reward_shards(dsn: str, shards: int, shard_config: dict[str, Any]) -> list[Any]:
    count = shard_config.get("reward_shards", 1)
    assert count > 0
    config = {**shard_config, "shards": shards}
    return [
        RewardShard.options(  # type: ignore[attr-defined]  # an ActorClass, see above
            name=reward_shard_name(i),
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            scheduling_strategy=SHARD_PLACEMENT,
            num_cpus=SHARD_CPUS,
        ).remote(i, count, dsn, config)
        for i in range(count)
    ]


def event_consumer(redis_url: str | None, shards: int, shard_config: dict[str, Any]) -> Any:
    """The Redis stream consumer (async earning): one per deployment, found by name."""
    stream = shard_config.get("event_stream")
    if not redis_url or not stream:
        return None
    return EventConsumer.options(  # type: ignore[attr-defined]  # an ActorClass, see above
        name=EVENT_CONSUMER_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote(
        redis_url,
        ShardApplierFactory(shards),
        EVENT_CONSUMER_NAME,
        {"stream": stream, "dead_letter_stream": f"{stream}:dead"},
    )


class Backend:
    def __init__(
        self, dsn: str, redis_url: str | None, shards: int, shard_config: dict[str, Any]
    ) -> None:
        assert ray.is_initialized()
        self._repo = ApiRepo(dsn)
        self.redis = (
            redis.asyncio.Redis.from_url(redis_url, socket_timeout=2) if redis_url else None
        )
        self.keys = KeyCache()
        self.shards = account_shards(dsn, shards, shard_config)
        self.client = ShardClient(self.shards)
        self.applier = EventApplier(self.client)
        self.reward_shards = reward_shards(dsn, shards, shard_config)
        self.rewards = ShardClient(
            self.reward_shards, route_field="reward_id", calls_in_flight=REWARD_CALLS_IN_FLIGHT
        )
        self.event_consumer = event_consumer(redis_url, shards, shard_config)
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

    async def _keep_shards(self) -> None:
        """Ping reward shards now and then: a restarted shard starts its recovery pass on
        its first call, even when no redemption arrives for it."""
        while True:
            for handle in self.reward_shards:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(handle.ping.remote(), KEEPER_CALL_TIMEOUT_S)
            if self.event_consumer is not None:
                # Idempotent: (re)starts the consumer loop after an actor restart.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        self.event_consumer.start.remote(), KEEPER_CALL_TIMEOUT_S
                    )
            await asyncio.sleep(REWARD_KEEPER_INTERVAL_S)

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

    async def forget_program(self, program_id: str) -> None:
        """Tell every account shard to read the program's policy and rules again (each also
        re-reads them within PROGRAM_CONFIG_TTL_S on its own)."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(*(s.forget_program.remote(program_id) for s in self.shards)),
                FORGET_PROGRAM_TIMEOUT_S,
            )


_installed: Backend | None = None


def install(wiring: Backend) -> None:
    global _installed
    _installed = wiring


def current() -> Backend:
    assert _installed is not None, "no Backend installed in this process (the ingress does it)"
    return _installed
