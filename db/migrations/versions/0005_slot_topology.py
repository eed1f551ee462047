"""slot ownership as data: which shard owns each slot, at which epoch, and the moves

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 21:45:00

Until 0004 the slot -> shard map was arithmetic (slot % shards), fixed when the service
started. From 0005 it is data: `topology_slots` says, per kind of shard (account, reward)
and slot, which shard owns it and at which epoch, and whether it is being handed to another
shard. A shard commits only while it owns the slots of its batch at the epochs it knows
(checked inside the group commit), so a stale owner can never commit.

The tables start empty: the service seeds them on its first start (slot % shards with the
configured counts, epoch 1), which is exactly the map the previous version computed, so an
upgraded deployment keeps every account on the shard that had it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KINDS = "kind IN ('account', 'reward')"


def upgrade() -> None:
    op.create_table(
        "topology",
        sa.Column("kind", sa.Text, primary_key=True),
        # Bumped with every change of the kind's slot map: routers poll this one row.
        sa.Column("version", sa.BigInteger, nullable=False),
        # The index of the first shard of the current generation: shard base + i owns the
        # slots with slot % count == i (an upgrade moves the slots to a new generation).
        sa.Column("base", sa.Integer, nullable=False, server_default="0"),
        sa.CheckConstraint(KINDS, name="topology_kind_known"),
    )
    op.create_table(
        "topology_shards",
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("shard", sa.Integer, primary_key=True),
        # The code the shard's actor runs: the release's name and the Ray runtime
        # environment it is created with (none: the cluster's own).
        sa.Column("code_version", sa.Text, nullable=False, server_default=""),
        sa.Column("runtime_env", JSONB),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(KINDS, name="topology_shards_kind_known"),
        sa.CheckConstraint("shard >= 0", name="topology_shards_index"),
    )
    op.create_table(
        "topology_slots",
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("slot", sa.Integer, primary_key=True),
        sa.Column("owner", sa.Integer, nullable=False),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("moving_to", sa.Integer),
        sa.ForeignKeyConstraint(
            ["kind", "owner"], ["topology_shards.kind", "topology_shards.shard"]
        ),
        sa.ForeignKeyConstraint(
            ["kind", "moving_to"], ["topology_shards.kind", "topology_shards.shard"]
        ),
        sa.CheckConstraint("slot >= 0 AND epoch > 0", name="topology_slots_valid"),
        sa.CheckConstraint("moving_to IS DISTINCT FROM owner", name="topology_slots_move"),
    )
    op.create_table(
        "topology_moves",
        sa.Column("move_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("account_from", sa.Integer, nullable=False),
        sa.Column("account_to", sa.Integer, nullable=False),
        sa.Column("reward_from", sa.Integer, nullable=False),
        sa.Column("reward_to", sa.Integer, nullable=False),
        # Where the target shards start (an upgrade: a new generation of shards) and the
        # code they run; with canary_slots, the move pauses (state canary) after that many.
        sa.Column("account_base", sa.Integer, nullable=False, server_default="0"),
        sa.Column("reward_base", sa.Integer, nullable=False, server_default="0"),
        sa.Column("code_version", sa.Text),
        sa.Column("runtime_env", JSONB),
        sa.Column("canary_slots", sa.Integer),
        sa.Column("state", sa.Text, nullable=False),
        sa.Column("slots_total", sa.Integer, nullable=False),
        sa.Column("slots_moved", sa.Integer, nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint(
            "state IN ('running', 'canary', 'done', 'failed', 'rolled_back')",
            name="topology_moves_state",
        ),
        sa.CheckConstraint(
            "account_to > 0 AND reward_to > 0 AND slots_moved >= 0", name="topology_moves_valid"
        ),
    )
    # At most one move at a time (a paused canary counts): the second of two racing
    # starts fails here.
    op.create_index(
        "topology_moves_one_running",
        "topology_moves",
        [sa.text("(true)")],
        unique=True,
        postgresql_where=sa.text("state IN ('running', 'canary')"),
    )


def downgrade() -> None:
    op.drop_index("topology_moves_one_running", table_name="topology_moves")
    op.drop_table("topology_moves")
    op.drop_table("topology_slots")
    op.drop_table("topology_shards")
    op.drop_table("topology")
