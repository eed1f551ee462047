"""Risk control: velocity-limit counters, points held for review, reviews

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 10:00:00

Accounts gain `held` (points held for an operator's review: out of the lots, not spent;
member:held ledger legs sum to it) and `velocity` (the counters of the program's velocity
limits in their current windows, committed with the account like its balance). Two
transaction kinds: `hold` (member -> member:held) and `release` (member:held -> member);
an approval is a `debit` from member:held. Redemptions may wait in `pending_review`, with
the review that decides them, and keep a refusal's extra fields (`failure_extra`: the
`limit` a velocity limit names) to answer them again. `reviews` holds each review and its decision.

Nothing existing changes meaning: every account starts with nothing held and empty
counters, every stored idempotent answer and redemption stays as it was (their bytes too).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
KINDS_BEFORE = "kind IN ('credit', 'debit', 'refund', 'expire', 'reversal', 'activate')"
KINDS_AFTER = (
    "kind IN ('credit', 'debit', 'refund', 'expire', 'reversal', 'activate', 'hold', 'release')"
)
MEMBER_LEG_BEFORE = "(account IN ('member', 'member:pending')) = (member_id IS NOT NULL)"
MEMBER_LEG_AFTER = (
    "(account IN ('member', 'member:pending', 'member:held')) = (member_id IS NOT NULL)"
)
STATUSES_BEFORE = (
    "status IN ('started', 'stock_reserved', 'points_debited', 'pending_fulfillment',"
    " 'completed', 'compensating', 'failed', 'cancelled')"
)
STATUSES_AFTER = (
    "status IN ('started', 'stock_reserved', 'pending_review', 'points_debited',"
    " 'pending_fulfillment', 'completed', 'compensating', 'failed', 'cancelled')"
)


def _replace_check(name: str, table: str, condition: str) -> None:
    op.drop_constraint(name, table, type_="check")
    op.create_check_constraint(name, table, condition)


def upgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("held", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.add_column(
        "accounts",
        sa.Column("velocity", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'")),
    )
    op.create_check_constraint("accounts_held_nonnegative", "accounts", "held >= 0")
    _replace_check("transactions_kind_known", "transactions", KINDS_AFTER)
    _replace_check("ledger_entries_member_leg", "ledger_entries", MEMBER_LEG_AFTER)
    op.add_column("redemptions", sa.Column("review_id", sa.Uuid()))
    op.add_column("redemptions", sa.Column("failure_extra", postgresql.JSONB()))
    _replace_check("redemptions_status_known", "redemptions", STATUSES_AFTER)

    op.create_table(
        "reviews",
        sa.Column("review_id", sa.Uuid(), primary_key=True),
        sa.Column("program_id", sa.Text(), nullable=False),
        sa.Column("member_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("hold_txn_id", sa.Uuid(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("redemption_id", sa.Uuid()),
        sa.Column("reward_id", sa.Text()),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("decision_txn_id", sa.Uuid()),
        sa.Column("decision_reason", sa.Text()),
        sa.Column("decided_at", TS),
        sa.ForeignKeyConstraint(
            ["program_id", "member_id"], ["accounts.program_id", "accounts.member_id"]
        ),
        sa.ForeignKeyConstraint(["hold_txn_id"], ["transactions.txn_id"]),
        sa.ForeignKeyConstraint(["decision_txn_id"], ["transactions.txn_id"]),
        sa.CheckConstraint("points > 0", name="reviews_points_positive"),
        sa.CheckConstraint("kind IN ('debit', 'redemption')", name="reviews_kind_known"),
        sa.CheckConstraint(
            "status IN ('pending', 'approved', 'rejected')", name="reviews_status_known"
        ),
        sa.CheckConstraint(
            "(kind = 'redemption') = (redemption_id IS NOT NULL AND reward_id IS NOT NULL)",
            name="reviews_redemption",
        ),
        sa.CheckConstraint(
            "(status = 'pending') = (decision_txn_id IS NULL AND decided_at IS NULL"
            " AND decision_reason IS NULL)",
            name="reviews_decided",
        ),
        sa.UniqueConstraint("hold_txn_id", name="reviews_one_per_hold"),
    )
    op.create_index(
        "reviews_by_program",
        "reviews",
        ["program_id", sa.text("created_at DESC"), sa.text("review_id DESC")],
    )
    op.create_index(
        "reviews_by_status",
        "reviews",
        ["program_id", "status", sa.text("created_at DESC"), sa.text("review_id DESC")],
    )
    op.create_index(
        "reviews_pending_by_member",
        "reviews",
        ["program_id", "member_id"],
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    # Only a database with nothing held and no review in flight goes back: the previous
    # version cannot represent either.
    op.drop_table("reviews")
    _replace_check("redemptions_status_known", "redemptions", STATUSES_BEFORE)
    op.drop_column("redemptions", "failure_extra")
    op.drop_column("redemptions", "review_id")
    _replace_check("ledger_entries_member_leg", "ledger_entries", MEMBER_LEG_BEFORE)
    _replace_check("transactions_kind_known", "transactions", KINDS_BEFORE)
    op.drop_constraint("accounts_held_nonnegative", "accounts", type_="check")
    op.drop_column("accounts", "velocity")
    op.drop_column("accounts", "held")
