"""Applying business events through the account shards: one path for the HTTP batch
endpoint and the Redis stream consumer.

`EventApplier` validates each raw event (domain.events.parse_event), turns it into a shard
command keyed by its event id (`ApplyEvent`), sends all of them through a ShardClient (which
batches them per shard into few Ray calls) and answers one `Outcome` per event, in order.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from actors.protocol import ApplyEvent, Outcome
from actors.routers import TopologyRouter
from actors.routing import shard_name
from actors.shard_client import ShardClient
from domain.errors import PointsError
from domain.events import event_json, parse_event
from domain.idempotency import request_hash


def event_command(program_id: str, raw: Any, dry_run: bool, now: datetime) -> ApplyEvent:
    """Validate one event body into a shard command (raises validation_error)."""
    event = parse_event(raw, now)
    canonical = event_json(event)
    command = ApplyEvent(
        program_id=program_id,
        member_id=event.member_id,
        event=event,
        # The event id deduplicates (scoped to the program; a reuse for another member is
        # refused as a conflict by the shard). The space keeps these keys apart from every
        # client Idempotency-Key (visible ASCII only, no space).
        key=f"event {event.event_id}",
        request_hash=request_hash("event", {"program_id": program_id, **canonical}),
        dry_run=dry_run,
    )
    assert command.key and command.member_id == event.member_id
    return command


class EventApplier:
    def __init__(self, client: ShardClient) -> None:
        self.client = client

    async def __call__(
        self, program_id: str, events: list[Any], dry_run: bool = False
    ) -> list[Outcome]:
        """One outcome per event, in order."""
        now = datetime.now(UTC)
        results: list[Outcome | None] = [None] * len(events)
        calls: list[tuple[int, Any]] = []
        for index, raw in enumerate(events):
            try:
                command = event_command(program_id, raw, dry_run, now)
            except PointsError as exc:
                results[index] = Outcome.of_error(exc)
                continue
            calls.append((index, self.client.enqueue(command)))
        answers = await asyncio.gather(*(call for _, call in calls))
        for (index, _), answer in zip(calls, answers, strict=True):
            results[index] = answer
        done = [result for result in results if result is not None]
        assert len(done) == len(events)
        return done


class ShardApplierFactory:
    """Picklable: builds an EventApplier inside another actor (the stream consumer) that
    routes by the slot map in PostgreSQL (`dsn`) to the account shards, found by name."""

    def __init__(self, dsn: str) -> None:
        assert dsn
        self.dsn = dsn

    def __call__(self) -> EventApplier:
        return EventApplier(ShardClient(TopologyRouter("account", self.dsn, shard_name)))
