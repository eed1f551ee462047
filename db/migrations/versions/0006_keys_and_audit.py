"""API keys with names, roles, program scopes, expiry and rate limits; the audit log

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 01:30:00

Until 0005 a key was a hash and a role (only `admin` was ever written). From 0006 a key also
has a name, a non-secret prefix (what lists show), the programs it may touch (NULL = all), an
expiry, its own rate limit, who made it, when it was last used, and `changed_at`, which every
replica polls to learn of new, revoked and expired keys within a second or two. The roles
are a closed set: admin, operator, service, viewer. Existing keys keep their role and hash
(the admin key keeps working) and are named after their id.

`audit_log` records every administrative change: which key, when, what (`action`, the
program and the target), and the state before and after. It is append-only, like the
ledger (the same trigger refuses UPDATE, DELETE and TRUNCATE).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NOW = sa.text("now()")
ROLES = "role IN ('admin', 'operator', 'service', 'viewer')"


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("name", sa.Text))
    op.execute("UPDATE api_keys SET name = key_id")
    op.alter_column("api_keys", "name", nullable=False)
    op.add_column("api_keys", sa.Column("prefix", sa.Text))
    op.execute("UPDATE api_keys SET prefix = 'pts_…'")
    op.alter_column("api_keys", "prefix", nullable=False)
    op.add_column("api_keys", sa.Column("programs", ARRAY(sa.Text)))
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True)))
    op.add_column("api_keys", sa.Column("rate_per_s", sa.Integer))
    op.add_column("api_keys", sa.Column("rate_burst", sa.Integer))
    op.add_column("api_keys", sa.Column("created_by", sa.Text))
    op.add_column("api_keys", sa.Column("last_used_at", sa.DateTime(timezone=True)))
    op.add_column(
        "api_keys",
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
    )
    op.create_check_constraint("api_keys_role", "api_keys", ROLES)
    op.create_check_constraint(
        "api_keys_rate_limit",
        "api_keys",
        "(rate_per_s IS NULL) = (rate_burst IS NULL) AND (rate_per_s IS NULL OR"
        " (rate_per_s > 0 AND rate_burst > 0))",
    )
    op.create_index("api_keys_changed", "api_keys", ["changed_at"])

    op.create_table(
        "audit_log",
        sa.Column("audit_id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=NOW),
        sa.Column("key_id", sa.Text, nullable=False),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("program_id", sa.Text),
        sa.Column("target", sa.Text),
        # The Idempotency-Key of a keyed write: a replayed request is recorded once.
        sa.Column("request_key", sa.Text),
        sa.Column("before", JSONB),
        sa.Column("after", JSONB),
    )
    op.create_index("audit_log_program", "audit_log", ["program_id", "audit_id"])
    op.create_index(
        "audit_log_request",
        "audit_log",
        ["action", "program_id", "target", "request_key"],
        unique=True,
        postgresql_where=sa.text("request_key IS NOT NULL"),
    )
    op.execute(
        "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
        "FOR EACH ROW EXECUTE FUNCTION points_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION points_refuse_change()"
    )


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_index("api_keys_changed", table_name="api_keys")
    op.drop_constraint("api_keys_rate_limit", "api_keys")
    op.drop_constraint("api_keys_role", "api_keys")
    for column in (
        "changed_at",
        "last_used_at",
        "created_by",
        "rate_burst",
        "rate_per_s",
        "expires_at",
        "programs",
        "prefix",
        "name",
    ):
        op.drop_column("api_keys", column)
