"""The group-commit engine both shard kinds run: one queue, one batch in flight at a time.

Contract: `add(op)` queues an operation (anything with a `future`) and returns at once; the
engine hands queued operations, in order and at most `batch_max` at a time, to the
`process(batch)` coroutine it was built with, one batch after the other. `process` owns the
batch: it applies it, commits it and answers every future (`answer`), or fails what it
cannot commit (`fail`: `unavailable`, retry with the same key; `commit_failed` counts the
failure and resets the connection unless the commit was fenced). If `process` raises anyway,
the engine answers every still-open future of that batch `unavailable` and goes on with the
next batch: the loop never dies. `requeue_front(ops)` puts operations back at the head of
the queue (a batch that must run again for some of its operations); they go first in the
next batch. `now()` is the wall clock for a batch, never earlier than the previous batch's.

Why one batch at a time: operations that arrive while a batch commits wait in the queue and
together form the next batch, so the batch grows with load by itself (natural group
commit) and a shard never has two commits racing over the same accounts or rewards. An
optional `batch_window_s` waits a little for more operations when the queue is not already
full; zero (the default of both shard kinds) means natural batching only.

Why the engine does not apply anything itself: the rule that makes a shard correct without
locks (no `await` between checking an account or a reward and changing it) lives inside
each core's apply step, which runs within `process` as plain synchronous code. The engine
only decides *which* operations go together, and it guarantees that callers are answered
exactly once: a future already answered (or whose caller went away) is never set again.

Why futures and not a Task per operation: a shard call carries up to thousands of
operations, and a Task each would cost more than applying them. `add` appends to a list and
sets an event; no await, no allocation besides what the caller built.

Overload and outages (issue 10). The queue is bounded: `add` answers an operation
`unavailable` at once when `queued_max` operations already wait, so a shard that cannot
keep up sheds load in microseconds instead of letting every caller's wait grow. A batch
whose database connection died (`process` raises `DatabaseUnreachable`) is run again, its
still-open operations only, after a short back-off, until `retry_s` has passed since the
batch started: a PostgreSQL restart of a second costs its callers latency, not errors.
Running it again is safe because `process` starts over from the database: the cores evict
every account or reward the failed attempt touched and prefetch again, and every write a
batch makes is fenced by versions and claims its idempotency keys and event ids, so if the
first attempt did commit (the connection died after COMMIT) the re-run finds its keys
taken and answers the stored outcomes, never applying anything twice. Each such failure
also feeds a circuit breaker (actors/breaker.py): after repeated failures the shard fails
fast (`unavailable`, at `add` and for queued batches) for a cool-down, then lets one batch
through as a probe and closes when it commits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

from actors.breaker import COOLDOWN_S, FAILURES_TO_OPEN, Breaker, BreakerState
from actors.protocol import Outcome
from db.ledger_repo import FencedError
from domain.errors import Code

# How often `settle` looks whether the batch in flight is done (a hand-off waits on it).
SETTLE_POLL_S = 0.002
# Operations waiting for a batch, at most (serve_app/settings.py: shard_queued_max). Each
# ingress replica sends a shard at most 2,048 per call, one call at a time, so this holds 8
# replicas' full calls; measured peaks (`queued_peak` in a shard's ping) were 25-28 with 16
# clients and 102 with 300 (loadtests/pg_crash_bench.py). Past it a shard is seconds
# behind, and waiting longer helps nobody.
QUEUED_MAX = 16_384
# A batch whose connection died runs again until this long after it first started
# (settings: commit_retry_s): well inside the ingress's own call timeout (20 s).
RETRY_S = 5.0
# Back-off between those runs: doubling from the first to the most.
RETRY_FIRST_DELAY_S = 0.05
RETRY_DELAY_MAX_S = 0.5


def overload_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """A shard config's overload settings (serve_app/settings.py: shard_queued_max,
    commit_retry_s, breaker_failures, breaker_cooldown_s) as both cores' arguments."""
    return {
        "queued_max": int(config.get("shard_queued_max", QUEUED_MAX)),
        "commit_retry_s": float(config.get("commit_retry_s", RETRY_S)),
        "breaker": Breaker(
            int(config.get("breaker_failures", FAILURES_TO_OPEN)),
            float(config.get("breaker_cooldown_s", COOLDOWN_S)),
        ),
    }


class DatabaseUnreachable(Exception):
    """Raised by `process`: the database could not be reached, or the connection died,
    part-way through a batch. `process` has already dropped what the batch touched from
    memory and reset the connection, and answered none of the operations still open: the
    engine runs them again (or fails them, `unavailable`)."""


class Queued(Protocol):
    """What the engine needs of an operation: the future its caller awaits."""

    @property
    def future(self) -> asyncio.Future[Any]: ...


OpT = TypeVar("OpT", bound=Queued)


def answer(op: Queued, result: object) -> None:
    """Answer one operation, once. A caller that went away (its future cancelled) or an
    operation answered earlier must not break the batch."""
    if not op.future.done():
        op.future.set_result(result)


def unavailable(detail: str) -> Outcome:
    """The answer of an operation whose batch did not commit: retry with the same key."""
    assert detail
    return Outcome.refused(Code.UNAVAILABLE, detail)


class GroupCommitter(Generic[OpT]):
    """`name` says whose batches these are in logs and in the `unavailable` detail of a
    batch that failed unexpectedly ("shard", "reward shard")."""

    def __init__(
        self,
        process: Callable[[list[OpT]], Awaitable[None]],
        *,
        batch_max: int,
        batch_window_s: float,
        clock: Callable[[], datetime],
        name: str,
        log: logging.Logger,
        queued_max: int = QUEUED_MAX,
        retry_s: float = RETRY_S,
        breaker: Breaker | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        assert batch_max > 0 and batch_window_s >= 0
        assert queued_max > 0 and retry_s >= 0
        assert name
        self._process = process
        self._batch_max = batch_max
        self._batch_window_s = batch_window_s
        self._clock = clock
        self._name = name
        self._log = log
        self._queue: list[OpT] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_now = datetime.min.replace(tzinfo=UTC)
        # Batches started and finished: `settle` waits for the one in flight.
        self._started = 0
        self._finished = 0
        # Operations answered `unavailable` by `fail` (a canary's error rate counts them).
        self.failed = 0
        self._queued_max = queued_max
        self._retry_s = retry_s
        self.breaker = breaker or Breaker()
        self._monotonic = monotonic
        # Operations refused at `add` (queue full, breaker open) and batches run again.
        self.shed = 0
        self.reruns = 0
        # The most operations ever queued at once (what `queued_max` is measured against).
        self.queued_peak = 0

    @property
    def queued(self) -> int:
        """Operations waiting for a batch (not counting the one in flight)."""
        return len(self._queue)

    def add(self, op: OpT, *, bounded: bool = True) -> None:
        """Queue one operation; `process` answers it. Call from within the event loop.

        Answered `unavailable` at once instead while the breaker is open, or when
        `bounded` and the queue is full. `bounded=False` is for a shard's own follow-up
        steps (a saga's next step), which finish work already accepted."""
        if self.breaker.is_open(self._monotonic()):
            self.shed += 1
            answer(op, unavailable("database unavailable (circuit open), retry"))
            return
        if bounded and len(self._queue) >= self._queued_max:
            self.shed += 1
            answer(op, unavailable(f"{self._name} overloaded ({self._queued_max} queued), retry"))
            return
        self._queue.append(op)
        if len(self._queue) > self.queued_peak:
            self.queued_peak = len(self._queue)
        if self._task is None or self._task.done():
            self.ensure_running()
        self._wakeup.set()

    def requeue_front(self, ops: list[OpT]) -> None:
        """Put operations back at the head of the queue, in their order: the next batch
        starts with them. For `process` to run some of its batch again."""
        if not ops:
            return
        self._queue[:0] = ops
        self.ensure_running()
        self._wakeup.set()

    def fail(self, ops: list[OpT], detail: str) -> None:
        """Answer every still-open operation `unavailable` (one Outcome shared by all)."""
        result = unavailable(detail)
        for op in ops:
            if not op.future.done():
                self.failed += 1
                op.future.set_result(result)

    async def commit_failed(
        self, exc: Exception, reset: Callable[[], Awaitable[None]], stats: dict[str, float]
    ) -> None:
        """Count a commit that failed (`commit_failures`, `fenced` in `stats`) and make the
        connection usable again. A fenced commit (another owner committed first) leaves the
        connection healthy; anything else may have broken it, so `reset` it. Answering the
        batch's operations stays with the caller, which knows which ones were waiting."""
        assert "commit_failures" in stats and "fenced" in stats
        stats["commit_failures"] += 1
        if isinstance(exc, FencedError):
            stats["fenced"] += 1
            self._log.warning("fenced: %s", exc)
        else:
            await reset()

    async def settle(self, timeout_s: float) -> bool:
        """Wait until the batch in flight now (if any) has committed or failed; False if it
        took longer than `timeout_s`. Batches that start later are not waited for."""
        assert timeout_s > 0
        target = self._started
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._finished < target:
            if loop.time() > deadline:
                return False
            await asyncio.sleep(SETTLE_POLL_S)
        return True

    def now(self) -> datetime:
        """Wall clock, but never earlier than the previous batch (history stays ordered)."""
        now = max(self._clock(), self._last_now)
        assert now >= self._last_now
        self._last_now = now
        return now

    def ensure_running(self) -> None:
        """Start the batch loop if it is not running (first use, or after `close`)."""
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
            if self._queue:
                self._wakeup.set()

    def close(self) -> None:
        """Stop the loop. Queued operations stay queued until the next `add`."""
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        wakeup = self._wakeup
        while True:
            await wakeup.wait()
            if self._batch_window_s and len(self._queue) < self._batch_max:
                await asyncio.sleep(self._batch_window_s)
            batch = self._queue[: self._batch_max]
            del self._queue[: self._batch_max]
            if not self._queue:
                wakeup.clear()
            if not batch:
                continue
            assert len(batch) <= self._batch_max
            self._started += 1
            try:
                await self._run_batch(batch)
            except Exception as exc:  # never let the loop die: fail this batch, go on
                self._log.exception("%s batch failed unexpectedly", self._name)
                self.fail(batch, f"{self._name} error, retry: {type(exc).__name__}")
            finally:
                self._finished += 1

    async def _run_batch(self, batch: list[OpT]) -> None:
        """`process` the batch behind the breaker; run it again while its database
        connection dies and time is left (see the module's docstring for why that is
        safe)."""
        deadline_s = self._monotonic() + self._retry_s
        delay_s = RETRY_FIRST_DELAY_S
        while True:
            if not self.breaker.allow(self._monotonic()):
                self.fail(batch, "database unavailable (circuit open), retry")
                return
            try:
                await self._process(batch)
            except DatabaseUnreachable as exc:
                now_s = self._monotonic()
                self.breaker.failed(now_s)
                batch = [op for op in batch if not op.future.done()]
                if not batch:
                    return
                if self.breaker.is_open(now_s) or now_s + delay_s > deadline_s:
                    self.fail(batch, f"database unavailable, retry: {exc}"[:300])
                    return
                self._log.warning(
                    "%s: database unreachable, running %d operations again in %.2f s: %s",
                    self._name,
                    len(batch),
                    delay_s,
                    exc,
                )
                self.reruns += 1
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, RETRY_DELAY_MAX_S)
            except Exception:
                if self.breaker.state is BreakerState.HALF_OPEN:
                    # The probe proved nothing either way: cool down and probe again.
                    self.breaker.failed(self._monotonic())
                raise
            else:
                self.breaker.succeeded()
                return
