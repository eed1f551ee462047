"""earning programs: policy, rule sets, events, pending and event lots, expiry, tiers

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
KINDS_BEFORE = "kind IN ('credit', 'debit', 'refund')"
KINDS_AFTER = "kind IN ('credit', 'debit', 'refund', 'expire', 'reversal', 'activate')"
MEMBER_LEG_BEFORE = "(account = 'member') = (member_id IS NOT NULL)"
MEMBER_LEG_AFTER = "(account IN ('member', 'member:pending')) = (member_id IS NOT NULL)"


def upgrade() -> None:
    # The program's policy (time zone, expiry, pending, debt, caps, tiers), versioned.
    op.add_column(
        "programs",
        sa.Column("policy", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'")),
    )
    op.add_column(
        "programs",
        sa.Column("policy_version", sa.Integer(), nullable=False, server_default=sa.text("1")),
    )
    op.create_table(
        "program_policies",
        sa.Column("program_id", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("policy", postgresql.JSONB(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["program_id"], ["programs.program_id"]),
        sa.PrimaryKeyConstraint("program_id", "version"),
    )
    op.create_table(
        "rule_sets",
        sa.Column("program_id", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("rules", postgresql.JSONB(), nullable=False),
        # Events that occurred from this instant on are evaluated with this version.
        sa.Column("effective_from", TS, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["program_id"], ["programs.program_id"]),
        sa.PrimaryKeyConstraint("program_id", "version"),
        sa.CheckConstraint("version >= 1", name="rule_sets_version_positive"),
    )
    # Earning state of a member: counters for caps, earnings by day (tiers), tier state.
    op.add_column(
        "accounts",
        sa.Column("earning", postgresql.JSONB(), nullable=False, server_default=sa.text("'{}'")),
    )
    op.add_column("accounts", sa.Column("tier", sa.Text(), nullable=True))
    # Points owed after a reversal of spent points (programs that allow debt).
    op.add_column(
        "accounts",
        sa.Column("debt", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.create_check_constraint("accounts_debt_nonnegative", "accounts", "debt >= 0")
    # Pending points (lots not activated yet); member:pending ledger legs sum to it.
    op.add_column(
        "accounts",
        sa.Column("pending", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.create_check_constraint("accounts_pending_nonnegative", "accounts", "pending >= 0")
    # A lot may be pending (not spendable before available_at) and may come from an event.
    op.add_column("lots", sa.Column("available_at", TS, nullable=True))
    op.add_column("lots", sa.Column("event_id", sa.Text(), nullable=True))
    # False while pending: an `activate` transaction moves its points into the balance.
    op.add_column(
        "lots",
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.text("true")),
    )
    op.create_index(
        "lots_pending",
        "lots",
        ["available_at"],
        postgresql_where=sa.text("NOT active AND remaining > 0"),
    )
    op.drop_constraint("ledger_entries_member_leg", "ledger_entries", type_="check")
    op.create_check_constraint("ledger_entries_member_leg", "ledger_entries", MEMBER_LEG_AFTER)
    op.create_index(
        "lots_due_expiry",
        "lots",
        ["expires_at"],
        postgresql_where=sa.text("remaining > 0 AND expires_at IS NOT NULL"),
    )
    op.create_index(
        "lots_by_event",
        "lots",
        ["program_id", "event_id"],
        postgresql_where=sa.text("event_id IS NOT NULL"),
    )
    op.drop_constraint("transactions_kind_known", "transactions", type_="check")
    op.create_check_constraint("transactions_kind_known", "transactions", KINDS_AFTER)
    op.add_column("transactions", sa.Column("event_id", sa.Text(), nullable=True))
    op.create_table(
        "events",
        sa.Column("program_id", sa.Text(), nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("member_id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("occurred_at", TS, nullable=False),
        sa.Column("attributes", postgresql.JSONB(), nullable=False),
        sa.Column("rule_version", sa.Integer(), nullable=True),
        sa.Column("points", sa.BigInteger(), nullable=False),
        sa.Column("explanation", postgresql.JSONB(), nullable=False),
        sa.Column("txn_id", sa.Uuid(), nullable=True),
        # Reversals so far: the amount reversed (decimal string) and the points clawed back.
        sa.Column("reversed_amount", sa.Text(), nullable=False, server_default=sa.text("'0'")),
        sa.Column("reversed_points", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["program_id", "member_id"], ["accounts.program_id", "accounts.member_id"]
        ),
        sa.ForeignKeyConstraint(["txn_id"], ["transactions.txn_id"]),
        sa.PrimaryKeyConstraint("program_id", "event_id"),
        sa.CheckConstraint("points >= 0", name="events_points_nonnegative"),
        sa.CheckConstraint(
            "reversed_points >= 0 AND reversed_points <= points", name="events_reversal_bounded"
        ),
    )
    op.create_index(
        "events_by_member", "events", ["program_id", "member_id", sa.text("occurred_at DESC")]
    )
    op.create_table(
        "tier_changes",
        sa.Column("change_id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("program_id", sa.Text(), nullable=False),
        sa.Column("member_id", sa.Text(), nullable=False),
        sa.Column("from_tier", sa.Text(), nullable=True),
        sa.Column("to_tier", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("changed_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["program_id", "member_id"], ["accounts.program_id", "accounts.member_id"]
        ),
    )
    op.create_index("tier_changes_by_member", "tier_changes", ["program_id", "member_id"])


def downgrade() -> None:
    op.drop_index("tier_changes_by_member", table_name="tier_changes")
    op.drop_table("tier_changes")
    op.drop_index("events_by_member", table_name="events")
    op.drop_table("events")
    op.drop_column("transactions", "event_id")
    op.drop_constraint("transactions_kind_known", "transactions", type_="check")
    op.create_check_constraint("transactions_kind_known", "transactions", KINDS_BEFORE)
    op.drop_constraint("ledger_entries_member_leg", "ledger_entries", type_="check")
    op.create_check_constraint("ledger_entries_member_leg", "ledger_entries", MEMBER_LEG_BEFORE)
    op.drop_index("lots_pending", table_name="lots")
    op.drop_column("lots", "active")
    op.drop_index("lots_by_event", table_name="lots")
    op.drop_index("lots_due_expiry", table_name="lots")
    op.drop_column("lots", "event_id")
    op.drop_column("lots", "available_at")
    op.drop_constraint("accounts_pending_nonnegative", "accounts", type_="check")
    op.drop_column("accounts", "pending")
    op.drop_constraint("accounts_debt_nonnegative", "accounts", type_="check")
    op.drop_column("accounts", "debt")
    op.drop_column("accounts", "tier")
    op.drop_column("accounts", "earning")
    op.drop_table("rule_sets")
    op.drop_table("program_policies")
    op.drop_column("programs", "policy_version")
    op.drop_column("programs", "policy")
