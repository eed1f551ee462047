"""Accounts with pending points read back from PostgreSQL (a restarted or evicting shard),
and pending points counted against the balance limit: regression tests for bugs a review
found (each failed before its fix)."""

from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest

from actors.earning import event_command
from actors.protocol import Credit, Debit
from actors.shard_core import ShardCore
from db.ledger_repo import LedgerRepo
from domain.errors import Code
from domain.idempotency import request_hash
from loadtests import verify
from tests.integration.test_earning_core import (
    T0,
    Clock,
    everyone,
    make_program,
    order,
)
from tests.integration.test_shard_core import check_member_invariants, db_rows


@pytest.fixture
async def clocked(database_url: str) -> AsyncIterator[tuple[Clock, Callable[..., ShardCore]]]:
    clock = Clock(T0)
    made: list[ShardCore] = []

    def make(**kwargs: Any) -> ShardCore:
        shard = ShardCore(LedgerRepo(database_url), clock=clock, **kwargs)
        made.append(shard)
        return shard

    yield clock, make
    for shard in made:
        await shard.close()


def debit(program: str, member: str, points: int, key: str) -> Debit:
    return Debit(
        program_id=program,
        member_id=member,
        points=points,
        reason="mug",
        key=key,
        request_hash=request_hash(key, {}),
    )


def credit(program: str, member: str, points: int, key: str) -> Credit:
    return Credit(
        program_id=program,
        member_id=member,
        points=points,
        reason="bonus",
        key=key,
        request_hash=request_hash(key, {}),
    )


async def test_account_with_pending_points_can_be_read_after_a_shard_restart(
    database_url: str, clocked: tuple[Clock, Callable[..., ShardCore]]
) -> None:
    """db/ledger_repo.py load_accounts selects l.active and a.pending but never passes them
    to Lot/Account: every pending lot comes back active and pending as 0, so Account.check()
    raises and the account can no longer be read by a shard that has not cached it."""
    _, make = clocked
    program = make_program(database_url, {"pending": {"kind": "days", "days": 14}})
    first = make()
    answer = await first.submit(event_command(program, order("rs", 5_000, T0), False, T0))
    assert answer.code is Code.CREATED and answer.body["points"] == 50

    fresh = make()  # a restarted shard (or another owner): nothing cached
    view = await fresh.get_account(program, "rs")  # AssertionError today
    assert view is not None
    assert (view["balance"]["available"], view["balance"]["pending"]) == (0, 50)


async def test_batch_touching_an_uncached_account_with_pending_points_succeeds(
    database_url: str, clocked: tuple[Clock, Callable[..., ShardCore]]
) -> None:
    """Same root cause on the write path: _prefetch -> load_accounts raises, so every
    operation of the batch (even another member's) gets 503, on every retry."""
    _, make = clocked
    program = make_program(database_url, {"pending": {"kind": "days", "days": 14}})
    first = make()
    answer = await first.submit(event_command(program, order("rw", 5_000, T0), False, T0))
    assert answer.code is Code.CREATED

    fresh = make()
    futures = [
        fresh.enqueue(credit(program, "bystander", 10, "c-bystander")),
        fresh.enqueue(event_command(program, order("rw", 1_000, T0), False, T0)),
    ]
    results = [await f for f in futures]
    assert [r.code for r in results] == [Code.CREATED, Code.CREATED], results
    view = await fresh.get_account(program, "rw")
    assert view is not None and view["balance"]["pending"] == 60
    assert check_member_invariants(database_url, program, "rw") == 0
    assert verify.main(["--database-url", database_url]) == 0


async def test_pending_points_cannot_lift_the_balance_above_balance_max(
    database_url: str, clocked: tuple[Clock, Callable[..., ShardCore]]
) -> None:
    """domain/ledger.py credit() checks balance + points <= BALANCE_MAX but ignores what is
    already pending, and activate() has no check at all: pending awards accepted one by one
    are activated into a balance above BALANCE_MAX."""
    from domain.limits import BALANCE_MAX, POINTS_PER_OPERATION_MAX

    clock, make = clocked
    core = make()
    program = make_program(database_url, {"pending": {"kind": "days", "days": 1}})
    n = BALANCE_MAX // POINTS_PER_OPERATION_MAX
    futures = [
        core.enqueue(credit(program, "big", POINTS_PER_OPERATION_MAX, f"c{i}"))
        for i in range(n - 1)
    ]
    futures.append(core.enqueue(credit(program, "big", POINTS_PER_OPERATION_MAX - 100, "last")))
    assert {(await f).code for f in futures} == {Code.CREATED}
    first = await core.submit(event_command(program, order("big", 10_000, T0), False, T0))
    assert first.code is Code.CREATED and first.body["points"] == 100  # balance + 100 == max
    await core.submit(event_command(program, order("big", 10_000, T0), False, T0))
    clock.now = T0 + timedelta(days=2)
    await core.expire_due(everyone)  # activates the pending lots
    [(balance,)] = db_rows(
        database_url,
        "SELECT balance FROM accounts WHERE program_id=%s AND member_id='big'",
        program,
    )
    assert balance <= BALANCE_MAX, f"balance {balance} > BALANCE_MAX {BALANCE_MAX}"
