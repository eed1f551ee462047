"""AccountShard: the Ray actor that owns a set of account slots. A thin wrapper on ShardCore."""

import asyncio
import os
from typing import Any

import ray

from actors.shard_core import ShardCore
from db.ledger_repo import LedgerRepo


@ray.remote(
    # Restart forever on crash; state is reloaded lazily from PostgreSQL.
    max_restarts=-1,
    # Never re-run a call automatically: the caller retries with its idempotency key.
    max_task_retries=0,
    max_concurrency=20_000,
    num_cpus=0,
)
class AccountShard:
    def __init__(self, index: int, dsn: str, config: dict[str, Any]) -> None:
        self.index = index
        self.core = ShardCore(
            LedgerRepo(dsn),
            batch_max=config["batch_max"],
            batch_window_s=config["batch_window_ms"] / 1000,
            accounts_cached_max=config["accounts_cached_max"],
        )

    async def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self.core.submit(request)

    async def submit_many(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Many requests in one Ray call (the ingress batches them); one answer each."""
        return list(await asyncio.gather(*(self.core.submit(r) for r in requests)))

    async def get_account(self, program_id: str, member_id: str) -> dict[str, Any] | None:
        return await self.core.get_account(program_id, member_id)

    async def ping(self) -> dict[str, Any]:
        return {"shard": self.index, **(await self.core.ping())}

    def pid(self) -> int:
        return os.getpid()
