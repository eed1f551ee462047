"""Earning programs through HTTP (and the Redis stream): policy, rule versions, events with
their explanation, dedup, dry runs, batches, pending points, expiry, reversals, tiers,
templates, and bad events that change nothing."""

import asyncio
import json
import secrets
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import redis

from actors.routing import NAMESPACE, shard_name
from domain.templates import TEMPLATES
from tests.e2e.conftest import ADMIN_KEY, Service
from tests.e2e.test_api import assert_books_balance, key, scalar

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ORDER_RULES = [
    {
        "id": "order_points",
        "event_type": "order",
        "condition": None,
        "award": {"type": "per_amount", "attribute": "amount", "rate": "0.01", "rounding": "down"},
        "priority": 10,
        "combine": "stack",
    },
    {
        "id": "big_order_bonus",
        "event_type": "order",
        "condition": "attributes.amount >= 100000",
        "award": {"type": "fixed", "points": 50},
        "priority": 20,
        "combine": "stack",
    },
    {
        "id": "check_in",
        "event_type": "check_in",
        "award": {"type": "fixed", "points": 10},
        "caps": {"per_event": None, "per_member_day": 10},
    },
]


def now_iso(delta_s: float = 0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat()


def event(member: str, kind: str = "order", **attributes: Any) -> dict[str, Any]:
    return {
        "id": f"ev-{secrets.token_hex(6)}",
        "member_id": member,
        "type": kind,
        "occurred_at": now_iso(-1),
        "attributes": attributes,
    }


async def make_program(
    client: httpx.AsyncClient, policy: dict[str, Any] | None = None, rules: Any = None
) -> str:
    program = f"earn-{secrets.token_hex(4)}"
    body: dict[str, Any] = {"name": "Earning"}
    if policy is not None:
        body["policy"] = policy
    created = await client.put(f"/v1/programs/{program}", json=body)
    assert created.status_code == 201, created.text
    put = await client.put(f"/v1/programs/{program}/rules", json={"rules": rules or ORDER_RULES})
    assert put.status_code == 201, put.text
    return program


def create_from_template(service: Service, program: str, template: str) -> str:
    """`points programs create` as a user runs it; returns its output."""
    created = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "programs", "create", program,
         "--template", template, "--url", service.url, "--key", ADMIN_KEY],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert created.returncode == 0, created.stdout + created.stderr
    return created.stdout


async def member(client: httpx.AsyncClient, program: str, member_id: str) -> Any:
    response = await client.get(f"/v1/programs/{program}/members/{member_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def test_policy_rules_event_explanation_dedup_and_dry_run(
    client: httpx.AsyncClient, service: Service
) -> None:
    program = await make_program(
        client, {"time_zone": "Europe/Paris", "expiry": {"kind": "days", "n": 10}}
    )
    shown = (await client.get(f"/v1/programs/{program}")).json()
    assert shown["policy"]["time_zone"] == "Europe/Paris" and shown["policy_version"] == 1
    assert shown["policy"]["expiry"] == {"kind": "days", "n": 10}

    order = event("ann", amount=123_456)  # 1,234.56 in minor units -> 1234 + 50 bonus
    dry = await client.post(f"/v1/programs/{program}/events?dry_run=true", json=order)
    assert dry.status_code == 200, dry.text
    assert dry.json()["points"] == 1284 and dry.json()["dry_run"]
    assert (await client.get(f"/v1/programs/{program}/members/ann")).status_code == 404

    first = await client.post(f"/v1/programs/{program}/events", json=order)
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["points"] == 1284 and body["rule_version"] == 1
    why = {line["rule_id"]: line for line in body["why"]}
    assert why["order_points"]["points"] == 1234 and why["big_order_bonus"]["points"] == 50
    assert body["transaction"]["expires_at"] is not None

    again = await client.post(f"/v1/programs/{program}/events", json=order)
    assert again.status_code == 201 and again.headers.get("idempotent-replayed") == "true"
    assert again.json() == body
    changed = await client.post(
        f"/v1/programs/{program}/events", json={**order, "attributes": {"amount": 1}}
    )
    assert changed.status_code == 409 and changed.json()["code"] == "idempotency_conflict"
    other_member = await client.post(
        f"/v1/programs/{program}/events", json={**order, "member_id": "bob"}
    )
    assert other_member.status_code == 409, other_member.text

    view = await member(client, program, "ann")
    assert view["balance"] == {"available": 1284, "pending": 0, "total": 1284, "debt": 0, "held": 0}
    expires = datetime.fromisoformat(view["lots"][0]["expires_at"])
    assert timedelta(days=9) < expires - datetime.now(UTC) < timedelta(days=11)
    assert view["expiring_soon"] == [] or view["expiring_soon"][0]["points"] == 1284
    stored = (await client.get(f"/v1/programs/{program}/events/{order['id']}")).json()
    assert stored["points"] == 1284 and stored["member_id"] == "ann"

    # A new rule set version applies to events from its effective_from on.
    v2 = [{**ORDER_RULES[0], "award": {**ORDER_RULES[0]["award"], "rate": "0.02"}}]
    put = await client.put(f"/v1/programs/{program}/rules", json={"rules": v2})
    assert put.status_code == 201 and put.json()["version"] == 2
    versions = (await client.get(f"/v1/programs/{program}/rules")).json()["items"]
    assert [v["version"] for v in versions] == [2, 1]
    # An event that occurred before version 2 took effect is still evaluated with version 1.
    late = await client.post(f"/v1/programs/{program}/events", json=event("ann", amount=1000))
    assert late.status_code == 201 and late.json()["rule_version"] == 1
    assert late.json()["points"] == 10
    after = {**event("ann", amount=1000), "occurred_at": now_iso(2)}
    later = await client.post(f"/v1/programs/{program}/events", json=after)
    assert later.status_code == 201 and later.json()["points"] == 20
    assert later.json()["rule_version"] == 2
    assert_books_balance(service, program)


async def test_caps_batch_and_bad_events_change_nothing(
    client: httpx.AsyncClient, service: Service
) -> None:
    program = await make_program(client, {"caps": {"per_member_day": 100}})
    # Two check-ins in one day: the rule's daily cap (10) allows one.
    results = (
        await client.post(
            f"/v1/programs/{program}/events/batch",
            json={"events": [event("cy", "check_in"), event("cy", "check_in")]},
        )
    ).json()["results"]
    assert sorted(r["body"]["points"] for r in results) == [0, 10]
    # The program cap: 100 a day in total, whatever the orders.
    big = await client.post(f"/v1/programs/{program}/events", json=event("cy", amount=10**9))
    assert big.status_code == 201 and big.json()["points"] == 90

    bad: list[Any] = [
        event("dz", "no_such_type"),
        {**event("dz"), "attributes": {"amount": 12.5}},
        {k: v for k, v in event("dz").items() if k != "member_id"},
        {**event("dz"), "occurred_at": "2026-01-01T00:00:00"},
        {**event("dz"), "occurred_at": now_iso(7 * 86400)},
        {**event("dz"), "occurred_at": "1999-01-01T00:00:00Z"},
        {**event("dz"), "id": "bad id"},
        {**event("dz"), "extra": 1},
        "not an object",
    ]
    answers = (
        await client.post(f"/v1/programs/{program}/events/batch", json={"events": bad})
    ).json()["results"]
    assert [a["status"] for a in answers] == [422] * len(bad), answers
    assert all(a["body"]["code"] == "validation_error" and a["body"]["detail"] for a in answers)
    for one in bad[:3]:
        single = await client.post(f"/v1/programs/{program}/events", json=one)
        assert single.status_code == 422 and single.headers["content-type"].startswith(
            "application/problem+json"
        )
    for body in ({"events": []}, {"events": [event("dz")] * 1001}, [], {"nope": 1}):
        assert (
            await client.post(f"/v1/programs/{program}/events/batch", json=body)
        ).status_code == 422
    raw = await client.post(
        f"/v1/programs/{program}/events",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert raw.status_code == 400 and raw.json()["code"] == "bad_request"
    assert (await client.get(f"/v1/programs/{program}/members/dz")).status_code == 404
    assert scalar(service, "SELECT count(*) FROM events WHERE program_id=%s", program) == 3
    bad_rules = await client.put(
        f"/v1/programs/{program}/rules",
        json={"rules": [{**ORDER_RULES[0], "condition": "__import__('os')"}]},
    )
    assert bad_rules.status_code == 422
    bad_policy = await client.put(
        f"/v1/programs/{program}", json={"name": "x", "policy": {"time_zone": "Mars/Base"}}
    )
    assert bad_policy.status_code == 422
    assert_books_balance(service, program)


async def test_pending_points_are_booked_but_not_spendable(
    client: httpx.AsyncClient, service: Service
) -> None:
    program = await make_program(client, {"pending": {"kind": "days", "days": 14}})
    answer = await client.post(f"/v1/programs/{program}/events", json=event("pe", amount=5000))
    assert answer.status_code == 201 and answer.json()["points"] == 50
    view = await member(client, program, "pe")
    assert view["balance"] == {"available": 0, "pending": 50, "total": 50, "debt": 0, "held": 0}
    assert view["pending_lots"][0]["points"] == 50
    spend = await client.post(
        f"/v1/programs/{program}/members/pe/debits",
        json={"points": 1, "reason": "too early"},
        headers=key(),
    )
    assert spend.status_code == 409 and spend.json()["code"] == "insufficient_points"
    assert_books_balance(service, program)


async def test_reversals_claw_back_in_proportion_never_more(
    client: httpx.AsyncClient, service: Service
) -> None:
    program = await make_program(client)
    order = event("rv", amount=10_000)  # 100 points
    assert (await client.post(f"/v1/programs/{program}/events", json=order)).status_code == 201
    path = f"/v1/programs/{program}/events/{order['id']}/reverse"
    half = await client.post(path, json={"amount": 5000}, headers=key())
    assert half.status_code == 201, half.text
    assert half.json()["clawed_back"] == 50 and half.json()["balance"]["total"] == 50
    replay_key = key()
    rest = await client.post(path, json={"amount": "7000"}, headers=replay_key)
    assert rest.status_code == 201 and rest.json()["clawed_back"] == 50
    replay = await client.post(path, json={"amount": "7000"}, headers=replay_key)
    assert replay.headers.get("idempotent-replayed") == "true"
    more = await client.post(path, json={}, headers=key())
    assert more.status_code == 200 and more.json()["clawed_back"] == 0
    assert (await member(client, program, "rv"))["balance"]["total"] == 0
    assert (await client.post(path, json={}, headers={})).status_code == 400
    missing = await client.post(
        f"/v1/programs/{program}/events/nope/reverse", json={}, headers=key()
    )
    assert missing.status_code == 404

    # Points already spent: the shortfall is reported, the balance never goes negative.
    spent = event("sp", amount=10_000)
    assert (await client.post(f"/v1/programs/{program}/events", json=spent)).status_code == 201
    debit = await client.post(
        f"/v1/programs/{program}/members/sp/debits",
        json={"points": 80, "reason": "mug"},
        headers=key(),
    )
    assert debit.status_code == 201
    full = await client.post(
        f"/v1/programs/{program}/events/{spent['id']}/reverse", json={}, headers=key()
    )
    assert full.json()["clawed_back"] == 20 and full.json()["unrecovered"] == 80
    assert (await member(client, program, "sp"))["balance"]["total"] == 0
    assert_books_balance(service, program)


async def test_expiry_job_writes_off_due_points_once(
    client: httpx.AsyncClient, service: Service
) -> None:
    program = await make_program(client)
    soon = now_iso(1.5)
    for member_id in ("ex1", "ex2"):
        answer = await client.post(
            f"/v1/programs/{program}/members/{member_id}/credits",
            json={"points": 30, "reason": "short-lived", "expires_at": soon},
            headers=key(),
        )
        assert answer.status_code == 201
    await asyncio.sleep(2.0)
    shards = [ray.get_actor(shard_name(i), namespace=NAMESPACE) for i in range(2)]
    first = await asyncio.gather(*(s.expire_due.remote() for s in shards))
    second = await asyncio.gather(*(s.expire_due.remote() for s in shards))
    assert sum(r["expired_points"] for r in first) >= 60
    assert sum(r["expired_points"] for r in second) == 0
    for member_id in ("ex1", "ex2"):
        view = await member(client, program, member_id)
        assert view["balance"]["total"] == 0
        history = (
            await client.get(f"/v1/programs/{program}/members/{member_id}/transactions")
        ).json()["items"]
        assert [t["type"] for t in history] == ["expire", "credit"]
    expired = scalar(
        service,
        "SELECT sum(amount) FROM ledger_entries WHERE program_id=%s AND account='system:expired'",
        program,
    )
    assert expired == 60
    assert_books_balance(service, program)


async def test_the_retention_job_runs_in_the_one_shard_owning_slot_0(service: Service) -> None:
    shards = [ray.get_actor(shard_name(i), namespace=NAMESPACE) for i in range(2)]
    passes = await asyncio.gather(*(s.purge_retention.remote() for s in shards))
    ran = [p for p in passes if p is not None]
    assert len(ran) == 1, passes  # one place per deployment
    assert ran[0]["batches"] >= 1 and ran[0]["rows"] >= 0


async def test_tiers_upgrade_multiply_and_are_recorded(
    client: httpx.AsyncClient, service: Service
) -> None:
    tiers = {
        "basis": "lifetime",
        "window_days": 0,
        "downgrade_grace_days": 30,
        "tiers": [
            {"name": "member", "threshold": 0, "multiplier": "1"},
            {"name": "gold", "threshold": 100, "multiplier": "2"},
        ],
    }
    program = await make_program(client, {"tiers": tiers})
    first = await client.post(f"/v1/programs/{program}/events", json=event("ti", amount=10_000))
    assert first.json()["points"] == 100 and first.json()["tier"] == "gold"
    second = await client.post(f"/v1/programs/{program}/events", json=event("ti", amount=1000))
    assert second.json()["points"] == 20  # 10 x gold's 2
    view = await member(client, program, "ti")
    assert view["tier"]["name"] == "gold" and view["tier"]["next"] is None
    changes = scalar(
        service,
        "SELECT count(*) FROM tier_changes WHERE program_id=%s AND to_tier='gold'",
        program,
    )
    assert changes == 1
    newcomer = await client.post(f"/v1/programs/{program}/events", json=event("nw", amount=1000))
    assert newcomer.json()["tier"] == "member"
    view = await member(client, program, "nw")
    assert view["tier"]["next"] == "gold" and view["tier"]["points_to_next"] == 90


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_templates_create_working_programs(service: Service, template: str) -> None:
    program = f"tpl-{template}-{secrets.token_hex(3)}"
    output = create_from_template(service, program, template)
    assert "rule set version 1" in output
    example = {**TEMPLATES[template]["example_event"], "occurred_at": now_iso(-1)}
    with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as http:
        answer = http.post(f"/v1/programs/{program}/events", json=example)
        assert answer.status_code == 201, answer.text
        assert answer.json()["points"] > 0, answer.json()
        view = http.get(f"/v1/programs/{program}/members/{example['member_id']}").json()
    assert view["balance"]["total"] + view["balance"]["pending"] >= answer.json()["points"] or (
        view["balance"]["total"] == answer.json()["points"]
    )
    assert_books_balance(service, program)


async def test_events_through_the_redis_stream(
    client: httpx.AsyncClient, service: Service, redis_url: str
) -> None:
    program = await make_program(client)
    stream = redis.Redis.from_url(redis_url)
    good = [event("st", amount=1000) for _ in range(5)]
    for body in good:
        stream.xadd("points:events", {"program_id": program, "event": json.dumps(body)})
    stream.xadd("points:events", {"program_id": program, "event": json.dumps(good[0])})  # dup
    bad = {**event("st"), "attributes": {"amount": 1.5}}
    stream.xadd("points:events", {"program_id": program, "event": json.dumps(bad)})
    stream.xadd("points:events", {"program_id": program, "event": "{broken"})
    deadline = asyncio.get_running_loop().time() + 30
    while asyncio.get_running_loop().time() < deadline:
        response = await client.get(f"/v1/programs/{program}/members/st")
        if response.status_code == 200 and response.json()["balance"]["total"] == 50:
            break
        await asyncio.sleep(0.2)
    assert (await member(client, program, "st"))["balance"]["total"] == 50
    dead = [
        fields
        for _, fields in stream.xrange("points:events:dead")
        if fields.get(b"program_id") == program.encode()
    ]
    while len(dead) < 2 and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.2)
        dead = [
            f
            for _, f in stream.xrange("points:events:dead")
            if f.get(b"program_id") == program.encode()
        ]
    assert len(dead) == 2 and all(f[b"reason"] for f in dead)
    assert scalar(service, "SELECT count(*) FROM events WHERE program_id=%s", program) == 5
    assert_books_balance(service, program)


async def test_points_held_until_confirmed(client: httpx.AsyncClient, service: Service) -> None:
    program = await make_program(
        client,
        {"pending": {"kind": "until_confirmed"}, "expiry": {"kind": "days", "n": 30}},
    )
    order = event("hc", amount=5000)
    answer = await client.post(f"/v1/programs/{program}/events", json=order)
    assert answer.status_code == 201 and answer.json()["transaction"]["held_until_confirmed"]
    view = await member(client, program, "hc")
    assert view["balance"] == {"available": 0, "pending": 50, "total": 50, "debt": 0, "held": 0}
    assert view["pending_lots"][0]["held_until_confirmed"] is True
    assert view["pending_lots"][0]["available_at"] is None
    path = f"/v1/programs/{program}/events/{order['id']}/confirm"
    confirmed = await client.post(path)
    assert confirmed.status_code == 200 and confirmed.json()["released_points"] == 50
    again = await client.post(path)
    assert again.status_code == 200 and again.headers.get("idempotent-replayed") == "true"
    view = await member(client, program, "hc")
    assert view["balance"] == {"available": 50, "pending": 0, "total": 50, "debt": 0, "held": 0}
    expires = datetime.fromisoformat(view["lots"][0]["expires_at"])
    assert timedelta(days=29) < expires - datetime.now(UTC) < timedelta(days=31)
    assert (await client.post(f"/v1/programs/{program}/events/nope/confirm")).status_code == 404
    assert_books_balance(service, program)


async def test_debt_policy_owes_spent_points_and_next_credits_repay_first(
    client: httpx.AsyncClient, service: Service
) -> None:
    program = await make_program(client, {"allow_debt": True})
    order = event("db", amount=10_000)  # 100 points
    assert (await client.post(f"/v1/programs/{program}/events", json=order)).status_code == 201
    spent = await client.post(
        f"/v1/programs/{program}/members/db/debits",
        json={"points": 80, "reason": "mug"},
        headers=key(),
    )
    assert spent.status_code == 201
    full = await client.post(
        f"/v1/programs/{program}/events/{order['id']}/reverse", json={}, headers=key()
    )
    body = full.json()
    assert (body["clawed_back"], body["owed"], body["unrecovered"], body["debt"]) == (20, 80, 0, 80)
    assert body["transaction"]["points"] == 100 and body["transaction"]["debt_change"] == 80
    view = await member(client, program, "db")
    assert view["balance"] == {"available": 0, "pending": 0, "total": 0, "debt": 80, "held": 0}
    # 50 earned: all of it repays debt (no lot); then 50 more: 30 repay, 20 spendable.
    for amount, debt_after, available in ((5000, 30, 0), (5000, 0, 20)):
        answer = await client.post(
            f"/v1/programs/{program}/events", json=event("db", amount=amount)
        )
        assert answer.status_code == 201, answer.text
        view = await member(client, program, "db")
        assert view["balance"]["debt"] == debt_after
        assert view["balance"]["available"] == available
    assert_books_balance(service, program)


def test_finance_template_holds_large_spends_for_review(service: Service) -> None:
    program = f"tpl-card-{secrets.token_hex(3)}"
    create_from_template(service, program, "finance")
    with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as http:
        small = http.post(
            f"/v1/programs/{program}/events",
            json=event("cardholder", "card_spend", amount=45_000, mcc="5411"),
        )
        assert small.status_code == 201 and small.json()["points"] == 900
        assert "held_until_confirmed" not in small.json()["transaction"]
        big_event = event("cardholder", "card_spend", amount=600_000)
        big = http.post(f"/v1/programs/{program}/events", json=big_event)
        assert big.status_code == 201 and big.json()["points"] == 6000
        assert big.json()["transaction"]["held_until_confirmed"] is True
        view = http.get(f"/v1/programs/{program}/members/cardholder").json()
        assert (view["balance"]["available"], view["balance"]["pending"]) == (900, 6000)
        released = http.post(f"/v1/programs/{program}/events/{big_event['id']}/confirm")
        assert released.status_code == 200 and released.json()["released_points"] == 6000
        view = http.get(f"/v1/programs/{program}/members/cardholder").json()
        assert (view["balance"]["available"], view["balance"]["pending"]) == (6900, 0)
    assert_books_balance(service, program)
