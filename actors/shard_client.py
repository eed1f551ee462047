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

Which shard owns a request's slot comes from a router (actors/routers.py), which follows
the map a move changes. While a slot is being handed off the request is held here, and a
request a shard answers `moved` (not its slot: nothing was applied) is sent again to the
slot's owner; both within the same retry budget, after which it answers `unavailable`.

Every lane is bounded (`lane_queued_max` requests waiting to be sent): past it a request
is answered `unavailable` at once (the edge renders 503 with Retry-After). A lane only
grows when its shard answers slower than requests arrive, and then waiting longer helps
nobody: it turns into timeouts for everyone behind. Shedding the excess keeps the wait of
the requests accepted bounded by about `lane_queued_max / CALL_REQUESTS_MAX` shard calls.
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
from actors.routers import Router, StaticRouter
from actors.routing import slot_of
from actors.topology import SlotMoved
from actors.tracing import request_id
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
# A request whose slot is being handed off (or was answered `moved`) asks again this soon.
HOLD_S = 0.02
# Requests waiting to be sent to one shard, at most (serve_app/settings.py:
# lane_queued_max): four full calls. A replica holds at most Serve's max_ongoing_requests
# (2,000) HTTP requests, and one events batch carries up to 1,000 commands, so the spread
# debits, flash sale and events benches (4 batches of 1,000 in flight) stay well inside;
# measured lane peaks (`lanes` in /readyz) were 25-28 with 16 clients and 102 with 300.
LANE_QUEUED_MAX = 4 * CALL_REQUESTS_MAX


Command = AccountCommand | RewardCommand


def unavailable(detail: str) -> Outcome:
    return Outcome.refused(Code.UNAVAILABLE, detail)


@dataclass(slots=True)
class _Pending:
    command: Command
    future: asyncio.Future[Outcome]
    deadline: float
    slot: int
    # The request it serves (actors/tracing.py), handed to the shard with the command.
    request_id: str = ""


class _ShardLane:
    """Queue and in-flight calls towards one shard."""

    def __init__(self, shard: int, handle: Any) -> None:
        self.shard = shard
        self.handle = handle
        self.queue: list[_Pending] = []
        self.in_flight = 0


class ShardClient:
    """`route_field`: the request field that, with `program_id`, picks the slot
    (`member_id` for account shards, `reward_id` for reward shards); `router` (or a fixed
    list of handles) says which shard owns the slot."""

    def __init__(
        self,
        router: Router | list[Any],
        route_field: str = "member_id",
        calls_in_flight: int = CALLS_IN_FLIGHT_MAX,
        lane_queued_max: int = LANE_QUEUED_MAX,
    ) -> None:
        assert router and calls_in_flight >= 1 and lane_queued_max >= 1
        self.router: Router = StaticRouter(router) if isinstance(router, list) else router
        self.lanes: dict[int, _ShardLane] = {}
        self.route_field = route_field
        self.calls_in_flight = calls_in_flight
        self.lane_queued_max = lane_queued_max
        self.shed = 0  # requests answered `unavailable` because their lane was full
        self.queued_peak = 0  # the longest any lane has been (what the bound is set against)

    def _lane(self, shard: int) -> _ShardLane:
        lane = self.lanes.get(shard)
        if lane is None:
            lane = self.lanes[shard] = _ShardLane(shard, self.router.handle(shard))
        return lane

    async def submit(self, command: Command) -> Outcome:
        return await self.enqueue(command)

    def enqueue(self, command: Command) -> asyncio.Future[Outcome]:
        """Queue one command; the future gets its outcome (many at once cost no Task each)."""
        loop = asyncio.get_running_loop()
        slot = slot_of(command.program_id, getattr(command, self.route_field))
        pending = _Pending(
            command, loop.create_future(), loop.time() + RETRY_BUDGET_S, slot, request_id()
        )
        self._route(pending)
        return pending.future

    def _route(self, pending: _Pending) -> None:
        """Queue towards the slot's owner; hold (ask again in HOLD_S) while it has none."""
        if pending.future.done():
            return
        loop = asyncio.get_running_loop()
        owner = self.router.owner(pending.slot)
        lane = None
        if owner is not None:
            try:
                lane = self._lane(owner)
            except Exception as exc:  # not created yet (a move is adding it): hold
                log.debug("shard %s not found: %r", owner, exc)
        if lane is None:
            if loop.time() >= pending.deadline:
                pending.future.set_result(unavailable("the account's slot is moving, retry"))
            else:
                loop.call_later(HOLD_S, self._route, pending)
            return
        if len(lane.queue) >= self.lane_queued_max:
            self.shed += 1
            pending.future.set_result(
                unavailable(f"shard {lane.shard} overloaded ({len(lane.queue)} waiting), retry")
            )
            return
        lane.queue.append(pending)
        if len(lane.queue) > self.queued_peak:
            self.queued_peak = len(lane.queue)
        self._pump(lane)

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
                lane.handle.submit_many.remote(
                    [command_to_wire(p.command, p.request_id) for p in batch]
                ),
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
                # The shard may have been retired (its slots moved) or created anew: ask
                # the router again, for the owner and for a fresh handle.
                self.router.forget_handle(lane.shard)
                self.lanes.pop(lane.shard, None)
                self.router.stale()
                for p in retry:
                    self._route(p)
        except Exception as exc:  # timeout or anything unexpected: let the client retry
            if not isinstance(exc, TimeoutError):
                log.exception("shard call failed")
            for p in batch:
                if not p.future.done():
                    p.future.set_result(unavailable(f"shard call failed: {exc!r}"[:300]))
        else:
            assert len(results) == len(batch)
            moved = False
            for p, result in zip(batch, results, strict=True):
                if p.future.done():
                    continue
                outcome = outcome_from_wire(result)
                if outcome.code is Code.MOVED:  # not applied: resend to the slot's owner
                    moved = True
                    if loop.time() < p.deadline:
                        loop.call_later(HOLD_S, self._route, p)
                    else:
                        p.future.set_result(unavailable("the slot moved, retry"))
                else:
                    p.future.set_result(outcome)
            if moved:
                self.router.stale()
        finally:
            lane.in_flight -= 1
            self._pump(lane)

    async def call(self, program_id: str, member_id: str, method: str, *args: Any) -> Any:
        """A single call (reads) to the owner of the slot, retried while the shard restarts
        or the slot moves. Raises on timeout (TimeoutError, or the last actor error)."""
        slot = slot_of(program_id, member_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_BUDGET_S
        delay_s = 0.02
        while True:
            owner = self.router.owner(slot)
            try:
                if owner is None:
                    raise SlotMoved(f"slot {slot} is moving")
                handle = self._lane(owner).handle
                return await asyncio.wait_for(getattr(handle, method).remote(*args), CALL_TIMEOUT_S)
            except (*ACTOR_ERRORS, SlotMoved, ValueError) as exc:
                # ValueError: the owner's actor is not created yet (a move is adding it).
                if loop.time() + delay_s > deadline:
                    if isinstance(exc, SlotMoved | ValueError):
                        raise TimeoutError(f"slot {slot} has no owner that answers") from exc
                    raise
                if owner is not None and not isinstance(exc, SlotMoved):
                    self.router.forget_handle(owner)
                    self.lanes.pop(owner, None)
                self.router.stale()
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 0.5)
