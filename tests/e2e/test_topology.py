"""GET /v1/admin/topology: every slot owned once, each shard placed on a live node."""

import httpx

from actors.routing import SLOTS


async def test_topology_shows_slots_per_shard_and_where_each_runs(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v1/admin/topology")
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["slots"] == SLOTS and view["move"] is None
    accounts, rewards = view["account_shards"], view["reward_shards"]
    # The e2e service runs 2 account shards and 1 reward shard (tests/e2e/conftest.py; the
    # scaling tests that run before this one move back to those counts).
    assert len(accounts) == 2 and len(rewards) == 1
    assert sum(s["slots"] for s in accounts) == SLOTS
    assert sum(s["slots"] for s in rewards) == SLOTS
    for shard in accounts + rewards:
        assert shard["node_id"] and shard["node_ip"] and shard["pid"] > 0
    # Every shard appears under exactly the node it runs on.
    held = {
        (kind, index)
        for node in view["nodes"]
        for kind in ("account_shards", "reward_shards")
        for index in node[kind]
    }
    assert held == {("account_shards", s["index"]) for s in accounts} | {
        ("reward_shards", s["index"]) for s in rewards
    }
    assert {n["node_id"] for n in view["nodes"]} == {s["node_id"] for s in accounts + rewards}


async def test_topology_needs_a_key(client: httpx.AsyncClient) -> None:
    anonymous = await client.get("/v1/admin/topology", headers={"Authorization": ""})
    assert anonymous.status_code == 401
