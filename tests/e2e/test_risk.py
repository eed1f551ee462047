"""Risk control through HTTP: velocity limits under 50 concurrent redemptions (exactly the
allowed number succeed), and reviews approved and rejected under retries (concurrent
duplicate approves; nothing doubled; balances and stock right)."""

import asyncio
import secrets
from collections import Counter
from typing import Any

import httpx

from tests.e2e.conftest import Service
from tests.e2e.test_api import assert_books_balance, balance, credit, key
from tests.e2e.test_rewards import put_reward, redeem, reward_state, wait_for_status


async def risk_program(client: httpx.AsyncClient, risk: dict[str, Any]) -> str:
    program_id = f"risk-{secrets.token_hex(4)}"
    response = await client.put(
        f"/v1/programs/{program_id}", json={"name": "Risk", "policy": {"risk": risk}}
    )
    assert response.status_code == 201, response.text
    assert response.json()["policy"]["risk"]["redemptions_per_hour"] == risk.get(
        "redemptions_per_hour"
    )
    return program_id


async def test_fifty_concurrent_redemptions_exactly_the_allowed_number_succeed(
    client: httpx.AsyncClient, service: Service
) -> None:
    program = await risk_program(client, {"redemptions_per_hour": 7})
    await put_reward(client, program, "mug", cost_points=10, stock=100)
    await credit(client, program, "ann", 10_000)
    answers = await asyncio.gather(*(redeem(client, program, "ann", "mug") for _ in range(50)))
    statuses = Counter(a.status_code for a in answers)
    assert statuses == {201: 7, 409: 43}, statuses
    refusal = next(a for a in answers if a.status_code == 409)
    assert refusal.headers["content-type"] == "application/problem+json"
    problem = refusal.json()
    assert problem["code"] == "limit_exceeded"
    assert problem["limit"]["name"] == "redemptions_per_hour" and problem["limit"]["value"] == 7
    assert await reward_state(client, program, "mug") == (93, 0, 7)
    assert await balance(client, program, "ann") == 10_000 - 70
    assert_books_balance(service, program)


async def test_a_review_approved_under_retries_spends_once_and_completes_the_redemption(
    client: httpx.AsyncClient, service: Service
) -> None:
    program = await risk_program(client, {"review_above_points": 500})
    await put_reward(client, program, "tv", cost_points=800, stock=2)
    await credit(client, program, "bob", 1000)
    idem = secrets.token_hex(8)
    held = await redeem(client, program, "bob", "tv", idem)
    assert held.status_code == 201, held.text
    body = held.json()
    assert body["status"] == "pending_review"
    review_id, rid = body["review_id"], body["id"]
    # Points reserved (not spendable), stock reserved.
    assert await balance(client, program, "bob") == 200
    assert await reward_state(client, program, "tv") == (1, 1, 0)
    listed = await client.get(f"/v1/programs/{program}/reviews", params={"status": "pending"})
    assert [r["review_id"] for r in listed.json()["items"]] == [review_id]
    # Concurrent duplicate approvals: one decision, every answer identical.
    url = f"/v1/programs/{program}/reviews/{review_id}/approve"
    answers = await asyncio.gather(
        *(client.post(url, json={"reason": "called the member"}) for _ in range(10))
    )
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    assert answers[0].json()["status"] == "approved"
    rejected_late = await client.post(
        f"/v1/programs/{program}/reviews/{review_id}/reject", json={"reason": "too late"}
    )
    assert rejected_late.status_code == 409 and rejected_late.json()["code"] == "invalid_state"
    done = await wait_for_status(client, program, rid, {"completed"})
    assert done["status"] == "completed" and done["points_spent"] == 800
    assert await balance(client, program, "bob") == 200
    assert await reward_state(client, program, "tv") == (1, 0, 1)
    # The original request replays; nothing is redeemed twice.
    again = await redeem(client, program, "bob", "tv", idem)
    assert again.status_code == 201 and again.json()["id"] == rid
    debits = await client.get(
        f"/v1/programs/{program}/members/bob/transactions", params={"type": "debit"}
    )
    assert [t["points"] for t in debits.json()["items"]] == [800]
    assert_books_balance(service, program)


async def test_a_held_debit_rejected_under_retries_gives_the_points_back_once(
    client: httpx.AsyncClient, service: Service
) -> None:
    program = await risk_program(client, {"review_above_points": 100})
    await credit(client, program, "cat", 500)
    headers = key()
    url = f"/v1/programs/{program}/members/cat/debits"
    held = await client.post(url, json={"points": 400, "reason": "tv"}, headers=headers)
    assert held.status_code == 201 and held.json()["status"] == "pending_review"
    replay = await client.post(url, json={"points": 400, "reason": "tv"}, headers=headers)
    assert replay.content == held.content and replay.headers["idempotent-replayed"] == "true"
    review_id = held.json()["review_id"]
    member = await client.get(f"/v1/programs/{program}/members/cat")
    assert member.json()["balance"]["held"] == 400
    reject = f"/v1/programs/{program}/reviews/{review_id}/reject"
    answers = await asyncio.gather(
        *(client.post(reject, json={"reason": "suspected fraud"}) for _ in range(10))
    )
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    assert await balance(client, program, "cat") == 500
    approve = await client.post(
        f"/v1/programs/{program}/reviews/{review_id}/approve", json={"reason": "x"}
    )
    assert approve.status_code == 409
    got = await client.get(f"/v1/programs/{program}/reviews/{review_id}")
    assert got.status_code == 200 and got.json()["status"] == "rejected"
    assert got.json()["decision_reason"] == "suspected fraud"
    releases = await client.get(
        f"/v1/programs/{program}/members/cat/transactions", params={"type": "release"}
    )
    assert [t["points"] for t in releases.json()["items"]] == [400]
    missing = await client.post(
        f"/v1/programs/{program}/reviews/00000000-0000-4000-8000-000000000000/approve",
        json={"reason": "x"},
    )
    assert missing.status_code == 404
    assert_books_balance(service, program)
