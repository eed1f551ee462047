"""RewardShard: the Ray actor that owns a set of reward slots. A thin wrapper on RewardCore.

It calls the account shards (by name) for the saga's debit and refund steps through a
ShardClient, so those calls are batched like the ingress's and retried while an account
shard restarts.
"""

import asyncio
import os
from typing import Any

import ray

from actors.placement import placement
from actors.protocol import (
    AccountCommand,
    Outcome,
    Wire,
    command_from_wire,
    outcome_to_wire,
)
from actors.reward_core import RewardCore
from actors.routing import NAMESPACE, owned_slots, shard_name, slot_of
from actors.shard_client import ShardClient
from actors.webhook import WebhookSender
from db.reward_repo import RewardRepo


# Ray's typed overloads of ray.remote(**options) list task options only, not the actor
# option max_concurrency (which it accepts at run time).
@ray.remote(  # type: ignore[call-overload]
    max_restarts=-1, max_task_retries=0, max_concurrency=20_000, num_cpus=0
)
class RewardShard:
    def __init__(self, index: int, count: int, dsn: str, config: dict[str, Any]) -> None:
        self.index = index
        self._account_shards = config["shards"]
        self._accounts: ShardClient | None = None
        self.webhooks = WebhookSender(
            config["webhook_secret"].encode(),
            attempts=config.get("webhook_attempts", 5),
            backoff_s=config.get("webhook_backoff_s", 0.5),
        )
        self.core = RewardCore(
            RewardRepo(dsn),
            self._account_call,
            slot_of=slot_of,
            owned_slots=owned_slots(index, count),
            fulfil=self.webhooks.send,
            batch_window_s=config.get("reward_batch_window_ms", 0.0) / 1000,
            recovery_interval_s=config.get("recovery_interval_s", 10.0),
        )

    async def _account_call(self, command: AccountCommand) -> Outcome:
        if self._accounts is None:
            handles = [
                ray.get_actor(shard_name(i), namespace=NAMESPACE)
                for i in range(self._account_shards)
            ]
            self._accounts = ShardClient(handles)
        return await self._accounts.submit(command)

    async def submit_many(self, commands: list[Wire]) -> list[Wire]:
        """Many commands in one Ray call (the ingress batches them, in their wire form:
        actors/protocol.py); one outcome each, in order."""
        outcomes = await asyncio.gather(*(self.core.submit(command_from_wire(c)) for c in commands))
        return [outcome_to_wire(outcome) for outcome in outcomes]

    async def recover(self) -> int:
        return await self.core.recover_once()

    async def ping(self) -> dict[str, Any]:
        return {"reward_shard": self.index, **placement(), **(await self.core.ping())}

    def pid(self) -> int:
        return os.getpid()
