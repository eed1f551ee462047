"""rewards, restocks, redemptions; refunds in the ledger

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 06:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    # Refunds: a compensation puts points back into the lots a debit took them from.
    op.drop_constraint("transactions_kind_known", "transactions", type_="check")
    op.create_check_constraint(
        "transactions_kind_known", "transactions", "kind IN ('credit', 'debit', 'refund')"
    )
    op.add_column("transactions", sa.Column("refers_to", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        "transactions_refers_to_fkey", "transactions", "transactions", ["refers_to"], ["txn_id"]
    )
    op.create_check_constraint(
        "transactions_refund_refers", "transactions", "(kind = 'refund') = (refers_to IS NOT NULL)"
    )
    # A debit is refunded at most once (the saga also keys its refund; this is the backstop).
    op.create_index(
        "transactions_one_refund",
        "transactions",
        ["refers_to"],
        unique=True,
        postgresql_where=sa.text("kind = 'refund'"),
    )

    op.create_table(
        "rewards",
        sa.Column("program_id", sa.Text(), nullable=False),
        sa.Column("reward_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("cost_points", sa.BigInteger(), nullable=False),
        # Units ever made available (initial + restocks); NULL = unlimited.
        sa.Column("stocked", sa.BigInteger(), nullable=True),
        sa.Column("reserved", sa.BigInteger(), nullable=False),
        sa.Column("redeemed", sa.BigInteger(), nullable=False),
        sa.Column("per_member_limit", sa.BigInteger(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("fulfillment", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["program_id"], ["programs.program_id"]),
        sa.PrimaryKeyConstraint("program_id", "reward_id"),
        sa.CheckConstraint("cost_points > 0", name="rewards_cost_positive"),
        sa.CheckConstraint("reserved >= 0 AND redeemed >= 0", name="rewards_counts_nonnegative"),
        # Invariant 5, enforced by the database too: never more units out than stocked.
        sa.CheckConstraint(
            "stocked IS NULL OR stocked >= reserved + redeemed", name="rewards_not_oversold"
        ),
        sa.CheckConstraint(
            "per_member_limit IS NULL OR per_member_limit > 0", name="rewards_limit_positive"
        ),
        sa.CheckConstraint("version >= 1", name="rewards_version_positive"),
    )
    op.create_table(
        "restocks",
        sa.Column("program_id", sa.Text(), nullable=False),
        sa.Column("reward_id", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.Text(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("stocked_after", sa.BigInteger(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["program_id", "reward_id"], ["rewards.program_id", "rewards.reward_id"]
        ),
        sa.PrimaryKeyConstraint("program_id", "reward_id", "key"),
        sa.CheckConstraint("quantity > 0", name="restocks_quantity_positive"),
    )
    op.create_table(
        "redemptions",
        sa.Column("redemption_id", sa.Uuid(), nullable=False),
        sa.Column("program_id", sa.Text(), nullable=False),
        sa.Column("reward_id", sa.Text(), nullable=False),
        sa.Column("member_id", sa.Text(), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("request_hash", sa.Text(), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("cost_points", sa.BigInteger(), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        # Where this redemption's units are: reserved, redeemed, or released (given back).
        sa.Column("stock_state", sa.Text(), nullable=False),
        # When compensating: the state it ends in (failed or cancelled).
        sa.Column("compensate_to", sa.Text(), nullable=True),
        sa.Column("debit_txn_id", sa.Uuid(), nullable=True),
        sa.Column("refund_txn_id", sa.Uuid(), nullable=True),
        sa.Column("balance_after", sa.BigInteger(), nullable=True),
        sa.Column("fulfillment", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("failure_code", sa.Text(), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["program_id", "reward_id"], ["rewards.program_id", "rewards.reward_id"]
        ),
        sa.PrimaryKeyConstraint("redemption_id"),
        sa.UniqueConstraint(
            "program_id", "member_id", "idempotency_key", name="redemptions_one_per_key"
        ),
        sa.CheckConstraint("quantity > 0 AND points > 0", name="redemptions_positive"),
        sa.CheckConstraint(
            "status IN ('started', 'stock_reserved', 'points_debited', 'pending_fulfillment',"
            " 'completed', 'compensating', 'failed', 'cancelled')",
            name="redemptions_status_known",
        ),
        sa.CheckConstraint(
            "stock_state IN ('reserved', 'redeemed', 'released')",
            name="redemptions_stock_state_known",
        ),
    )
    op.create_index(
        "redemptions_by_reward", "redemptions", ["program_id", "reward_id"], unique=False
    )
    op.create_index(
        "redemptions_by_member",
        "redemptions",
        ["program_id", "member_id", sa.literal_column("created_at DESC")],
        unique=False,
    )
    op.create_index(
        "redemptions_open",
        "redemptions",
        ["slot"],
        unique=False,
        postgresql_where=sa.text("status NOT IN ('completed', 'failed', 'cancelled')"),
    )


def downgrade() -> None:
    op.drop_index("redemptions_open", table_name="redemptions")
    op.drop_index("redemptions_by_member", table_name="redemptions")
    op.drop_index("redemptions_by_reward", table_name="redemptions")
    op.drop_table("redemptions")
    op.drop_table("restocks")
    op.drop_table("rewards")
    op.drop_index("transactions_one_refund", table_name="transactions")
    op.drop_constraint("transactions_refund_refers", "transactions", type_="check")
    op.drop_constraint("transactions_refers_to_fkey", "transactions", type_="foreignkey")
    op.drop_column("transactions", "refers_to")
    op.drop_constraint("transactions_kind_known", "transactions", type_="check")
    op.create_check_constraint(
        "transactions_kind_known", "transactions", "kind IN ('credit', 'debit')"
    )
