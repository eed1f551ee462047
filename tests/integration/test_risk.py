"""Risk control against a real PostgreSQL: velocity limits under concurrency and across shard
restarts, reviews held, approved and rejected (debits and redemptions), decisions retried
and raced, and the books (tests/integration/test_verify.py's checks) exact throughout."""

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from actors.protocol import Credit, DecideReview, Outcome, Resume
from actors.shard_core import ShardCore
from db.ledger_repo import LedgerRepo
from db.verify_repo import run_checks
from domain.errors import Code
from domain.idempotency import request_hash
from tests.integration.test_reward_core import Wiring, put_reward, redeem_request
from tests.integration.test_shard_core import db_rows, op

RISK = {
    "debit_points_per_day": 1000,
    "redemptions_per_hour": 3,
    "service_credit_points_per_day": 500,
    "review_above_points": 400,
}


def make_program(url: str, risk: dict[str, Any]) -> str:
    program_id = f"risk-{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO programs (program_id, name, policy) VALUES (%s, 'Risk', %s)",
            (program_id, Jsonb({"time_zone": "Europe/Paris", "risk": risk})),
        )
    return program_id


@pytest.fixture
def program(database_url: str) -> str:
    return make_program(database_url, RISK)


@pytest.fixture
def review_program(database_url: str) -> str:
    return make_program(database_url, {"review_above_points": 400})


@pytest.fixture
async def core(database_url: str) -> AsyncIterator[ShardCore]:
    shard = ShardCore(LedgerRepo(database_url))
    yield shard
    await shard.close()


@pytest.fixture
async def wiring(database_url: str) -> AsyncIterator[Wiring]:
    w = Wiring(database_url)
    yield w
    await w.close()


def assert_books_exact(url: str) -> None:
    failed = [(r.name, r.examples) for r in run_checks(url) if r.violations]
    assert failed == []


async def funded(core: ShardCore, program: str, member: str, points: int) -> None:
    outcome = await core.submit(op("credit", program, member, points, f"fund-{member}"))
    assert outcome.code is Code.CREATED, outcome


def decide(program: str, member: str, review_id: str, decision: str, reason: str) -> DecideReview:
    return DecideReview(
        program_id=program,
        member_id=member,
        review_id=uuid.UUID(review_id),
        decision=decision,
        reason=reason,
    )


async def test_daily_debit_limit_holds_under_concurrency_and_names_the_limit(
    core: ShardCore, program: str, database_url: str
) -> None:
    await funded(core, program, "ann", 10_000)
    outcomes = await asyncio.gather(
        *(core.submit(op("debit", program, "ann", 90, f"d{i}")) for i in range(20))
    )
    done = [o for o in outcomes if o.code is Code.CREATED]
    refused = [o for o in outcomes if o.code is Code.LIMIT_EXCEEDED]
    assert len(done) == 11 and len(refused) == 9  # 11 x 90 = 990 <= 1000 < 12 x 90
    limit = refused[0].body["limit"]
    assert limit["name"] == "debit_points_per_day" and limit["value"] == 1000
    assert limit["window"] == "day" and limit["used"] == 990 and limit["requested"] == 90
    # Paris is UTC+1 in winter / +2 in summer: a local day starts at 22:00 or 23:00 UTC.
    assert limit["resets_at"].endswith(("T22:00:00Z", "T23:00:00Z"))
    # A refusal is remembered under its key like any answer: a retry replays it.
    again = await core.submit(op("debit", program, "ann", 90, "d19"))
    assert again.replayed and again.code in (Code.CREATED, Code.LIMIT_EXCEEDED)
    [(balance, velocity)] = db_rows(
        database_url,
        "SELECT balance, velocity FROM accounts WHERE program_id=%s AND member_id='ann'",
        program,
    )
    assert balance == 10_000 - 990 and velocity["debited"] == 990


async def test_counters_survive_a_shard_restart(program: str, database_url: str) -> None:
    first = ShardCore(LedgerRepo(database_url))
    await funded(first, program, "bob", 5000)
    assert (await first.submit(op("debit", program, "bob", 350, "a"))).code is Code.CREATED
    assert (await first.submit(op("debit", program, "bob", 350, "b"))).code is Code.CREATED
    await first.close()
    second = ShardCore(LedgerRepo(database_url))  # a restarted shard: counters from the row
    try:
        refused = await second.submit(op("debit", program, "bob", 350, "c"))
        assert refused.code is Code.LIMIT_EXCEEDED and refused.body["limit"]["used"] == 700
        assert (await second.submit(op("debit", program, "bob", 300, "e"))).code is Code.CREATED
        assert (await second.submit(op("debit", program, "bob", 1, "d"))).code is (
            Code.LIMIT_EXCEEDED
        )
    finally:
        await second.close()


async def test_service_credits_count_and_other_credits_do_not(
    core: ShardCore, program: str
) -> None:
    def service_credit(points: int, key: str, by_service: bool = True) -> Credit:
        fields = {"points": points, "reason": "shop backend", "expires_at": None}
        digest = request_hash("credit", {"program_id": program, "member_id": "cat", **fields})
        return Credit(
            program_id=program,
            member_id="cat",
            key=key,
            request_hash=digest,
            by_service=by_service,
            **fields,
        )

    assert (await core.submit(service_credit(400, "s1"))).code is Code.CREATED
    refused = await core.submit(service_credit(200, "s2"))
    assert refused.code is Code.LIMIT_EXCEEDED
    assert refused.body["limit"]["name"] == "service_credit_points_per_day"
    # An operator's credit (not a service key) is not counted.
    assert (await core.submit(service_credit(200, "o1", by_service=False))).code is Code.CREATED
    assert (await core.submit(service_credit(100, "s3"))).code is Code.CREATED


async def test_a_held_debit_reserves_points_and_approval_spends_them_once(
    core: ShardCore, review_program: str, database_url: str
) -> None:
    await funded(core, review_program, "dan", 1000)
    held = await core.submit(op("debit", review_program, "dan", 600, "big", reason="tv"))
    assert held.code is Code.CREATED and held.body["status"] == "pending_review"
    assert held.body["type"] == "hold" and held.body["balance"]["available"] == 400
    review_id = held.body["review_id"]
    # The held points are not spendable by other debits.
    short = await core.submit(op("debit", review_program, "dan", 401, "next"))
    assert short.code is Code.INSUFFICIENT_POINTS
    # A replay of the held request: the same stored answer.
    replay = await core.submit(op("debit", review_program, "dan", 600, "big", reason="tv"))
    assert replay.replayed and replay.body == held.body
    # Concurrent duplicate approvals: one decision, every answer the same.
    answers = await asyncio.gather(
        *(
            core.submit(decide(review_program, "dan", review_id, "approve", "verified"))
            for _ in range(8)
        )
    )
    assert {a.code for a in answers} == {Code.OK}
    assert all(a.body == answers[0].body for a in answers)
    assert answers[0].body["status"] == "approved"
    later = await core.submit(decide(review_program, "dan", review_id, "approve", "again"))
    assert later.body == answers[0].body  # as it was decided (first reason, first time)
    wrong = await core.submit(decide(review_program, "dan", review_id, "reject", "changed my mind"))
    assert wrong.code is Code.INVALID_STATE
    kinds = db_rows(
        database_url,
        "SELECT kind, points FROM transactions WHERE program_id=%s AND member_id='dan'"
        " ORDER BY created_at",
        review_program,
    )
    assert kinds == [("credit", 1000), ("hold", 600), ("debit", 600)]
    view = await core.get_account(review_program, "dan")
    assert view is not None and view["balance"]["available"] == 400
    assert view["balance"]["held"] == 0 and view["lifetime_spent"] == 600
    assert_books_exact(database_url)


async def test_a_rejected_debit_gives_points_back_into_their_lots(
    core: ShardCore, review_program: str, database_url: str
) -> None:
    await funded(core, review_program, "eve", 800)
    held = await core.submit(op("debit", review_program, "eve", 500, "big"))
    review_id = held.body["review_id"]
    rejected = await asyncio.gather(
        *(
            core.submit(decide(review_program, "eve", review_id, "reject", "fraud"))
            for _ in range(5)
        )
    )
    assert {a.code for a in rejected} == {Code.OK}
    assert rejected[0].body["status"] == "rejected"
    assert (
        await core.submit(decide(review_program, "eve", review_id, "approve", "oops"))
    ).code is Code.INVALID_STATE
    view = await core.get_account(review_program, "eve")
    assert view is not None and view["balance"]["available"] == 800
    [(remaining,)] = db_rows(
        database_url,
        "SELECT remaining FROM lots WHERE program_id=%s AND member_id='eve'",
        review_program,
    )
    assert remaining == 800
    # The original request's answer stays what it was.
    replay = await core.submit(op("debit", review_program, "eve", 500, "big"))
    assert replay.replayed and replay.body == held.body
    assert_books_exact(database_url)


async def test_a_pending_review_survives_a_restart_and_is_decided_after_it(
    review_program: str, database_url: str
) -> None:
    first = ShardCore(LedgerRepo(database_url))
    await funded(first, review_program, "fay", 1000)
    held = await first.submit(op("debit", review_program, "fay", 700, "big"))
    await first.close()
    second = ShardCore(LedgerRepo(database_url))
    try:
        view = await second.get_account(review_program, "fay")
        assert view is not None and view["balance"]["held"] == 700
        assert (await second.submit(op("debit", review_program, "fay", 301, "x"))).code is (
            Code.INSUFFICIENT_POINTS
        )
        released = await second.submit(
            decide(review_program, "fay", held.body["review_id"], "reject", "no")
        )
        assert released.code is Code.OK
        assert (
            await second.submit(op("debit", review_program, "fay", 301, "y"))
        ).code is Code.CREATED
    finally:
        await second.close()
    assert_books_exact(database_url)


async def test_a_decision_on_an_unknown_review_is_not_found(core: ShardCore, program: str) -> None:
    await funded(core, program, "gus", 10)
    answer = await core.submit(decide(program, "gus", str(uuid.uuid4()), "approve", "?"))
    assert answer.code is Code.NOT_FOUND


# ----------------------------------------------------------------- redemptions


async def redeem_all(w: Wiring, program: str, member: str, n: int) -> list[Outcome]:
    return await asyncio.gather(
        *(w.rewards.submit(redeem_request(program, "mug", member, f"r{i}")) for i in range(n))
    )


async def test_redemptions_per_hour_exactly_the_allowed_number_succeed(
    wiring: Wiring, database_url: str
) -> None:
    program = make_program(database_url, {"redemptions_per_hour": 3})
    await put_reward(wiring, program, "mug", stock=100)
    await funded(wiring.accounts, program, "hal", 10_000)
    outcomes = await redeem_all(wiring, program, "hal", 20)
    assert sum(o.code is Code.CREATED for o in outcomes) == 3
    refused = [o for o in outcomes if o.code is Code.LIMIT_EXCEEDED]
    assert len(refused) == 17
    assert refused[0].body["limit"]["name"] == "redemptions_per_hour"
    assert refused[0].body["redemption"]["status"] == "failed"
    # A replay answers the refusal again, its limit too.
    replayed = await wiring.rewards.submit(
        redeem_request(program, "mug", "hal", str(_key_of(outcomes, refused[0])))
    )
    assert replayed.code is Code.LIMIT_EXCEEDED and replayed.body["limit"]["value"] == 3
    [(reserved, redeemed)] = db_rows(
        database_url,
        "SELECT reserved, redeemed FROM rewards WHERE program_id=%s AND reward_id='mug'",
        program,
    )
    assert (reserved, redeemed) == (0, 3)
    assert_books_exact(database_url)


def _key_of(outcomes: list[Outcome], wanted: Outcome) -> str:
    return f"r{outcomes.index(wanted)}"


async def test_a_redemption_held_for_review_is_completed_on_approval(
    wiring: Wiring, database_url: str
) -> None:
    program = make_program(database_url, {"review_above_points": 150})
    await put_reward(wiring, program, "mug", stock=5)
    await funded(wiring.accounts, program, "ivy", 1000)
    request = redeem_request(program, "mug", "ivy", "big", qty=2)  # 200 points
    held = await wiring.rewards.submit(request)
    assert held.code is Code.CREATED and held.body["status"] == "pending_review"
    review_id = held.body["review_id"]
    replay = await wiring.rewards.submit(request)
    assert replay.replayed and replay.body == held.body
    [(reserved,)] = db_rows(
        database_url, "SELECT reserved FROM rewards WHERE program_id=%s", program
    )
    assert reserved == 2
    # The reward shard restarts while the review waits; the decision still completes it.
    await wiring.restart_rewards()
    approved = await wiring.accounts.submit(decide(program, "ivy", review_id, "approve", "ok"))
    assert approved.code is Code.OK
    resumed = await wiring.rewards.submit(
        Resume(program_id=program, reward_id="mug", redemption_id=uuid.UUID(held.body["id"]))
    )
    assert resumed.code is Code.CREATED and resumed.body["status"] == "completed"
    assert resumed.body["debit_transaction_id"] == approved.body["decision_transaction_id"]
    [(reserved, redeemed)] = db_rows(
        database_url, "SELECT reserved, redeemed FROM rewards WHERE program_id=%s", program
    )
    assert (reserved, redeemed) == (0, 2)
    view = await wiring.accounts.get_account(program, "ivy")
    assert view is not None and view["balance"]["available"] == 800
    assert_books_exact(database_url)


async def test_a_rejected_redemption_releases_points_and_stock_by_recovery(
    wiring: Wiring, database_url: str
) -> None:
    program = make_program(database_url, {"review_above_points": 50})
    await put_reward(wiring, program, "mug", stock=1)
    await funded(wiring.accounts, program, "joe", 300)
    held = await wiring.rewards.submit(redeem_request(program, "mug", "joe", "k"))
    assert held.body["status"] == "pending_review"
    # Nobody else gets the reserved unit meanwhile.
    await funded(wiring.accounts, program, "kim", 300)
    assert (
        await wiring.rewards.submit(redeem_request(program, "mug", "kim", "k"))
    ).code is Code.OUT_OF_STOCK
    rejected = await wiring.accounts.submit(
        decide(program, "joe", held.body["review_id"], "reject", "suspicious")
    )
    assert rejected.code is Code.OK
    # The Resume message is lost: the recovery pass finds the decided review.
    await wiring.restart_rewards()
    assert await wiring.rewards.recover_once() == 1
    await asyncio.sleep(0.2)
    replay = await wiring.rewards.submit(redeem_request(program, "mug", "joe", "k"))
    assert replay.code is Code.CREATED and replay.body["status"] == "failed"
    assert replay.body["failure"] == {"code": "review_rejected", "detail": "suspicious"}
    view = await wiring.accounts.get_account(program, "joe")
    assert view is not None and view["balance"]["available"] == 300
    [(reserved, redeemed)] = db_rows(
        database_url, "SELECT reserved, redeemed FROM rewards WHERE program_id=%s", program
    )
    assert (reserved, redeemed) == (0, 0)
    assert_books_exact(database_url)
