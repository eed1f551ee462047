"""AccountShard: the Ray actor that owns a set of account slots. A thin wrapper on ShardCore."""

import asyncio
import functools
import os
from typing import Any

import ray

from actors.group_commit import overload_options
from actors.ledger_check import LEDGER_CHECK_INTERVAL_S_DEFAULT, LedgerCheckJob
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
from actors.retention import RETENTION_SLOT, RetentionJob
from actors.routing import slot_of
from actors.shard_core import ShardCore, utcnow
from actors.topology import Ownership
from db.ledger_repo import LedgerRepo
from db.retention_repo import RetentionRepo
from db.topology_repo import TopologyRepo
from db.verify_repo import run_checks
from domain.limits import IDEMPOTENCY_RETENTION_DAYS_DEFAULT, RETENTION_INTERVAL_S_DEFAULT

# How often the expiry job runs in each shard when the config does not say.
EXPIRY_INTERVAL_S = 60.0
# A hand-off waits this long for the batch in flight; past it the epoch fence decides.
RELEASE_SETTLE_S = 10.0
# The ledger checks seal chains whose rows have been pending this long (their shard is gone).
STALE_PENDING_S = 30.0


# Ray's typed overloads of ray.remote(**options) list task options only, not the actor
# option max_concurrency (which it accepts at run time).
@ray.remote(  # type: ignore[call-overload]
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
        self.topology = TopologyRepo(dsn)
        self.ownership = Ownership(
            "account", index, lambda: self.topology.owned("account", index), slot_of
        )
        self.core = ShardCore(
            LedgerRepo(dsn),
            batch_max=config["batch_max"],
            batch_window_s=config["batch_window_ms"] / 1000,
            accounts_cached_max=config["accounts_cached_max"],
            ownership=self.ownership,
            **overload_options(config),
        )
        self.expiry_interval_s = float(config.get("expiry_interval_s", EXPIRY_INTERVAL_S))
        self._expiry_started = False
        self.retention = RetentionJob(
            RetentionRepo(dsn).purge_idempotency,
            self._owns_retention_slot,
            utcnow,
            int(config.get("idempotency_retention_days", IDEMPOTENCY_RETENTION_DAYS_DEFAULT)),
            float(config.get("retention_interval_s", RETENTION_INTERVAL_S_DEFAULT)),
        )
        self.ledger_checks = LedgerCheckJob(
            # Seals only what a gone shard left pending: live shards seal their own.
            functools.partial(run_checks, dsn, seal_older_than_s=STALE_PENDING_S),
            self._owns_retention_slot,
            float(config.get("ledger_check_interval_s", LEDGER_CHECK_INTERVAL_S_DEFAULT)),
        )

    def _owns(self, program_id: str, member_id: str) -> bool:
        return self.ownership.owns(program_id, member_id)

    async def _owns_retention_slot(self) -> bool:
        await self.ownership.ensure([RETENTION_SLOT])
        return self.ownership.epoch(RETENTION_SLOT) is not None

    def _ensure_expiry(self) -> None:
        # Started from the first call (the actor's event loop runs by then), and again by
        # the first call after a restart. The retention job rides along.
        if not self._expiry_started:
            self.core.start_expiry(self._owns, self.expiry_interval_s)
            self.retention.start()
            self.ledger_checks.start()
            self.core.start_sealer()
            self._metrics_task = asyncio.get_running_loop().create_task(
                export_every(self._export_metrics, SYNC_INTERVAL_S)
            )
            self._expiry_started = True

    def _export_metrics(self) -> None:
        self.core.export_metrics()
        self.ledger_checks.export()

    async def submit(self, command: AccountCommand) -> Outcome:
        self._ensure_expiry()
        return await self.core.submit(command)

    async def submit_many(self, commands: list[Wire]) -> list[Wire]:
        """Many commands in one Ray call (the ingress batches them, in their wire form:
        actors/protocol.py); one outcome each, in order."""
        self._ensure_expiry()
        outcomes = await asyncio.gather(
            *[self.core.enqueue(command_from_wire(c), request_id_of_wire(c)) for c in commands]
        )
        return [outcome_to_wire(outcome) for outcome in outcomes]

    async def release(self, slots: list[int]) -> dict[str, int]:
        """A move hands these slots to another shard (actors/topology.py, step 2)."""
        return await self.core.release(slots, RELEASE_SETTLE_S)

    async def refresh_ownership(self) -> list[int]:
        """Read which slots this shard owns now (a move gave it some); returns them."""
        await self.ownership.refresh(force=True)
        return self.ownership.slots

    async def forget_program(self, program_id: str) -> None:
        """The program's policy or rules changed: read them again before the next event."""
        self.core.forget_program(program_id)

    async def expire_due(self) -> dict[str, int]:
        """Run one pass of the expiry job now (ops, tests)."""
        return await self.core.expire_due(self._owns)

    async def retier(self) -> dict[str, int]:
        """Run one pass of tier maintenance now (ops, tests)."""
        return await self.core.retier(self._owns)

    async def purge_retention(self) -> dict[str, int] | None:
        """Run one pass of the retention job now (ops, tests); None: another shard runs it."""
        purged = await self.retention.run_once()
        return None if purged is None else {"rows": purged.rows, "batches": purged.batches}

    async def check_ledger(self) -> dict[str, int] | None:
        """Run the ledger checks now (ops, tests): failed checks, or None: another shard
        runs them."""
        results = await self.ledger_checks.run_once()
        if results is None:
            return None
        return {"checks": len(results), "failed": sum(1 for r in results if r.violations)}

    async def get_account(self, program_id: str, member_id: str) -> dict[str, Any] | None:
        return await self.core.get_account(program_id, member_id)

    async def ping(self) -> dict[str, Any]:
        self._ensure_expiry()
        await self.ownership.ensure([])
        return {
            "shard": self.index,
            "slots": len(self.ownership.slots),
            **placement(),
            **(await self.core.ping()),
            **{f"retention_{name}": value for name, value in self.retention.stats.items()},
        }

    def pid(self) -> int:
        return os.getpid()
