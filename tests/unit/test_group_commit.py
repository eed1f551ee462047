"""The group-commit engine on its own: a fake `process`, no Ray, no database."""

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from actors.breaker import Breaker, BreakerState
from actors.group_commit import DatabaseUnreachable, GroupCommitter, answer
from actors.protocol import Outcome
from db.ledger_repo import FencedError
from domain.errors import Code

pytestmark = pytest.mark.unit

T0 = datetime(2025, 5, 1, tzinfo=UTC)


@dataclass(slots=True)
class FakeOp:
    name: str
    future: asyncio.Future[object] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Recorder:
    """A `process` that records each batch, optionally waits for a gate, then answers."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.hook: Callable[[list[FakeOp]], None] | None = None

    async def __call__(self, batch: list[FakeOp]) -> None:
        self.batches.append([op.name for op in batch])
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.hook is not None:
            self.hook(batch)
        for op in batch:
            answer(op, Outcome.done({"name": op.name}))


def engine(
    process: Recorder,
    batch_max: int = 100,
    batch_window_s: float = 0.0,
    clock: Callable[[], datetime] = lambda: T0,
) -> GroupCommitter[FakeOp]:
    return GroupCommitter(
        process,
        batch_max=batch_max,
        batch_window_s=batch_window_s,
        clock=clock,
        name="test shard",
        log=logging.getLogger("test.group_commit"),
    )


def ops(*names: str) -> list[FakeOp]:
    return [FakeOp(name) for name in names]


async def test_operations_arriving_during_a_batch_form_the_next_one() -> None:
    process = Recorder()
    process.gate = asyncio.Event()
    commits = engine(process)
    first = ops("a")
    commits.add(first[0])
    await process.started.wait()  # "a" is in flight
    later = ops("b", "c", "d")
    for op in later:
        commits.add(op)
    assert commits.queued == 3
    process.gate.set()
    results = await asyncio.gather(*(op.future for op in first + later))
    assert process.batches == [["a"], ["b", "c", "d"]]
    assert [r.body["name"] for r in results] == ["a", "b", "c", "d"]  # type: ignore[attr-defined]
    assert commits.queued == 0
    commits.close()


async def test_a_batch_holds_at_most_batch_max_in_order() -> None:
    process = Recorder()
    commits = engine(process, batch_max=4)
    queued = ops(*"abcdefghij")
    for op in queued:  # all queued before the loop first runs
        commits.add(op)
    await asyncio.gather(*(op.future for op in queued))
    assert process.batches == [list("abcd"), list("efgh"), list("ij")]
    commits.close()


async def test_a_raising_process_fails_its_batch_unavailable_and_the_loop_goes_on() -> None:
    process = Recorder()
    calls = 0

    def boom(batch: list[FakeOp]) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            answer(batch[0], Outcome.done({"name": "answered before the error"}))
            raise RuntimeError("bug")

    process.hook = boom
    commits = engine(process)
    failed = ops("a", "b")
    for op in failed:
        commits.add(op)
    first, second = await asyncio.gather(*(op.future for op in failed))
    # Answered before the error: kept. The rest of the batch: retryable, naming the shard.
    assert first == Outcome.done({"name": "answered before the error"})
    assert isinstance(second, Outcome) and second.code is Code.UNAVAILABLE
    assert second.detail == "test shard error, retry: RuntimeError"
    after = ops("c")
    commits.add(after[0])
    assert await after[0].future == Outcome.done({"name": "c"})
    assert process.batches == [["a", "b"], ["c"]]
    commits.close()


async def test_requeued_operations_go_first_in_the_next_batch() -> None:
    process = Recorder()
    process.gate = asyncio.Event()
    commits = engine(process)
    requeued = False

    def run_again(batch: list[FakeOp]) -> None:
        nonlocal requeued
        if not requeued:  # the first batch: "b" and "c" must run again
            requeued = True
            answer(batch[0], Outcome.done({"name": "a"}))
            commits.requeue_front(batch[1:])

    process.hook = run_again
    first = ops("a", "b", "c")
    for op in first:
        commits.add(op)
    await process.started.wait()
    later = ops("d")
    commits.add(later[0])  # queued while the first batch is in flight
    process.gate.set()
    await asyncio.gather(*(op.future for op in first + later))
    assert process.batches == [["a", "b", "c"], ["b", "c", "d"]]
    commits.close()


async def test_fail_answers_only_open_operations() -> None:
    commits = engine(Recorder())
    done, open_ = ops("a", "b")
    answer(done, Outcome.done())
    commits.fail([done, open_], "commit failed, retry")
    assert done.future.result() == Outcome.done()
    assert open_.future.result() == Outcome.refused(Code.UNAVAILABLE, "commit failed, retry")
    answer(open_, Outcome.done())  # a second answer is ignored, not an error
    assert open_.future.result().code is Code.UNAVAILABLE  # type: ignore[attr-defined]


async def test_now_never_goes_back() -> None:
    times = [T0, T0 - timedelta(seconds=5), T0 + timedelta(seconds=1)]
    commits = engine(Recorder(), clock=lambda: times.pop(0))
    assert [commits.now(), commits.now(), commits.now()] == [
        T0,
        T0,
        T0 + timedelta(seconds=1),
    ]


async def test_a_batch_window_gathers_operations_that_arrive_within_it() -> None:
    process = Recorder()
    commits = engine(process, batch_window_s=0.05)
    first = ops("a")
    commits.add(first[0])
    await asyncio.sleep(0)  # the loop starts and waits out the window
    later = ops("b")
    commits.add(later[0])
    await asyncio.gather(first[0].future, later[0].future)
    assert process.batches == [["a", "b"]]
    commits.close()


async def test_a_failed_commit_resets_the_connection_unless_it_was_fenced() -> None:
    commits = engine(Recorder())
    stats = {"commit_failures": 0.0, "fenced": 0.0}
    resets = 0

    async def reset() -> None:
        nonlocal resets
        resets += 1

    await commits.commit_failed(FencedError("another owner committed first"), reset, stats)
    assert (stats, resets) == ({"commit_failures": 1, "fenced": 1}, 0)
    await commits.commit_failed(OSError("connection lost"), reset, stats)
    assert (stats, resets) == ({"commit_failures": 2, "fenced": 1}, 1)


# ------------------------------------------------------------ overload and outages


class Unreachable:
    """A `process` whose database is unreachable for its first `failures` runs."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs: list[list[str]] = []

    async def __call__(self, batch: list[FakeOp]) -> None:
        self.runs.append([op.name for op in batch])
        if self.failures:
            self.failures -= 1
            raise DatabaseUnreachable("injected: connection lost")
        for op in batch:
            answer(op, Outcome.done({"name": op.name}))


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def guarded(
    process: Any,
    *,
    queued_max: int = 100,
    retry_s: float = 5.0,
    breaker: Breaker | None = None,
    monotonic: Callable[[], float] | None = None,
) -> GroupCommitter[FakeOp]:
    return GroupCommitter(
        process,
        batch_max=100,
        batch_window_s=0.0,
        clock=lambda: T0,
        name="test shard",
        log=logging.getLogger("test.group_commit"),
        queued_max=queued_max,
        retry_s=retry_s,
        breaker=breaker,
        **({"monotonic": monotonic} if monotonic else {}),
    )


async def test_past_the_queue_bound_operations_are_refused_at_once() -> None:
    process = Recorder()
    process.gate = asyncio.Event()
    commits = guarded(process, queued_max=3)
    first = ops("in-flight")
    commits.add(first[0])
    await process.started.wait()
    queued, extra = ops("a", "b", "c"), ops("d", "e")
    for op in queued + extra:
        commits.add(op)
    # Refused without waiting for anything: the futures are done before any await.
    assert all(op.future.done() for op in extra)
    assert all(op.future.result().code is Code.UNAVAILABLE for op in extra)
    assert "overloaded" in extra[0].future.result().detail
    assert commits.queued == 3 and commits.shed == 2
    process.gate.set()
    await asyncio.gather(*(op.future for op in first + queued))
    assert all(op.future.result().succeeded for op in first + queued)
    commits.close()


async def test_unbounded_adds_are_never_refused_for_a_full_queue() -> None:
    process = Recorder()
    process.gate = asyncio.Event()
    commits = guarded(process, queued_max=1)
    for op in ops("a", "b", "c"):
        commits.add(op, bounded=False)
    assert commits.shed == 0
    process.gate.set()
    commits.close()


async def test_a_batch_whose_database_was_unreachable_runs_again_and_succeeds() -> None:
    process = Unreachable(failures=2)
    commits = guarded(process)
    batch = ops("a", "b")
    for op in batch:
        commits.add(op)
    results = await asyncio.gather(*(op.future for op in batch))
    assert [r.code for r in results] == [Code.OK, Code.OK]
    assert process.runs == [["a", "b"]] * 3 and commits.reruns == 2
    assert commits.breaker.state is BreakerState.CLOSED and commits.breaker.failures == 0
    commits.close()


async def test_re_runs_stop_at_the_retry_budget_with_unavailable() -> None:
    process = Unreachable(failures=1000)
    commits = guarded(process, retry_s=0.12)  # room for the 50 ms back-off, not much more
    batch = ops("a")
    commits.add(batch[0])
    result = await batch[0].future
    assert result.code is Code.UNAVAILABLE and "database unavailable" in result.detail
    assert 2 <= len(process.runs) <= 3
    commits.close()


async def test_repeated_failures_open_the_breaker_then_a_probe_closes_it() -> None:
    clock = Clock()
    process = Unreachable(failures=2)
    commits = guarded(process, breaker=Breaker(2, cooldown_s=1.0), monotonic=clock)
    first = ops("a")
    commits.add(first[0])
    failed = await first[0].future
    assert failed.code is Code.UNAVAILABLE and commits.breaker.state is BreakerState.OPEN
    # Open: refused at `add`, before any queue or database.
    fast = ops("b")
    commits.add(fast[0])
    assert fast[0].future.done() and "circuit open" in fast[0].future.result().detail
    assert len(process.runs) == 2
    # After the cool-down one batch probes; it commits and the breaker closes.
    clock.now_s += 1.0
    probe = ops("c")
    commits.add(probe[0])
    assert (await probe[0].future).code is Code.OK
    assert commits.breaker.state is BreakerState.CLOSED
    commits.close()


async def test_a_probe_that_fails_unexpectedly_does_not_leave_the_breaker_half_open() -> None:
    clock = Clock()
    breaker = Breaker(1, cooldown_s=1.0)
    breaker.failed(clock.now_s)
    clock.now_s += 1.0

    async def broken(batch: list[FakeOp]) -> None:
        raise RuntimeError("a bug")

    commits = guarded(broken, breaker=breaker, monotonic=clock)
    op = ops("a")[0]
    commits.add(op)
    assert (await op.future).code is Code.UNAVAILABLE
    assert breaker.state is BreakerState.OPEN
    commits.close()
