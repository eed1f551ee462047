"""Experiments of earning rules: experiments and their members' arms

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 10:00:00

`experiments` holds each experiment of a program (its arms: name, rule set version, weight;
its window; when it ended and which arm, if any, was promoted); `experiment_assignments`
records the arm of every member an arm scored (the arm itself is decided by a stable hash:
domain/experiments.py). Nothing existing changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("program_id", sa.Text(), primary_key=True),
        sa.Column("experiment_id", sa.Text(), primary_key=True),
        sa.Column("arms", postgresql.JSONB(), nullable=False),
        sa.Column("starts_at", TS, nullable=False),
        sa.Column("ends_at", TS, nullable=False),
        sa.Column("ended_at", TS),
        sa.Column("promoted_arm", sa.Text()),
        sa.Column("promoted_version", sa.BigInteger()),
        sa.Column("created_at", TS, nullable=False),
        sa.CheckConstraint("starts_at < ends_at", name="experiments_window"),
        sa.ForeignKeyConstraint(["program_id"], ["programs.program_id"]),
    )
    op.create_table(
        "experiment_assignments",
        sa.Column("program_id", sa.Text(), primary_key=True),
        sa.Column("experiment_id", sa.Text(), primary_key=True),
        sa.Column("member_id", sa.Text(), primary_key=True),
        sa.Column("arm", sa.Text(), nullable=False),
        sa.Column("assigned_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["program_id", "experiment_id"],
            ["experiments.program_id", "experiments.experiment_id"],
        ),
    )


def downgrade() -> None:
    op.drop_table("experiment_assignments")
    op.drop_table("experiments")
