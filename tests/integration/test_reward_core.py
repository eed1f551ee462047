"""RewardCore wired to a real ShardCore, both on a real PostgreSQL: the redemption saga,
stock under concurrency, compensation into the original lots, restarts and recovery."""

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from actors.protocol import AccountCommand, Cancel, Outcome, PutReward, Redeem
from actors.reward_core import RewardCore
from actors.shard_core import ShardCore
from db.ledger_repo import LedgerRepo
from db.reward_repo import RewardRepo
from db.verify_repo import run_checks
from domain.errors import Code
from domain.idempotency import request_hash
from domain.rewards import Redemption
from tests.integration.test_shard_core import db_rows, op


@pytest.fixture
async def program(database_url: str) -> str:
    program_id = f"prog-{secrets.token_hex(4)}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO programs (program_id, name) VALUES (%s, 'Test')", (program_id,))
    return program_id


class Wiring:
    """An account shard and a reward shard, restartable (new objects, same database)."""

    def __init__(self, url: str, fulfil: Any = None) -> None:
        self.url = url
        self.fulfil = fulfil
        self.accounts = ShardCore(LedgerRepo(url))
        self.account_calls: list[AccountCommand] = []
        self.fail_accounts: str | None = None  # kind of account call to refuse with 503
        # kind of account call after which the reward shard "crashes" (the call commits,
        # its answer is lost)
        self.crash_after: str | None = None
        self.rewards = self._reward_core()

    def _reward_core(self) -> RewardCore:
        return RewardCore(
            RewardRepo(self.url),
            self._account_call,
            slot_of=lambda p, r: 0,
            fulfil=self.fulfil,
            recovery_interval_s=0,
        )

    async def _account_call(self, command: AccountCommand) -> Outcome:
        self.account_calls.append(command)
        if self.fail_accounts == command.kind:
            return Outcome.refused(Code.UNAVAILABLE, "injected")
        answer = await self.accounts.submit(command)
        if self.crash_after == command.kind:
            raise RuntimeError(f"injected crash after the {command.kind} committed")
        return answer

    async def restart_rewards(self) -> None:
        await self.rewards.close()
        self.rewards = self._reward_core()

    async def close(self) -> None:
        await self.rewards.close()
        await self.accounts.close()


@pytest.fixture
async def wiring(database_url: str) -> AsyncIterator[Wiring]:
    w = Wiring(database_url)
    yield w
    await w.close()


def reward_def(stock: int | None = 10, **extra: Any) -> dict[str, Any]:
    return {
        "name": "Mug",
        "cost_points": 100,
        "stock": stock,
        "per_member_limit": None,
        "active": True,
        "fulfillment": {"type": "none"},
        **extra,
    }


async def put_reward(w: Wiring, program: str, reward: str, **fields: Any) -> Outcome:
    return await w.rewards.submit(
        PutReward(program_id=program, reward_id=reward, **reward_def(**fields))
    )


def redeem_request(program: str, reward: str, member: str, key: str, qty: int = 1) -> Redeem:
    fields = {"program_id": program, "reward_id": reward, "member_id": member, "quantity": qty}
    return Redeem(**fields, key=key, request_hash=request_hash("redeem", fields))


def cancel_request(program: str, reward: str, redemption_id: str) -> Cancel:
    return Cancel(program_id=program, reward_id=reward, redemption_id=uuid.UUID(redemption_id))


async def credit(w: Wiring, program: str, member: str, points: int, **extra: Any) -> Outcome:
    result = await w.accounts.submit(
        op("credit", program, member, points, f"c-{secrets.token_hex(4)}", **extra)
    )
    assert result.code is Code.CREATED, result
    return result


def reward_row(url: str, program: str, reward: str) -> tuple[Any, ...]:
    [row] = db_rows(
        url,
        "SELECT stocked, reserved, redeemed FROM rewards WHERE program_id=%s AND reward_id=%s",
        program,
        reward,
    )
    return row


def assert_verifier_clean(url: str) -> None:
    bad = [r for r in run_checks(url) if r.violations]
    assert bad == [], bad


async def test_more_redemptions_than_stock_sell_exactly_the_stock(
    wiring: Wiring, program: str, database_url: str
) -> None:
    await put_reward(wiring, program, "mug", stock=5)
    for i in range(12):
        await credit(wiring, program, f"m{i}", 100)
    results = await asyncio.gather(
        *(
            wiring.rewards.redeem(redeem_request(program, "mug", f"m{i}", f"k{i}"))
            for i in range(12)
        )
    )
    codes = [r.code for r in results]
    assert codes.count(Code.CREATED) == 5 and codes.count(Code.OUT_OF_STOCK) == 7
    assert {r.code for r in results if not r.succeeded} == {"out_of_stock"}
    assert {r.body["status"] for r in results if r.code is Code.CREATED} == {"completed"}
    assert reward_row(database_url, program, "mug") == (5, 0, 5)
    # Out-of-stock answers touched no account: 5 debits only.
    assert [c.kind for c in wiring.account_calls] == ["debit"] * 5
    assert_verifier_clean(database_url)


async def test_not_enough_points_fails_and_gives_the_unit_back(
    wiring: Wiring, program: str, database_url: str
) -> None:
    await put_reward(wiring, program, "mug", stock=1)
    await credit(wiring, program, "poor", 99)
    result = await wiring.rewards.redeem(redeem_request(program, "mug", "poor", "k1"))
    assert result.code == "insufficient_points"
    assert result.body["redemption"]["status"] == "failed"
    assert reward_row(database_url, program, "mug") == (1, 0, 0)
    # The replay gives the same answer and does nothing more.
    again = await wiring.rewards.redeem(redeem_request(program, "mug", "poor", "k1"))
    assert again.replayed is True
    unknown = await wiring.rewards.redeem(redeem_request(program, "mug", "ghost", "k1"))
    assert unknown.code is Code.NOT_FOUND
    assert_verifier_clean(database_url)


async def test_cancel_refunds_into_the_original_lots_keeping_their_expiry(
    wiring: Wiring, program: str, database_url: str
) -> None:
    from datetime import UTC, datetime, timedelta

    soon = datetime.now(UTC) + timedelta(days=3)
    await credit(wiring, program, "ann", 60, expires_at=soon)
    await credit(wiring, program, "ann", 100)
    await put_reward(wiring, program, "mug", stock=3)
    done = await wiring.rewards.redeem(redeem_request(program, "mug", "ann", "k1"))
    assert done.code is Code.CREATED and done.body["points_spent"] == 100
    lots_after_debit = db_rows(
        database_url,
        "SELECT remaining, expires_at FROM lots WHERE program_id=%s AND member_id='ann'"
        " ORDER BY created_at",
        program,
    )
    assert [r[0] for r in lots_after_debit] == [0, 60]  # the expiring lot went first
    cancelled = await wiring.rewards.cancel(cancel_request(program, "mug", done.body["id"]))
    assert cancelled.code is Code.OK and cancelled.body["status"] == "cancelled"
    lots = db_rows(
        database_url,
        "SELECT remaining, expires_at FROM lots WHERE program_id=%s AND member_id='ann'"
        " ORDER BY created_at",
        program,
    )
    assert [r[0] for r in lots] == [60, 100]
    assert lots[0][1] == lots_after_debit[0][1] == soon.replace(microsecond=soon.microsecond)
    assert reward_row(database_url, program, "mug") == (3, 0, 0)
    # Cancelling again changes nothing.
    again = await wiring.rewards.cancel(cancel_request(program, "mug", done.body["id"]))
    assert again.code is Code.OK
    [(refunds,)] = db_rows(
        database_url,
        "SELECT count(*) FROM transactions WHERE program_id=%s AND kind='refund'",
        program,
    )
    assert refunds == 1
    assert_verifier_clean(database_url)


async def test_a_saga_left_half_way_is_finished_by_recovery(
    wiring: Wiring, program: str, database_url: str
) -> None:
    await put_reward(wiring, program, "mug", stock=2)
    await credit(wiring, program, "bob", 500)
    wiring.fail_accounts = "debit"  # the debit step is unavailable: the saga stops
    stuck = await wiring.rewards.redeem(redeem_request(program, "mug", "bob", "k1"))
    assert stuck.code is Code.UNAVAILABLE
    assert reward_row(database_url, program, "mug") == (2, 1, 0)
    await wiring.restart_rewards()  # the shard "crashes"; its memory is gone
    wiring.fail_accounts = None
    assert await wiring.rewards.recover_once() == 1
    for _ in range(100):
        [(status,)] = db_rows(
            database_url,
            "SELECT status FROM redemptions WHERE member_id='bob' AND program_id=%s",
            program,
        )
        if status == "completed":
            break
        await asyncio.sleep(0.02)
    assert status == "completed"
    assert reward_row(database_url, program, "mug") == (2, 0, 1)
    replay = await wiring.rewards.redeem(redeem_request(program, "mug", "bob", "k1"))
    assert replay.code is Code.CREATED and replay.replayed is True
    assert [c.kind for c in wiring.account_calls] == ["debit", "debit"]
    assert_verifier_clean(database_url)


async def test_webhook_failure_compensates(database_url: str, program: str) -> None:
    release = asyncio.Event()

    async def failing(redemption: Redemption) -> tuple[bool, str]:
        await release.wait()
        return False, "HTTP 500 after 3 attempts"

    w = Wiring(database_url, fulfil=failing)
    try:
        await put_reward(
            w,
            program,
            "box",
            stock=1,
            fulfillment={"type": "webhook", "url": "http://127.0.0.1:9/"},
        )
        await credit(w, program, "cy", 100)
        first = await w.rewards.redeem(redeem_request(program, "box", "cy", "k1"))
        assert first.code is Code.CREATED and first.body["status"] == "pending_fulfillment"
        assert reward_row(database_url, program, "box") == (1, 1, 0)
        release.set()
        for _ in range(100):
            [(status,)] = db_rows(
                database_url, "SELECT status FROM redemptions WHERE program_id=%s", program
            )
            if status == "failed":
                break
            await asyncio.sleep(0.02)
        assert status == "failed"
        assert reward_row(database_url, program, "box") == (1, 0, 0)
        [(balance,)] = db_rows(
            database_url, "SELECT balance FROM accounts WHERE program_id=%s", program
        )
        assert balance == 100
        assert_verifier_clean(database_url)
    finally:
        await w.close()


async def wait_status(url: str, program: str, wanted: str) -> str:
    status = ""
    for _ in range(200):
        [(status,)] = db_rows(url, "SELECT status FROM redemptions WHERE program_id=%s", program)
        if status == wanted:
            break
        await asyncio.sleep(0.02)
    return str(status)


async def test_crash_after_the_debit_recovery_completes_without_a_second_debit(
    wiring: Wiring, program: str, database_url: str
) -> None:
    await put_reward(wiring, program, "mug", stock=1)
    await credit(wiring, program, "dan", 100)
    wiring.crash_after = "debit"
    lost = await wiring.rewards.redeem(redeem_request(program, "mug", "dan", "k1"))
    assert lost.code is Code.UNAVAILABLE  # the caller never heard; the points are gone already
    [(balance,)] = db_rows(
        database_url, "SELECT balance FROM accounts WHERE program_id=%s", program
    )
    assert balance == 0
    await wiring.restart_rewards()
    wiring.crash_after = None
    assert await wiring.rewards.recover_once() == 1
    assert await wait_status(database_url, program, "completed") == "completed"
    [(debits,)] = db_rows(
        database_url,
        "SELECT count(*) FROM transactions WHERE program_id=%s AND kind='debit'",
        program,
    )
    assert debits == 1  # the re-run debit step replayed the first one
    assert reward_row(database_url, program, "mug") == (1, 0, 1)
    assert_verifier_clean(database_url)


async def test_crash_after_the_refund_recovery_finishes_compensation_once(
    wiring: Wiring, program: str, database_url: str
) -> None:
    await put_reward(wiring, program, "mug", stock=1)
    await credit(wiring, program, "eli", 100)
    done = await wiring.rewards.redeem(redeem_request(program, "mug", "eli", "k1"))
    assert done.code is Code.CREATED
    wiring.crash_after = "refund"
    cancel = cancel_request(program, "mug", done.body["id"])
    assert (await wiring.rewards.cancel(cancel)).code is Code.UNAVAILABLE
    await wiring.restart_rewards()
    wiring.crash_after = None
    assert await wiring.rewards.recover_once() == 1
    assert await wait_status(database_url, program, "cancelled") == "cancelled"
    [(refunds,)] = db_rows(
        database_url,
        "SELECT count(*) FROM transactions WHERE program_id=%s AND kind='refund'",
        program,
    )
    assert refunds == 1
    assert reward_row(database_url, program, "mug") == (1, 0, 0)
    assert (await wiring.rewards.cancel(cancel)).code is Code.OK
    assert_verifier_clean(database_url)


async def test_a_stale_owner_is_fenced_and_the_new_owner_sells_correctly(
    database_url: str, program: str
) -> None:
    """Two reward shards believe they own the same reward (a restart with a changed shard
    count): the one with stale state cannot commit, and nothing is oversold."""
    first = Wiring(database_url)
    second = Wiring(database_url)
    try:
        await put_reward(first, program, "duo", stock=2)
        for i in range(4):
            await credit(first, program, f"p{i}", 100)
        ok = await first.rewards.redeem(redeem_request(program, "duo", "p0", "k0"))
        assert ok.code is Code.CREATED
        # The second owner loads the reward now, then the first sells the last unit.
        ok2 = await second.rewards.redeem(redeem_request(program, "duo", "p1", "k1"))
        assert ok2.code is Code.CREATED
        stale = await first.rewards.redeem(redeem_request(program, "duo", "p2", "k2"))
        assert stale.code is Code.UNAVAILABLE  # fenced: its view of the reward was stale
        again = await first.rewards.redeem(redeem_request(program, "duo", "p2", "k2"))
        assert again.code == "out_of_stock"
        assert reward_row(database_url, program, "duo") == (2, 0, 2)
        assert_verifier_clean(database_url)
    finally:
        await first.close()
        await second.close()


async def test_a_hand_off_waits_for_a_webhook_in_flight_and_sends_none_while_draining(
    database_url: str, program: str
) -> None:
    """A delivery started by the old owner ends there (the hand-off waits for it); a
    fulfilment that would start while the slot is handed off is left to the new owner."""
    gate = asyncio.Event()
    sent: list[str] = []

    async def slow(redemption: Redemption) -> tuple[bool, str]:
        sent.append(redemption.key)
        await gate.wait()
        return True, "ok"

    w = Wiring(database_url, fulfil=slow)
    try:
        hook = {"type": "webhook", "url": "http://127.0.0.1:9/"}
        await put_reward(w, program, "box", stock=5, fulfillment=hook)
        await credit(w, program, "wy", 500)
        first = await w.rewards.redeem(redeem_request(program, "box", "wy", "k1"))
        assert first.body["status"] == "pending_fulfillment" and sent == ["k1"]
        slot = w.rewards._slot_of(program, "box")
        asyncio.get_running_loop().call_later(0.2, gate.set)
        released = await w.rewards.release([slot], sagas_s=5.0, settle_s=5.0)
        assert released["sagas_waited"] == 1 and gate.is_set()  # it waited for the delivery
        [(status,)] = db_rows(
            database_url, "SELECT status FROM redemptions WHERE program_id=%s", program
        )
        assert status == "completed"
        # While the slot drains, a new redemption is refused (`moved`: the router sends it
        # to the new owner) and nothing more is delivered from here.
        w.rewards._draining.add(slot)
        second = await w.rewards.redeem(redeem_request(program, "box", "wy", "k2"))
        w.rewards._draining.discard(slot)
        assert second.code is Code.MOVED and sent == ["k1"]
    finally:
        await w.close()
