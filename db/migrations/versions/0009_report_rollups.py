"""Reports: daily rollups of the ledger, kept by the group commit, and read indexes

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 10:00:00

`report_daily_flows`: per program, UTC day, transaction kind and writer chain, the points
and the number of transactions. `report_daily_lots`: per program, UTC day a lot was created
(its cohort), and writer chain, the points issued into lots, what is left in them, and
what was taken from them by expiry and by reversals. Each account shard adds its group
commit's sums to its own chain's rows in the same transaction as the ledger rows
(db/ledger_repo.py), so the rollups are always exact and fresh, and shards never contend
on a row. The reports (db/reports_repo.py) sum over chains.

Existing data is rolled up here into the chain `backfill` by the very statements the
integration tests compare the rollups with. Indexes for the reports that read source
tables: transactions by (program, time) for member activity, redemptions by (program,
time), open lots by (program, expiry).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from db.reports_repo import BACKFILL_CHAIN, BACKFILL_DAILY_FLOWS, BACKFILL_DAILY_LOTS

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "report_daily_flows",
        sa.Column("program_id", sa.Text(), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("kind", sa.Text(), primary_key=True),
        sa.Column("chain", sa.Text(), primary_key=True),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("txns", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("points >= 0 AND txns >= 0", name="report_daily_flows_nonnegative"),
    )
    op.create_table(
        "report_daily_lots",
        sa.Column("program_id", sa.Text(), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("chain", sa.Text(), primary_key=True),
        sa.Column("issued", sa.BigInteger(), nullable=False),
        sa.Column("remaining", sa.BigInteger(), nullable=False),
        sa.Column("expired", sa.BigInteger(), nullable=False),
        sa.Column("reversed", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        "transactions_by_time",
        "transactions",
        ["program_id", "created_at"],
        postgresql_include=["member_id", "kind"],
    )
    op.create_index("redemptions_by_time", "redemptions", ["program_id", "created_at"])
    op.create_index(
        "lots_open_by_expiry",
        "lots",
        ["program_id", "expires_at"],
        postgresql_include=["remaining"],
        postgresql_where=sa.text("remaining > 0 AND expires_at IS NOT NULL"),
    )
    conn = op.get_bind()
    conn.exec_driver_sql(BACKFILL_DAILY_FLOWS, {"chain": BACKFILL_CHAIN})
    conn.exec_driver_sql(BACKFILL_DAILY_LOTS, {"chain": BACKFILL_CHAIN})


def downgrade() -> None:
    op.drop_index("lots_open_by_expiry", table_name="lots")
    op.drop_index("redemptions_by_time", table_name="redemptions")
    op.drop_index("transactions_by_time", table_name="transactions")
    op.drop_table("report_daily_lots")
    op.drop_table("report_daily_flows")
