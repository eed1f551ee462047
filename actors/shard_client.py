"""The ingress side of the shards: routing, call batching and retries.

Contract: `submit(command)` / `enqueue(command)` take a typed command
(`actors.protocol`) and answer its `Outcome`; a shard that cannot be reached within the
retry budget answers `unavailable` (retry with the same key), never an exception.

A Ray actor call costs far more CPU than applying a debit, so the ingress does not make one
call per HTTP request. Requests for a shard queue up while that shard's previous call is in
flight and go together in the next `submit_many` call (the same natural batching the shard
does for PostgreSQL). Inside the shard they land in the same group commit.

A call that fails because the shard died or is restarting is retried with the very same
requests: each carries its idempotency key, so a retry can never apply twice.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from actors.protocol import (
    AccountCommand,
    Outcome,
    RewardCommand,
    command_to_wire,
    outcome_from_wire,
)
from actors.routing import shard_of
from domain.errors import Code

log = logging.getLogger("points.shard_client")

ACTOR_ERRORS = (ActorDiedError, ActorUnavailableError, RayActorError)
# Requests per call; a shard splits them into group commits of its own size anyway.
CALL_REQUESTS_MAX = 2048
# Calls in flight per shard from one ingress replica. One: requests that arrive while it is
# out travel together in the next call, so Ray's per-call cost is shared by more requests
# (measured here: less shard CPU per debit and more debits/s than with two).
CALLS_IN_FLIGHT_MAX = 1
RETRY_BUDGET_S = 8.0
CALL_TIMEOUT_S = 20.0


Command = AccountCommand | RewardCommand


def unavailable(detail: str) -> Outcome:
    return Outcome.refused(Code.UNAVAILABLE, detail)


@dataclass(slots=True)
class _Pending:
    command: Command
    future: asyncio.Future[Outcome]
    deadline: float


class _ShardLane:
    """Queue and in-flight calls towards one shard."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.queue: list[_Pending] = []
        self.in_flight = 0


class ShardClient:
    """`route_field`: the request field that, with `program_id`, picks the shard
    (`member_id` for account shards, `reward_id` for reward shards)."""

    def __init__(
        self,
        handles: list[Any],
        route_field: str = "member_id",
        calls_in_flight: int = CALLS_IN_FLIGHT_MAX,
    ) -> None:
        assert handles and calls_in_flight >= 1
        self.lanes = [_ShardLane(h) for h in handles]
        self.route_field = route_field
        self.calls_in_flight = calls_in_flight

    def lane_for(self, program_id: str, member_id: str) -> _ShardLane:
        return self.lanes[shard_of(program_id, member_id, len(self.lanes))]

    async def submit(self, command: Command) -> Outcome:
        return await self.enqueue(command)

    def enqueue(self, command: Command) -> asyncio.Future[Outcome]:
        """Queue one command; the future gets its outcome (many at once cost no Task each)."""
        loop = asyncio.get_running_loop()
        lane = self.lane_for(command.program_id, getattr(command, self.route_field))
        pending = _Pending(command, loop.create_future(), loop.time() + RETRY_BUDGET_S)
        lane.queue.append(pending)
        self._pump(lane)
        return pending.future

    def _pump(self, lane: _ShardLane) -> None:
        while lane.queue and lane.in_flight < self.calls_in_flight:
            batch = lane.queue[:CALL_REQUESTS_MAX]
            del lane.queue[:CALL_REQUESTS_MAX]
            lane.in_flight += 1
            asyncio.get_running_loop().create_task(self._call(lane, batch))

    async def _call(self, lane: _ShardLane, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await asyncio.wait_for(
                lane.handle.submit_many.remote([command_to_wire(p.command) for p in batch]),
                CALL_TIMEOUT_S,
            )
        except ACTOR_ERRORS as exc:
            retry = []
            for p in batch:
                if loop.time() < p.deadline:
                    retry.append(p)
                elif not p.future.done():
                    p.future.set_result(unavailable(f"shard unavailable: {exc!r}"[:300]))
            if retry:
                await asyncio.sleep(0.1)
                lane.queue[:0] = retry
        except Exception as exc:  # timeout or anything unexpected: let the client retry
            if not isinstance(exc, TimeoutError):
                log.exception("shard call failed")
            for p in batch:
                if not p.future.done():
                    p.future.set_result(unavailable(f"shard call failed: {exc!r}"[:300]))
        else:
            assert len(results) == len(batch)
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(outcome_from_wire(result))
        finally:
            lane.in_flight -= 1
            self._pump(lane)

    async def call(self, program_id: str, member_id: str, method: str, *args: Any) -> Any:
        """A single call (reads), retried while the shard restarts. Raises on timeout."""
        lane = self.lane_for(program_id, member_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_BUDGET_S
        delay_s = 0.05
        while True:
            try:
                return await asyncio.wait_for(
                    getattr(lane.handle, method).remote(*args), CALL_TIMEOUT_S
                )
            except ACTOR_ERRORS:
                if loop.time() + delay_s > deadline:
                    raise
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 1.0)
