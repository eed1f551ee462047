"""ShardCore against a real PostgreSQL: group commit, idempotency across restarts, fencing,
failed commits, and the database's own guards (constraints, append-only ledger)."""

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import psycopg
import pytest

from actors.protocol import Credit, Debit, Refund
from actors.shard_core import ShardCore
from db.ledger_repo import BatchWrite, LedgerRepo
from domain.errors import Code
from domain.idempotency import request_hash


@pytest.fixture
async def program(database_url: str) -> str:
    program_id = f"prog-{secrets.token_hex(4)}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO programs (program_id, name) VALUES (%s, 'Test')", (program_id,))
    return program_id


@pytest.fixture
async def core(database_url: str) -> AsyncIterator[ShardCore]:
    shard = ShardCore(LedgerRepo(database_url))
    yield shard
    await shard.close()


COMMANDS: dict[str, type[Credit | Debit | Refund]] = {
    "credit": Credit,
    "debit": Debit,
    "refund": Refund,
}


def op(kind: str, program: str, member: str, points: int, key: str, **extra: Any) -> Any:
    fields = {"points": points, "reason": extra.pop("reason", "test"), **extra}
    return COMMANDS[kind](
        program_id=program,
        member_id=member,
        key=key,
        request_hash=request_hash(kind, {"program_id": program, "member_id": member, **fields}),
        **fields,
    )


def db_rows(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def check_member_invariants(url: str, program: str, member: str) -> int:
    """Balance == sum of lots == sum of member entries; every transaction balanced."""
    [(balance,)] = db_rows(
        url, "SELECT balance FROM accounts WHERE program_id=%s AND member_id=%s", program, member
    )
    [(lots,)] = db_rows(
        url,
        "SELECT coalesce(sum(remaining),0) FROM lots WHERE program_id=%s AND member_id=%s"
        " AND active",
        program,
        member,
    )
    [(entries,)] = db_rows(
        url,
        "SELECT coalesce(sum(amount),0) FROM ledger_entries"
        " WHERE program_id=%s AND member_id=%s AND account='member'",
        program,
        member,
    )
    unbalanced = db_rows(
        url,
        "SELECT e.txn_id FROM ledger_entries e JOIN transactions t USING (txn_id)"
        " WHERE t.program_id=%s AND t.member_id=%s GROUP BY e.txn_id HAVING sum(e.amount) <> 0",
        program,
        member,
    )
    assert balance == lots == entries
    assert unbalanced == []
    return int(balance)


async def test_group_commit_applies_concurrent_operations_in_few_transactions(
    core: ShardCore, program: str, database_url: str
) -> None:
    await core.submit(op("credit", program, "alice", 1000, "seed"))
    batches_before = core.stats["batches"]
    results = await asyncio.gather(
        *(core.submit(op("debit", program, "alice", 3, f"d{i}")) for i in range(200))
    )
    assert [r.code for r in results] == [Code.CREATED] * 200
    assert core.stats["batches"] - batches_before < 200  # grouped, not one commit each
    balances = sorted(r.body["balance_after"] for r in results)
    assert balances == list(range(1000 - 600, 1000, 3))  # each debit saw the one before
    assert check_member_invariants(database_url, program, "alice") == 400


async def test_concurrent_debits_never_overdraw(
    core: ShardCore, program: str, database_url: str
) -> None:
    await core.submit(op("credit", program, "bob", 100, "seed"))
    results = await asyncio.gather(
        *(core.submit(op("debit", program, "bob", 1, f"d{i}")) for i in range(300))
    )
    codes = [r.code for r in results]
    assert codes.count(Code.CREATED) == 100
    assert codes.count(Code.INSUFFICIENT_POINTS) == 200
    assert {r.code for r in results if not r.succeeded} == {"insufficient_points"}
    assert check_member_invariants(database_url, program, "bob") == 0


async def test_same_key_in_one_batch_applies_once(core: ShardCore, program: str) -> None:
    await core.submit(op("credit", program, "carol", 50, "seed"))
    results = await asyncio.gather(
        *(core.submit(op("debit", program, "carol", 7, "same")) for _ in range(20))
    )
    assert {r.code for r in results} == {Code.CREATED}
    assert len({r.body["transaction_id"] for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    view = await core.get_account(program, "carol")
    assert view is not None and view["balance"]["available"] == 43


async def test_idempotency_survives_a_restart(
    database_url: str, program: str, core: ShardCore
) -> None:
    first = await core.submit(op("credit", program, "dave", 25, "k1"))
    assert first.code is Code.CREATED and not first.replayed

    restarted = ShardCore(LedgerRepo(database_url))  # empty caches, as after a crash
    try:
        again = await restarted.submit(op("credit", program, "dave", 25, "k1"))
        assert again.replayed is True
        assert again.code is Code.CREATED and again.body == first.body
        conflict = await restarted.submit(op("credit", program, "dave", 26, "k1"))
        assert not conflict.succeeded
        assert conflict.code == "idempotency_conflict"
        # A new key in the same batch as a replay still applies.
        mixed = await asyncio.gather(
            restarted.submit(op("credit", program, "dave", 25, "k1")),
            restarted.submit(op("credit", program, "dave", 5, "k2")),
        )
        assert [m.replayed for m in mixed] == [True, False]
    finally:
        await restarted.close()
    rows = db_rows(
        database_url,
        "SELECT count(*) FROM transactions WHERE program_id=%s AND member_id='dave'",
        program,
    )
    assert rows == [(2,)]
    assert check_member_invariants(database_url, program, "dave") == 30


async def test_business_refusals_are_remembered_under_their_key(
    core: ShardCore, program: str
) -> None:
    await core.submit(op("credit", program, "erin", 5, "seed"))
    refused = await core.submit(op("debit", program, "erin", 10, "big"))
    assert not refused.succeeded
    await core.submit(op("credit", program, "erin", 100, "topup"))
    replayed = await core.submit(op("debit", program, "erin", 10, "big"))
    assert replayed.replayed is True and replayed.code is Code.INSUFFICIENT_POINTS


async def test_two_owners_of_one_slot_only_one_commits(database_url: str, program: str) -> None:
    """Fencing: a stale owner's commit fails, it reloads, and the retry is correct."""
    owner_a = ShardCore(LedgerRepo(database_url))
    owner_b = ShardCore(LedgerRepo(database_url))
    try:
        assert (
            await owner_a.submit(op("credit", program, "frank", 100, "a1"))
        ).code is Code.CREATED
        # B loads the account and moves it on; A's cached copy is now stale.
        assert (await owner_b.submit(op("debit", program, "frank", 60, "b1"))).code is Code.CREATED
        stale = await owner_a.submit(op("debit", program, "frank", 60, "a2"))
        assert stale.code is Code.UNAVAILABLE and stale.code == "unavailable"
        assert owner_a.stats["fenced"] == 1, stale
        retried = await owner_a.submit(op("debit", program, "frank", 60, "a2"))
        assert retried.code == "insufficient_points"
        ok = await owner_a.submit(op("debit", program, "frank", 40, "a3"))
        assert ok.code is Code.CREATED and ok.body["balance_after"] == 0
    finally:
        await owner_a.close()
        await owner_b.close()
    assert check_member_invariants(database_url, program, "frank") == 0


class FailingOnce(LedgerRepo):
    """The real repository, with one injected commit failure (a fault, not a mock)."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.fail_next = False

    async def commit_batch(self, batch: BatchWrite, now: datetime) -> None:
        if self.fail_next:
            self.fail_next = False
            raise psycopg.OperationalError("injected: connection lost during commit")
        await super().commit_batch(batch, now)


class LostAfterCommit(LedgerRepo):
    """The real repository whose next commit goes through and is then reported lost, as
    when the connection dies after COMMIT reached the server but before its answer did."""

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self.lose_next = False
        self.commits = 0

    async def commit_batch(self, batch: BatchWrite, now: datetime) -> None:
        await super().commit_batch(batch, now)
        self.commits += 1
        if self.lose_next:
            self.lose_next = False
            raise psycopg.OperationalError("injected: connection lost after COMMIT")


async def test_failed_commit_fails_the_batch_and_changes_nothing(
    database_url: str, program: str
) -> None:
    """Without re-runs (commit_retry_s=0) a lost connection fails the batch, retryably."""
    repo = FailingOnce(database_url)
    shard = ShardCore(repo, commit_retry_s=0)
    try:
        await shard.submit(op("credit", program, "gina", 10, "seed"))
        repo.fail_next = True
        failed = await asyncio.gather(
            *(shard.submit(op("debit", program, "gina", 1, f"x{i}")) for i in range(5))
        )
        assert all(r.code is Code.UNAVAILABLE for r in failed)
        view = await shard.get_account(program, "gina")
        assert view is not None and view["balance"]["available"] == 10
        retried = await asyncio.gather(
            *(shard.submit(op("debit", program, "gina", 1, f"x{i}")) for i in range(5))
        )
        assert all(r.code is Code.CREATED and not r.replayed for r in retried)
    finally:
        await shard.close()
    assert check_member_invariants(database_url, program, "gina") == 5


async def test_a_commit_whose_connection_died_runs_again_and_nobody_sees_an_error(
    database_url: str, program: str
) -> None:
    """The shard runs a batch whose connection died once more (fresh prefetch): the
    callers get their answers, not `unavailable`."""
    repo = FailingOnce(database_url)
    shard = ShardCore(repo)
    try:
        await shard.submit(op("credit", program, "gabe", 10, "seed"))
        repo.fail_next = True
        results = await asyncio.gather(
            *(shard.submit(op("debit", program, "gabe", 1, f"x{i}")) for i in range(5))
        )
        assert [r.code for r in results] == [Code.CREATED] * 5
        assert (await shard.ping())["reruns"] == 1
    finally:
        await shard.close()
    assert check_member_invariants(database_url, program, "gabe") == 5


async def test_a_batch_that_committed_before_its_connection_died_is_never_applied_twice(
    database_url: str, program: str
) -> None:
    """The dangerous case for a re-run: the first run did commit. The re-run reloads the
    accounts, finds the batch's idempotency keys taken and answers the stored outcomes:
    every debit moved points exactly once, a new member was created once."""
    repo = LostAfterCommit(database_url)
    shard = ShardCore(repo)
    try:
        await shard.submit(op("credit", program, "hugo", 10, "seed"))
        repo.lose_next = True
        debits = [shard.submit(op("debit", program, "hugo", 2, f"d{i}")) for i in range(3)]
        results = await asyncio.gather(*debits, shard.submit(op("credit", program, "ivy", 7, "c")))
        assert [r.code for r in results] == [Code.CREATED] * 4
        assert repo.commits == 2  # the lost one, and the seed; the re-run wrote nothing
        # The answers are the stored ones, and a client's retry still replays them.
        again = await shard.submit(op("debit", program, "hugo", 2, "d0"))
        assert again.replayed and again.body == results[0].body
    finally:
        await shard.close()
    assert check_member_invariants(database_url, program, "hugo") == 4
    assert check_member_invariants(database_url, program, "ivy") == 7


async def test_unknown_program_and_member_are_not_found(core: ShardCore, program: str) -> None:
    missing_program = await core.submit(op("credit", "no-such-program", "m", 1, "k"))
    assert missing_program.code is Code.NOT_FOUND
    missing_member = await core.submit(op("debit", program, "nobody", 1, "k"))
    assert missing_member.code is Code.NOT_FOUND
    assert await core.get_account(program, "nobody") is None


async def test_expiring_lots_are_spent_first_and_persisted(
    core: ShardCore, program: str, database_url: str
) -> None:
    await core.submit(op("credit", program, "hank", 10, "forever"))
    await core.submit(
        op(
            "credit",
            program,
            "hank",
            10,
            "soon",
            expires_at=datetime.fromisoformat("2099-01-01T00:00:00+00:00"),
        )
    )
    await core.submit(op("debit", program, "hank", 12, "spend"))
    rows = db_rows(
        database_url,
        "SELECT expires_at IS NULL, remaining FROM lots WHERE program_id=%s AND member_id='hank'"
        " ORDER BY expires_at NULLS LAST",
        program,
    )
    assert rows == [(False, 0), (True, 8)]


def test_ledger_is_append_only_and_constraints_hold(database_url: str) -> None:
    with psycopg.connect(database_url) as conn:
        with pytest.raises(psycopg.errors.RestrictViolation):
            conn.execute("UPDATE transactions SET points = points + 1")
        conn.rollback()
        with pytest.raises(psycopg.errors.RestrictViolation):
            conn.execute("DELETE FROM ledger_entries")
        conn.rollback()
        conn.execute(
            "INSERT INTO programs (program_id, name) VALUES ('cons', 'c') ON CONFLICT DO NOTHING"
        )
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO accounts (program_id, member_id, balance, version, lifetime_earned,"
                " lifetime_spent) VALUES ('cons', 'neg', -1, 1, 0, 0)"
            )
        conn.rollback()


async def test_reads_and_pings_during_group_commits_do_not_disturb_writes(
    core: ShardCore, program: str, database_url: str
) -> None:
    """Reads and readiness pings use their own connection, never the batch loop's."""
    for i in range(20):
        await core.submit(op("credit", program, f"busy{i}", 1000, "seed"))
    cold = ShardCore(LedgerRepo(database_url))  # cache misses: every read hits PostgreSQL
    try:
        writes = [
            core.submit(op("debit", program, f"busy{i % 20}", 1, f"w{i}")) for i in range(300)
        ]
        reads = [cold.get_account(program, f"busy{i % 20}") for i in range(100)]
        pings = [core.ping() for _ in range(50)]
        results = await asyncio.gather(*writes, *reads, *pings)
    finally:
        await cold.close()
    assert [r.code for r in results[:300]] == [Code.CREATED] * 300
    views = results[300:400]
    assert all(v is not None and 985 <= v["balance"]["available"] <= 1000 for v in views)
    assert all("queued" in p for p in results[400:])
    for i in range(20):
        assert check_member_invariants(database_url, program, f"busy{i}") == 985


async def test_a_tiny_cache_never_turns_known_members_into_unknown_ones(
    database_url: str, program: str
) -> None:
    """The LRU evicts while a batch loads its accounts; the batch must still see them."""
    seeder = ShardCore(LedgerRepo(database_url))
    for i in range(8):
        await seeder.submit(op("credit", program, f"lru{i}", 10, "seed"))
    await seeder.close()
    tiny = ShardCore(LedgerRepo(database_url), accounts_cached_max=2)
    try:
        results = await asyncio.gather(
            *(tiny.submit(op("debit", program, f"lru{i % 8}", 1, f"t{i}")) for i in range(40))
        )
    finally:
        await tiny.close()
    assert [r.code for r in results] == [Code.CREATED] * 40
    for i in range(8):
        assert check_member_invariants(database_url, program, f"lru{i}") == 5


async def test_a_refusal_on_a_member_created_in_the_same_batch_is_remembered(
    core: ShardCore, program: str
) -> None:
    first, refused = await asyncio.gather(
        core.submit(op("credit", program, "newbie", 5, "c")),
        core.submit(op("debit", program, "newbie", 50, "d")),
    )
    assert first.code is Code.CREATED
    assert refused.code == "insufficient_points"
    await core.submit(op("credit", program, "newbie", 100, "c2"))
    again = await core.submit(op("debit", program, "newbie", 50, "d"))
    assert again.replayed is True


async def test_replay_and_conflict_of_an_uncached_key_in_one_batch(
    database_url: str, program: str, core: ShardCore
) -> None:
    """Key K committed with body X; after a restart a batch holds [K/Y, K/X]."""
    original = await core.submit(op("credit", program, "ivy", 10, "K"))
    restarted = ShardCore(LedgerRepo(database_url))
    try:
        different, same = await asyncio.gather(
            restarted.submit(op("credit", program, "ivy", 11, "K")),
            restarted.submit(op("credit", program, "ivy", 10, "K")),
        )
    finally:
        await restarted.close()
    assert different.code == "idempotency_conflict"
    assert same.code is Code.CREATED and same.replayed and same.body == original.body
    assert check_member_invariants(database_url, program, "ivy") == 10
