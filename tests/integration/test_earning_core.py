"""The earning path of ShardCore against a real PostgreSQL, with an injected clock: tier
maintenance without events, expiry after time passes, an event id reused for another member
on another shard, and a shard restart finding the event's first answer."""

import secrets
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from actors.earning import event_command
from actors.protocol import Debit
from actors.shard_core import ShardCore
from db.ledger_repo import LedgerRepo
from domain.errors import Code
from tests.integration.test_shard_core import check_member_invariants, db_rows

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
RULES = [
    {
        "id": "order_points",
        "event_type": "order",
        "award": {"type": "per_amount", "attribute": "amount", "rate": "0.01", "rounding": "down"},
    }
]
TIERS = {
    "basis": "rolling_days",
    "window_days": 30,
    "downgrade_grace_days": 5,
    "tiers": [
        {"name": "member", "threshold": 0, "multiplier": "1"},
        {"name": "gold", "threshold": 100, "multiplier": "1"},
    ],
}


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_program(url: str, policy: dict[str, Any]) -> str:
    program_id = f"earn-{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO programs (program_id, name, policy) VALUES (%s, 'T', %s)",
            (program_id, Jsonb(policy)),
        )
        conn.execute(
            "INSERT INTO rule_sets (program_id, version, rules, effective_from, created_at)"
            " VALUES (%s, 1, %s, %s, %s)",
            (program_id, Jsonb(RULES), T0 - timedelta(days=400), T0),
        )
    return program_id


@pytest.fixture
async def clocked(database_url: str) -> AsyncIterator[tuple[Clock, Callable[[], ShardCore]]]:
    clock = Clock(T0)
    made: list[ShardCore] = []

    def make() -> ShardCore:
        shard = ShardCore(LedgerRepo(database_url), clock=clock)
        made.append(shard)
        return shard

    yield clock, make
    for shard in made:
        await shard.close()


def order(member: str, amount: int, at: datetime, event_id: str | None = None) -> dict[str, Any]:
    return {
        "id": event_id or f"ev-{secrets.token_hex(6)}",
        "member_id": member,
        "type": "order",
        "occurred_at": at.isoformat(),
        "attributes": {"amount": amount},
    }


def everyone(program_id: str, member_id: str) -> bool:
    return True


async def test_tier_drops_after_window_and_grace_without_any_event(
    database_url: str, clocked: tuple[Clock, Callable[[], ShardCore]]
) -> None:
    clock, make = clocked
    core = make()
    program = make_program(database_url, {"tiers": TIERS})
    answer = await core.submit(event_command(program, order("ti", 20_000, T0), False, T0))
    assert answer.code is Code.CREATED and answer.body["tier"] == "gold"

    clock.now = T0 + timedelta(days=20)  # still inside the 30-day window
    assert (await core.retier(everyone))["tier_changes"] == 0
    clock.now = T0 + timedelta(days=31)  # earnings left the window: grace starts
    assert (await core.retier(everyone))["tier_changes"] == 0
    view = await core.get_account(program, "ti")
    assert view is not None and view["tier"]["name"] == "gold" and view["tier"]["below_since"]
    clock.now = T0 + timedelta(days=37)  # grace (5 days) over
    assert (await core.retier(everyone))["tier_changes"] == 1
    assert (await core.retier(everyone))["tier_changes"] == 0  # nothing more to do
    view = await core.get_account(program, "ti")
    assert view is not None and view["tier"]["name"] == "member"
    changes = db_rows(
        database_url,
        "SELECT from_tier, to_tier, reason FROM tier_changes WHERE program_id=%s"
        " ORDER BY change_id",
        program,
    )
    assert [(c[0], c[1]) for c in changes] == [(None, "gold"), ("gold", "member")]
    assert "grace" in changes[1][2]
    check_member_invariants(database_url, program, "ti")


async def test_expiry_writes_off_only_what_is_due_and_only_once(
    database_url: str, clocked: tuple[Clock, Callable[[], ShardCore]]
) -> None:
    clock, make = clocked
    core = make()
    program = make_program(database_url, {"expiry": {"kind": "days", "n": 10}})
    await core.submit(event_command(program, order("ex", 5_000, T0), False, T0))
    clock.now = T0 + timedelta(days=5)
    await core.submit(event_command(program, order("ex", 3_000, clock.now), False, clock.now))
    clock.now = T0 + timedelta(days=11)  # the first lot (50) is due, the second (30) not
    assert (await core.expire_due(everyone))["expired_points"] == 50
    assert (await core.expire_due(everyone))["expired_points"] == 0
    view = await core.get_account(program, "ex")
    assert view is not None and view["balance"]["total"] == 30
    clock.now = T0 + timedelta(days=16)
    assert (await core.expire_due(everyone))["expired_points"] == 30
    assert check_member_invariants(database_url, program, "ex") == 0
    kinds = db_rows(
        database_url,
        "SELECT kind, points FROM transactions WHERE program_id=%s ORDER BY created_at",
        program,
    )
    assert kinds == [("credit", 50), ("credit", 30), ("expire", 50), ("expire", 30)]


async def test_event_id_reused_for_another_member_on_another_shard_is_a_conflict(
    database_url: str, clocked: tuple[Clock, Callable[[], ShardCore]]
) -> None:
    _, make = clocked
    first, second = make(), make()
    program = make_program(database_url, {})
    ok = await first.submit(event_command(program, order("a1", 1000, T0, "same-id"), False, T0))
    assert ok.code is Code.CREATED
    other = await second.submit(event_command(program, order("b1", 1000, T0, "same-id"), False, T0))
    assert other.code == "idempotency_conflict"
    # A shard that restarted (empty caches) answers the first member's replay from the
    # database, and the other member stays a conflict.
    fresh = make()
    replay = await fresh.submit(event_command(program, order("a1", 1000, T0, "same-id"), False, T0))
    assert replay.code is Code.CREATED and replay.replayed and replay.body == ok.body
    assert db_rows(database_url, "SELECT count(*) FROM events WHERE program_id=%s", program) == [
        (1,)
    ]
    assert db_rows(
        database_url, "SELECT count(*) FROM accounts WHERE program_id=%s AND member_id='b1'",
        program,
    ) == [(0,)]  # fmt: skip


async def test_pending_points_are_activated_with_ledger_entries_by_the_pass_or_on_use(
    database_url: str, clocked: tuple[Clock, Callable[[], ShardCore]]
) -> None:
    clock, make = clocked
    core = make()
    program = make_program(database_url, {"pending": {"kind": "days", "days": 14}})
    for member in ("pa", "pb"):
        answer = await core.submit(event_command(program, order(member, 5_000, T0), False, T0))
        assert answer.code is Code.CREATED and answer.body["points"] == 50
    view = await core.get_account(program, "pa")
    assert view is not None and view["balance"]["pending"] == 50
    assert view["balance"]["available"] == 0

    clock.now = T0 + timedelta(days=15)
    # "pa" spends at once: the debit's batch activates the due lot first.
    debit = await core.submit(
        Debit(
            program_id=program,
            member_id="pa",
            points=20,
            reason="mug",
            key="d1",
            request_hash="h1",
        )
    )
    assert debit.code is Code.CREATED, debit
    # "pb" is activated by the maintenance pass (once: a second pass finds nothing).
    await core.expire_due(everyone)
    await core.expire_due(everyone)
    for member, balance in (("pa", 30), ("pb", 50)):
        view = await core.get_account(program, member)
        assert view is not None
        assert (view["balance"]["available"], view["balance"]["pending"]) == (balance, 0)
        legs = db_rows(
            database_url,
            "SELECT e.account, e.amount FROM ledger_entries e JOIN transactions t USING (txn_id)"
            " WHERE t.program_id=%s AND t.member_id=%s AND t.kind='activate'",
            program,
            member,
        )
        assert sorted(legs) == [("member", 50), ("member:pending", -50)]
        check_member_invariants(database_url, program, member)
    pending_legs = db_rows(
        database_url,
        "SELECT coalesce(sum(amount), 0) FROM ledger_entries"
        " WHERE program_id=%s AND account='member:pending'",
        program,
    )
    assert pending_legs == [(0,)]
