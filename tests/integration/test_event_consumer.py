"""StreamConsumerCore against a real Redis: acks only after apply, dead letters, retries of
transient failures, reclaiming a crashed consumer's entries, restarts, ordering, batching.

apply_events is a scripted stand-in (no Ray, no database): it answers by event id prefix.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from actors.event_consumer import (
    CODE_DELIVERIES_EXCEEDED,
    CODE_ENTRY_DELETED,
    StreamConsumerCore,
)
from actors.protocol import Outcome
from domain.errors import Code

GROUP = "points"
# Small enough that a test waits a few tens of milliseconds for an entry to go idle.
CLAIM_IDLE_MS = 50
IDLE_WAIT_S = CLAIM_IDLE_MS / 1000 + 0.02


class Applier:
    """Answers per event id prefix and records every call.

    ok-    201 applied              dup-   200 replayed
    bad-   422 validation_error     down-  503 every time
    flaky- 503 the first `flaky_failures` times it is seen, then 201
    boom-  the whole call raises the first `flaky_failures` times, then 201
    """

    def __init__(self, flaky_failures: int = 1) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.gate: asyncio.Event | None = None
        self.flaky_failures = flaky_failures
        self.seen: dict[str, int] = {}

    @property
    def applied_ids(self) -> list[str]:
        return [i for _, ids in self.calls for i in ids]

    async def __call__(self, program_id: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ids = [e["id"] for e in events]
        self.calls.append((program_id, ids))
        for event_id in ids:
            self.seen[event_id] = self.seen.get(event_id, 0) + 1
        if self.gate is not None:
            await self.gate.wait()
        if any(i.startswith("boom-") and self.seen[i] <= self.flaky_failures for i in ids):
            raise RuntimeError("shard unreachable")
        return [self.answer(i) for i in ids]

    def answer(self, event_id: str) -> Outcome:
        unavailable = Outcome.refused(Code.UNAVAILABLE, "shard down")
        if event_id.startswith("dup-"):
            return Outcome.created({"event_id": event_id}).as_replay()
        if event_id.startswith("bad-"):
            return Outcome.refused(Code.VALIDATION_ERROR, "type must be 1..64 characters")
        if event_id.startswith("down-"):
            return unavailable
        if event_id.startswith("flaky-") and self.seen[event_id] <= self.flaky_failures:
            return unavailable
        return Outcome.created({"event_id": event_id, "points": 10})


@dataclass
class Streams:
    main: str
    dead: str


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_timeout=5)
    yield client
    await client.aclose()


@pytest.fixture
async def streams(r: Redis) -> AsyncIterator[Streams]:
    name = f"test:events:{uuid.uuid4().hex}"
    yield Streams(name, f"{name}:dead")
    await r.delete(name, f"{name}:dead")


@pytest.fixture
def make(r: Redis, streams: Streams) -> Callable[..., StreamConsumerCore]:
    def build(applier: Applier, consumer: str = "A", **options: Any) -> StreamConsumerCore:
        settings: dict[str, Any] = {"block_ms": 10, "claim_idle_ms": CLAIM_IDLE_MS}
        settings.update(options)
        return StreamConsumerCore(
            r,
            applier,
            consumer=consumer,
            stream=streams.main,
            group=GROUP,
            dead_letter_stream=streams.dead,
            backoff_start_s=0.01,
            backoff_max_s=0.05,
            **settings,
        )

    return build


def event(event_id: str, member_id: str = "m-1") -> dict[str, Any]:
    return {
        "id": event_id,
        "member_id": member_id,
        "type": "order",
        "occurred_at": "2025-05-01T10:00:00Z",
        "attributes": {"amount": "19.90"},
    }


async def publish(r: Redis, stream: str, program_id: str, *event_ids: str) -> list[str]:
    ids = []
    for event_id in event_ids:
        entry_id = await r.xadd(
            stream, {"program_id": program_id, "event": orjson.dumps(event(event_id))}
        )
        ids.append(entry_id.decode())
    return ids


async def pending(r: Redis, stream: str) -> int:
    return int((await r.xpending(stream, GROUP))["pending"])


async def dead_letters(r: Redis, stream: str) -> list[dict[str, str]]:
    return [
        {k.decode(): v.decode() for k, v in fields.items()} for _, fields in await r.xrange(stream)
    ]


async def until(condition: Callable[[], bool], timeout_s: float = 1.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


async def test_acks_only_after_apply_returns(
    r: Redis, streams: Streams, make: Callable[..., StreamConsumerCore]
) -> None:
    applier = Applier()
    applier.gate = asyncio.Event()
    core = make(applier)
    await core.ensure_group()
    await core.ensure_group()  # BUSYGROUP is tolerated
    await publish(r, streams.main, "shop-1", "ok-1", "ok-2", "ok-3")

    task = asyncio.create_task(core.run_once())
    await until(lambda: bool(applier.calls))
    # Read and being applied, not yet committed: nothing may be acknowledged.
    assert await pending(r, streams.main) == 3
    applier.gate.set()
    counters = await task

    assert counters == {
        "read": 3,
        "applied": 3,
        "duplicates": 0,
        "dead_lettered": 0,
        "retry_later": 0,
        "reclaimed": 0,
    }
    assert await pending(r, streams.main) == 0
    assert await r.xlen(streams.main) == 3  # the consumer never trims upstream's stream
    assert await r.xlen(streams.dead) == 0
    assert core.stats["applied"] == 3 and core.stats["passes"] == 1


async def test_duplicates_are_acked_once(
    r: Redis, streams: Streams, make: Callable[..., StreamConsumerCore]
) -> None:
    applier = Applier()
    core = make(applier)
    await core.ensure_group()
    await publish(r, streams.main, "shop-1", "dup-1", "ok-2")

    first = await core.run_once()
    assert (first["duplicates"], first["applied"]) == (1, 1)
    assert await pending(r, streams.main) == 0
    second = await core.run_once()
    assert second["read"] == 0
    assert applier.applied_ids == ["dup-1", "ok-2"]


async def test_invalid_entries_are_dead_lettered_with_reason_and_acked(
    r: Redis, streams: Streams, make: Callable[..., StreamConsumerCore]
) -> None:
    applier = Applier()
    core = make(applier)
    await core.ensure_group()
    bad_json = await r.xadd(streams.main, {"program_id": "shop-1", "event": b"{not json"})
    no_program = await r.xadd(streams.main, {"event": orjson.dumps(event("ok-9"))})
    bad_program = await r.xadd(
        streams.main, {"program_id": "shop 1!", "event": orjson.dumps(event("ok-8"))}
    )
    no_event = await r.xadd(streams.main, {"program_id": "shop-1"})
    not_object = await r.xadd(streams.main, {"program_id": "shop-1", "event": b"[1, 2]"})
    # The HTTP API's parser: a key twice is ambiguous, never "the last one wins".
    twice = await r.xadd(
        streams.main, {"program_id": "shop-1", "event": b'{"id": "ok-7", "id": "ok-6"}'}
    )
    [refused] = await publish(r, streams.main, "shop-1", "bad-1")
    [fine] = await publish(r, streams.main, "shop-1", "ok-1")

    counters = await core.run_once()

    assert counters["read"] == 8
    assert counters["dead_lettered"] == 7 and counters["applied"] == 1
    # Only entries that parse reach apply_events.
    assert applier.calls == [("shop-1", ["bad-1", "ok-1"])]
    assert await pending(r, streams.main) == 0
    letters = {d["entry_id"]: d for d in await dead_letters(r, streams.dead)}
    assert fine not in letters
    expected = {
        bad_json.decode(): "event is not valid JSON",
        no_program.decode(): "entry has no program_id field",
        bad_program.decode(): "program_id is not a valid id",
        no_event.decode(): "entry has no event field",
        not_object.decode(): "an event must be a JSON object",
        twice.decode(): "event has the key 'id' twice",
        refused: "type must be 1..64 characters",
    }
    assert set(letters) == set(expected)
    for entry_id, reason in expected.items():
        letter = letters[entry_id]
        assert letter["reason"].startswith(reason), letter
        assert letter["code"] == "validation_error"
        assert letter["consumer"] == "A" and letter["deliveries"] == "1"
        assert datetime.fromisoformat(letter["failed_at"]).utcoffset() is not None
    assert letters[bad_json.decode()]["event"] == "{not json"
    assert letters[bad_json.decode()]["program_id"] == "shop-1"
    assert letters[no_program.decode()]["program_id"] == ""
    assert orjson.loads(letters[refused]["event"]) == event("bad-1")


@pytest.mark.parametrize("prefix", ["flaky-", "boom-"])
async def test_transient_failure_stays_pending_then_is_retried(
    r: Redis, streams: Streams, make: Callable[..., StreamConsumerCore], prefix: str
) -> None:
    applier = Applier(flaky_failures=1)
    core = make(applier)
    await core.ensure_group()
    await publish(r, streams.main, "shop-1", f"{prefix}1")

    first = await core.run_once()
    assert first["retry_later"] == 1 and first["applied"] == 0
    assert await pending(r, streams.main) == 1
    # Not idle long enough yet: nobody takes it again.
    again = await core.run_once()
    assert again["read"] == 0
    assert await pending(r, streams.main) == 1

    await asyncio.sleep(IDLE_WAIT_S)
    retried = await core.run_once()
    assert retried["reclaimed"] == 1 and retried["applied"] == 1
    assert await pending(r, streams.main) == 0
    assert applier.applied_ids == [f"{prefix}1", f"{prefix}1"]
    assert await r.xlen(streams.dead) == 0


async def test_malformed_results_leave_entries_pending(
    r: Redis, streams: Streams, make: Callable[..., StreamConsumerCore]
) -> None:
    async def short(program_id: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return []  # one result per event is the contract; this breaks it

    core = make(short)
    await core.ensure_group()
    await publish(r, streams.main, "shop-1", "ok-1", "ok-2")
    counters = await core.run_once()
    assert counters["retry_later"] == 2
    assert await pending(r, streams.main) == 2


async def test_crashed_consumer_entries_are_reclaimed_by_another(
    r: Redis, streams: Streams, make: Callable[..., StreamConsumerCore]
) -> None:
    stuck = Applier()
    stuck.gate = asyncio.Event()  # never set: A dies mid-apply
    a = make(stuck, consumer="A")
    await a.ensure_group()
    await publish(r, streams.main, "shop-1", "ok-1", "ok-2")
    task = asyncio.create_task(a.run_once())
    await until(lambda: bool(stuck.calls))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    summary = await r.xpending(streams.main, GROUP)
    assert summary["pending"] == 2
    assert [c["name"] for c in summary["consumers"]] == [b"A"]

    # New entries arrive meanwhile; B takes A's old ones first, in stream order.
    await publish(r, streams.main, "shop-1", "ok-3")
    await asyncio.sleep(IDLE_WAIT_S)
    applier = Applier()
    b = make(applier, consumer="B")
    counters = await b.run_once()

    assert counters["reclaimed"] == 2 and counters["read"] == 3 and counters["applied"] == 3
    assert applier.calls == [("shop-1", ["ok-1", "ok-2", "ok-3"])]
    assert await pending(r, streams.main) == 0


async def test_entry_deleted_while_pending_is_recorded_as_dead_letter(
    r: Redis, streams: Streams, make: Callable[..., StreamConsumerCore]
) -> None:
    a = make(Applier(flaky_failures=10), consumer="A")
    await a.ensure_group()
    [entry_id] = await publish(r, streams.main, "shop-1", "flaky-1")
    assert (await a.run_once())["retry_later"] == 1
    await r.xdel(streams.main, entry_id)  # upstream trimmed it before it could be applied

    await asyncio.sleep(IDLE_WAIT_S)
    applier = Applier()
    counters = await make(applier, consumer="B").run_once()

    assert counters["dead_lettered"] == 1 and applier.calls == []
    [letter] = await dead_letters(r, streams.dead)
    assert letter["entry_id"] == entry_id and letter["code"] == CODE_ENTRY_DELETED
    assert await pending(r, streams.main) == 0


async def test_deliveries_max_exceeded_goes_to_dead_letters(
    r: Redis, streams: Streams, make: Callable[..., StreamConsumerCore]
) -> None:
    applier = Applier()
    core = make(applier, deliveries_max=2)
    await core.ensure_group()
    [entry_id] = await publish(r, streams.main, "shop-1", "down-1")

    assert (await core.run_once())["retry_later"] == 1  # delivery 1
    await asyncio.sleep(IDLE_WAIT_S)
    assert (await core.run_once())["retry_later"] == 1  # delivery 2
    await asyncio.sleep(IDLE_WAIT_S)
    counters = await core.run_once()  # delivery 3: not applied again

    assert counters["dead_lettered"] == 1 and counters["reclaimed"] == 1
    assert applier.applied_ids == ["down-1", "down-1"]
    assert await pending(r, streams.main) == 0
    [letter] = await dead_letters(r, streams.dead)
    assert letter["entry_id"] == entry_id
    assert letter["code"] == CODE_DELIVERIES_EXCEEDED
    assert letter["reason"] == "not applied after 2 deliveries: unavailable: shard down"
    assert letter["deliveries"] == "3"


async def test_restarted_consumer_reprocesses_its_own_pending_entries(
    r: Redis, streams: Streams, make: Callable[..., StreamConsumerCore]
) -> None:
    # A long idle time: only the restart under the same name may pick the entries up now.
    applier = Applier(flaky_failures=1)
    first = make(applier, consumer="A", claim_idle_ms=30_000)
    await first.ensure_group()
    await publish(r, streams.main, "shop-1", "boom-1", "ok-2")
    assert (await first.run_once())["retry_later"] == 2

    other = Applier()
    assert (await make(other, consumer="B", claim_idle_ms=30_000).run_once())["read"] == 0

    restarted = make(applier, consumer="A", claim_idle_ms=30_000)
    counters = await restarted.run_once()
    assert counters["reclaimed"] == 2 and counters["applied"] == 2
    assert applier.calls == [("shop-1", ["boom-1", "ok-2"])] * 2
    assert other.calls == []
    assert await pending(r, streams.main) == 0
    # Its history is read once; later passes read only new entries.
    assert (await restarted.run_once())["read"] == 0


async def test_order_is_kept_within_a_program_and_one_call_per_program(
    r: Redis, streams: Streams, make: Callable[..., StreamConsumerCore]
) -> None:
    applier = Applier()
    core = make(applier)
    await core.ensure_group()
    for i in range(4):
        for program in ("shop-1", "school-2", "bank-3"):
            await publish(r, streams.main, program, f"ok-{program}-{i}")

    counters = await core.run_once()

    assert counters["applied"] == 12
    assert sorted(applier.calls) == sorted(
        (program, [f"ok-{program}-{i}" for i in range(4)])
        for program in ("shop-1", "school-2", "bank-3")
    )
    assert await pending(r, streams.main) == 0


async def test_read_count_bounds_a_pass(
    r: Redis, streams: Streams, make: Callable[..., StreamConsumerCore]
) -> None:
    applier = Applier()
    core = make(applier, read_count=2)
    await core.ensure_group()
    await publish(r, streams.main, "shop-1", "ok-1", "ok-2", "ok-3")
    assert (await core.run_once())["read"] == 2
    assert (await core.run_once())["read"] == 1
    assert applier.applied_ids == ["ok-1", "ok-2", "ok-3"]


async def test_run_forever_survives_a_deleted_stream_and_stops(
    r: Redis, streams: Streams, make: Callable[..., StreamConsumerCore]
) -> None:
    applier = Applier()
    core = make(applier)
    stop = asyncio.Event()
    task = asyncio.create_task(core.run_forever(stop))
    await until(lambda: core.stats["running"])
    await publish(r, streams.main, "shop-1", "ok-1")
    await until(lambda: core.stats["applied"] == 1)

    await r.delete(streams.main)  # group gone: passes fail until it is recreated
    await until(lambda: core.stats["errors"] >= 1)
    await publish(r, streams.main, "shop-1", "ok-2")
    await until(lambda: core.stats["applied"] == 2)

    stop.set()
    await asyncio.wait_for(task, 1)
    assert not core.stats["running"]
    assert applier.applied_ids == ["ok-1", "ok-2"]
    assert await pending(r, streams.main) == 0


async def test_poison_entry_that_keeps_crashing_consumers_is_dead_lettered(
    r: Redis, streams: Streams, make: Callable[..., StreamConsumerCore]
) -> None:
    # A crash leaves no error behind; the delivery count alone retires the entry.
    stuck = Applier()
    stuck.gate = asyncio.Event()
    a = make(stuck, consumer="A", deliveries_max=1)
    await a.ensure_group()
    [entry_id] = await publish(r, streams.main, "shop-1", "ok-1")
    task = asyncio.create_task(a.run_once())
    await until(lambda: bool(stuck.calls))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await asyncio.sleep(IDLE_WAIT_S)
    applier = Applier()
    counters = await make(applier, consumer="B", deliveries_max=1).run_once()

    assert counters["dead_lettered"] == 1 and applier.calls == []
    [letter] = await dead_letters(r, streams.dead)
    assert letter["entry_id"] == entry_id and letter["code"] == CODE_DELIVERIES_EXCEEDED
    assert letter["reason"].startswith("not applied after 1 deliveries: no error recorded")
    assert await pending(r, streams.main) == 0


async def test_works_with_a_resp3_client(redis_url: str, streams: Streams) -> None:
    # RESP3 shapes XREADGROUP replies as a map, RESP2 as a list: both must be read.
    client = Redis.from_url(redis_url, socket_timeout=5, protocol=3)
    applier = Applier(flaky_failures=1)

    def build() -> StreamConsumerCore:
        return StreamConsumerCore(
            client,
            applier,
            consumer="A",
            stream=streams.main,
            group=GROUP,
            dead_letter_stream=streams.dead,
            block_ms=10,
        )

    try:
        first = build()
        await first.ensure_group()
        await publish(client, streams.main, "shop-1", "boom-1")
        assert (await first.run_once())["retry_later"] == 1
        await publish(client, streams.main, "shop-1", "ok-2")
        counters = await build().run_once()  # restarted: history, then new entries
        assert (counters["reclaimed"], counters["applied"]) == (1, 2)
        assert await pending(client, streams.main) == 0
    finally:
        await client.aclose()
