"""Async earning: apply business events that upstream systems XADD to a Redis stream.

Stream entry format (what upstream XADDs to `points:events`; MAXLEN is upstream's to set):

    program_id  the program the event belongs to (str, a valid id: domain.ids.valid_id)
    event       the event body as a JSON object, UTF-8, at most BODY_BYTES_MAX bytes:
                {"id", "member_id", "type", "occurred_at", "attributes"}
                (the same body POST /v1/programs/{program_id}/events takes; `id` is the
                deduplication key together with program_id)

    e.g. XADD points:events * program_id shop-1 event '{"id":"ord-42","member_id":"m-7",
         "type":"order","occurred_at":"2025-05-01T10:00:00Z","attributes":{"amount":1990}}'

Other fields are ignored (upstream may add trace ids). An entry whose program_id is missing
or invalid, or whose event is missing, too large, not JSON or not a JSON object, is
dead-lettered at once: no amount of retrying can make it valid.

Delivery: a consumer group (`points`) shares the stream between EventConsumer actors. An
entry is acknowledged only after `apply_events` answered for it, that is after its points
were committed (or found already committed: a duplicate). Its result decides:

    a success code                applied (or a duplicate replayed): XACK
    a refusal in PERMANENT_CODES  will never succeed: dead letter + XACK
    anything else, or an exception raised by apply_events
                                  transient (shard restarting, database down, overload):
                                  no XACK. It stays pending and is retried by the reclaim
                                  pass once idle for claim_idle_ms.

The reclaim pass (XAUTOCLAIM, entries idle > claim_idle_ms) takes over entries of any
consumer, this one included: retries of transient failures and entries of a consumer that
crashed mid-apply. A consumer restarted under the same name first re-reads its own pending
entries (XREADGROUP id 0) without waiting for them to go idle. An entry delivered more than
deliveries_max times (a poison event that keeps failing, or keeps crashing its consumer) is
dead-lettered without being applied again.

Re-applying is always safe: events are deduplicated by (program_id, event id) where points
are committed, so a reclaim that races a slow consumer costs a duplicate, never double
points. claim_idle_ms must still be well above the time one apply takes.

Dead-letter entry format (XADD to `points:events:dead`, approximate MAXLEN
DEAD_LETTERS_MAX), written in one MULTI/EXEC with the XACK of the original entry:

    entry_id     the original entry's id in the main stream
    program_id   as received ("" if missing)
    event        the raw event field as received ("" if missing)
    reason       why, in words (at most REASON_LENGTH_MAX characters)
    code         a stable machine code: the result's code (validation_error, not_found, …)
                 or, for what the consumer decides itself, validation_error (bad entry),
                 deliveries_exceeded, entry_deleted (trimmed from the stream while pending)
    failed_at    RFC 3339 UTC time of the decision
    deliveries   delivery count of the entry when it was dead-lettered
    consumer     the consumer that dead-lettered it

Ordering: entries of one program are passed to apply_events in stream order within a pass.
A retried entry is applied after entries that came later and succeeded at once; earning
events are independent credits, so only their set matters, not their order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import ray
import redis.asyncio
from redis.exceptions import RedisError, ResponseError

from actors.metrics import SYNC_INTERVAL_S, StreamMetrics, export_every
from actors.protocol import Outcome
from domain import jsontext
from domain.errors import Code, PointsError
from domain.ids import valid_id
from domain.limits import BODY_BYTES_MAX, EVENTS_PER_BATCH_MAX, REASON_LENGTH_MAX

log = logging.getLogger("points.event_consumer")

ApplyEvents = Callable[[str, list[dict[str, Any]]], Awaitable[list[Outcome]]]

STREAM_DEFAULT = "points:events"
GROUP_DEFAULT = "points"
DEAD_LETTER_STREAM_DEFAULT = "points:events:dead"
# Entries taken in one pass (reclaimed + new): one POST /events/batch worth.
READ_COUNT_DEFAULT = EVENTS_PER_BATCH_MAX
BLOCK_MS_DEFAULT = 1000
# Far above the time one apply takes (a group commit is milliseconds; a shard restart a few
# seconds), so a live but slow consumer is rarely raced by a reclaim.
CLAIM_IDLE_MS_DEFAULT = 30_000
DELIVERIES_MAX_DEFAULT = 5
# The dead-letter stream is ours to bound (the main stream is upstream's). Approximate
# trimming: Redis drops whole radix nodes, far cheaper than exact trimming.
DEAD_LETTERS_MAX = 100_000
# An event is no bigger than an HTTP body could be; a bigger one is refused the same way.
EVENT_BYTES_MAX = BODY_BYTES_MAX
# Last error per pending entry, for the dead letter's reason. Bounded: when it overflows the
# oldest are forgotten and their dead letter says "no error recorded".
LAST_ERRORS_MAX = 100_000
# run_forever: wait after a failed pass (Redis down) or a pass where nothing could be
# applied (a dependency down), doubling up to the max, so a down dependency is not hammered
# and the pending list does not fill with read_count new entries every block_ms.
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0
# Redis socket timeout on top of block_ms, so a blocking read is not cut off as a timeout.
SOCKET_TIMEOUT_MARGIN_S = 5.0
CONNECT_TIMEOUT_S = 5.0

# Refusals that will never succeed however often they are retried. Any other refusal is
# treated as transient: retried, then dead-lettered after deliveries_max (never lost).
PERMANENT_CODES = frozenset(
    {
        Code.VALIDATION_ERROR,
        Code.NOT_FOUND,
        Code.IDEMPOTENCY_CONFLICT,
        Code.LIMIT_EXCEEDED,
        Code.INSUFFICIENT_POINTS,
        Code.INVALID_STATE,
    }
)
# Codes the consumer gives dead letters it decides on itself.
CODE_DELIVERIES_EXCEEDED = Code.DELIVERIES_EXCEEDED.value
CODE_ENTRY_DELETED = Code.ENTRY_DELETED.value

# Redis before 7 reports no consumer-group lag: it is counted, up to this many entries
# (past the lag alert's 10,000; docs/metrics.md).
LAG_COUNTED_MAX = 20_000
COUNTERS = ("read", "applied", "duplicates", "dead_lettered", "retry_later", "reclaimed")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _text(value: bytes | str) -> str:
    """Keys, ids and fields arrive as bytes (decode_responses=False) or str: accept both."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _fields(raw: dict[Any, Any] | None) -> dict[str, bytes] | None:
    """Field names as str, values as the bytes upstream wrote (None: a deleted entry)."""
    if not raw:
        return None
    return {_text(k): v.encode() if isinstance(v, str) else v for k, v in raw.items()}


def _entries_of(reply: Any) -> list[Any]:
    """XREADGROUP's entries for our one stream: RESP2 answers [[stream, entries]], RESP3
    {stream: [entries]}; no entries: an empty reply."""
    if not reply:
        return []
    if isinstance(reply, dict):
        [per_stream] = reply.values()
        return list(per_stream[0]) if per_stream else []
    return list(reply[0][1])


def _id_key(entry_id: str) -> tuple[int, int]:
    """Stream ids sort by (milliseconds, sequence), not as strings."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(slots=True)
class _Entry:
    entry_id: str
    # None: the entry was deleted from the stream while pending.
    fields: dict[str, bytes] | None
    deliveries: int


@dataclass(slots=True)
class _DeadLetter:
    entry: _Entry
    reason: str
    code: str


class StreamConsumerCore:
    """One consumer of the group. No Ray: the actor below wraps it; tests drive run_once."""

    def __init__(
        self,
        redis: redis.asyncio.Redis,
        apply_events: ApplyEvents,
        *,
        consumer: str,
        stream: str = STREAM_DEFAULT,
        group: str = GROUP_DEFAULT,
        dead_letter_stream: str = DEAD_LETTER_STREAM_DEFAULT,
        read_count: int = READ_COUNT_DEFAULT,
        block_ms: int = BLOCK_MS_DEFAULT,
        claim_idle_ms: int = CLAIM_IDLE_MS_DEFAULT,
        deliveries_max: int = DELIVERIES_MAX_DEFAULT,
        backoff_start_s: float = BACKOFF_START_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        assert consumer and stream and group and dead_letter_stream
        assert dead_letter_stream != stream, "dead letters must not feed back into the stream"
        assert 1 <= read_count <= EVENTS_PER_BATCH_MAX
        assert block_ms >= 0 and claim_idle_ms >= 0 and deliveries_max >= 1
        assert 0 < backoff_start_s <= backoff_max_s
        self.redis = redis
        self.apply_events = apply_events
        self.consumer = consumer
        self.stream = stream
        self.group = group
        self.dead_letter_stream = dead_letter_stream
        self.read_count = read_count
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.deliveries_max = deliveries_max
        self.backoff_start_s = backoff_start_s
        self.backoff_max_s = backoff_max_s
        self.clock = clock
        # Own pending entries still to re-read after a (re)start: the id to read after, or
        # None once done. A fresh consumer name simply reads nothing here.
        self._history_after: str | None = "0"
        self._claim_cursor = "0-0"
        self._group_ready = False
        self._last_errors: OrderedDict[str, str] = OrderedDict()
        self.stats: dict[str, Any] = {
            "consumer": consumer,
            "stream": stream,
            "group": group,
            "running": False,
            "passes": 0,
            **dict.fromkeys(COUNTERS, 0),
            "errors": 0,
            "last_error": None,
            "last_pass_at": None,
            "backoff_s": 0.0,
        }

    # --- setup -------------------------------------------------------------------------

    async def ensure_group(self) -> None:
        """Create the group (from the stream's start, creating the stream if need be)."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    # --- one pass ----------------------------------------------------------------------

    async def run_once(self) -> dict[str, int]:
        """Reclaim, read new entries, apply them per program, ack or dead-letter each."""
        if not self._group_ready:
            await self.ensure_group()
        counters = dict.fromkeys(COUNTERS, 0)
        try:
            reclaimed = await self._reclaim()
        except ResponseError as exc:
            self._on_response_error(exc)
            raise
        counters["reclaimed"] = len(reclaimed)
        room = self.read_count - len(reclaimed)
        fresh: list[_Entry] = []
        if room > 0:
            # Reclaimed work waits for no one: block for new entries only on an idle pass.
            try:
                fresh = await self._read_new(room, block=not reclaimed)
            except ResponseError as exc:
                self._on_response_error(exc)
                raise
        entries = sorted(reclaimed + fresh, key=lambda e: _id_key(e.entry_id))
        assert sum(e.fields is not None for e in entries) <= self.read_count
        assert len({e.entry_id for e in entries}) == len(entries), "an entry read twice"
        counters["read"] = len(entries)

        dead: list[_DeadLetter] = []
        by_program: dict[str, list[tuple[_Entry, dict[str, Any]]]] = {}
        for entry in entries:
            parsed = self._parse(entry)
            if isinstance(parsed, _DeadLetter):
                dead.append(parsed)
                continue
            program_id, event = parsed
            by_program.setdefault(program_id, []).append((entry, event))

        programs = list(by_program.items())
        # Programs are independent: apply them concurrently, so their operations meet in the
        # same shard group commits. Within a program, stream order is kept.
        outcomes = await asyncio.gather(*(self._apply(p, batch) for p, batch in programs))

        acks: list[str] = []
        for (_, batch), results in zip(programs, outcomes, strict=True):
            for (entry, _), result in zip(batch, results, strict=True):
                verdict = self._judge(entry, result)
                if verdict == "dead":
                    assert result is not None
                    dead.append(_DeadLetter(entry, result.detail, result.code.value))
                elif verdict == "retry":
                    counters["retry_later"] += 1
                else:
                    counters[verdict] += 1
                    acks.append(entry.entry_id)
        counters["dead_lettered"] = len(dead)
        await self._settle(acks, dead)

        assert counters["read"] == (
            counters["applied"]
            + counters["duplicates"]
            + counters["dead_lettered"]
            + counters["retry_later"]
        ), counters
        self.stats["passes"] += 1
        for name in COUNTERS:
            self.stats[name] += counters[name]
        self.stats["last_pass_at"] = self.clock().isoformat()
        return counters

    def _on_response_error(self, exc: ResponseError) -> None:
        if "NOGROUP" in str(exc):
            # The stream (or the group) was deleted: recreate it on the next pass, and
            # re-read our own pending entries from the start (there are none, but the
            # cursors refer to a stream that no longer exists).
            self._group_ready = False
            self._history_after = "0"
            self._claim_cursor = "0-0"

    async def _reclaim(self) -> list[_Entry]:
        """Own pending entries after a restart, then entries idle > claim_idle_ms (any
        consumer's, this one's included), with their delivery counts."""
        found: dict[str, dict[str, bytes] | None] = {}
        if self._history_after is not None:
            # Reading our own history counts as a delivery and resets the idle time, so the
            # XAUTOCLAIM below does not take (and count) the same entries again.
            reply = await self.redis.xreadgroup(
                self.group,
                self.consumer,
                {self.stream: self._history_after},
                count=self.read_count,
            )
            history = _entries_of(reply)
            for raw_id, fields in history:
                found[_text(raw_id)] = _fields(fields)
            self._history_after = _text(history[-1][0]) if history else None
        deleted: list[str] = []
        room = self.read_count - len(found)
        if room > 0:
            claim: Any = await self.redis.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                self.claim_idle_ms,
                start_id=self._claim_cursor,
                count=room,
            )
            # [next cursor, entries, ids deleted from the stream (Redis >= 7)]
            self._claim_cursor = _text(claim[0])
            for raw_id, fields in claim[1]:
                if raw_id is not None:
                    found.setdefault(_text(raw_id), _fields(fields))
            if len(claim) > 2:
                # Redis already dropped these from the pending list: record that they were
                # never applied, so the loss is visible.
                deleted = [_text(i) for i in claim[2] if _text(i) not in found]
        if not found and not deleted:
            return []
        deliveries = await self._deliveries(list(found))
        entries = [
            _Entry(entry_id, fields, deliveries[entry_id])
            for entry_id, fields in found.items()
            # Gone from our pending list: another consumer claimed or acked it meanwhile.
            if entry_id in deliveries
        ]
        assert len(entries) <= self.read_count
        # Deleted entries cost nothing to record, so they do not count against read_count.
        return entries + [_Entry(i, None, 0) for i in deleted]

    async def _deliveries(self, entry_ids: list[str]) -> dict[str, int]:
        """Delivery count of each entry still pending for this consumer (one round trip)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.xpending_range(
                    self.stream, self.group, entry_id, entry_id, 1, consumername=self.consumer
                )
            replies = await pipe.execute()
        counts: dict[str, int] = {}
        for entry_id, reply in zip(entry_ids, replies, strict=True):
            if reply:
                counts[entry_id] = int(reply[0]["times_delivered"])
                assert counts[entry_id] >= 1
        return counts

    async def _read_new(self, count: int, *, block: bool) -> list[_Entry]:
        assert count > 0
        reply = await self.redis.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: ">"},
            count=count,
            # redis-py: block=0 would mean "forever"; None means do not block at all.
            block=self.block_ms if block and self.block_ms > 0 else None,
        )
        fresh = _entries_of(reply)
        return [_Entry(_text(i), _fields(fields), 1) for i, fields in fresh]

    def _parse(self, entry: _Entry) -> tuple[str, dict[str, Any]] | _DeadLetter:
        """(program_id, event body), or why the entry can never be applied."""
        if entry.fields is None:
            return _DeadLetter(
                entry,
                "entry was deleted from the stream before it was applied (trimmed upstream?)",
                CODE_ENTRY_DELETED,
            )
        if entry.deliveries > self.deliveries_max:
            last = self._last_errors.get(
                entry.entry_id, "no error recorded here (a consumer may have crashed mid-apply)"
            )
            return _DeadLetter(
                entry,
                f"not applied after {entry.deliveries - 1} deliveries: {last}",
                CODE_DELIVERIES_EXCEEDED,
            )
        invalid = Code.VALIDATION_ERROR.value
        program_id = entry.fields.get("program_id")
        if program_id is None:
            return _DeadLetter(entry, "entry has no program_id field", invalid)
        if not valid_id(_text(program_id)):
            return _DeadLetter(
                entry, f"program_id is not a valid id: {_text(program_id)[:160]!r}", invalid
            )
        event = entry.fields.get("event")
        if event is None:
            return _DeadLetter(entry, "entry has no event field", invalid)
        if len(event) > EVENT_BYTES_MAX:
            return _DeadLetter(
                entry, f"event is {len(event)} bytes, more than {EVENT_BYTES_MAX}", invalid
            )
        try:
            body = jsontext.loads(event, "event")  # the HTTP API's parser: a key twice is refused
        except PointsError as exc:
            return _DeadLetter(entry, exc.detail, invalid)
        if not isinstance(body, dict):
            return _DeadLetter(entry, "an event must be a JSON object", invalid)
        return _text(program_id), body

    async def _apply(
        self, program_id: str, batch: list[tuple[_Entry, dict[str, Any]]]
    ) -> list[Outcome | None]:
        """One call per program. A failure of the call (or a malformed answer) leaves the
        whole batch pending: None per entry, with the error remembered for its reason."""
        assert batch
        events = [event for _, event in batch]
        try:
            results = await self.apply_events(program_id, events)
            if not isinstance(results, list) or len(results) != len(events):
                got = len(results) if isinstance(results, list) else type(results).__name__
                raise TypeError(f"apply_events gave {got} results for {len(events)} events")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("applying %d events of %s failed: %s", len(events), program_id, error)
            for entry, _ in batch:
                self._remember(entry.entry_id, error)
            return [None] * len(batch)
        assert len(results) == len(batch)
        answers: list[Outcome | None] = list(results)
        return answers

    def _judge(self, entry: _Entry, result: Outcome | None) -> str:
        """'applied', 'duplicates', 'dead' or 'retry' for one entry's result."""
        if result is None:  # the call failed; error already remembered
            return "retry"
        if not isinstance(result, Outcome):
            self._remember(entry.entry_id, f"malformed result from apply_events: {result!r}")
            return "retry"
        if result.succeeded:
            return "duplicates" if result.code is Code.OK or result.replayed else "applied"
        if result.code in PERMANENT_CODES:
            return "dead"
        self._remember(entry.entry_id, f"{result.code}: {result.detail}")
        return "retry"

    def _remember(self, entry_id: str, error: str) -> None:
        self._last_errors[entry_id] = error[:REASON_LENGTH_MAX]
        self._last_errors.move_to_end(entry_id)
        while len(self._last_errors) > LAST_ERRORS_MAX:
            self._last_errors.popitem(last=False)

    async def _settle(self, acks: list[str], dead: list[_DeadLetter]) -> None:
        """Dead letters and acks in one MULTI/EXEC: a dead letter is never written without
        its ack, nor acked without being written."""
        if not acks and not dead:
            return
        failed_at = self.clock().isoformat()
        async with self.redis.pipeline(transaction=True) as pipe:
            for letter in dead:
                fields = letter.entry.fields or {}
                pipe.xadd(
                    self.dead_letter_stream,
                    {
                        "entry_id": letter.entry.entry_id,
                        "program_id": fields.get("program_id", b""),
                        "event": fields.get("event", b""),
                        "reason": letter.reason[:REASON_LENGTH_MAX],
                        "code": letter.code,
                        "failed_at": failed_at,
                        "deliveries": letter.entry.deliveries,
                        "consumer": self.consumer,
                    },
                    maxlen=DEAD_LETTERS_MAX,
                    approximate=True,
                )
            pipe.xack(self.stream, self.group, *acks, *(d.entry.entry_id for d in dead))
            await pipe.execute()
        for entry_id in acks:
            self._last_errors.pop(entry_id, None)
        for letter in dead:
            self._last_errors.pop(letter.entry.entry_id, None)
            log.warning(
                "dead-lettered %s (%s): %s", letter.entry.entry_id, letter.code, letter.reason
            )

    # --- the loop ----------------------------------------------------------------------

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Pass after pass until `stop` is set. Never dies: a failed pass (Redis down, the
        stream deleted) is logged and retried after a bounded, doubling backoff."""
        backoff_s = self.backoff_start_s
        self.stats["running"] = True
        try:
            while not stop.is_set():
                try:
                    counters = await self.run_once()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.stats["errors"] += 1
                    self.stats["last_error"] = f"{type(exc).__name__}: {exc}"[:REASON_LENGTH_MAX]
                    log.warning("event pass failed, retrying in %.2f s: %s", backoff_s, exc)
                else:
                    stuck = counters["retry_later"] and not (
                        counters["applied"] or counters["duplicates"]
                    )
                    if not stuck:
                        backoff_s = self.backoff_start_s
                        self.stats["backoff_s"] = 0.0
                        continue
                    log.info("nothing could be applied, next pass in %.2f s", backoff_s)
                self.stats["backoff_s"] = backoff_s
                await _wait(stop, backoff_s)
                backoff_s = min(backoff_s * 2, self.backoff_max_s)
        finally:
            self.stats["running"] = False


async def _wait(stop: asyncio.Event, timeout_s: float) -> None:
    """Sleep, but wake at once when stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout_s)


# Consumers of the group run by one EventConsumer actor (batches in flight).
LANES_DEFAULT = 4
LANES_MAX = 32


# Ray's typed overloads of ray.remote(**options) list task options only, not the actor
# option max_concurrency (which it accepts at run time).
@ray.remote(  # type: ignore[call-overload]
    # Restart forever on crash: pending entries are reclaimed (or re-read under the same
    # consumer name), so nothing is lost. The owner calls start() again (ping shows
    # running=False after a restart); start() is idempotent.
    max_restarts=-1,
    # Never re-run a call automatically: start/stop/ping are cheap to call again.
    max_task_retries=0,
    max_concurrency=100,
    num_cpus=0,
)
class EventConsumer:
    """A thin Ray wrapper: `lanes` StreamConsumerCores (consumers "<name>-0", "<name>-1", …
    of one group) running in the actor's event loop. Several lanes keep several batches in
    flight to the account shards: one lane waits for its batch's group commits, the others
    read and apply meanwhile (measured: 1 lane 2.7k events/s; see loadtests/events_bench)."""

    def __init__(
        self,
        redis_url: str,
        applier_factory: Callable[[], ApplyEvents],
        consumer: str,
        config: dict[str, Any],
    ) -> None:
        block_ms = int(config.get("block_ms", BLOCK_MS_DEFAULT))
        self._redis = redis.asyncio.Redis.from_url(
            redis_url,
            socket_timeout=block_ms / 1000 + SOCKET_TIMEOUT_MARGIN_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            health_check_interval=30,
        )
        lanes = int(config.get("lanes", LANES_DEFAULT))
        assert 1 <= lanes <= LANES_MAX
        applier = applier_factory()
        self.cores = [
            StreamConsumerCore(
                self._redis,
                applier,
                consumer=f"{consumer}-{lane}",
                stream=config.get("stream", STREAM_DEFAULT),
                group=config.get("group", GROUP_DEFAULT),
                dead_letter_stream=config.get("dead_letter_stream", DEAD_LETTER_STREAM_DEFAULT),
                read_count=int(config.get("read_count", READ_COUNT_DEFAULT)),
                block_ms=block_ms,
                claim_idle_ms=int(config.get("claim_idle_ms", CLAIM_IDLE_MS_DEFAULT)),
                deliveries_max=int(config.get("deliveries_max", DELIVERIES_MAX_DEFAULT)),
            )
            for lane in range(lanes)
        ]
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started_at = time.time()
        self._metrics = StreamMetrics()
        self._metrics_task: asyncio.Task[None] | None = None

    async def export_metrics(self) -> None:
        """The stream's lag and pending entries (XINFO GROUPS), the dead letters (XLEN) and
        the lanes' counters, to Ray's metrics (docs/metrics.md)."""
        core = self.cores[0]
        lag = pending = dead = None
        with contextlib.suppress(RedisError):
            for group in await self._redis.xinfo_groups(core.stream):
                if _text(group.get("name", b"")) == core.group:
                    pending = group.get("pending")
                    lag = group.get("lag")
                    if lag is None:  # Redis before 7 has no `lag`: count, up to a cap
                        after = "(" + _text(group.get("last-delivered-id", b"0-0"))
                        found = await self._redis.xrange(
                            core.stream, after, "+", count=LAG_COUNTED_MAX
                        )
                        lag = len(found or [])
        with contextlib.suppress(RedisError):
            dead = await self._redis.xlen(core.dead_letter_stream)
        lanes = [c.stats for c in self.cores]
        totals = {name: sum(float(lane.get(name, 0)) for lane in lanes) for name in COUNTERS}
        self._metrics.sync(lag, pending, dead, totals)

    async def start(self) -> dict[str, Any]:
        if not self._tasks or any(task.done() for task in self._tasks):
            if self._stop is not None:
                self._stop.set()
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self._stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(core.run_forever(self._stop)) for core in self.cores]
        if self._metrics_task is None or self._metrics_task.done():
            self._metrics_task = asyncio.get_running_loop().create_task(
                export_every(self.export_metrics, SYNC_INTERVAL_S)
            )
        return await self.ping()

    async def ping(self) -> dict[str, Any]:
        lanes = [core.stats for core in self.cores]
        totals = {
            name: sum(int(lane.get(name, 0)) for lane in lanes)
            for name in ("read", "applied", "duplicates", "dead_lettered", "retry_later")
        }
        return {
            **totals,
            "running": all(lane.get("running") for lane in lanes),
            "lanes": lanes,
            "uptime_s": round(time.time() - self._started_at, 3),
        }

    async def stop(self) -> dict[str, Any]:
        """Finish the current passes (at most block_ms + one apply), then stop."""
        if self._tasks and self._stop is not None:
            self._stop.set()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        return await self.ping()
