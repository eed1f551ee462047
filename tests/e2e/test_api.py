"""Through HTTP: the walk-through, races, replays, a shard crash under load, bad input."""

import asyncio
import secrets
from typing import Any

import httpx
import psycopg
import pytest

from tests.e2e.conftest import Service


def key() -> dict[str, str]:
    return {"Idempotency-Key": secrets.token_hex(12)}


async def credit(client: httpx.AsyncClient, program: str, member: str, points: int) -> Any:
    response = await client.post(
        f"/v1/programs/{program}/members/{member}/credits",
        json={"points": points, "reason": "seed"},
        headers=key(),
    )
    assert response.status_code == 201, response.text
    return response.json()


async def balance(client: httpx.AsyncClient, program: str, member: str) -> int:
    response = await client.get(f"/v1/programs/{program}/members/{member}")
    assert response.status_code == 200, response.text
    return int(response.json()["balance"]["available"])


def scalar(service: Service, sql: str, *params: Any) -> Any:
    with psycopg.connect(service.database_url) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def assert_books_balance(service: Service, program: str) -> None:
    """Per member: balance == sum(lots) == sum(entries); per transaction: legs sum to 0."""
    with psycopg.connect(service.database_url) as conn:
        bad_members = conn.execute(
            """
            SELECT a.member_id FROM accounts a
            LEFT JOIN (SELECT member_id, sum(remaining) s FROM lots WHERE program_id=%s
                       AND active GROUP BY member_id) l USING (member_id)
            LEFT JOIN (SELECT member_id, sum(amount) s FROM ledger_entries
                       WHERE program_id=%s AND account='member' GROUP BY member_id) e
              USING (member_id)
            WHERE a.program_id=%s
              AND (a.balance <> coalesce(l.s,0) OR a.balance - a.debt <> coalesce(e.s,0))
            """,
            (program, program, program),
        ).fetchall()
        unbalanced = conn.execute(
            "SELECT txn_id FROM ledger_entries WHERE program_id=%s GROUP BY txn_id"
            " HAVING sum(amount) <> 0",
            (program,),
        ).fetchall()
    assert bad_members == [] and unbalanced == []


async def test_walk_through(client: httpx.AsyncClient, program: str) -> None:
    base = f"/v1/programs/{program}/members/alice"
    first = await client.post(
        f"{base}/credits",
        json={"points": 500, "reason": "order #1", "expires_at": "2099-12-31T00:00:00Z"},
        headers={"Idempotency-Key": "order-1"},
    )
    assert first.status_code == 201
    body = first.json()
    assert body["points"] == 500 and body["balance"]["available"] == 500
    assert body["transaction_id"] and body["expires_at"] == "2099-12-31T00:00:00Z"

    replay = await client.post(
        f"{base}/credits",
        json={"points": 500, "reason": "order #1", "expires_at": "2099-12-31T00:00:00Z"},
        headers={"Idempotency-Key": "order-1"},
    )
    assert replay.status_code == 201 and replay.json() == body
    assert replay.headers["idempotent-replayed"] == "true"

    conflict = await client.post(
        f"{base}/credits",
        json={"points": 501, "reason": "order #1"},
        headers={"Idempotency-Key": "order-1"},
    )
    assert conflict.status_code == 409
    assert conflict.headers["content-type"] == "application/problem+json"
    assert conflict.json()["code"] == "idempotency_conflict"

    debit = await client.post(
        f"{base}/debits", json={"points": 120, "reason": "coffee"}, headers=key()
    )
    assert debit.status_code == 201 and debit.json()["balance_after"] == 380

    too_much = await client.post(
        f"{base}/debits", json={"points": 10_000, "reason": "tv"}, headers=key()
    )
    assert too_much.status_code == 409 and too_much.json()["code"] == "insufficient_points"

    member = (await client.get(base)).json()
    assert member["balance"] == {"available": 380, "pending": 0, "total": 380, "debt": 0, "held": 0}
    assert member["lifetime_earned"] == 500 and member["lifetime_spent"] == 120
    assert [lot["remaining"] for lot in member["lots"]] == [380]

    page = (await client.get(f"{base}/transactions", params={"limit": 1})).json()
    assert [i["type"] for i in page["items"]] == ["debit"] and page["next_cursor"]
    rest = (
        await client.get(
            f"{base}/transactions", params={"limit": 10, "cursor": page["next_cursor"]}
        )
    ).json()
    assert [i["type"] for i in rest["items"]] == ["credit"] and rest["next_cursor"] is None
    credits = (await client.get(f"{base}/transactions", params={"type": "credit"})).json()
    assert len(credits["items"]) == 1


async def test_auth_and_not_found(
    client: httpx.AsyncClient, service: Service, program: str
) -> None:
    async with httpx.AsyncClient(base_url=service.url) as anonymous:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
            response = await anonymous.get(f"/v1/programs/{program}", headers=headers)
            assert response.status_code == 401
            assert response.json()["code"] == "unauthorized"
        assert (await anonymous.get("/healthz")).status_code == 200
        assert (await anonymous.get("/openapi.json")).json()["paths"]
    assert (await client.get("/v1/programs/nope")).status_code == 404
    assert (await client.get(f"/v1/programs/{program}/members/ghost")).status_code == 404
    assert (
        await client.get(f"/v1/programs/{program}/members/ghost/transactions")
    ).status_code == 404
    ghost = await client.post(
        "/v1/programs/nope/members/m/credits", json={"points": 1, "reason": "x"}, headers=key()
    )
    assert ghost.status_code == 404 and ghost.json()["code"] == "not_found"
    ready = (await client.get("/readyz")).json()
    assert ready["status"] == "ready" and len(ready["shards"]) == 2
    assert len(ready["reward_shards"]) == 1


async def test_300_concurrent_debits_against_100_points(
    client: httpx.AsyncClient, service: Service, program: str
) -> None:
    await credit(client, program, "hot", 100)
    responses = await asyncio.gather(
        *(
            client.post(
                f"/v1/programs/{program}/members/hot/debits",
                json={"points": 1, "reason": "race"},
                headers=key(),
            )
            for _ in range(300)
        )
    )
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) == 100
    assert statuses.count(409) == 200
    assert await balance(client, program, "hot") == 0
    assert (
        scalar(
            service,
            "SELECT count(*) FROM transactions"
            " WHERE program_id=%s AND member_id='hot' AND kind='debit'",
            program,
        )
        == 100
    )
    assert_books_balance(service, program)


async def test_concurrent_replays_of_one_key_apply_once(
    client: httpx.AsyncClient, service: Service, program: str
) -> None:
    await credit(client, program, "replayer", 1000)
    responses = await asyncio.gather(
        *(
            client.post(
                f"/v1/programs/{program}/members/replayer/debits",
                json={"points": 10, "reason": "once"},
                headers={"Idempotency-Key": "the-one-key"},
            )
            for _ in range(100)
        )
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["transaction_id"] for r in responses}) == 1
    assert await balance(client, program, "replayer") == 990
    assert (
        scalar(
            service,
            "SELECT count(*) FROM transactions"
            " WHERE program_id=%s AND idempotency_key='the-one-key'",
            program,
        )
        == 1
    )


BAD_INPUTS: list[tuple[str, dict[str, Any]]] = [
    ("float points", {"json": {"points": 1.5, "reason": "x"}}),
    ("string points", {"json": {"points": "5", "reason": "x"}}),
    ("zero points", {"json": {"points": 0, "reason": "x"}}),
    ("negative points", {"json": {"points": -5, "reason": "x"}}),
    ("huge points", {"json": {"points": 10**30, "reason": "x"}}),
    ("boolean points", {"json": {"points": True, "reason": "x"}}),
    ("missing reason", {"json": {"points": 5}}),
    ("long reason", {"json": {"points": 5, "reason": "r" * 501}}),
    ("NUL in reason", {"json": {"points": 5, "reason": "a\u0000b"}}),
    ("unknown field", {"json": {"points": 5, "reason": "x", "admin": True}}),
    ("array body", {"json": [1, 2]}),
    (
        "malformed json",
        {"content": b'{"points": 5,', "headers": {"content-type": "application/json"}},
    ),
    ("not json", {"content": b"points=5", "headers": {"content-type": "text/plain"}}),
    (
        "json sent as text/plain",
        {"content": b'{"points": 5, "reason": "x"}', "headers": {"content-type": "text/plain"}},
    ),
    (
        "no content type",
        {"content": b'{"points": 5, "reason": "x"}', "headers": {"content-type": ""}},
    ),
    (
        "duplicated key",
        {
            "content": b'{"points": 1, "points": 2, "reason": "x"}',
            "headers": {"content-type": "application/json"},
        },
    ),
    (
        "NaN points",
        {
            "content": b'{"points": NaN, "reason": "x"}',
            "headers": {"content-type": "application/json"},
        },
    ),
    ("empty body", {"content": b"", "headers": {"content-type": "application/json"}}),
    ("body over 1 MiB", {"json": {"points": 5, "reason": "x", "pad": "y" * (1024 * 1024 + 10)}}),
    ("naive expiry", {"json": {"points": 5, "reason": "x", "expires_at": "2099-01-01T00:00:00"}}),
    ("past expiry", {"json": {"points": 5, "reason": "x", "expires_at": "2001-01-01T00:00:00Z"}}),
    ("garbage expiry", {"json": {"points": 5, "reason": "x", "expires_at": "tomorrow"}}),
    ("no idempotency key", {"json": {"points": 5, "reason": "x"}, "no_key": True}),
    ("long idempotency key", {"json": {"points": 5, "reason": "x"}, "key": "k" * 256}),
    ("control chars in key", {"json": {"points": 5, "reason": "x"}, "key": "a b"}),
]


@pytest.mark.parametrize(("case", "request_args"), BAD_INPUTS, ids=[c for c, _ in BAD_INPUTS])
async def test_bad_input_is_a_4xx_problem_and_changes_nothing(
    client: httpx.AsyncClient,
    service: Service,
    program: str,
    case: str,
    request_args: dict[str, Any],
) -> None:
    await credit(client, program, "victim", 50)
    args = dict(request_args)
    headers = dict(args.pop("headers", {}))
    if not args.pop("no_key", False):
        headers["Idempotency-Key"] = args.pop("key", secrets.token_hex(8))
    for path in ("credits", "debits"):
        response = await client.post(
            f"/v1/programs/{program}/members/victim/{path}", headers=headers, **args
        )
        assert 400 <= response.status_code < 500, (case, response.status_code, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == response.status_code and problem["code"] and problem["title"]
    assert await balance(client, program, "victim") == 50
    assert scalar(service, "SELECT count(*) FROM transactions WHERE program_id=%s", program) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/v1/programs/{p}/members/" + "m" * 129,
        "/v1/programs/{p}/members/bad%20id",
        "/v1/programs/" + "p" * 129 + "/members/m",
        "/v1/programs/{p}/members/m/transactions?limit=0",
        "/v1/programs/{p}/members/m/transactions?limit=100000",
        "/v1/programs/{p}/members/m/transactions?cursor=garbage",
        "/v1/programs/{p}/members/m/transactions?type=bonus",
        "/v1/programs/{p}/members/m/transactions?since=yesterday",
    ],
)
async def test_bad_paths_and_queries_are_4xx(
    client: httpx.AsyncClient, program: str, path: str
) -> None:
    await credit(client, program, "m", 1)
    response = await client.get(path.replace("{p}", program))
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"] == "application/problem+json"


async def test_killing_a_shard_under_load_loses_nothing_and_never_double_applies(
    client: httpx.AsyncClient, service: Service, program: str
) -> None:
    import ray

    from actors.routing import NAMESPACE, shard_name

    members = [f"k{i}" for i in range(20)]
    for member in members:
        await credit(client, program, member, 1_000_000)
    acknowledged: dict[str, tuple[str, int]] = {}  # key -> (member, points)
    gave_up: list[str] = []

    async def debit_until_answered(i: int) -> None:
        member, points = members[i % len(members)], 1 + i % 7
        idem = f"crash-{i}"
        for _attempt in range(60):  # bounded: a client that retries with the same key
            try:
                response = await client.post(
                    f"/v1/programs/{program}/members/{member}/debits",
                    json={"points": points, "reason": "crash test"},
                    headers={"Idempotency-Key": idem},
                )
            except httpx.TransportError:
                await asyncio.sleep(0.2)
                continue
            if response.status_code == 201:
                acknowledged[idem] = (member, points)
                return
            assert response.status_code == 503, response.text  # nothing else is acceptable
            await asyncio.sleep(0.2)
        gave_up.append(idem)

    async def kill_shards() -> list[int]:
        await asyncio.sleep(0.5)
        pids = []
        for index in range(2):
            handle = ray.get_actor(shard_name(index), namespace=NAMESPACE)
            pids.append(await handle.pid.remote())
            ray.kill(handle, no_restart=False)
        return pids

    semaphore = asyncio.Semaphore(48)

    async def bounded(i: int) -> None:
        async with semaphore:
            await debit_until_answered(i)

    old_pids, *_ = await asyncio.gather(kill_shards(), *(bounded(i) for i in range(800)))
    assert gave_up == []
    assert len(acknowledged) == 800
    new_pids = [
        await ray.get_actor(shard_name(i), namespace=NAMESPACE).pid.remote() for i in range(2)
    ]
    assert set(new_pids).isdisjoint(old_pids)  # both shards really restarted

    with psycopg.connect(service.database_url) as conn:
        rows = conn.execute(
            "SELECT idempotency_key, count(*), sum(points) FROM transactions"
            " WHERE program_id=%s AND kind='debit' GROUP BY idempotency_key",
            (program,),
        ).fetchall()
    per_key = {k: (n, p) for k, n, p in rows}
    assert set(per_key) == set(acknowledged)  # every acknowledged debit is in the ledger
    assert all(n == 1 for n, _ in per_key.values())  # and none applied twice
    for member in members:
        spent = sum(p for m, p in acknowledged.values() if m == member)
        assert await balance(client, program, member) == 1_000_000 - spent
    assert_books_balance(service, program)
