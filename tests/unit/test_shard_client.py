"""ShardClient: call batching per shard and retries, with an in-process stand-in actor."""

import asyncio
from typing import Any

import pytest
from ray.exceptions import ActorUnavailableError

from actors import shard_client
from actors.protocol import Debit, Outcome, Wire, command_from_wire, outcome_to_wire
from actors.shard_client import ShardClient
from domain.errors import Code


class _Method:
    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def remote(self, *args: Any) -> Any:
        return asyncio.ensure_future(self._fn(*args))


class StandInShard:
    """Answers like an AccountShard; can fail its next N calls as a restarting actor does."""

    def __init__(self, failures: int = 0) -> None:
        self.calls: list[int] = []
        self.failures = failures
        self.submit_many = _Method(self._submit_many)

    async def _submit_many(self, wires: list[Wire]) -> list[Wire]:
        requests = [command_from_wire(w) for w in wires]
        await asyncio.sleep(0.01)  # a commit takes a while; more requests queue meanwhile
        if self.failures:
            self.failures -= 1
            raise ActorUnavailableError("restarting", None)
        self.calls.append(len(requests))
        return [outcome_to_wire(Outcome.created({"key": r.key})) for r in requests]


def request(i: int) -> Debit:
    return Debit(program_id="p", member_id="m", key=f"k{i}", points=1, reason="r")


async def test_requests_queue_while_a_call_is_in_flight_and_travel_together() -> None:
    shard = StandInShard()
    client = ShardClient([shard])
    results = await asyncio.gather(*(client.submit(request(i)) for i in range(100)))
    assert [r.body["key"] for r in results] == [f"k{i}" for i in range(100)]
    assert sum(shard.calls) == 100
    assert len(shard.calls) < 100  # batched, not one Ray call per request


async def test_a_restarting_shard_is_retried_with_the_same_requests() -> None:
    shard = StandInShard(failures=2)
    client = ShardClient([shard])
    results = await asyncio.gather(*(client.submit(request(i)) for i in range(10)))
    assert {r.code for r in results} == {Code.CREATED}
    assert sum(shard.calls) == 10


async def test_past_the_retry_budget_the_answer_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shard_client, "RETRY_BUDGET_S", 0.05)
    client = ShardClient([StandInShard(failures=1000)])
    result = await client.submit(request(1))
    assert result.code is Code.UNAVAILABLE and "unavailable" in result.detail


async def test_past_the_lane_bound_requests_are_answered_unavailable_at_once() -> None:
    shard = StandInShard()
    client = ShardClient([shard], lane_queued_max=10)
    futures = [client.enqueue(request(i)) for i in range(30)]
    # The first request went out in a call at once; ten wait; the rest are refused now.
    refused = [f for f in futures if f.done()]
    assert len(refused) == 19 and client.shed == 19
    assert all(f.result().code is Code.UNAVAILABLE for f in refused)
    assert "overloaded" in refused[0].result().detail
    accepted = await asyncio.gather(*(f for f in futures if f not in refused))
    assert [r.code for r in accepted] == [Code.CREATED] * 11
