"""Rewards and redemptions through HTTP: the catalogue, racing redemptions (stock, points,
per-member limits), webhooks (signed; down), cancellation, crashes between saga steps, a
database outage, and bad input."""

import asyncio
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from aiohttp import web

from domain.webhooks import SIGNATURE_HEADER, verify
from tests.e2e.conftest import WEBHOOK_SECRET, Service
from tests.e2e.test_api import assert_books_balance, balance, credit, key, scalar


async def put_reward(client: httpx.AsyncClient, program: str, reward: str, **fields: Any) -> Any:
    body = {"name": reward.title(), "cost_points": 100, "stock": 10, **fields}
    response = await client.put(f"/v1/programs/{program}/rewards/{reward}", json=body)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def redeem(
    client: httpx.AsyncClient,
    program: str,
    member: str,
    reward: str,
    idem: str | None = None,
    quantity: int = 1,
) -> httpx.Response:
    return await client.post(
        f"/v1/programs/{program}/redemptions",
        json={"member_id": member, "reward_id": reward, "quantity": quantity},
        headers={"Idempotency-Key": idem or secrets.token_hex(12)},
    )


async def reward_state(client: httpx.AsyncClient, program: str, reward: str) -> tuple[int, ...]:
    response = await client.get(f"/v1/programs/{program}/rewards/{reward}")
    assert response.status_code == 200, response.text
    body = response.json()
    return body["stock"], body["reserved"], body["redeemed"]


async def wait_for_status(
    client: httpx.AsyncClient, program: str, rid: str, wanted: set[str], timeout_s: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        response = await client.get(f"/v1/programs/{program}/redemptions/{rid}")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in wanted or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.1)


async def test_catalogue_redeem_restock_cancel_walk_through(
    client: httpx.AsyncClient, service: Service, program: str
) -> None:
    created = await client.put(
        f"/v1/programs/{program}/rewards/mug",
        json={"name": "Mug", "cost_points": 150, "stock": 2, "per_member_limit": 5},
    )
    assert created.status_code == 201, created.text
    assert created.json()["stock"] == 2 and created.json()["fulfillment"] == {"type": "none"}
    updated = await client.put(
        f"/v1/programs/{program}/rewards/mug",
        json={"name": "Big mug", "cost_points": 150, "stock": 2, "per_member_limit": 5},
    )
    assert updated.status_code == 200 and updated.json()["name"] == "Big mug"
    await put_reward(client, program, "tee", stock=None)
    listed = await client.get(f"/v1/programs/{program}/rewards", params={"limit": 1})
    assert [r["reward_id"] for r in listed.json()["items"]] == ["mug"]
    page2 = await client.get(
        f"/v1/programs/{program}/rewards", params={"cursor": listed.json()["next_cursor"]}
    )
    assert [r["reward_id"] for r in page2.json()["items"]] == ["tee"]

    await credit(client, program, "ann", 400)
    first = await redeem(client, program, "ann", "mug", "r-1")
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["status"] == "completed" and body["points_spent"] == 150
    assert body["balance_after"] == 250
    replay = await redeem(client, program, "ann", "mug", "r-1")
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["id"] == body["id"]
    conflict = await redeem(client, program, "ann", "tee", "r-1")
    assert conflict.status_code == 409 and conflict.json()["code"] == "idempotency_conflict"
    assert await reward_state(client, program, "mug") == (1, 0, 1)

    restock_key = {"Idempotency-Key": "restock-1"}
    url = f"/v1/programs/{program}/rewards/mug/restock"
    restocked = await client.post(url, json={"quantity": 3}, headers=restock_key)
    assert restocked.status_code == 201 and restocked.json()["stocked_after"] == 5
    again = await client.post(url, json={"quantity": 3}, headers=restock_key)
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert await reward_state(client, program, "mug") == (4, 0, 1)
    missing_key = await client.post(url, json={"quantity": 3})
    assert missing_key.status_code == 400

    fetched = await client.get(f"/v1/programs/{program}/redemptions/{body['id']}")
    assert fetched.json()["status"] == "completed"
    mine = await client.get(f"/v1/programs/{program}/members/ann/redemptions")
    assert [r["id"] for r in mine.json()["items"]] == [body["id"]]

    cancel_url = f"/v1/programs/{program}/redemptions/{body['id']}/cancel"
    cancelled = await client.post(cancel_url)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["points_spent"] == 0
    assert (await client.post(cancel_url)).status_code == 200  # idempotent
    assert await balance(client, program, "ann") == 400
    assert await reward_state(client, program, "mug") == (5, 0, 0)
    history = await client.get(f"/v1/programs/{program}/members/ann/transactions")
    assert [t["type"] for t in history.json()["items"]] == ["refund", "debit", "credit"]
    assert_books_balance(service, program)


async def test_more_redemptions_than_stock_sell_exactly_the_stock(
    client: httpx.AsyncClient, service: Service, program: str
) -> None:
    await put_reward(client, program, "flash", stock=20, cost_points=10)
    members = [f"f{i}" for i in range(60)]
    await asyncio.gather(*(credit(client, program, m, 10) for m in members))
    responses = await asyncio.gather(*(redeem(client, program, m, "flash") for m in members))
    codes = Counter(r.status_code if r.status_code == 201 else r.json()["code"] for r in responses)
    assert codes == {201: 20, "out_of_stock": 40}
    assert await reward_state(client, program, "flash") == (0, 0, 20)
    spent = scalar(
        service,
        "SELECT count(*) FROM transactions WHERE program_id=%s AND kind='debit'",
        program,
    )
    assert spent == 20  # the 40 refused never reached an account
    assert_books_balance(service, program)


async def test_more_cost_than_points_and_per_member_limit_under_concurrency(
    client: httpx.AsyncClient, service: Service, program: str
) -> None:
    await put_reward(client, program, "pricey", stock=100, cost_points=100)
    await credit(client, program, "bea", 250)
    responses = await asyncio.gather(*(redeem(client, program, "bea", "pricey") for _ in range(10)))
    codes = Counter(r.status_code if r.status_code == 201 else r.json()["code"] for r in responses)
    assert codes == {201: 2, "insufficient_points": 8}
    assert await balance(client, program, "bea") == 50
    assert await reward_state(client, program, "pricey") == (98, 0, 2)

    await put_reward(client, program, "limited", stock=100, cost_points=1, per_member_limit=2)
    await credit(client, program, "cal", 1000)
    responses = await asyncio.gather(
        *(redeem(client, program, "cal", "limited") for _ in range(10))
    )
    codes = Counter(r.status_code if r.status_code == 201 else r.json()["code"] for r in responses)
    assert codes == {201: 2, "limit_exceeded": 8}
    two_at_once = await redeem(client, program, "dee", "limited", quantity=3)
    assert two_at_once.status_code == 409 and two_at_once.json()["code"] == "limit_exceeded"
    ghost = await redeem(client, program, "nobody", "pricey")
    assert ghost.status_code == 404
    unknown_reward = await redeem(client, program, "cal", "nothing")
    assert unknown_reward.status_code == 404
    await put_reward(client, program, "off", active=False)
    inactive = await redeem(client, program, "cal", "off")
    assert inactive.status_code == 409 and inactive.json()["code"] == "reward_inactive"
    assert_books_balance(service, program)


@pytest.fixture
async def webhook_receiver() -> AsyncIterator[dict[str, Any]]:
    """A local fulfilment endpoint that checks signatures; `mode` picks its answer."""
    state: dict[str, Any] = {"mode": "ok", "received": [], "bad_signatures": 0}

    async def handle(request: web.Request) -> web.Response:
        raw = await request.read()
        header = request.headers.get(SIGNATURE_HEADER, "")
        if not verify(WEBHOOK_SECRET.encode(), header, raw, int(time.time())):
            state["bad_signatures"] += 1
            return web.Response(status=401)
        state["received"].append((request.headers.get("Idempotency-Key"), raw))
        return web.Response(status=200 if state["mode"] == "ok" else 500)

    app = web.Application()
    app.router.add_post("/fulfil", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state["url"] = f"http://127.0.0.1:{port}/fulfil"
    yield state
    await runner.cleanup()


async def test_webhook_fulfilment_signed_then_down(
    client: httpx.AsyncClient, service: Service, program: str, webhook_receiver: dict[str, Any]
) -> None:
    fulfillment = {"type": "webhook", "url": webhook_receiver["url"]}
    await put_reward(client, program, "gift", stock=5, fulfillment=fulfillment)
    await credit(client, program, "eve", 1000)

    ok = await redeem(client, program, "eve", "gift")
    assert ok.status_code == 201 and ok.json()["status"] == "pending_fulfillment"
    done = await wait_for_status(client, program, ok.json()["id"], {"completed", "failed"})
    assert done["status"] == "completed"
    assert webhook_receiver["bad_signatures"] == 0
    assert webhook_receiver["received"][0][0] == ok.json()["id"]

    webhook_receiver["mode"] = "down"
    down = await redeem(client, program, "eve", "gift")
    assert down.status_code == 201 and down.json()["status"] == "pending_fulfillment"
    failed = await wait_for_status(client, program, down.json()["id"], {"completed", "failed"})
    assert failed["status"] == "failed"
    assert failed["failure"]["code"] == "fulfillment_failed"
    assert "HTTP 500" in failed["failure"]["detail"]
    assert await balance(client, program, "eve") == 900  # the failed one was refunded
    assert await reward_state(client, program, "gift") == (4, 0, 1)
    cancel = await client.post(f"/v1/programs/{program}/redemptions/{failed['id']}/cancel")
    assert cancel.status_code == 409 and cancel.json()["code"] == "invalid_state"
    assert_books_balance(service, program)


async def test_actors_killed_between_saga_steps_every_redemption_ends_consistent(
    client: httpx.AsyncClient, service: Service, program: str
) -> None:
    import ray

    from actors.routing import NAMESPACE, reward_shard_name, shard_name

    await put_reward(client, program, "hot", stock=150, cost_points=5)
    members = [f"h{i}" for i in range(200)]
    await asyncio.gather(*(credit(client, program, m, 5) for m in members))
    answers: dict[str, int] = {}

    async def redeem_until_answered(member: str) -> None:
        idem = f"kill-{member}"
        for _attempt in range(80):
            try:
                response = await redeem(client, program, member, "hot", idem)
            except httpx.TransportError:
                await asyncio.sleep(0.2)
                continue
            if response.status_code != 503:
                answers[member] = response.status_code
                return
            await asyncio.sleep(0.2)

    async def kill() -> None:
        await asyncio.sleep(0.3)
        ray.kill(ray.get_actor(reward_shard_name(0), namespace=NAMESPACE), no_restart=False)
        await asyncio.sleep(0.3)
        for index in range(2):
            ray.kill(ray.get_actor(shard_name(index), namespace=NAMESPACE), no_restart=False)

    semaphore = asyncio.Semaphore(40)

    async def bounded(member: str) -> None:
        async with semaphore:
            await redeem_until_answered(member)

    await asyncio.gather(kill(), *(bounded(m) for m in members))
    assert len(answers) == len(members)
    assert Counter(answers.values()) == {201: 150, 409: 50}
    # Recovery has nothing left half-way, and the books agree with the answers.
    deadline = time.monotonic() + 30
    while (
        scalar(
            service,
            "SELECT count(*) FROM redemptions WHERE program_id=%s"
            " AND status NOT IN ('completed', 'failed', 'cancelled')",
            program,
        )
        and time.monotonic() < deadline
    ):
        await asyncio.sleep(0.2)
    assert await reward_state(client, program, "hot") == (0, 0, 150)
    paid = scalar(
        service,
        "SELECT count(*) FROM transactions WHERE program_id=%s AND kind='debit'",
        program,
    )
    assert paid == 150
    assert_books_balance(service, program)


async def test_database_outage_mid_sale_then_recovery(
    client: httpx.AsyncClient, service: Service, program: str
) -> None:
    """Every connection to the database is cut in the middle of a sale (what a restart looks
    like from the service): answers are 201, 409 or a retryable 503, never a wrong one, and
    retries with the same keys settle everything exactly once."""
    await put_reward(client, program, "outage", stock=40, cost_points=3)
    members = [f"o{i}" for i in range(80)]
    await asyncio.gather(*(credit(client, program, m, 3) for m in members))
    final: dict[str, int] = {}

    async def redeem_until_answered(member: str) -> None:
        for _attempt in range(80):
            response = await redeem(client, program, member, "outage", f"out-{member}")
            assert response.status_code in (201, 409, 503), response.text
            if response.status_code != 503:
                final[member] = response.status_code
                return
            await asyncio.sleep(0.2)

    async def cut() -> None:
        await asyncio.sleep(0.2)
        with psycopg.connect(service.database_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

    await asyncio.gather(cut(), *(redeem_until_answered(m) for m in members))
    assert Counter(final.values()) == {201: 40, 409: 40}
    assert await reward_state(client, program, "outage") == (0, 0, 40)
    assert_books_balance(service, program)


BAD_REDEMPTIONS: list[tuple[str, Any]] = [
    # 1.0 is the integer 1 (JSON has one number type); 1.5 is no quantity.
    ("quantity as float", {"member_id": "zed", "reward_id": "bad", "quantity": 1.5}),
    ("quantity as string", {"member_id": "zed", "reward_id": "bad", "quantity": "1"}),
    ("quantity zero", {"member_id": "zed", "reward_id": "bad", "quantity": 0}),
    ("quantity huge", {"member_id": "zed", "reward_id": "bad", "quantity": 10**9}),
    ("missing reward", {"member_id": "zed"}),
    ("bad member id", {"member_id": "a b", "reward_id": "bad"}),
    ("unknown field", {"member_id": "zed", "reward_id": "bad", "points": 1}),
    ("not an object", [1, 2]),
]


@pytest.mark.parametrize(("case", "body"), BAD_REDEMPTIONS, ids=[c for c, _ in BAD_REDEMPTIONS])
async def test_bad_redemptions_are_4xx_and_change_nothing(
    client: httpx.AsyncClient, service: Service, program: str, case: str, body: Any
) -> None:
    await put_reward(client, program, "bad", stock=5, cost_points=1)
    await credit(client, program, "zed", 10)
    response = await client.post(f"/v1/programs/{program}/redemptions", json=body, headers=key())
    assert 400 <= response.status_code < 500, (case, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await reward_state(client, program, "bad") == (5, 0, 0)
    assert await balance(client, program, "zed") == 10


BAD_REWARDS: list[tuple[str, Any]] = [
    ("cost zero", {"name": "x", "cost_points": 0, "stock": 1}),
    ("cost float", {"name": "x", "cost_points": 1.5, "stock": 1}),
    ("negative stock", {"name": "x", "cost_points": 1, "stock": -1}),
    ("no stock field", {"name": "x", "cost_points": 1}),
    ("limit zero", {"name": "x", "cost_points": 1, "stock": 1, "per_member_limit": 0}),
    (
        "webhook ftp",
        {
            "name": "x",
            "cost_points": 1,
            "stock": 1,
            "fulfillment": {"type": "webhook", "url": "ftp://example.com/x"},
        },
    ),
    (
        "unknown fulfilment",
        {"name": "x", "cost_points": 1, "stock": 1, "fulfillment": {"type": "email"}},
    ),
    ("empty name", {"name": "", "cost_points": 1, "stock": 1}),
]


@pytest.mark.parametrize(("case", "body"), BAD_REWARDS, ids=[c for c, _ in BAD_REWARDS])
async def test_bad_rewards_are_4xx_and_change_nothing(
    client: httpx.AsyncClient, program: str, case: str, body: Any
) -> None:
    response = await client.put(f"/v1/programs/{program}/rewards/thing", json=body)
    assert response.status_code == 422, (case, response.text)
    assert (await client.get(f"/v1/programs/{program}/rewards/thing")).status_code == 404


async def test_stock_below_units_out_and_unknown_program_are_refused(
    client: httpx.AsyncClient, program: str
) -> None:
    await put_reward(client, program, "few", stock=3, cost_points=1)
    await credit(client, program, "ida", 10)
    assert (await redeem(client, program, "ida", "few", quantity=2)).status_code == 201
    lowered = await client.put(
        f"/v1/programs/{program}/rewards/few", json={"name": "x", "cost_points": 1, "stock": 1}
    )
    # Valid on its own, refused by the reward's state (2 units out): 409 invalid_state.
    assert lowered.status_code == 409 and lowered.json()["code"] == "invalid_state"
    assert await reward_state(client, program, "few") == (1, 0, 2)
    nowhere = await client.put(
        "/v1/programs/no-such-program/rewards/few",
        json={"name": "x", "cost_points": 1, "stock": 1},
    )
    assert nowhere.status_code == 404
