"""Schema, as SQLAlchemy Core tables. Alembic migrations create it; this is the reference.

Constraints back the invariants: non-negative balances, 0 <= remaining <= original, one
idempotency record per (program, member, key), positive points on every transaction.
Ledger tables are append-only: triggers (created in the migration) refuse UPDATE and DELETE.
"""

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

programs = Table(
    "programs",
    metadata,
    Column("program_id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
)

accounts = Table(
    "accounts",
    metadata,
    Column("program_id", Text, primary_key=True),
    Column("member_id", Text, primary_key=True),
    Column("balance", BigInteger, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("lifetime_earned", BigInteger, nullable=False),
    Column("lifetime_spent", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    ForeignKeyConstraint(["program_id"], ["programs.program_id"]),
    CheckConstraint("balance >= 0", name="accounts_balance_nonnegative"),
    CheckConstraint("version >= 1", name="accounts_version_positive"),
    CheckConstraint(
        "lifetime_earned >= 0 AND lifetime_spent >= 0", name="accounts_lifetime_nonnegative"
    ),
)

transactions = Table(
    "transactions",
    metadata,
    Column("txn_id", Uuid, primary_key=True),
    Column("program_id", Text, nullable=False),
    Column("member_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("balance_after", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("idempotency_key", Text),
    Column("expires_at", DateTime(timezone=True)),
    # [[lot_id, points], ...]: which lots a debit consumed (refunds go back there).
    Column("allocations", JSONB, nullable=False),
    ForeignKeyConstraint(
        ["program_id", "member_id"], ["accounts.program_id", "accounts.member_id"]
    ),
    CheckConstraint("points > 0", name="transactions_points_positive"),
    CheckConstraint("kind IN ('credit', 'debit')", name="transactions_kind_known"),
    Index(
        "transactions_member_history",
        "program_id",
        "member_id",
        text("created_at DESC"),
        text("txn_id DESC"),
    ),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("entry_id", BigInteger, primary_key=True, autoincrement=True),
    Column("txn_id", Uuid, nullable=False),
    Column("program_id", Text, nullable=False),
    # 'member' (then member_id is set) or a system account: 'system:issued', ...
    Column("account", Text, nullable=False),
    Column("member_id", Text),
    Column("amount", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(["txn_id"], ["transactions.txn_id"]),
    CheckConstraint("amount <> 0", name="ledger_entries_amount_nonzero"),
    CheckConstraint(
        "(account = 'member') = (member_id IS NOT NULL)", name="ledger_entries_member_leg"
    ),
    Index("ledger_entries_txn", "txn_id"),
    Index("ledger_entries_member", "program_id", "member_id"),
)

lots = Table(
    "lots",
    metadata,
    Column("lot_id", Uuid, primary_key=True),
    Column("program_id", Text, nullable=False),
    Column("member_id", Text, nullable=False),
    Column("txn_id", Uuid, nullable=False),
    Column("original", BigInteger, nullable=False),
    Column("remaining", BigInteger, nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(
        ["program_id", "member_id"], ["accounts.program_id", "accounts.member_id"]
    ),
    ForeignKeyConstraint(["txn_id"], ["transactions.txn_id"]),
    CheckConstraint("original > 0", name="lots_original_positive"),
    CheckConstraint("remaining >= 0 AND remaining <= original", name="lots_remaining_bounds"),
    Index(
        "lots_open_by_member",
        "program_id",
        "member_id",
        postgresql_where=text("remaining > 0"),
    ),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("program_id", Text, primary_key=True),
    Column("member_id", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("request_hash", Text, nullable=False),
    Column("status", Integer, nullable=False),
    Column("response", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("idempotency_keys_created", "created_at"),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("key_hash", Text, nullable=False, unique=True),
    Column("role", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("revoked_at", DateTime(timezone=True)),
)
