"""RewardShard: the Ray actor that owns a set of reward slots. A thin wrapper on RewardCore.

It calls the account shards (by name) for the saga's debit and refund steps through a
ShardClient, so those calls are batched like the ingress's and retried while an account
shard restarts.
"""

import asyncio
import os
from typing import Any

import ray

from actors import tracing
from actors.group_commit import overload_options
from actors.metrics import SYNC_INTERVAL_S, export_every
from actors.placement import placement
from actors.protocol import (
    AccountCommand,
    Outcome,
    Wire,
    command_from_wire,
    outcome_to_wire,
    request_id_of_wire,
)
from actors.reward_core import RewardCore
from actors.routers import TopologyRouter
from actors.routing import shard_name, slot_of
from actors.shard_client import ShardClient
from actors.topology import Ownership
from actors.webhook import WebhookSender
from db.reward_repo import RewardRepo
from db.topology_repo import TopologyRepo

# A hand-off gives the sagas in flight on the moving slots this long to finish here, and
# the batch in flight this long to settle; past either the epoch fence decides.
RELEASE_SAGAS_S = 5.0
RELEASE_SETTLE_S = 10.0


# Ray's typed overloads of ray.remote(**options) list task options only, not the actor
# option max_concurrency (which it accepts at run time).
@ray.remote(  # type: ignore[call-overload]
    max_restarts=-1, max_task_retries=0, max_concurrency=20_000, num_cpus=0
)
class RewardShard:
    def __init__(self, index: int, dsn: str, config: dict[str, Any]) -> None:
        self.index = index
        self._dsn = dsn
        self._accounts: ShardClient | None = None
        self._metrics_task: asyncio.Task[None] | None = None
        self.topology = TopologyRepo(dsn)
        self.ownership = Ownership(
            "reward", index, lambda: self.topology.owned("reward", index), slot_of
        )
        self.webhooks = WebhookSender(
            config["webhook_secret"].encode(),
            attempts=config.get("webhook_attempts", 5),
            backoff_s=config.get("webhook_backoff_s", 0.5),
        )
        self.core = RewardCore(
            RewardRepo(dsn),
            self._account_call,
            slot_of=slot_of,
            ownership=self.ownership,
            fulfil=self.webhooks.send,
            batch_window_s=config.get("reward_batch_window_ms", 0.0) / 1000,
            recovery_interval_s=config.get("recovery_interval_s", 10.0),
            **overload_options(config),
        )

    async def _account_call(self, command: AccountCommand) -> Outcome:
        if self._accounts is None:
            self._accounts = ShardClient(TopologyRouter("account", self._dsn, shard_name))
        return await self._accounts.submit(command)

    async def submit_many(self, commands: list[Wire]) -> list[Wire]:
        """Many commands in one Ray call (the ingress batches them, in their wire form:
        actors/protocol.py); one outcome each, in order."""
        if self._metrics_task is None:
            self._metrics_task = asyncio.get_running_loop().create_task(
                export_every(self.core.export_metrics, SYNC_INTERVAL_S)
            )
        outcomes = await asyncio.gather(*(self._submit(c) for c in commands))
        return [outcome_to_wire(outcome) for outcome in outcomes]

    async def _submit(self, wire: Wire) -> Outcome:
        # Each its own task (gather), so the request id set here stays with this command
        # and the saga steps it starts (their tasks copy this context): actors/tracing.py.
        tracing.REQUEST_ID.set(request_id_of_wire(wire))
        return await self.core.submit(command_from_wire(wire))

    async def release(self, slots: list[int]) -> dict[str, int]:
        """A move hands these slots to another shard (actors/topology.py, step 2)."""
        return await self.core.release(slots, sagas_s=RELEASE_SAGAS_S, settle_s=RELEASE_SETTLE_S)

    async def refresh_ownership(self) -> list[int]:
        """Read which slots this shard owns now (a move gave it some), and resume the
        redemptions left half-way in them; returns the slots."""
        await self.ownership.refresh(force=True)
        await self.core.recover_once()
        return self.ownership.slots

    async def recover(self) -> int:
        return await self.core.recover_once()

    async def ping(self) -> dict[str, Any]:
        await self.ownership.ensure([])
        return {
            "reward_shard": self.index,
            "slots": len(self.ownership.slots),
            **placement(),
            **(await self.core.ping()),
        }

    def pid(self) -> int:
        return os.getpid()
