"""What-if replays of candidate earning rules: the `simulations` job table

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 05:00:00

One row per replay job (POST /v1/programs/{program_id}/simulations): its request (the
candidate rules, the window, how many members to list), its status and progress, and its
result. Any ingress replica reads it; the job that runs it writes its progress there
(actors/simulation_job.py). Nothing existing changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "simulations",
        sa.Column("simulation_id", sa.Uuid(), primary_key=True),
        sa.Column("program_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("rules", postgresql.JSONB(), nullable=False),
        sa.Column("window_from", TS, nullable=False),
        sa.Column("window_to", TS, nullable=False),
        sa.Column("top_members", sa.Integer(), nullable=False),
        sa.Column("events_total", sa.BigInteger()),
        sa.Column("events_done", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("result", postgresql.JSONB()),
        sa.Column("error", sa.Text()),
        sa.Column("key_id", sa.Text()),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS),
        sa.Column("finished_at", TS),
        sa.Column("heartbeat_at", TS, nullable=False),
        sa.ForeignKeyConstraint(["program_id"], ["programs.program_id"]),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed')", name="simulations_status_known"
        ),
        sa.CheckConstraint("window_from < window_to", name="simulations_window_forward"),
        sa.CheckConstraint(
            "events_done >= 0 AND (events_total IS NULL OR events_done <= events_total)",
            name="simulations_progress_bounded",
        ),
        sa.CheckConstraint(
            "(status = 'done') = (result IS NOT NULL)", name="simulations_done_result"
        ),
    )
    op.create_index(
        "simulations_by_program", "simulations", ["program_id", sa.text("created_at DESC")]
    )


def downgrade() -> None:
    op.drop_table("simulations")
