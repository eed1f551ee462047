"""Retention against a real PostgreSQL: what the purge deletes and keeps, in bounded
batches, without blocking group commits; a shard's replay of a purged key; an old event sent
again after its answer was purged."""

import asyncio
import secrets
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import psycopg
import pytest

from actors.earning import event_command
from actors.retention import RetentionJob
from actors.shard_core import ShardCore
from db.engine import migrate
from db.ledger_repo import LedgerRepo
from db.retention_repo import RetentionRepo
from db.verify_repo import run_checks
from domain.errors import Code
from tests.conftest import temporary_database
from tests.integration.test_earning_core import T0, Clock, make_program, order
from tests.integration.test_shard_core import db_rows, op

RETENTION_DAYS = 30
NOW = T0 + timedelta(days=RETENTION_DAYS + 1)
OLD = NOW - timedelta(days=RETENTION_DAYS, hours=1)  # just past the retention
YOUNG = NOW - timedelta(days=RETENTION_DAYS - 1)  # just within it


@pytest.fixture
def db(pg_admin_url: str) -> Iterator[str]:
    """A database of its own: a purge deletes every program's old records."""
    with temporary_database(pg_admin_url, "points_retention") as url:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO programs (program_id, name) VALUES ('shop', 'Shop')")
        yield url


def add_records(url: str, count: int, at: datetime, member: str = "m", prefix: str = "k") -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO idempotency_keys (program_id, member_id, key, request_hash, response,"
            " code, created_at)"
            " SELECT 'shop', %s, %s || g, 'h', '{}', 'created', %s FROM generate_series(1, %s) g",
            (member, f"{prefix}-", at, count),
        )


def records(url: str, member: str | None = None) -> int:
    sql = "SELECT count(*) FROM idempotency_keys"
    [(count,)] = (
        db_rows(url, sql) if member is None else db_rows(url, sql + " WHERE member_id=%s", member)
    )
    return int(count)


async def always() -> bool:
    return True


def job(url: str, repo: RetentionRepo | None = None) -> RetentionJob:
    purge = (repo or RetentionRepo(url)).purge_idempotency
    return RetentionJob(purge, always, lambda: NOW, RETENTION_DAYS, 3600)


async def test_records_past_the_retention_are_purged_in_batches_of_1000(db: str) -> None:
    add_records(db, 2500, OLD, prefix="old")
    add_records(db, 10, YOUNG, prefix="young")
    add_records(db, 5, NOW, prefix="new")
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    purged = await job(db, RetentionRepo(db, sleep=sleep)).run_once()
    assert purged is not None and (purged.rows, purged.batches) == (2500, 3)
    assert len(pauses) == 2  # between the batches, not after the last
    assert records(db) == 15
    assert db_rows(db, "SELECT count(*) FROM idempotency_keys WHERE key LIKE 'old-%%'") == [(0,)]
    again = await job(db).run_once()  # nothing left: one empty batch
    assert again is not None and (again.rows, again.batches) == (0, 1)


async def test_a_pass_stops_after_its_batch_bound_and_the_next_goes_on(db: str) -> None:
    add_records(db, 2500, OLD)
    repo = RetentionRepo(db)
    first = await repo.purge_idempotency(NOW - timedelta(days=30), batches_max=2)
    assert (first.rows, first.batches) == (2000, 2)
    assert records(db) == 500
    rest = await repo.purge_idempotency(NOW - timedelta(days=30), rows_per_batch=300)
    assert (rest.rows, rest.batches) == (500, 2)
    assert records(db) == 0


async def test_members_with_an_open_saga_or_a_pending_review_keep_their_records(
    db: str,
) -> None:
    for member in ("saga", "review", "done", "plain"):
        add_records(db, 3, OLD, member=member)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO rewards (program_id, reward_id, name, cost_points, stocked, reserved,"
            " redeemed, active, fulfillment, version, created_at, updated_at)"
            " VALUES ('shop', 'mug', 'Mug', 10, 100, 1, 1, true, '{}', 1, %s, %s)",
            (T0, T0),
        )
        for member, status, stock in (("saga", "stock_reserved", "reserved"),
                                      ("done", "completed", "redeemed")):  # fmt: skip
            conn.execute(
                "INSERT INTO redemptions (redemption_id, program_id, reward_id, member_id,"
                " slot, idempotency_key, request_hash, quantity, cost_points, points, status,"
                " stock_state, fulfillment, attempts, created_at, updated_at)"
                " VALUES (%s, 'shop', 'mug', %s, 0, 'r', 'h', 1, 10, 10, %s, %s, '{}', 0,"
                " %s, %s)",
                (uuid.uuid4(), member, status, stock, T0, T0),
            )
        # A debit held for review: its hold transaction (an account for it first).
        conn.execute(
            "INSERT INTO accounts (program_id, member_id, balance, version, lifetime_earned,"
            " lifetime_spent, held) VALUES ('shop', 'review', 0, 1, 5, 0, 5)"
        )
        hold = uuid.uuid4()
        conn.execute(
            "INSERT INTO transactions (txn_id, program_id, member_id, kind, points, reason,"
            " balance_after, created_at, idempotency_key, allocations)"
            " VALUES (%s, 'shop', 'review', 'hold', 5, 'held', 0, %s, 'k-1', '[]')",
            (hold, OLD),
        )
        conn.execute(
            "INSERT INTO reviews (review_id, program_id, member_id, kind, points, reason,"
            " status, hold_txn_id, idempotency_key, created_at)"
            " VALUES (%s, 'shop', 'review', 'debit', 5, 'big', 'pending', %s, 'k-1', %s)",
            (uuid.uuid4(), hold, OLD),
        )
    purged = await job(db).run_once()
    assert purged is not None and purged.rows == 6
    assert (records(db, "saga"), records(db, "review")) == (3, 3)
    assert (records(db, "done"), records(db, "plain")) == (0, 0)


async def test_a_purge_skips_rows_locked_by_a_transaction_instead_of_waiting(db: str) -> None:
    add_records(db, 50, OLD)
    with psycopg.connect(db) as holder:  # a transaction left open on one old record
        holder.execute("SELECT 1 FROM idempotency_keys WHERE key = 'k-7' FOR UPDATE")
        started = time.perf_counter()
        purged = await job(db).run_once()
        assert time.perf_counter() - started < 1.0  # well under the lock timeout
        assert purged is not None and purged.rows == 49
    after = await job(db).run_once()  # released: the next pass takes it
    assert after is not None and after.rows == 1


async def test_group_commits_go_on_while_a_purge_runs(db: str) -> None:
    add_records(db, 20_000, OLD)
    core = ShardCore(LedgerRepo(db), clock=lambda: NOW)
    try:
        purge = asyncio.create_task(
            RetentionRepo(db).purge_idempotency(NOW - timedelta(days=30), pause_s=0)
        )
        answers = []
        while not purge.done():  # commit while the purge runs
            answer = await core.submit(op("credit", "shop", "m2", 1, f"c{len(answers)}"))
            assert answer.code is Code.CREATED
            answers.append(answer)
        purged = await purge
    finally:
        await core.close()
    assert (purged.rows, purged.batches) == (20_000, 21)
    assert answers  # at least one commit overlapped the purge
    assert records(db, "m2") == len(answers)  # the commits' own keys are all kept
    assert db_rows(db, "SELECT balance FROM accounts WHERE member_id='m2'") == [(len(answers),)]


async def test_a_purged_key_is_replayed_from_shard_memory_else_applied_as_new(
    db: str,
) -> None:
    then = Clock(OLD - timedelta(hours=1))
    core = ShardCore(LedgerRepo(db), clock=then)
    fresh = ShardCore(LedgerRepo(db), clock=lambda: NOW)
    credit = op("credit", "shop", "m", 10, "pay-1")
    try:
        first = await core.submit(credit)
        assert first.code is Code.CREATED
        purged = await job(db).run_once()
        assert purged is not None and purged.rows == 1 and records(db) == 0
        # The shard that still holds the key in memory answers the original (not written
        # back: the record stays purged).
        replay = await core.submit(credit)
        assert replay.replayed and replay.body == first.body
        assert records(db) == 0
        # A shard that does not (a restart, an eviction): a new request, applied again.
        again = await fresh.submit(credit)
        assert again.code is Code.CREATED and not again.replayed
        assert again.body["transaction_id"] != first.body["transaction_id"]
    finally:
        await core.close()
        await fresh.close()
    assert db_rows(db, "SELECT balance FROM accounts WHERE member_id='m'") == [(20,)]
    # The verifier knows a key may move points again after the retention.
    assert [r.name for r in run_checks(db) if r.violations] == []


async def test_an_old_event_sent_again_after_its_answer_was_purged_never_earns_twice(
    db: str,
) -> None:
    program = make_program(db, {})
    event = order("a1", 1000, T0, f"ord-{secrets.token_hex(4)}")
    core = ShardCore(LedgerRepo(db), clock=Clock(T0))
    fresh = ShardCore(LedgerRepo(db), clock=lambda: NOW)
    try:
        first = await core.submit(event_command(program, event, False, T0))
        assert first.code is Code.CREATED and first.body["points"] == 10
        purged = await job(db).run_once()
        assert purged is not None and purged.rows == 1
        again = await fresh.submit(event_command(program, event, False, NOW))
        assert again.code == "idempotency_conflict"
        assert "longer ago than the idempotency retention" in again.detail
    finally:
        await core.close()
        await fresh.close()
    assert db_rows(db, "SELECT balance FROM accounts WHERE member_id='a1'") == [(10,)]
    assert db_rows(db, "SELECT count(*) FROM events WHERE program_id=%s", program) == [(1,)]
