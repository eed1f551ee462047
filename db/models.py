"""Schema, as SQLAlchemy Core tables. Alembic migrations create it; this is the reference.

Constraints back the invariants: non-negative balances, 0 <= remaining <= original, one
idempotency record per (program, member, key), positive points on every transaction, a
refund refers to the debit it gives back (at most one refund per debit), rewards never
oversold. Ledger tables are append-only: triggers (created in the migration) refuse UPDATE,
DELETE and TRUNCATE. tests/integration/test_schema.py checks that this file and the
migrations describe the same schema.
"""

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

metadata = MetaData()

programs = Table(
    "programs",
    metadata,
    Column("program_id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    # The program's policy (time zone, expiry, pending, debt, caps, tiers) and its version.
    Column("policy", JSONB, nullable=False, server_default=text("'{}'")),
    Column("policy_version", Integer, nullable=False, server_default=text("1")),
)

program_policies = Table(
    "program_policies",
    metadata,
    Column("program_id", Text, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("policy", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(["program_id"], ["programs.program_id"]),
)

rule_sets = Table(
    "rule_sets",
    metadata,
    Column("program_id", Text, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("rules", JSONB, nullable=False),
    # Events that occurred from this instant on are evaluated with this version.
    Column("effective_from", DateTime(timezone=True), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(["program_id"], ["programs.program_id"]),
    CheckConstraint("version >= 1", name="rule_sets_version_positive"),
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
    # Earning state: counters for caps, earnings by day (tiers), tier state.
    Column("earning", JSONB, nullable=False, server_default=text("'{}'")),
    Column("tier", Text),
    # Points owed after a reversal of spent points (programs that allow debt).
    Column("debt", BigInteger, nullable=False, server_default=text("0")),
    # Pending points (lots not activated yet); member:pending ledger legs sum to it.
    Column("pending", BigInteger, nullable=False, server_default=text("0")),
    # 0007: points held for review (member:held legs sum to it), velocity-limit counters.
    Column("held", BigInteger, nullable=False, server_default=text("0")),
    Column("velocity", JSONB, nullable=False, server_default=text("'{}'")),
    ForeignKeyConstraint(["program_id"], ["programs.program_id"]),
    CheckConstraint("balance >= 0", name="accounts_balance_nonnegative"),
    CheckConstraint("held >= 0", name="accounts_held_nonnegative"),
    CheckConstraint("debt >= 0", name="accounts_debt_nonnegative"),
    CheckConstraint("pending >= 0", name="accounts_pending_nonnegative"),
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
    # A refund: the debit it gives back (set exactly when kind = 'refund').
    Column("refers_to", Uuid),
    ForeignKeyConstraint(
        ["program_id", "member_id"], ["accounts.program_id", "accounts.member_id"]
    ),
    ForeignKeyConstraint(
        ["refers_to"], ["transactions.txn_id"], name="transactions_refers_to_fkey"
    ),
    CheckConstraint("points > 0", name="transactions_points_positive"),
    Column("event_id", Text),
    CheckConstraint(
        "kind IN ('credit', 'debit', 'refund', 'expire', 'reversal', 'activate', 'hold',"
        " 'release')",
        name="transactions_kind_known",
    ),
    CheckConstraint(
        "(kind = 'refund') = (refers_to IS NOT NULL)", name="transactions_refund_refers"
    ),
    Index(
        "transactions_member_history",
        "program_id",
        "member_id",
        text("created_at DESC"),
        text("txn_id DESC"),
    ),
    # Reports (0009): who earned or spent in a window (members), index-only.
    Index(
        "transactions_by_time",
        "program_id",
        "created_at",
        postgresql_include=["member_id", "kind"],
    ),
    # A debit is refunded at most once.
    Index(
        "transactions_one_refund",
        "refers_to",
        unique=True,
        postgresql_where=text("kind = 'refund'"),
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
        "(account IN ('member', 'member:pending', 'member:held')) = (member_id IS NOT NULL)",
        name="ledger_entries_member_leg",
    ),
    Index("ledger_entries_txn", "txn_id"),
    Index("ledger_entries_member", "program_id", "member_id"),
)

# The tamper-evident ledger (db/ledger_chain.py): one link per group commit that wrote
# transactions, per shard chain; append-only like the ledger it links.
ledger_chain = Table(
    "ledger_chain",
    metadata,
    Column("chain", Text, primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("prev_hash", LargeBinary),
    Column("hash", LargeBinary, nullable=False),
    Column("txn_ids", ARRAY(Uuid), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("seq > 0", name="ledger_chain_seq_positive"),
    CheckConstraint("(seq = 1) = (prev_hash IS NULL)", name="ledger_chain_first_link"),
    CheckConstraint("cardinality(txn_ids) > 0", name="ledger_chain_links_txns"),
)

# Transactions committed but not linked yet: one row per group commit, written in the
# commit, deleted when its shard seals them into a link (db/ledger_chain.py).
ledger_chain_pending = Table(
    "ledger_chain_pending",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("chain", Text, nullable=False),
    Column("txn_ids", ARRAY(Uuid), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ledger_chain_pending_chain", "chain", "id"),
)

# Experiments of earning rules (domain/experiments.py) and the arm of each member scored.
experiments = Table(
    "experiments",
    metadata,
    Column("program_id", Text, primary_key=True),
    Column("experiment_id", Text, primary_key=True),
    Column("arms", JSONB, nullable=False),
    Column("starts_at", DateTime(timezone=True), nullable=False),
    Column("ends_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True)),
    Column("promoted_arm", Text),
    Column("promoted_version", BigInteger),
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("starts_at < ends_at", name="experiments_window"),
    ForeignKeyConstraint(["program_id"], ["programs.program_id"]),
)

experiment_assignments = Table(
    "experiment_assignments",
    metadata,
    Column("program_id", Text, primary_key=True),
    Column("experiment_id", Text, primary_key=True),
    Column("member_id", Text, primary_key=True),
    Column("arm", Text, nullable=False),
    Column("assigned_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(
        ["program_id", "experiment_id"],
        ["experiments.program_id", "experiments.experiment_id"],
    ),
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
    # Pending points: not spendable before available_at (NULL: available when created).
    Column("available_at", DateTime(timezone=True)),
    # The event that awarded the lot (reversals claw back from it first).
    Column("event_id", Text),
    # False while pending: an `activate` transaction moves its points into the balance.
    Column("active", Boolean, nullable=False, server_default=text("true")),
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
    Index(
        "lots_due_expiry",
        "expires_at",
        postgresql_where=text("remaining > 0 AND expires_at IS NOT NULL"),
    ),
    Index(
        "lots_by_event",
        "program_id",
        "event_id",
        postgresql_where=text("event_id IS NOT NULL"),
    ),
    Index("lots_pending", "available_at", postgresql_where=text("NOT active AND remaining > 0")),
    # Reports (0009): what expires when (expiring), index-only.
    Index(
        "lots_open_by_expiry",
        "program_id",
        "expires_at",
        postgresql_include=["remaining"],
        postgresql_where=text("remaining > 0 AND expires_at IS NOT NULL"),
    ),
)

# Report rollups (0009), kept by the group commit (db/ledger_repo.py) in the transaction
# that writes the ledger rows, one row set per writer chain (shards never contend); the
# reports sum over chains (db/reports_repo.py). Days are UTC.
report_daily_flows = Table(
    "report_daily_flows",
    metadata,
    Column("program_id", Text, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("kind", Text, primary_key=True),
    Column("chain", Text, primary_key=True),
    Column("points", BigInteger, nullable=False),
    Column("txns", BigInteger, nullable=False),
    CheckConstraint("points >= 0 AND txns >= 0", name="report_daily_flows_nonnegative"),
)

# Lots by the UTC day they were created (their cohort): issued into them, left in them,
# taken from them by expiry and by reversals.
report_daily_lots = Table(
    "report_daily_lots",
    metadata,
    Column("program_id", Text, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("chain", Text, primary_key=True),
    Column("issued", BigInteger, nullable=False),
    Column("remaining", BigInteger, nullable=False),
    Column("expired", BigInteger, nullable=False),
    Column("reversed", BigInteger, nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("program_id", Text, primary_key=True),
    Column("event_id", Text, primary_key=True),
    Column("member_id", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("attributes", JSONB, nullable=False),
    Column("rule_version", Integer),
    Column("points", BigInteger, nullable=False),
    Column("explanation", JSONB, nullable=False),
    Column("txn_id", Uuid),
    # Reversals so far: the amount reversed (decimal string) and the points clawed back.
    Column("reversed_amount", Text, nullable=False, server_default=text("'0'")),
    Column("reversed_points", BigInteger, nullable=False, server_default=text("0")),
    Column("created_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(
        ["program_id", "member_id"], ["accounts.program_id", "accounts.member_id"]
    ),
    ForeignKeyConstraint(["txn_id"], ["transactions.txn_id"]),
    CheckConstraint("points >= 0", name="events_points_nonnegative"),
    CheckConstraint(
        "reversed_points >= 0 AND reversed_points <= points", name="events_reversal_bounded"
    ),
    Index("events_by_member", "program_id", "member_id", text("occurred_at DESC")),
)

tier_changes = Table(
    "tier_changes",
    metadata,
    Column("change_id", BigInteger, Identity(), primary_key=True),
    Column("program_id", Text, nullable=False),
    Column("member_id", Text, nullable=False),
    Column("from_tier", Text),
    Column("to_tier", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(
        ["program_id", "member_id"], ["accounts.program_id", "accounts.member_id"]
    ),
    Index("tier_changes_by_member", "program_id", "member_id"),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("program_id", Text, primary_key=True),
    Column("member_id", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("request_hash", Text, nullable=False),
    Column("response", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("idempotency_keys_created", "created_at"),
    # The answer's result code (domain.errors.Code), never an HTTP status (0004).
    Column("code", Text, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("key_hash", Text, nullable=False, unique=True),
    Column("role", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("revoked_at", DateTime(timezone=True)),
    # 0006: name, non-secret prefix, program scope (NULL = all), expiry, own rate limit.
    Column("name", Text, nullable=False),
    Column("prefix", Text, nullable=False),
    Column("programs", ARRAY(Text)),
    Column("expires_at", DateTime(timezone=True)),
    Column("rate_per_s", Integer),
    Column("rate_burst", Integer),
    Column("created_by", Text),
    Column("last_used_at", DateTime(timezone=True)),
    # Bumped by every change replicas must learn of (create, revoke); they poll it.
    Column("changed_at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Index("api_keys_changed", "changed_at"),
    CheckConstraint("role IN ('admin', 'operator', 'service', 'viewer')", name="api_keys_role"),
    CheckConstraint(
        "(rate_per_s IS NULL) = (rate_burst IS NULL) AND (rate_per_s IS NULL OR"
        " (rate_per_s > 0 AND rate_burst > 0))",
        name="api_keys_rate_limit",
    ),
)

# Every administrative change, append-only (a trigger from the migration refuses changes).
audit_log = Table(
    "audit_log",
    metadata,
    Column("audit_id", BigInteger, Identity(always=True), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False, server_default=text("now()")),
    Column("key_id", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("program_id", Text),
    Column("target", Text),
    Column("request_key", Text),
    Column("before", JSONB),
    Column("after", JSONB),
    Index("audit_log_program", "program_id", "audit_id"),
    Index(
        "audit_log_request",
        "action",
        "program_id",
        "target",
        "request_key",
        unique=True,
        postgresql_where=text("request_key IS NOT NULL"),
    ),
)

rewards = Table(
    "rewards",
    metadata,
    Column("program_id", Text, primary_key=True),
    Column("reward_id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("cost_points", BigInteger, nullable=False),
    # Units ever made available (initial + restocks); NULL = unlimited.
    Column("stocked", BigInteger),
    Column("reserved", BigInteger, nullable=False),
    Column("redeemed", BigInteger, nullable=False),
    Column("per_member_limit", BigInteger),
    Column("active", Boolean, nullable=False),
    Column("fulfillment", JSONB, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(["program_id"], ["programs.program_id"]),
    CheckConstraint("cost_points > 0", name="rewards_cost_positive"),
    CheckConstraint("reserved >= 0 AND redeemed >= 0", name="rewards_counts_nonnegative"),
    # Invariant 5: never more units out than stocked.
    CheckConstraint(
        "stocked IS NULL OR stocked >= reserved + redeemed", name="rewards_not_oversold"
    ),
    CheckConstraint(
        "per_member_limit IS NULL OR per_member_limit > 0", name="rewards_limit_positive"
    ),
    CheckConstraint("version >= 1", name="rewards_version_positive"),
)

restocks = Table(
    "restocks",
    metadata,
    Column("program_id", Text, primary_key=True),
    Column("reward_id", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("request_hash", Text, nullable=False),
    Column("quantity", BigInteger, nullable=False),
    Column("stocked_after", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(["program_id", "reward_id"], ["rewards.program_id", "rewards.reward_id"]),
    CheckConstraint("quantity > 0", name="restocks_quantity_positive"),
)

redemptions = Table(
    "redemptions",
    metadata,
    Column("redemption_id", Uuid, primary_key=True),
    Column("program_id", Text, nullable=False),
    Column("reward_id", Text, nullable=False),
    Column("member_id", Text, nullable=False),
    Column("slot", Integer, nullable=False),
    Column("idempotency_key", Text, nullable=False),
    Column("request_hash", Text, nullable=False),
    Column("quantity", BigInteger, nullable=False),
    Column("cost_points", BigInteger, nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("status", Text, nullable=False),
    # Where this redemption's units are: reserved, redeemed, or released (given back).
    Column("stock_state", Text, nullable=False),
    # When compensating: the state it ends in (failed or cancelled).
    Column("compensate_to", Text),
    Column("debit_txn_id", Uuid),
    Column("refund_txn_id", Uuid),
    Column("balance_after", BigInteger),
    Column("fulfillment", JSONB, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("failure_code", Text),
    Column("failure_reason", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # 0007: held for review, the review deciding it; a refusal's fields besides its code
    # and detail (the `limit` a velocity limit names), answered with it.
    Column("review_id", Uuid),
    Column("failure_extra", JSONB),
    ForeignKeyConstraint(["program_id", "reward_id"], ["rewards.program_id", "rewards.reward_id"]),
    UniqueConstraint("program_id", "member_id", "idempotency_key", name="redemptions_one_per_key"),
    CheckConstraint("quantity > 0 AND points > 0", name="redemptions_positive"),
    CheckConstraint(
        "status IN ('started', 'stock_reserved', 'pending_review', 'points_debited',"
        " 'pending_fulfillment', 'completed', 'compensating', 'failed', 'cancelled')",
        name="redemptions_status_known",
    ),
    CheckConstraint(
        "stock_state IN ('reserved', 'redeemed', 'released')",
        name="redemptions_stock_state_known",
    ),
    Index("redemptions_by_reward", "program_id", "reward_id"),
    Index("redemptions_by_member", "program_id", "member_id", text("created_at DESC")),
    # Reports (0009): redemptions in a period (rewards).
    Index("redemptions_by_time", "program_id", "created_at"),
    # Sagas not yet finished, by the slot whose reward actor drives them (recovery).
    Index(
        "redemptions_open",
        "slot",
        postgresql_where=text("status NOT IN ('completed', 'failed', 'cancelled')"),
    ),
)

# Reviews (0007): a debit or a redemption above the program's review threshold, its points
# held (the `hold` transaction) until an operator approves (a `debit` of the held points) or
# rejects it (a `release`). Mutable like redemptions: only a pending review changes, once.
REVIEW_STATUSES = "status IN ('pending', 'approved', 'rejected')"

reviews = Table(
    "reviews",
    metadata,
    Column("review_id", Uuid, primary_key=True),
    Column("program_id", Text, nullable=False),
    Column("member_id", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("points", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("hold_txn_id", Uuid, nullable=False),
    # The Idempotency-Key of the request held (a redemption's: its saga's debit key).
    Column("idempotency_key", Text, nullable=False),
    Column("redemption_id", Uuid),
    Column("reward_id", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("decision_txn_id", Uuid),
    Column("decision_reason", Text),
    Column("decided_at", DateTime(timezone=True)),
    ForeignKeyConstraint(
        ["program_id", "member_id"], ["accounts.program_id", "accounts.member_id"]
    ),
    ForeignKeyConstraint(["hold_txn_id"], ["transactions.txn_id"]),
    ForeignKeyConstraint(["decision_txn_id"], ["transactions.txn_id"]),
    CheckConstraint("points > 0", name="reviews_points_positive"),
    CheckConstraint("kind IN ('debit', 'redemption')", name="reviews_kind_known"),
    CheckConstraint(REVIEW_STATUSES, name="reviews_status_known"),
    CheckConstraint(
        "(kind = 'redemption') = (redemption_id IS NOT NULL AND reward_id IS NOT NULL)",
        name="reviews_redemption",
    ),
    CheckConstraint(
        "(status = 'pending') = (decision_txn_id IS NULL AND decided_at IS NULL"
        " AND decision_reason IS NULL)",
        name="reviews_decided",
    ),
    UniqueConstraint("hold_txn_id", name="reviews_one_per_hold"),
    # Lists: a program's reviews newest first, all or by status (keyset on both).
    Index("reviews_by_program", "program_id", text("created_at DESC"), text("review_id DESC")),
    Index(
        "reviews_by_status",
        "program_id",
        "status",
        text("created_at DESC"),
        text("review_id DESC"),
    ),
    # An account's pending reviews (loaded with it when it holds points).
    Index(
        "reviews_pending_by_member",
        "program_id",
        "member_id",
        postgresql_where=text("status = 'pending'"),
    ),
)

# Slot ownership (migration 0005): per kind of shard, the map version routers poll, the
# shards that exist, which shard owns each slot at which epoch, and the moves.
TOPOLOGY_KINDS = "kind IN ('account', 'reward')"

topology = Table(
    "topology",
    metadata,
    Column("kind", Text, primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("base", Integer, nullable=False, server_default="0"),
    CheckConstraint(TOPOLOGY_KINDS, name="topology_kind_known"),
)

topology_shards = Table(
    "topology_shards",
    metadata,
    Column("kind", Text, primary_key=True),
    Column("shard", Integer, primary_key=True),
    Column("code_version", Text, nullable=False, server_default=""),
    Column("runtime_env", JSONB),
    Column("created_at", DateTime(timezone=True), nullable=False),
    CheckConstraint(TOPOLOGY_KINDS, name="topology_shards_kind_known"),
    CheckConstraint("shard >= 0", name="topology_shards_index"),
)

topology_slots = Table(
    "topology_slots",
    metadata,
    Column("kind", Text, primary_key=True),
    Column("slot", Integer, primary_key=True),
    Column("owner", Integer, nullable=False),
    Column("epoch", BigInteger, nullable=False),
    Column("moving_to", Integer),
    ForeignKeyConstraint(["kind", "owner"], ["topology_shards.kind", "topology_shards.shard"]),
    ForeignKeyConstraint(["kind", "moving_to"], ["topology_shards.kind", "topology_shards.shard"]),
    CheckConstraint("slot >= 0 AND epoch > 0", name="topology_slots_valid"),
    CheckConstraint("moving_to IS DISTINCT FROM owner", name="topology_slots_move"),
)

topology_moves = Table(
    "topology_moves",
    metadata,
    Column("move_id", Uuid, primary_key=True),
    Column("account_from", Integer, nullable=False),
    Column("account_to", Integer, nullable=False),
    Column("reward_from", Integer, nullable=False),
    Column("reward_to", Integer, nullable=False),
    Column("account_base", Integer, nullable=False, server_default="0"),
    Column("reward_base", Integer, nullable=False, server_default="0"),
    Column("code_version", Text),
    Column("runtime_env", JSONB),
    Column("canary_slots", Integer),
    Column("state", Text, nullable=False),
    Column("slots_total", Integer, nullable=False),
    Column("slots_moved", Integer, nullable=False),
    Column("detail", Text),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    CheckConstraint(
        "state IN ('running', 'canary', 'done', 'failed', 'rolled_back')",
        name="topology_moves_state",
    ),
    CheckConstraint(
        "account_to > 0 AND reward_to > 0 AND slots_moved >= 0", name="topology_moves_valid"
    ),
    Index(
        "topology_moves_one_running",
        text("(true)"),
        unique=True,
        postgresql_where=text("state IN ('running', 'canary')"),
    ),
)

# 0010: what-if replays of candidate earning rules (domain/simulation.py). A job row is
# written by the ingress (queued), then only by the job that runs it (progress, result) or
# by a read that finds it stale (failed). Not a ledger table: rows change.
simulations = Table(
    "simulations",
    metadata,
    Column("simulation_id", Uuid, primary_key=True),
    Column("program_id", Text, nullable=False),
    Column("status", Text, nullable=False),
    # The candidate rule set, in normal form (domain/rules.py rule_set_to_json).
    Column("rules", JSONB, nullable=False),
    Column("window_from", DateTime(timezone=True), nullable=False),
    Column("window_to", DateTime(timezone=True), nullable=False),
    Column("top_members", Integer, nullable=False),
    Column("events_total", BigInteger),
    Column("events_done", BigInteger, nullable=False, server_default=text("0")),
    Column("result", JSONB),
    Column("error", Text),
    # The key that asked for it.
    Column("key_id", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    # The job's last sign of life: a queued or running job silent longer than
    # SIMULATION_STALE_S is failed when read.
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
    ForeignKeyConstraint(["program_id"], ["programs.program_id"]),
    CheckConstraint(
        "status IN ('queued', 'running', 'done', 'failed')", name="simulations_status_known"
    ),
    CheckConstraint("window_from < window_to", name="simulations_window_forward"),
    CheckConstraint(
        "events_done >= 0 AND (events_total IS NULL OR events_done <= events_total)",
        name="simulations_progress_bounded",
    ),
    CheckConstraint("(status = 'done') = (result IS NOT NULL)", name="simulations_done_result"),
    Index("simulations_by_program", "program_id", text("created_at DESC")),
)
