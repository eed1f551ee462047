"""PostgreSQL stopped, crashed and restarted under load, and shards overloaded: against
real servers. The faults hit a PostgreSQL of this module's own (embedded, in a temp dir),
never the shared one; the overload test uses the session's database."""

import asyncio
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from actors.breaker import Breaker, BreakerState
from actors.protocol import Credit, Debit
from actors.shard_core import ShardCore
from db.api_repo import ApiRepo
from db.embedded import EmbeddedPostgres
from db.engine import migrate
from db.ledger_repo import LedgerRepo
from db.topology_repo import TopologyRepo
from domain.errors import Code
from domain.idempotency import request_hash
from tests.conftest import temporary_database

# Every wait in this module is bounded by one of these.
ANSWER_TIMEOUT_S = 30.0
FAST_S = 0.05


@pytest.fixture(scope="module")
def own_pg() -> Iterator[tuple[EmbeddedPostgres, str]]:
    """A PostgreSQL of our own (it gets crashed) and a migrated database on it."""
    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="points-faults-pg-")))
    admin_url = pg.start()
    try:
        with temporary_database(admin_url, "points_faults") as dsn:
            migrate(dsn)
            yield pg, dsn
    finally:
        if not pg.running():
            pg.resume()
        pg.stop()


def new_program(dsn: str) -> str:
    program_id = f"prog-{secrets.token_hex(4)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO programs (program_id, name) VALUES (%s, 'Test')", (program_id,))
    return program_id


def write(kind: str, program: str, member: str, points: int, key: str) -> Credit | Debit:
    fields = {"points": points, "reason": "test"}
    command = Credit if kind == "credit" else Debit
    return command(
        program_id=program,
        member_id=member,
        key=key,
        request_hash=request_hash(kind, {"program_id": program, "member_id": member, **fields}),
        **fields,
    )


async def until_answered(shard: ShardCore, command: Credit | Debit) -> tuple[Any, int]:
    """Submit, retrying `unavailable` with the same key (what a client does); the final
    outcome and how many `unavailable` answers it took."""
    unavailable = 0
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while True:
        outcome = await asyncio.wait_for(shard.submit(command), ANSWER_TIMEOUT_S)
        if outcome.code is not Code.UNAVAILABLE:
            return outcome, unavailable
        unavailable += 1
        assert time.monotonic() < deadline, "no answer within the test's bound"
        await asyncio.sleep(0.02)


def books(dsn: str, program: str) -> dict[str, Any]:
    """Per member: balance, its ledger sum; per key: how many transactions."""
    with psycopg.connect(dsn) as conn:
        balances = dict(
            conn.execute(
                "SELECT member_id, balance FROM accounts WHERE program_id = %s", (program,)
            ).fetchall()
        )
        ledger = dict(
            conn.execute(
                "SELECT member_id, sum(amount) FROM ledger_entries WHERE program_id = %s"
                " AND account = 'member' GROUP BY member_id",
                (program,),
            ).fetchall()
        )
        keys = dict(
            conn.execute(
                "SELECT idempotency_key, count(*) FROM transactions WHERE program_id = %s"
                " GROUP BY idempotency_key",
                (program,),
            ).fetchall()
        )
    return {"balances": balances, "ledger": ledger, "keys": keys}


@pytest.fixture
async def shard(own_pg: tuple[EmbeddedPostgres, str]) -> AsyncIterator[ShardCore]:
    """A shard with the default breaker and re-run budget (serve_app/settings.py)."""
    _, dsn = own_pg
    core = ShardCore(LedgerRepo(dsn))
    yield core
    await core.close()


@pytest.fixture
async def touchy_shard(own_pg: tuple[EmbeddedPostgres, str]) -> AsyncIterator[ShardCore]:
    """A shard whose breaker opens after 3 failures and cools down for half a second."""
    _, dsn = own_pg
    core = ShardCore(LedgerRepo(dsn), breaker=Breaker(3, cooldown_s=0.5), commit_retry_s=3.0)
    yield core
    await core.close()


async def test_stopped_database_opens_the_breaker_fails_fast_and_closes_when_back(
    own_pg: tuple[EmbeddedPostgres, str], touchy_shard: ShardCore
) -> None:
    pg, dsn = own_pg
    shard = touchy_shard
    program = new_program(dsn)
    assert (await shard.submit(write("credit", program, "ann", 100, "seed"))).succeeded
    pg.halt()
    try:
        # The first batch is run again until the breaker opens (3 failures), then fails.
        first = await asyncio.wait_for(
            shard.submit(write("debit", program, "ann", 1, "d0")), ANSWER_TIMEOUT_S
        )
        assert first.code is Code.UNAVAILABLE
        assert shard.breaker.state is BreakerState.OPEN
        # While it cools down every answer is immediate.
        for i in range(1, 20):
            started = time.monotonic()
            fast = await shard.submit(write("debit", program, "ann", 1, f"d{i}"))
            assert fast.code is Code.UNAVAILABLE and "circuit open" in fast.detail
            assert time.monotonic() - started < FAST_S
    finally:
        pg.resume()
    # Back: retried with the same keys, everything lands exactly once.
    results = [
        await until_answered(shard, write("debit", program, "ann", 1, f"d{i}")) for i in range(20)
    ]
    assert all(outcome.code is Code.CREATED for outcome, _ in results)
    assert shard.breaker.state is BreakerState.CLOSED and shard.breaker.opened >= 1
    book = books(dsn, program)
    assert book["balances"] == {"ann": 80} == book["ledger"]
    assert set(book["keys"].values()) == {1}


WRITERS = 16
WRITES_PER_WRITER = 60
MEMBERS = 20


async def test_crash_and_restart_under_load_costs_latency_not_errors(
    own_pg: tuple[EmbeddedPostgres, str], shard: ShardCore
) -> None:
    """Two crashes (each back within a second) while 16 writers credit and debit: every
    write is answered once, nothing is lost or doubled, and a cold read, a ping and a
    program write right after each crash do not fail."""
    pg, dsn = own_pg
    program = new_program(dsn)
    api = ApiRepo(dsn, pool_min=4, pool_max=4)
    await api.open()
    seeds = [write("credit", program, f"m{i}", 1000, f"seed{i}") for i in range(MEMBERS)]
    assert all(o.succeeded for o in await asyncio.gather(*map(shard.submit, seeds)))
    await asyncio.gather(*(api.get_program(program) for _ in range(4)))  # warm the pool
    expected: dict[str, int] = {f"m{i}": 1000 for i in range(MEMBERS)}
    unavailable = 0
    latencies: list[float] = []

    async def writer(w: int) -> None:
        nonlocal unavailable
        for n in range(WRITES_PER_WRITER):
            member = f"m{(w * 7 + n) % MEMBERS}"
            kind = "credit" if n % 2 else "debit"
            started = time.monotonic()
            outcome, failed = await until_answered(
                shard, write(kind, program, member, 1 + n % 3, f"w{w}-{n}")
            )
            latencies.append(time.monotonic() - started)
            unavailable += failed
            assert outcome.code is Code.CREATED, outcome
            expected[member] += (1 + n % 3) * (1 if kind == "credit" else -1)
            await asyncio.sleep(0.005)

    async def crashes() -> list[str]:
        problems = []
        for _ in range(2):
            await asyncio.sleep(0.4)
            await asyncio.to_thread(pg.crash_and_restart)
            # Right after: a cold read (the shard's reader), a ping, a program write (the
            # ingress's pool): each met a stale connection; none may fail.
            for name, call in (
                ("cold read", lambda: shard.get_account(program, "nobody")),
                ("ping", shard.ping),
                ("program write", lambda: api.put_program(program, "renamed")),
                ("program read", lambda: api.get_program(program)),
            ):
                try:
                    await asyncio.wait_for(call(), ANSWER_TIMEOUT_S)
                except Exception as exc:
                    problems.append(f"{name}: {exc!r}")
        return problems

    try:
        problems, *_ = await asyncio.gather(crashes(), *(writer(w) for w in range(WRITERS)))
    finally:
        await api.close()
    assert problems == []
    # Writes whose connection died were run again by the shard: at most a handful of
    # callers saw `unavailable` (a batch still failing after its retry budget).
    assert unavailable <= WRITERS, unavailable
    latencies.sort()
    assert latencies[int(len(latencies) * 0.99)] < 5.0
    book = books(dsn, program)
    assert book["balances"] == expected == book["ledger"]
    assert len(book["keys"]) == MEMBERS + WRITERS * WRITES_PER_WRITER
    assert set(book["keys"].values()) == {1}  # nothing doubled


async def test_far_more_requests_than_the_queue_holds_are_shed_at_once(
    database_url: str,
) -> None:
    """5,000 writes at once at a shard whose queue holds 200: the excess is refused
    `unavailable` at once (503 with Retry-After at the edge), the accepted writes all
    commit with a bounded wait, nothing times out."""
    program = new_program(database_url)
    core = ShardCore(LedgerRepo(database_url), queued_max=200, batch_max=100)
    try:
        started = time.monotonic()
        futures = [
            core.enqueue(write("credit", program, f"m{i % 50}", 1, f"k{i}")) for i in range(5000)
        ]
        shed = [f for f in futures if f.done()]
        shed_s = time.monotonic() - started  # they were answered while being submitted
        accepted = [f for f in futures if not f.done()]
        finished: dict[int, float] = {}
        for index, future in enumerate(accepted):
            future.add_done_callback(
                lambda _f, i=index: finished.__setitem__(i, time.monotonic() - started)
            )
        results = await asyncio.wait_for(asyncio.gather(*accepted), ANSWER_TIMEOUT_S)
    finally:
        await core.close()
    assert all(f.result().code is Code.UNAVAILABLE for f in shed)
    assert len(shed) >= 4000 and shed_s < 1.0
    assert [r.code for r in results] == [Code.CREATED] * len(accepted)
    waits = sorted(finished.values())
    p99_s = waits[int(len(waits) * 0.99)]
    assert p99_s < 5.0, p99_s
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM transactions WHERE program_id = %s", (program,)
        ).fetchone()
    assert row is not None and row[0] == len(accepted)


async def test_reads_wait_out_a_short_restart_instead_of_failing(
    own_pg: tuple[EmbeddedPostgres, str],
) -> None:
    """A shard's reader and a topology read asked while the server is down: they retry (a
    read is always safe to run again) and answer once it is back, within READ_RETRY_S."""
    pg, dsn = own_pg
    reader = LedgerRepo(dsn).reader()
    topology = TopologyRepo(dsn)
    await reader.ping()
    await topology.version("account")
    pg.halt()
    try:
        pending = asyncio.gather(reader.ping(), topology.version("account"))
        await asyncio.sleep(0.3)
        assert not pending.done()
    finally:
        await asyncio.to_thread(pg.resume)
    await asyncio.wait_for(pending, ANSWER_TIMEOUT_S)
    await reader.close()
    await topology.close()
