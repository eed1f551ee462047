"""The ledger checks inside the service: every `interval_s`, the shard owning the
retention slot (actors/retention.py: one place per deployment, whatever the topology)
runs every invariant `points verify` runs (db/verify_repo.py, the hash chain included) and
exports the result as metrics: `points_ledger_check_failed{check}` (1 while a check fails)
and `points_ledger_check_timestamp_seconds` (when the last complete run ended). A failing
check is also logged, with its first examples. The checks run in a thread (they use a
blocking connection): the shard's event loop, and its group commits, go on meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from actors.metrics import gauge
from db.verify_repo import Result

log = logging.getLogger("points.ledger_check")

LEDGER_CHECK_INTERVAL_S_DEFAULT = 300.0


class LedgerCheckJob:
    def __init__(
        self,
        run: Callable[[], list[Result]],
        runs_here: Callable[[], Awaitable[bool]],
        interval_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        assert interval_s > 0
        self._run = run
        self._runs_here = runs_here
        self.interval_s = interval_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._failed = gauge(
            "points_ledger_check_failed", "1 while a ledger check fails, else 0", ("check",)
        )
        self._ran_at = gauge(
            "points_ledger_check_timestamp_seconds",
            "When the last complete run of the ledger checks ended, Unix time",
        )
        self.stats = {"passes": 0, "failed_checks": 0, "failures": 0}
        self._last: list[Result] = []
        self._last_at: float | None = None

    async def run_once(self) -> list[Result] | None:
        """One run; None when another shard runs the checks."""
        if not await self._runs_here():
            return None
        results = await asyncio.to_thread(self._run)
        failed = 0
        self._last, self._last_at = results, self._clock()
        self.export()
        for result in results:
            if result.violations:
                failed += 1
                log.error(
                    "ledger check failed: %s (%d violations, e.g. %s)",
                    result.name,
                    result.violations,
                    result.examples[:3],
                )
        self.stats["passes"] += 1
        self.stats["failed_checks"] = failed
        return results

    def export(self) -> None:
        """The last run's results as gauges (again: Ray forgets a gauge not set lately).
        Nothing before this shard's first run, or in a shard that does not run them."""
        if self._last_at is None:
            return
        for result in self._last:
            self._failed.set(1 if result.violations else 0, tags={"check": result.name})
        self._ran_at.set(self._last_at)

    def start(self) -> None:
        """Run now and then every `interval_s` (on the running event loop)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # the database down: try again next time
                self.stats["failures"] += 1
                log.exception("ledger check run failed")
            await asyncio.sleep(self.interval_s)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
