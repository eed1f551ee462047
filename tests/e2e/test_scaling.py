"""Live moves of the topology (PUT /v1/admin/topology) under traffic, on one Ray node.

A bank workload runs while the shard counts change; every acknowledged operation is in
the ledger exactly once and every balance is the sum of what was acknowledged. The
multi-node version (a node killed during a move) is tests/cluster.
"""

import asyncio
import random
import secrets
import time
from typing import Any

import httpx

from actors.routing import SLOTS

MOVE_TIMEOUT_S = 90.0
RETRY_BUDGET_S = 60.0


async def wait_for_move(client: httpx.AsyncClient, state: str | None = None) -> dict[str, Any]:
    """Until the move is over (or, with `state`, in that state)."""
    deadline = time.monotonic() + MOVE_TIMEOUT_S
    while time.monotonic() < deadline:
        view = (await client.get("/v1/admin/topology")).json()
        move = view["move"]
        if (move is None and state is None) or (move is not None and move["state"] == state):
            return dict(view)
        await asyncio.sleep(0.2)
    raise AssertionError(f"the move did not reach {state or 'its end'} in time")


async def scale(client: httpx.AsyncClient, accounts: int, rewards: int) -> dict[str, Any]:
    started = await client.put(
        "/v1/admin/topology", json={"account_shards": accounts, "reward_shards": rewards}
    )
    assert started.status_code == 202, started.text
    assert started.json()["move"]["state"] == "running"
    view = await wait_for_move(client)
    assert len(view["account_shards"]) == accounts
    assert len(view["reward_shards"]) == rewards
    for kind in ("account_shards", "reward_shards"):
        assert sum(s["slots"] for s in view[kind]) == SLOTS
        assert all(s["slots"] > 0 for s in view[kind])
    return view


class Bank:
    """Random credits and debits; every 5xx or connection error retried with its key."""

    def __init__(self, client: httpx.AsyncClient, program: str, members: int) -> None:
        self.client = client
        self.program = program
        self.members = [f"m{i}" for i in range(members)]
        self.expected = dict.fromkeys(self.members, 0)
        self.acknowledged: dict[str, set[str]] = {m: set() for m in self.members}
        self.retries = 0
        self.status_5xx = 0
        self.ops = 0

    async def one(self, rng: random.Random) -> None:
        member = rng.choice(self.members)
        kind = "credits" if rng.random() < 0.6 else "debits"
        points = rng.randint(1, 50)
        key = secrets.token_hex(8)
        url = f"/v1/programs/{self.program}/members/{member}/{kind}"
        deadline = time.monotonic() + RETRY_BUDGET_S
        while True:
            try:
                answer = await self.client.post(
                    url,
                    json={"points": points, "reason": "bank"},
                    headers={"Idempotency-Key": key},
                )
            except httpx.TransportError:
                answer = None
            if answer is not None and answer.status_code < 500:
                break
            if answer is not None:
                self.status_5xx += 1
                assert answer.headers.get("retry-after"), answer.text
            assert time.monotonic() < deadline, "an operation never got an answer"
            self.retries += 1
            await asyncio.sleep(0.05)
        self.ops += 1
        if answer.status_code == 201:
            self.expected[member] += points if kind == "credits" else -points
            self.acknowledged[member].add(answer.json()["transaction_id"])
        else:
            assert answer.json()["code"] in ("insufficient_points", "not_found"), answer.text

    async def run(self, clients: int, until: asyncio.Event) -> None:
        async def worker(seed: int) -> None:
            rng = random.Random(seed)
            while not until.is_set():
                await self.one(rng)

        await asyncio.gather(*(worker(i) for i in range(clients)))

    async def verify(self) -> None:
        for member in self.members:
            got = await self.client.get(f"/v1/programs/{self.program}/members/{member}")
            if self.expected[member] == 0 and got.status_code == 404:
                continue
            assert got.status_code == 200, got.text
            assert got.json()["balance"]["total"] == self.expected[member], member
            seen: list[str] = []
            cursor = None
            while True:
                params = {"limit": 200} | ({"cursor": cursor} if cursor else {})
                page = await self.client.get(
                    f"/v1/programs/{self.program}/members/{member}/transactions", params=params
                )
                assert page.status_code == 200, page.text
                seen += [t["transaction_id"] for t in page.json()["items"]]
                cursor = page.json()["next_cursor"]
                if not cursor:
                    break
            assert len(seen) == len(set(seen))
            assert set(seen) == self.acknowledged[member], member


async def test_scaling_up_and_down_under_traffic_loses_and_doubles_nothing(
    client: httpx.AsyncClient, program: str
) -> None:
    bank = Bank(client, program, members=40)
    stop = asyncio.Event()
    traffic = asyncio.create_task(bank.run(clients=16, until=stop))
    try:
        await asyncio.sleep(1.0)
        up = await scale(client, 4, 2)
        await asyncio.sleep(0.5)
        down = await scale(client, 2, 1)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await traffic
    print(f"bank: {bank.ops} operations, {bank.retries} retries, {bank.status_5xx} 5xx")
    assert bank.ops > 100
    await bank.verify()
    assert len(up["account_shards"]) == 4 and len(down["account_shards"]) == 2


async def test_a_bad_scale_is_refused_and_changes_nothing(client: httpx.AsyncClient) -> None:
    before = (await client.get("/v1/admin/topology")).json()
    for body in (
        {"account_shards": 0},
        {"account_shards": -1},
        {"account_shards": SLOTS + 1},
        {"reward_shards": 0},
        {"account_shards": "2"},
        {"shards": 3},
    ):
        answer = await client.put("/v1/admin/topology", json=body)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.json()["code"] == "validation_error"
    after = (await client.get("/v1/admin/topology")).json()
    assert [s["slots"] for s in after["account_shards"]] == [
        s["slots"] for s in before["account_shards"]
    ]


async def test_two_moves_at_once_one_wins_the_other_gets_409(client: httpx.AsyncClient) -> None:
    first, second = await asyncio.gather(
        client.put("/v1/admin/topology", json={"account_shards": 3}),
        client.put("/v1/admin/topology", json={"account_shards": 3}),
    )
    statuses = sorted([first.status_code, second.status_code])
    assert statuses == [202, 409], (first.text, second.text)
    loser = first if first.status_code == 409 else second
    assert loser.json()["code"] == "invalid_state"
    await wait_for_move(client)
    # The move that started is in the audit log, once; the refused one is not.
    entries = (await client.get("/v1/audit?limit=20")).json()["items"]
    started = [e for e in entries if e["action"] == "topology.put"]
    assert started and started[0]["before"]["request"] == {"account_shards": 3}
    moved = started[0]["after"]["move"]
    assert moved is None or moved["account_shards"]["to"] == 3
    assert started[0]["key_id"] == "admin" and started[0]["program_id"] is None
    await scale(client, 2, 1)


async def test_a_move_interrupted_by_crashes_is_finished_by_whoever_comes_next(
    client: httpx.AsyncClient, program: str
) -> None:
    """The coordinator and an account shard are killed while a move runs: the coordinator
    comes back (Ray restarts it; the ingress's keeper kicks it) and finishes the move."""
    import ray

    from actors.mover import COORDINATOR_NAME
    from actors.routing import NAMESPACE, shard_name

    bank = Bank(client, program, members=30)
    stop = asyncio.Event()
    traffic = asyncio.create_task(bank.run(clients=12, until=stop))
    try:
        await asyncio.sleep(0.5)
        started = await client.put("/v1/admin/topology", json={"account_shards": 5})
        assert started.status_code == 202, started.text
        ray.kill(ray.get_actor(COORDINATOR_NAME, namespace=NAMESPACE), no_restart=False)
        await asyncio.sleep(0.3)
        ray.kill(ray.get_actor(shard_name(0), namespace=NAMESPACE), no_restart=False)
        view = await wait_for_move(client)
        assert [s["slots"] > 0 for s in view["account_shards"]] == [True] * 5
        await scale(client, 2, 1)
    finally:
        stop.set()
        await traffic
    print(f"bank with kills: {bank.ops} operations, {bank.retries} retries")
    await bank.verify()


async def test_points_scale_moves_and_refuses_while_a_move_runs(
    client: httpx.AsyncClient,
) -> None:
    from typer.testing import CliRunner

    from serve_app.cli import app
    from tests.e2e.conftest import ADMIN_KEY

    runner = CliRunner()
    target = ["--url", str(client.base_url).rstrip("/"), "--key", ADMIN_KEY]
    # A move is running (started over the API, followed by nobody): the CLI is refused.
    started = await client.put("/v1/admin/topology", json={"account_shards": 3})
    assert started.status_code == 202
    refused = runner.invoke(app, ["scale", "--shards", "4", *target])
    assert refused.exit_code == 1 and "409 invalid_state" in refused.output, refused.output
    await wait_for_move(client)
    done = runner.invoke(app, ["scale", "--shards", "2", "--reward-shards", "1", *target])
    assert done.exit_code == 0, done.output
    view = (await client.get("/v1/admin/topology")).json()
    assert view["move"] is None and len(view["account_shards"]) == 2
    shown = runner.invoke(app, ["topology", *target])
    assert shown.exit_code == 0 and "512" in shown.output, shown.output


async def test_an_upgrade_with_a_canary_then_promoted_or_rolled_back_loses_nothing(
    client: httpx.AsyncClient, program: str
) -> None:
    """Shards are replaced by a new generation running the new release, slot by slot, under
    traffic: first a canary (the two versions side by side), then the rest; a second
    upgrade's canary is rolled back."""
    bank = Bank(client, program, members=30)
    stop = asyncio.Event()
    traffic = asyncio.create_task(bank.run(clients=12, until=stop))
    try:
        await asyncio.sleep(0.5)
        before = (await client.get("/v1/admin/topology")).json()
        old_version = before["account_shards"][0]["version"]
        started = await client.put(
            "/v1/admin/topology", json={"version": "e2e-v2", "canary_slots": 64}
        )
        assert started.status_code == 202, started.text
        canary = await wait_for_move(client, "canary")
        for _ in range(120):  # a new shard answers once its process is up (new runtime env)
            if all(s["version"] for s in canary["account_shards"] + canary["reward_shards"]):
                break
            await asyncio.sleep(0.5)
            canary = (await client.get("/v1/admin/topology")).json()
        rates = {v["version"]: v for v in canary["versions"]["account_shards"]}
        assert set(rates) == {old_version, "e2e-v2"}, canary
        assert rates["e2e-v2"]["slots"] == 64 and rates[old_version]["slots"] == SLOTS - 64
        assert "error_rate" in rates["e2e-v2"]
        # While paused, another move is refused; promoting goes on.
        assert (
            await client.put("/v1/admin/topology", json={"account_shards": 3})
        ).status_code == 409
        promoted = await client.put("/v1/admin/topology", json={"action": "promote"})
        assert promoted.status_code == 202, promoted.text
        upgraded = await wait_for_move(client)
        for kind in ("account_shards", "reward_shards"):
            assert {s["version"] for s in upgraded[kind]} == {"e2e-v2"}, upgraded[kind]
            old_pids = {s["pid"] for s in before[kind]}
            assert not old_pids & {s["pid"] for s in upgraded[kind]}
            assert sum(s["slots"] for s in upgraded[kind]) == SLOTS
        assert len(upgraded["account_shards"]) == len(before["account_shards"])
        # A second upgrade's canary, rolled back, with the CLI: everything on e2e-v2 again.
        from typer.testing import CliRunner

        from serve_app.cli import app
        from tests.e2e.conftest import ADMIN_KEY

        target = ["--url", str(client.base_url).rstrip("/"), "--key", ADMIN_KEY]
        runner = CliRunner()
        paused = runner.invoke(
            app, ["upgrade", "--version", "e2e-v3", "--canary-slots", "32", *target]
        )
        assert paused.exit_code == 0 and "canary paused" in paused.output, paused.output
        rolled = runner.invoke(app, ["upgrade", "--rollback", *target])
        assert rolled.exit_code == 0, rolled.output
        back = (await client.get("/v1/admin/topology")).json()
        assert back["move"] is None
        for kind in ("account_shards", "reward_shards"):
            assert {s["version"] for s in back[kind]} == {"e2e-v2"}, back[kind]
        nothing = await client.put("/v1/admin/topology", json={"action": "promote"})
        assert nothing.status_code == 409 and nothing.json()["code"] == "invalid_state"
    finally:
        stop.set()
        await traffic
    print(f"bank during upgrades: {bank.ops} operations, {bank.retries} retries")
    await bank.verify()


async def test_canary_fields_are_checked(client: httpx.AsyncClient) -> None:
    for body in (
        {"canary_slots": 8},
        {"action": "promote", "account_shards": 2},
        {"action": "sideways"},
        {"version": ""},
        {"version": "v 2"},
    ):
        answer = await client.put("/v1/admin/topology", json=body)
        assert answer.status_code == 422, (body, answer.text)


async def test_a_redeploy_rolls_the_ingress_replicas_under_traffic(
    client: httpx.AsyncClient, program: str, service: Any
) -> None:
    """New code for the ingress: Serve replaces its replicas (a rolling update) while the
    bank workload runs; nothing is lost or doubled, and what clients saw is counted."""
    from serve_app import runtime

    before = (await client.get("/healthz")).json()["version"]
    bank = Bank(client, program, members=30)
    stop = asyncio.Event()
    traffic = asyncio.create_task(bank.run(clients=12, until=stop))
    try:
        await asyncio.sleep(0.5)
        await asyncio.to_thread(
            runtime.deploy,
            service.settings,
            service.database_url,
            service.redis_url,
            "e2e-ingress-2",
        )
        for _ in range(100):
            if (await client.get("/healthz")).json()["version"] == "e2e-ingress-2":
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await traffic
    assert before != "e2e-ingress-2"
    assert (await client.get("/healthz")).json()["version"] == "e2e-ingress-2"
    print(
        f"bank during a rolling update of the ingress: {bank.ops} operations,"
        f" {bank.retries} retries ({bank.status_5xx} answered 5xx)"
    )
    await bank.verify()
