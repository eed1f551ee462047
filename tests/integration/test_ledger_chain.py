"""The tamper-evident ledger: every group commit leaves its transactions pending for its
shard's hash chain, and the shard seals them into links; `run_checks` and `points verify`
recompute every chain and name the first broken link when a row was changed, deleted or
inserted behind the service's back."""

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from actors.routing import slot_of
from actors.shard_core import ShardCore
from actors.topology import EverythingOwned
from db.engine import migrate
from db.ledger_chain import TXN_DOCUMENT, link_hash_of
from db.ledger_repo import LedgerRepo
from db.verify_repo import CHAIN_LINKED, CHAIN_SEALED, CHAIN_SOUND, Result, run_checks
from tests.conftest import temporary_database
from tests.integration.test_shard_core import op

SHARDS = 3
MEMBERS_PER_SHARD = 6
ROUNDS = 4


class OwnedAs(EverythingOwned):
    """Every slot, as shard `shard` (so each test shard appends to its own chain)."""

    def __init__(self, shard: int) -> None:
        super().__init__("account", slot_of)
        self.shard = shard


async def traffic(url: str) -> None:
    """SHARDS shards at once, each over its own members, in many small batches."""

    async def shard(n: int) -> None:
        core = ShardCore(LedgerRepo(url), ownership=OwnedAs(n), batch_max=4)
        try:
            members = [f"s{n}m{i}" for i in range(MEMBERS_PER_SHARD)]
            await asyncio.gather(*(core.submit(op("credit", "shop", m, 100, "c")) for m in members))
            await core.seal_chain()
            for r in range(ROUNDS):
                await asyncio.gather(
                    *(core.submit(op("debit", "shop", m, 3, f"d{r}")) for m in members)
                )
                if r < ROUNDS - 1:  # the last round is sealed by close()
                    await core.seal_chain()
        finally:
            await core.close()

    await asyncio.gather(*(shard(n) for n in range(SHARDS)))


@pytest.fixture(scope="module")
def honest(pg_admin_url: str) -> Iterator[str]:
    """A database with honest traffic on SHARDS chains; tests that tamper use `tampered`."""
    with temporary_database(pg_admin_url, "points_chain") as url:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO programs (program_id, name) VALUES ('shop', 'Shop')")
        asyncio.run(traffic(url))
        yield url


@pytest.fixture
def tampered(pg_admin_url: str, honest: str) -> Iterator[str]:
    """A copy of the honest database, to tamper with."""
    name = honest.rsplit("/", 1)[1]
    with temporary_database(pg_admin_url, "points_chain_copy") as url:
        copy = url.rsplit("/", 1)[1]
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {copy}")  # type: ignore[arg-type]
            conn.execute(f"CREATE DATABASE {copy} TEMPLATE {name}")  # type: ignore[arg-type]
        yield url


def results(url: str) -> dict[str, Result]:
    return {result.name: result for result in run_checks(url)}


def superuser(url: str, *statements: str) -> None:
    """Statements run as a superuser with the ledger's append-only triggers off."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def links(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT chain, seq, prev_hash, hash, txn_ids FROM ledger_chain ORDER BY chain, seq"
        ).fetchall()


def test_every_batch_links_its_transactions_into_its_shards_chain(honest: str) -> None:
    chain = links(honest)
    assert {link[0] for link in chain} == {f"account-{n}" for n in range(SHARDS)}
    for name in {link[0] for link in chain}:
        mine = [link for link in chain if link[0] == name]
        assert [link[1] for link in mine] == list(range(1, len(mine) + 1))
        assert len(mine) == 1 + ROUNDS  # one link per seal
        assert mine[0][2] is None
        for before, after in itertools.pairwise(mine):
            assert after[2] == before[3]
    linked = [txn for link in chain for txn in link[4]]
    assert len(linked) == len(set(linked)) == SHARDS * MEMBERS_PER_SHARD * (1 + ROUNDS)
    checks = results(honest)
    assert [name for name, result in checks.items() if result.violations] == []
    assert CHAIN_LINKED in checks and CHAIN_SOUND in checks


def test_a_link_recomputes_in_python_from_the_canonical_documents(honest: str) -> None:
    """The hash is what the module docstring says: sha256(prev_hash || documents)."""
    with psycopg.connect(honest) as conn:
        for _chain, _seq, prev, digest, txn_ids in links(honest)[:3]:
            documents = [
                row[0]
                for row in conn.execute(
                    f"SELECT {TXN_DOCUMENT} FROM transactions t"  # type: ignore[arg-type]
                    " WHERE t.txn_id = ANY(%s) ORDER BY t.txn_id",
                    (txn_ids,),
                )
            ]
            assert len(documents) == len(txn_ids)
            assert link_hash_of(prev, documents) == digest


def test_the_chain_does_not_depend_on_the_session_time_zone(tampered: str) -> None:
    name = tampered.rsplit("/", 1)[1]
    with psycopg.connect(tampered, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {name} SET timezone = 'Asia/Kathmandu'")  # type: ignore[arg-type]
    assert [name for name, result in results(tampered).items() if result.violations] == []


def _link_of(url: str, chain: str, seq: int) -> list[uuid.UUID]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT txn_ids FROM ledger_chain WHERE chain = %s AND seq = %s", (chain, seq)
        ).fetchone()
    assert row is not None
    return list(row[0])


def first_broken(url: str) -> list[tuple[Any, ...]]:
    sound = results(url)[CHAIN_SOUND]
    assert sound.violations > 0
    return sound.examples


def test_a_transaction_changed_in_place_breaks_its_link(tampered: str) -> None:
    txn = _link_of(tampered, "account-1", 3)[0]
    superuser(tampered, f"UPDATE transactions SET points = points + 1 WHERE txn_id = '{txn}'")
    [example] = first_broken(tampered)
    chain, seq, created_at, reason, culprits = example
    assert (chain, seq) == ("account-1", 3) and created_at is not None
    assert "changed" in reason and str(txn) in culprits


def test_a_ledger_entry_changed_in_place_breaks_its_link(tampered: str) -> None:
    txn = _link_of(tampered, "account-2", 2)[0]
    superuser(
        tampered,
        f"UPDATE ledger_entries SET amount = amount * 2 WHERE txn_id = '{txn}'",  # still balanced
    )
    assert [example[:2] for example in first_broken(tampered)] == [("account-2", 2)]


def test_a_deleted_link_is_reported_and_its_transactions_are_unlinked(tampered: str) -> None:
    removed = _link_of(tampered, "account-0", 2)
    superuser(tampered, "DELETE FROM ledger_chain WHERE chain = 'account-0' AND seq = 2")
    checks = results(tampered)
    [example] = checks[CHAIN_SOUND].examples
    assert example[:2] == ("account-0", 3) and "seq skips" in example[3]
    assert checks[CHAIN_LINKED].violations == len(removed)
    assert {row[0] for row in checks[CHAIN_LINKED].examples} <= set(removed)


def test_a_deleted_transaction_is_reported_as_missing_from_its_link(tampered: str) -> None:
    # A debit (nothing refers to it): its entries go with it, the books stay balanced.
    txn = _link_of(tampered, "account-1", 4)[0]
    superuser(
        tampered,
        f"DELETE FROM ledger_entries WHERE txn_id = '{txn}'",
        f"DELETE FROM transactions WHERE txn_id = '{txn}'",
    )
    [example] = first_broken(tampered)
    assert example[:2] == ("account-1", 4) and "missing" in example[3]
    assert example[4] == f"missing: {txn}"


def test_a_transaction_inserted_behind_the_service_is_in_no_link(tampered: str) -> None:
    txn = uuid.uuid4()
    with psycopg.connect(tampered, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO transactions (txn_id, program_id, member_id, kind, points, reason,"
            " balance_after, created_at, allocations)"
            " VALUES (%s, 'shop', 's0m0', 'credit', 5, 'gift', 0, now(), '[]')",
            (txn,),
        )
    linked = results(tampered)[CHAIN_LINKED]
    assert linked.violations == 1 and linked.examples[0][0] == txn


def test_points_verify_exits_non_zero_and_names_the_first_broken_link(tampered: str) -> None:
    from typer.testing import CliRunner

    from serve_app.cli import app

    runner = CliRunner()
    honest = runner.invoke(app, ["verify", "--database-url", tampered])
    assert honest.exit_code == 0, honest.output
    txn = _link_of(tampered, "account-0", 2)[0]
    superuser(tampered, f"UPDATE transactions SET reason = 'x' WHERE txn_id = '{txn}'")
    broken = runner.invoke(app, ["verify", "--database-url", tampered], terminal_width=400)
    assert broken.exit_code == 1
    assert "('account-0', 2," in broken.output and "1 failed" in broken.output


def test_commits_leave_their_transactions_pending_until_sealed(pg_admin_url: str) -> None:
    """A commit records its transactions as pending (cheap, inside the commit); sealing
    links them; the checks count pending as linked, seal first, and report a pending row
    that cannot be sealed (its transactions are gone) once it is a minute old."""
    with temporary_database(pg_admin_url, "points_pending") as url:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO programs (program_id, name) VALUES ('shop', 'Shop')")

        async def commit_then_look() -> tuple[int, int, int]:
            core = ShardCore(LedgerRepo(url))
            try:
                await asyncio.gather(
                    *(core.submit(op("credit", "shop", f"m{i}", 10, "c")) for i in range(8))
                )
                with psycopg.connect(url) as conn:
                    pending = conn.execute("SELECT count(*) FROM ledger_chain_pending").fetchone()
                    linked = conn.execute("SELECT count(*) FROM ledger_chain").fetchone()
                sealed = await core.seal_chain()
                return pending[0] if pending else -1, linked[0] if linked else -1, sealed
            finally:
                await core.close()

        pending, linked, sealed = asyncio.run(commit_then_look())
        assert pending >= 1 and linked == 0 and sealed == 8
        assert not [r.name for r in run_checks(url) if r.violations]

        # A pending row whose transaction does not exist, an hour old: sealing it fails,
        # and the checks say so (and that a transaction is missing from its link).
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO ledger_chain_pending (chain, txn_ids, created_at)"
                " VALUES ('account-0', ARRAY[%s]::uuid[], now() - interval '1 hour')",
                (uuid.uuid4(),),
            )
        failed = {r.name: r for r in run_checks(url) if r.violations}
        assert CHAIN_SEALED in failed and failed[CHAIN_SEALED].violations == 1
