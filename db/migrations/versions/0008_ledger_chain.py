"""Tamper-evident ledger: the hash chain of committed transactions

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 10:00:00

`ledger_chain` holds the links (each over one or more group commits' transactions), one
chain per account shard; it is append-only, like the ledger it links. `ledger_chain_pending`
holds what is committed but not linked yet (db/ledger_chain.py says how a link is made).

The transactions already written are linked into the chain `genesis`, GENESIS_LINK_TXNS_MAX
at a time in (created_at, txn_id) order, by the very statement the shards use
(`APPEND_LINK`), so an upgraded database verifies clean. Nothing existing changes: no row
of any other table is touched.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from db.ledger_chain import APPEND_LINK, GENESIS_CHAIN, GENESIS_LINK_TXNS_MAX

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _backfill_genesis() -> None:
    conn = op.get_bind()
    # Chunk numbers in one sort (not one sort per chunk): the table may be large.
    conn.exec_driver_sql(
        "CREATE TEMPORARY TABLE genesis_chunks ON COMMIT DROP AS"
        " SELECT (row_number() OVER (ORDER BY created_at, txn_id) - 1)"
        f" / {GENESIS_LINK_TXNS_MAX} AS chunk, txn_id FROM transactions"
    )
    conn.exec_driver_sql("CREATE INDEX ON genesis_chunks (chunk)")
    linked_at = conn.exec_driver_sql("SELECT now()").scalar_one()
    chunks = conn.exec_driver_sql("SELECT coalesce(max(chunk) + 1, 0) FROM genesis_chunks")
    for chunk in range(int(chunks.scalar_one())):
        ids = conn.exec_driver_sql(
            "SELECT array_agg(txn_id ORDER BY txn_id) FROM genesis_chunks WHERE chunk = %(c)s",
            {"c": chunk},
        ).scalar_one()
        linked = conn.exec_driver_sql(
            APPEND_LINK, {"chain": GENESIS_CHAIN, "txn_ids": ids, "at": linked_at}
        )
        assert linked.rowcount == 1, "every chunk of transactions gets its link"
    conn.exec_driver_sql("DROP TABLE genesis_chunks")


def upgrade() -> None:
    op.create_table(
        "ledger_chain",
        sa.Column("chain", sa.Text(), primary_key=True),
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("prev_hash", sa.LargeBinary()),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.Column("txn_ids", postgresql.ARRAY(sa.Uuid()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("seq > 0", name="ledger_chain_seq_positive"),
        sa.CheckConstraint("(seq = 1) = (prev_hash IS NULL)", name="ledger_chain_first_link"),
        sa.CheckConstraint("cardinality(txn_ids) > 0", name="ledger_chain_links_txns"),
    )
    # Append-only, like the ledger (points_refuse_change: migration 0001).
    op.execute(
        "CREATE TRIGGER ledger_chain_append_only BEFORE UPDATE OR DELETE ON ledger_chain "
        "FOR EACH ROW EXECUTE FUNCTION points_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER ledger_chain_no_truncate BEFORE TRUNCATE ON ledger_chain "
        "FOR EACH STATEMENT EXECUTE FUNCTION points_refuse_change()"
    )
    # Transactions committed but not sealed into a link yet (db/ledger_chain.py).
    op.create_table(
        "ledger_chain_pending",
        sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=True),
        sa.Column("chain", sa.Text(), nullable=False),
        sa.Column("txn_ids", postgresql.ARRAY(sa.Uuid()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ledger_chain_pending_chain", "ledger_chain_pending", ["chain", "id"])
    _backfill_genesis()


def downgrade() -> None:
    op.drop_table("ledger_chain_pending")
    op.drop_table("ledger_chain")
