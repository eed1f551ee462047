"""The retention job: every `interval_s`, purge the idempotency records older than the
retention (db/retention_repo.py says what is purged and what is kept).

One place per deployment purges: every account shard runs the loop, but a pass does work
only in the shard that owns slot 0 right now (`runs_here`; actors/account_shard.py). A slot
has one owner at a time and always has one, so the job survives scaling and upgrades (which
retire shard indexes) without coordination; two purges at once during a hand-off would
still be safe (they skip each other's locked rows). The purge only deletes rows no commit
reads again within the retention, and a shard that still holds a purged key in its memory
(the LRU of recent keys) answers a replay from there, which is right (it is the original
answer). A shard never writes a cached record back, so a purged record is not resurrected.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from db.retention_repo import Purged
from domain.limits import IDEMPOTENCY_RETENTION_DAYS_MAX, IDEMPOTENCY_RETENTION_DAYS_MIN

log = logging.getLogger("points.retention")

# The owner of this slot runs the job.
RETENTION_SLOT = 0

Purge = Callable[[datetime], Awaitable[Purged]]


class RetentionJob:
    def __init__(
        self,
        purge: Purge,
        runs_here: Callable[[], Awaitable[bool]],
        clock: Callable[[], datetime],
        retention_days: int,
        interval_s: float,
    ) -> None:
        assert IDEMPOTENCY_RETENTION_DAYS_MIN <= retention_days <= IDEMPOTENCY_RETENTION_DAYS_MAX
        assert interval_s > 0
        self._purge = purge
        self._runs_here = runs_here
        self._clock = clock
        self.retention = timedelta(days=retention_days)
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.stats = {"passes": 0, "purged": 0, "failures": 0}

    def cutoff(self) -> datetime:
        """Records created before this are purged."""
        now = self._clock()
        assert now.tzinfo is not None
        return now - self.retention

    async def run_once(self) -> Purged | None:
        """One pass; None when another shard runs the job."""
        if not await self._runs_here():
            return None
        purged = await self._purge(self.cutoff())
        self.stats["passes"] += 1
        self.stats["purged"] += purged.rows
        if purged.rows:
            log.info("purged %d idempotency records in %d batches", purged.rows, purged.batches)
        return purged

    def start(self) -> None:
        """Run a pass now and then every `interval_s` (on the running event loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # a pass that fails (database down) is retried next time
                self.stats["failures"] += 1
                log.exception("retention pass failed")
            await asyncio.sleep(self.interval_s)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
