"""GET /v1/programs/{program_id}/ledger/summary against the operations performed."""

import asyncio
import secrets
from datetime import UTC, datetime

import httpx

from tests.e2e.conftest import Service


def key() -> dict[str, str]:
    return {"Idempotency-Key": secrets.token_hex(8)}


async def test_the_books_equal_the_operations_and_the_ledger(
    client: httpx.AsyncClient, program: str, service: Service
) -> None:
    p = f"/v1/programs/{program}"
    before = datetime.now(UTC)
    await asyncio.sleep(0.05)
    for member, points in (("a", 100), ("b", 200), ("c", 300)):
        answer = await client.post(
            p + f"/members/{member}/credits", json={"points": points, "reason": "r"}, headers=key()
        )
        assert answer.status_code == 201, answer.text
    after_credits = datetime.now(UTC)
    await asyncio.sleep(0.05)
    debit = await client.post(
        p + "/members/b/debits", json={"points": 50, "reason": "mug"}, headers=key()
    )
    assert debit.status_code == 201
    reward = {"name": "Cap", "cost_points": 30, "stock": 5}
    assert (await client.put(p + "/rewards/cap", json=reward)).status_code == 201
    redeemed = await client.post(
        p + "/redemptions", json={"member_id": "c", "reward_id": "cap"}, headers=key()
    )
    assert redeemed.status_code == 201, redeemed.text
    cancelled = await client.post(p + f"/redemptions/{redeemed.json()['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text

    books = (await client.get(p + "/ledger/summary")).json()
    assert books["outstanding"]["total"] == 600 - 50
    assert books["balanced"] is True
    assert books["accounts"]["agree_with_ledger"] is True
    assert books["accounts"]["members"] == 3 and books["accounts"]["balance"] == 550
    assert books["flows"]["issued"] == 600
    assert books["flows"]["redeemed"] == 50  # the cancelled redemption was refunded
    assert books["flows"]["refunded"] == 30
    assert books["transactions"]["debit"] == {"count": 2, "points": 80}
    # The same from the ledger directly.
    import psycopg

    with psycopg.connect(service.database_url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(amount), 0) FROM ledger_entries"
            " WHERE program_id = %s AND account LIKE 'member%%'",
            (program,),
        ).fetchone()
    assert row is not None and row[0] == books["outstanding"]["total"]

    # As of a moment: before anything, nothing; after the credits, only those.
    empty = (await client.get(p + "/ledger/summary", params={"at": before.isoformat()})).json()
    assert empty["outstanding"]["total"] == 0 and empty["accounts"] is None
    credited = (
        await client.get(p + "/ledger/summary", params={"at": after_credits.isoformat()})
    ).json()
    assert credited["flows"]["issued"] == 600 and credited["flows"]["redeemed"] == 0
    assert credited["balanced"] is True
    missing = await client.get("/v1/programs/no-such-program/ledger/summary")
    assert missing.status_code == 404
