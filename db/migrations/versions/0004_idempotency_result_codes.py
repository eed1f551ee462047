"""idempotency keys store the answer's result code, not an HTTP status

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 19:40:00

Until 0003 a stored answer was (status, response): an HTTP status, and for a refusal a body
{"code", "detail"}. From 0004 it is (code, response): a domain result code (`created`, `ok`,
or the refusal's code) and the body without the code. The HTTP layer derives the status of
a replay from the code exactly as it derives the first answer's, so a key stored before the
upgrade replays the very same status and bytes after it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The storage format of the previous version, frozen here for the downgrade: which stored
# status a code had there. (History, not behaviour: nothing else below the ingress knows a
# status.)
PREVIOUS_FORMAT_STATUS = {
    "created": 201,
    "ok": 200,
    "insufficient_points": 409,
    "out_of_stock": 409,
    "limit_exceeded": 409,
    "reward_inactive": 409,
    "idempotency_conflict": 409,
    "invalid_state": 409,
    "not_found": 404,
    "validation_error": 422,
    "payload_too_large": 413,
    "rate_limited": 429,
    "unauthorized": 401,
    "forbidden": 403,
    "unavailable": 503,
    "internal": 500,
}


def upgrade() -> None:
    conn = op.get_bind()
    unreadable = conn.execute(
        sa.text(
            "SELECT count(*) FROM idempotency_keys "
            "WHERE status >= 300 AND coalesce(response->>'code', '') = ''"
        )
    ).scalar_one()
    if unreadable:
        raise RuntimeError(
            f"{unreadable} stored idempotent refusals have no code: cannot convert them"
        )
    op.add_column("idempotency_keys", sa.Column("code", sa.Text(), nullable=True))
    op.execute(
        """
        UPDATE idempotency_keys SET
            code = CASE WHEN status = 201 THEN 'created'
                        WHEN status < 300 THEN 'ok'
                        ELSE response->>'code' END,
            response = CASE WHEN status >= 300 THEN response - 'code' ELSE response END
        """
    )
    op.alter_column("idempotency_keys", "code", nullable=False)
    op.drop_column("idempotency_keys", "status")


def downgrade() -> None:
    op.add_column("idempotency_keys", sa.Column("status", sa.Integer(), nullable=True))
    cases = " ".join(
        f"WHEN '{code}' THEN {status}" for code, status in PREVIOUS_FORMAT_STATUS.items()
    )
    op.execute(
        f"""
        UPDATE idempotency_keys SET
            status = CASE code {cases} ELSE 500 END,
            response = CASE WHEN code IN ('created', 'ok') THEN response
                            ELSE jsonb_build_object('code', code) || response END
        """
    )
    op.alter_column("idempotency_keys", "status", nullable=False)
    op.drop_column("idempotency_keys", "code")
