"""Migration 0008 (the hash chain) over data the previous version wrote: every existing
transaction is linked into the chain `genesis`, in chunks, so the upgraded database verifies
clean; new commits go on in the shard's own chain; tampering with an old row is caught; the
downgrade drops the chain and nothing else.

The rows are written by SQL on a database at revision 0007 (as the previous version's
shards wrote them), more than one genesis chunk of them, some at the same instant (the
backfill orders by (created_at, txn_id)).
"""

from collections.abc import Iterator

import psycopg
import pytest

from actors.shard_core import ShardCore
from db.engine import migrate
from db.ledger_chain import GENESIS_CHAIN, GENESIS_LINK_TXNS_MAX
from db.ledger_repo import LedgerRepo
from db.verify_repo import CHAIN_LINKED, CHAIN_SOUND, run_checks
from tests.conftest import temporary_database
from tests.integration.test_shard_core import op

OLD_TXNS = 2 * GENESIS_LINK_TXNS_MAX + 17  # three genesis links
MEMBERS = 50


@pytest.fixture
def old_database(pg_admin_url: str) -> Iterator[str]:
    with temporary_database(pg_admin_url, "points_upgrade8") as url:
        migrate(url, "0007")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO programs (program_id, name) VALUES ('shop', 'Shop')")
            # Members with every credit in their balance (the books balance exactly).
            conn.execute(
                "INSERT INTO accounts (program_id, member_id, balance, version,"
                " lifetime_earned, lifetime_spent, created_at, updated_at)"
                " SELECT 'shop', 'm' || m, count(*) FILTER (WHERE i %% %s = m), 1,"
                "        count(*) FILTER (WHERE i %% %s = m), 0, now(), now()"
                " FROM generate_series(0, %s - 1) m, generate_series(0, %s - 1) i GROUP BY m",
                (MEMBERS, MEMBERS, MEMBERS, OLD_TXNS),
            )
            # Credits of 1 point, three to a second (ties on created_at).
            conn.execute(
                "INSERT INTO transactions (txn_id, program_id, member_id, kind, points, reason,"
                " balance_after, created_at, allocations)"
                " SELECT gen_random_uuid(), 'shop', 'm' || (i %% %s), 'credit', 1, 'old',"
                "        i / %s + 1, timestamptz '2026-06-01 00:00Z' + (i / 3) * interval '1 s',"
                "        '[]'"
                " FROM generate_series(0, %s - 1) i",
                (MEMBERS, MEMBERS, OLD_TXNS),
            )
            conn.execute(
                "INSERT INTO ledger_entries (txn_id, program_id, account, member_id, amount,"
                " created_at)"
                " SELECT txn_id, program_id, leg.account, leg.member, leg.amount, created_at"
                " FROM transactions CROSS JOIN LATERAL (VALUES ('member', member_id, 1),"
                "   ('system:issued', NULL, -1)) AS leg(account, member, amount)"
            )
            # The balances live in lots (one per member, holding every credit).
            conn.execute(
                "INSERT INTO lots (lot_id, program_id, member_id, txn_id, original, remaining,"
                " created_at)"
                " SELECT gen_random_uuid(), program_id, member_id, min(txn_id::text)::uuid,"
                "        count(*), count(*), min(created_at)"
                " FROM transactions GROUP BY program_id, member_id"
            )
        yield url


def chains(url: str) -> list[tuple[str, int, int]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT chain, seq, cardinality(txn_ids) FROM ledger_chain ORDER BY chain, seq"
        ).fetchall()


def failed(url: str) -> dict[str, list[object]]:
    return {r.name: r.examples for r in run_checks(url) if r.violations}


async def test_old_transactions_are_linked_into_genesis_and_verify_clean(
    old_database: str,
) -> None:
    assert failed(old_database) == {}  # the old books are whole (no chain to check yet)
    migrate(old_database)
    assert chains(old_database) == [
        (GENESIS_CHAIN, 1, GENESIS_LINK_TXNS_MAX),
        (GENESIS_CHAIN, 2, GENESIS_LINK_TXNS_MAX),
        (GENESIS_CHAIN, 3, 17),
    ]
    with psycopg.connect(old_database) as conn:
        # The chunks follow (created_at, txn_id): each link holds older ones than the next.
        rows = conn.execute(
            "SELECT l.seq, t.created_at, t.txn_id FROM ledger_chain l"
            " JOIN transactions t ON t.txn_id = ANY(l.txn_ids) ORDER BY l.seq"
        ).fetchall()
    spans = [sorted((at, txn) for seq, at, txn in rows if seq == n) for n in (1, 2, 3)]
    assert spans[0][-1] < spans[1][0] and spans[1][-1] < spans[2][0]
    assert failed(old_database) == {}
    # The service goes on in its shard's own chain.
    core = ShardCore(LedgerRepo(old_database))
    try:
        answer = await core.submit(op("debit", "shop", "m1", 5, "new"))
        assert answer.succeeded, answer
    finally:
        await core.close()
    assert [c for c in chains(old_database) if c[0] != GENESIS_CHAIN] == [("account-0", 1, 1)]
    assert failed(old_database) == {}
    # An old row changed behind the service's back breaks its genesis link.
    with psycopg.connect(old_database, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(
            "UPDATE ledger_entries SET created_at = created_at + interval '1 s' WHERE txn_id ="
            " (SELECT txn_ids[1] FROM ledger_chain WHERE chain = %s AND seq = 3)",
            (GENESIS_CHAIN,),
        )
    broken = failed(old_database)
    assert list(broken) == [CHAIN_SOUND]
    assert [example[:2] for example in broken[CHAIN_SOUND]] == [(GENESIS_CHAIN, 3)]


def test_the_downgrade_drops_the_chain_only(old_database: str) -> None:
    migrate(old_database)
    from alembic import command

    from db.engine import alembic_config

    command.downgrade(alembic_config(old_database), "0007")
    with psycopg.connect(old_database) as conn:
        row = conn.execute("SELECT to_regclass('ledger_chain'), count(*) FROM transactions")
        assert row.fetchone() == (None, OLD_TXNS)
    assert CHAIN_LINKED not in {r.name for r in run_checks(old_database)}
