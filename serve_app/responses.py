"""Response models: what each success answer looks like, for the OpenAPI document.

Routes build their answers as plain JSON (orjson, no per-request model validation on the
hot path); these models describe them exactly, each with an example, and an e2e test holds
real answers to them (the contract fuzzer checks every answer against the document).
Fields a resource may grow are allowed (`extra="allow"`), fields it has are typed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TXN_ID = "0193a0c4-5f1e-7c3a-9d2b-1f0e6a7b8c9d"
LOT_ID = "0193a0c4-5f1e-7c3a-9d2b-1f0e6a7b8c9e"
NOW = "2026-11-29T12:00:00Z"


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


def _example(value: dict[str, Any]) -> ConfigDict:
    return ConfigDict(extra="allow", json_schema_extra={"examples": [value]})


class Balance(_Open):
    available: int
    total: int
    pending: int | None = None
    debt: int | None = None
    held: int | None = Field(default=None, description="held for review (member view)")


class Transaction(_Open):
    """A point movement, as the write that made it answers it."""

    model_config = _example(
        {
            "transaction_id": TXN_ID,
            "program_id": "shop",
            "member_id": "alice",
            "type": "credit",
            "points": 500,
            "reason": "order 1001",
            "created_at": NOW,
            "expires_at": "2027-12-31T23:59:59Z",
            "balance_after": 500,
            "balance": {"available": 500, "total": 500},
        }
    )
    transaction_id: str
    program_id: str
    member_id: str
    type: str
    points: int
    reason: str
    created_at: str
    expires_at: str | None
    balance_after: int
    balance: Balance


class HeldTransaction(Transaction):
    """A debit held for review: its `hold` transaction, status pending_review."""

    model_config = _example(
        {
            "transaction_id": TXN_ID,
            "program_id": "shop",
            "member_id": "alice",
            "type": "hold",
            "points": 5000,
            "reason": "gift card",
            "created_at": NOW,
            "expires_at": None,
            "balance_after": 380,
            "balance": {"available": 380, "total": 380},
            "status": "pending_review",
            "review_id": "0193a0c4-5f1e-7c3a-9d2b-1f0e6a7b8c9f",
        }
    )
    status: str | None = Field(default=None, description="pending_review when held")
    review_id: str | None = None


class TransactionItem(_Open):
    transaction_id: str
    type: str
    points: int
    reason: str
    balance_after: int
    created_at: str
    expires_at: str | None


class Page(_Open):
    next_cursor: str | None = Field(description="pass back as ?cursor= for the next page")


class TransactionPage(Page):
    model_config = _example(
        {
            "items": [
                {
                    "transaction_id": TXN_ID,
                    "type": "debit",
                    "points": 120,
                    "reason": "coffee mug",
                    "balance_after": 380,
                    "created_at": NOW,
                    "expires_at": None,
                }
            ],
            "next_cursor": None,
        }
    )
    items: list[TransactionItem]


class Lot(_Open):
    lot_id: str
    original: int
    remaining: int
    expires_at: str | None
    created_at: str | None


class Member(_Open):
    """A member account: balances, what expires soon, lots, tier."""

    model_config = _example(
        {
            "program_id": "shop",
            "member_id": "alice",
            "balance": {"available": 380, "pending": 0, "total": 380, "debt": 0},
            "expiring_soon": [],
            "lifetime_earned": 500,
            "lifetime_spent": 120,
            "lots": [
                {
                    "lot_id": LOT_ID,
                    "original": 500,
                    "remaining": 380,
                    "expires_at": "2027-12-31T23:59:59Z",
                    "created_at": NOW,
                }
            ],
            "lots_total": 1,
            "pending_lots": [],
        }
    )
    program_id: str
    member_id: str
    balance: Balance
    expiring_soon: list[dict[str, Any]]
    lifetime_earned: int
    lifetime_spent: int
    lots: list[Lot]
    lots_total: int
    pending_lots: list[dict[str, Any]]
    tier: dict[str, Any] | None = None


class MemberItem(_Open):
    member_id: str
    balance: int
    tier: str | None
    lifetime_earned: int
    lifetime_spent: int
    created_at: str | None
    updated_at: str | None


class MemberPage(Page):
    model_config = _example(
        {
            "items": [
                {
                    "member_id": "alice",
                    "balance": 380,
                    "tier": None,
                    "lifetime_earned": 500,
                    "lifetime_spent": 120,
                    "created_at": NOW,
                    "updated_at": NOW,
                }
            ],
            "next_cursor": None,
        }
    )
    items: list[MemberItem]


class TierChange(_Open):
    from_tier: str | None
    to_tier: str
    reason: str
    changed_at: str | None


class TierChanges(_Open):
    model_config = _example(
        {
            "items": [
                {"from_tier": None, "to_tier": "silver", "reason": "earned 2000", "changed_at": NOW}
            ]
        }
    )
    items: list[TierChange]


class Program(_Open):
    model_config = _example(
        {
            "program_id": "shop",
            "name": "My shop",
            "policy": {"time_zone": "UTC", "expiry": {"kind": "never"}},
            "policy_version": 1,
            "created_at": NOW,
            "updated_at": NOW,
        }
    )
    program_id: str
    name: str
    policy: dict[str, Any]
    policy_version: int
    created_at: str | None
    updated_at: str | None


class ProgramPage(Page):
    model_config = _example(
        {
            "items": [
                {
                    "program_id": "shop",
                    "name": "My shop",
                    "policy": {"time_zone": "UTC"},
                    "policy_version": 1,
                    "created_at": NOW,
                    "updated_at": NOW,
                }
            ],
            "next_cursor": None,
        }
    )
    items: list[Program]


class RuleSet(_Open):
    model_config = _example(
        {
            "program_id": "shop",
            "version": 1,
            "effective_from": NOW,
            "created_at": NOW,
            "rules": [
                {"id": "order_points", "event": "order", "award": {"kind": "fixed", "points": 10}}
            ],
        }
    )
    program_id: str
    version: int
    effective_from: str | None
    created_at: str | None
    rules: list[dict[str, Any]]


class RuleSets(_Open):
    model_config = _example({"items": []})
    items: list[RuleSet]


class Reward(_Open):
    model_config = _example(
        {
            "program_id": "shop",
            "reward_id": "mug",
            "name": "Coffee mug",
            "cost_points": 150,
            "stock": 99,
            "stocked": 100,
            "reserved": 0,
            "redeemed": 1,
            "per_member_limit": 3,
            "active": True,
            "fulfillment": {"type": "none"},
            "created_at": NOW,
            "updated_at": NOW,
        }
    )
    program_id: str
    reward_id: str
    name: str
    cost_points: int
    stock: int | None = Field(description="units left; null: unlimited")
    stocked: int | None
    reserved: int
    redeemed: int
    per_member_limit: int | None
    active: bool
    fulfillment: dict[str, Any]
    created_at: str | None
    updated_at: str | None


class RewardPage(Page):
    model_config = _example({"items": [], "next_cursor": None})
    items: list[Reward]


class RestockDone(_Open):
    model_config = _example(
        {
            "program_id": "shop",
            "reward_id": "mug",
            "quantity": 50,
            "stocked_after": 150,
            "created_at": NOW,
        }
    )
    program_id: str
    reward_id: str
    quantity: int
    stocked_after: int
    created_at: str


class Redemption(_Open):
    model_config = _example(
        {
            "id": "5b7f0f4e-1d2c-4b3a-8e9f-0a1b2c3d4e5f",
            "program_id": "shop",
            "reward_id": "mug",
            "member_id": "alice",
            "quantity": 1,
            "status": "completed",
            "points_spent": 150,
            "points": 150,
            "balance_after": 230,
            "debit_transaction_id": TXN_ID,
            "refund_transaction_id": None,
            "fulfillment": {"type": "none"},
            "failure": None,
            "created_at": NOW,
            "updated_at": NOW,
        }
    )
    id: str
    program_id: str
    reward_id: str
    member_id: str
    quantity: int
    status: str
    points_spent: int
    points: int
    balance_after: int | None
    debit_transaction_id: str | None
    refund_transaction_id: str | None
    fulfillment: dict[str, Any]
    failure: dict[str, Any] | None
    created_at: str | None
    updated_at: str | None


class RedemptionPage(Page):
    model_config = _example({"items": [], "next_cursor": None})
    items: list[Redemption]


REVIEW_EXAMPLE = {
    "review_id": "0193a0c4-5f1e-7c3a-9d2b-1f0e6a7b8c9f",
    "program_id": "shop",
    "member_id": "alice",
    "kind": "debit",
    "points": 5000,
    "reason": "gift card",
    "status": "approved",
    "hold_transaction_id": TXN_ID,
    "decision_transaction_id": "0193a0c4-5f1e-7c3a-9d2b-1f0e6a7b8ca0",
    "decision_reason": "customer verified by phone",
    "redemption_id": None,
    "reward_id": None,
    "created_at": NOW,
    "decided_at": NOW,
}


class Review(_Open):
    """A debit or redemption above the program's review threshold, and its decision."""

    model_config = _example(REVIEW_EXAMPLE)
    review_id: str
    program_id: str
    member_id: str
    kind: str = Field(description="debit or redemption")
    points: int
    reason: str
    status: str = Field(description="pending, approved or rejected")
    hold_transaction_id: str
    decision_transaction_id: str | None = Field(
        description="approved: the debit of the held points; rejected: their release"
    )
    decision_reason: str | None
    redemption_id: str | None
    reward_id: str | None
    created_at: str | None
    decided_at: str | None


class ReviewPage(Page):
    model_config = _example({"items": [REVIEW_EXAMPLE], "next_cursor": None})
    items: list[Review]


class EventResult(_Open):
    """What an event earned (or would earn, dry run), and why."""

    model_config = _example(
        {
            "event_id": "order-1",
            "member_id": "dave",
            "type": "order",
            "points": 129,
            "rule_version": 1,
            "why": [{"rule": "order_points", "points": 129}],
            "dry_run": False,
            "balance": {"available": 129, "total": 129},
        }
    )
    event_id: str
    member_id: str
    type: str
    points: int
    rule_version: int
    why: list[dict[str, Any]]
    dry_run: bool


class BatchEntry(_Open):
    status: int = Field(description="the HTTP status this event alone would have answered")
    body: dict[str, Any] = Field(description="its answer: an event result, or a problem")
    replayed: bool | None = None


class EventBatchResult(_Open):
    model_config = _example(
        {
            "results": [
                {
                    "status": 201,
                    "body": {
                        "event_id": "ci-1",
                        "member_id": "dave",
                        "type": "check_in",
                        "points": 10,
                        "rule_version": 1,
                        "why": [],
                        "dry_run": False,
                    },
                }
            ]
        }
    )
    results: list[BatchEntry]


class SimulationProgress(_Open):
    events_done: int
    events_total: int | None = Field(description="the window's events; null until counted")


class SimulationJob(_Open):
    """A what-if replay job: its request, status, progress and, once done, its result
    (docs/simulations.md describes every field of the result)."""

    model_config = _example(
        {
            "simulation_id": "0193a0c4-5f1e-7c3a-9d2b-1f0e6a7b8c9f",
            "program_id": "shop",
            "status": "done",
            "from": "2026-10-01T00:00:00Z",
            "to": "2026-11-01T00:00:00Z",
            "top_members": 10,
            "rules": [],
            "progress": {"events_done": 1200, "events_total": 1200},
            "created_at": NOW,
            "started_at": NOW,
            "finished_at": NOW,
            "error": None,
            "result": {
                "events": 1200,
                "members": 300,
                "events_changed": 410,
                "events_invalid": 0,
                "actual_points": 52000,
                "candidate_points": 61000,
                "difference": 9000,
                "tiers_from": {"explanation": 40, "tier_changes": 1160, "current": 0},
                "by_rule": [
                    {
                        "rule_id": "order_points",
                        "actual_points": 52000,
                        "candidate_points": 61000,
                        "difference": 9000,
                    }
                ],
                "by_tier": [],
                "by_event_type": [],
                "top_members": [],
            },
        }
    )
    simulation_id: str
    program_id: str
    status: Literal["queued", "running", "done", "failed"]
    from_: str = Field(alias="from")
    to: str
    top_members: int
    rules: list[dict[str, Any]]
    progress: SimulationProgress
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    error: str | None
    result: dict[str, Any] | None


class StoredEvent(_Open):
    model_config = _example(
        {
            "program_id": "shop",
            "event_id": "order-1",
            "member_id": "dave",
            "type": "order",
            "occurred_at": NOW,
            "attributes": {"amount": 12990},
            "rule_version": 1,
            "points": 129,
            "why": [],
            "txn_id": TXN_ID,
            "reversed_amount": "0",
            "reversed_points": 0,
            "created_at": NOW,
        }
    )
    program_id: str
    event_id: str
    member_id: str
    type: str
    occurred_at: str | None
    attributes: dict[str, Any]
    rule_version: int | None
    points: int
    why: list[dict[str, Any]]
    txn_id: str | None
    reversed_amount: str
    reversed_points: int
    created_at: str | None


class Reversal(_Open):
    model_config = _example(
        {
            "event_id": "order-1",
            "member_id": "dave",
            "event_points": 129,
            "reversed_amount": "6495",
            "clawed_back": 64,
            "owed": 0,
            "unrecovered": 0,
            "debt": 0,
            "reversed_points_total": 64,
            "transaction": None,
            "balance": {"available": 75, "total": 75},
        }
    )
    event_id: str
    member_id: str
    event_points: int
    reversed_amount: str
    clawed_back: int
    owed: int
    unrecovered: int
    debt: int
    reversed_points_total: int
    transaction: dict[str, Any] | None
    balance: Balance


class Confirmation(_Open):
    model_config = _example(
        {
            "event_id": "spend-9",
            "member_id": "erin",
            "released_points": 800,
            "balance": {"available": 800, "total": 800},
        }
    )
    event_id: str
    member_id: str
    released_points: int
    balance: Balance


class Health(_Open):
    model_config = _example({"status": "ok", "version": "0.1.0"})
    status: str
    version: str = Field(description="the release this ingress replica runs")


class Ready(_Open):
    model_config = _example(
        {
            "status": "ready",
            "database": "ok",
            "redis": "ok",
            "shards": [],
            "reward_shards": [],
            "event_consumer": None,
            "lanes": {"queued_peak": 0, "shed": 0},
        }
    )
    status: str
    database: str
    redis: str
    shards: list[dict[str, Any]]
    reward_shards: list[dict[str, Any]]
    event_consumer: dict[str, Any] | None
    # This replica's lanes towards the shards: the longest one so far, requests shed.
    lanes: dict[str, int]


class ShardPlacement(_Open):
    index: int
    name: str
    slots: int = Field(description="slots this shard owns (of `slots`)")
    node_id: str | None = Field(description="null while the shard restarts")
    node_ip: str | None
    pid: int | None
    version: str | None = Field(description="the release the shard runs")
    ops: int = Field(description="operations committed since the shard started")
    failed: int = Field(description="operations answered unavailable since it started")


class VersionRates(_Open):
    version: str
    shards: int
    slots: int
    ops: int
    failed: int
    error_rate: float


class Versions(_Open):
    account_shards: list[VersionRates]
    reward_shards: list[VersionRates]


class NodeHolding(_Open):
    node_id: str
    node_ip: str
    account_shards: list[int]
    reward_shards: list[int]


class Topology(_Open):
    model_config = _example(
        {
            "slots": 1024,
            "account_shards": [
                {
                    "index": 0,
                    "name": "points-account-shard-0",
                    "slots": 512,
                    "node_id": "9f1c",
                    "node_ip": "10.0.0.5",
                    "pid": 4242,
                    "version": "0.1.0",
                    "ops": 1200,
                    "failed": 0,
                }
            ],
            "reward_shards": [],
            "versions": {
                "account_shards": [
                    {
                        "version": "0.1.0",
                        "shards": 1,
                        "slots": 512,
                        "ops": 1200,
                        "failed": 0,
                        "error_rate": 0.0,
                    }
                ],
                "reward_shards": [],
            },
            "nodes": [
                {
                    "node_id": "9f1c",
                    "node_ip": "10.0.0.5",
                    "account_shards": [0],
                    "reward_shards": [],
                }
            ],
            "move": None,
        }
    )
    slots: int
    account_shards: list[ShardPlacement]
    reward_shards: list[ShardPlacement]
    nodes: list[NodeHolding]
    versions: Versions = Field(description="per release: shards, slots and error rate")
    move: dict[str, Any] | None = Field(
        description="the move in progress (state running, or canary: paused), if any"
    )


class RateLimit(_Open):
    per_s: int
    burst: int


KEY_EXAMPLE: dict[str, Any] = {
    "id": "k7q2m4x9c1ab",
    "name": "shop backend",
    "prefix": "pts_k7q2m4x9c1ab",
    "role": "service",
    "programs": ["shop"],
    "expires_at": None,
    "rate_limit": {"per_s": 100, "burst": 200},
    "created_by": "admin",
    "created_at": NOW,
    "revoked_at": None,
    "last_used_at": None,
}


class ApiKey(_Open):
    model_config = _example(KEY_EXAMPLE)
    id: str
    name: str
    prefix: str = Field(description="shown in lists: names the key, proves nothing")
    role: str
    programs: list[str] | None = Field(description="null: every program")
    expires_at: str | None
    rate_limit: RateLimit | None = Field(description="null: the service's default")
    created_by: str | None
    created_at: str
    revoked_at: str | None
    last_used_at: str | None = Field(description="within a few seconds")


class ApiKeyCreated(ApiKey):
    model_config = _example({**KEY_EXAMPLE, "key": "pts_k7q2m4x9c1ab_" + "x" * 30 + "Ab12Cd"})
    key: str = Field(description="the key itself: shown in this answer only, store it now")


class Me(ApiKey):
    """The calling key (never its secret) and the routes its role lets it call."""

    model_config = _example(
        {
            **KEY_EXAMPLE,
            "routes": [
                "GET /v1/me",
                "GET /v1/programs/{program_id}/members/{member_id}",
                "POST /v1/programs/{program_id}/redemptions",
            ],
        }
    )
    routes: list[str] = Field(
        description='"METHOD /template" of every route this key may call (docs/access.md)'
    )


class ApiKeyPage(Page):
    model_config = _example({"items": [KEY_EXAMPLE], "next_cursor": None})
    items: list[ApiKey]


class AuditEntry(_Open):
    model_config = _example(
        {
            "id": 42,
            "at": NOW,
            "key_id": "admin",
            "role": "admin",
            "action": "reward.put",
            "program_id": "shop",
            "target": "mug",
            "before": None,
            "after": {"reward_id": "mug", "cost_points": 500},
        }
    )
    id: int
    at: str
    key_id: str
    role: str
    action: str
    program_id: str | None
    target: str | None
    before: Any
    after: Any


class AuditPage(Page):
    model_config = _example({"items": [], "next_cursor": None})
    items: list[AuditEntry]


class LedgerSummary(_Open):
    model_config = _example(
        {
            "program_id": "shop",
            "at": None,
            "outstanding": {
                "total": 1380,
                "spendable_net_of_debt": 1200,
                "pending": 150,
                "held": 30,
            },
            "system_accounts": {
                "system:expired": 20,
                "system:issued": -1900,
                "system:redeemed": 500,
            },
            "balanced": True,
            "flows": {
                "issued": 1900,
                "redeemed": 500,
                "refunded": 0,
                "expired": 20,
                "reversed": 0,
                "activated": 0,
                "held": 30,
                "released": 0,
            },
            "transactions": {"credit": {"count": 12, "points": 1900}},
            "accounts": {
                "members": 7,
                "balance": 1200,
                "debt": 0,
                "pending": 150,
                "held": 30,
                "agree_with_ledger": True,
            },
        }
    )
    program_id: str
    at: str | None
    outstanding: dict[str, int]
    system_accounts: dict[str, int]
    balanced: bool = Field(description="what members hold equals the system accounts' negation")
    flows: dict[str, int]
    transactions: dict[str, dict[str, int]]
    accounts: dict[str, Any] | None = Field(
        description="now only: the accounts table's sums and whether they agree with the ledger"
    )


class Experiment(_Open):
    model_config = _example(
        {
            "program_id": "shop",
            "experiment_id": "double-orders",
            "arms": [
                {"name": "control", "rule_version": 1, "weight": 50},
                {"name": "double", "rule_version": 2, "weight": 50},
            ],
            "control": "control",
            "starts_at": NOW,
            "ends_at": "2026-12-29T12:00:00Z",
            "status": "running",
            "ended_at": None,
            "promoted_arm": None,
            "promoted_version": None,
            "created_at": NOW,
        }
    )
    experiment_id: str
    status: str


class Experiments(_Open):
    model_config = _example({"items": []})
    items: list[Experiment]


class ExperimentResults(_Open):
    model_config = _example({"experiment_id": "double-orders", "arms": []})
    experiment_id: str
    arms: list[dict[str, Any]]


# --- Reports (domain/reports.py; docs/reports.md) ------------------------------------------

_REPORT_HEADER = {
    "program_id": "shop",
    "from": "2026-01-01",
    "to": "2026-01-31",
    "granularity": "month",
    "as_of": NOW,
}


class _Report(_Open):
    report: str
    program_id: str
    from_: str = Field(alias="from")
    to: str
    granularity: str
    as_of: str = Field(description="the snapshot the report was read in: exact as of then")


class LiabilityRow(_Open):
    period: str
    opening: int
    issued: int
    redeemed: int
    expired: int
    reversed: int
    adjusted: int
    closing: int
    minor_units_per_point: str | None
    opening_money: str | None
    issued_money: str | None
    redeemed_money: str | None
    expired_money: str | None
    reversed_money: str | None
    adjusted_money: str | None
    closing_money: str | None
    revaluation_money: str | None
    deferred_revenue_money: str | None
    recognised_breakage_money: str | None


class LiabilityReport(_Report):
    model_config = _example(
        {
            "report": "liability",
            **_REPORT_HEADER,
            "currency": "EUR",
            "breakage_rate": "0.2",
            "breakage_rate_source": "policy",
            "rows": [
                {
                    "period": "2026-01-01",
                    "opening": 1000,
                    "issued": 500,
                    "redeemed": 300,
                    "expired": 20,
                    "reversed": 0,
                    "adjusted": 0,
                    "closing": 1180,
                    "minor_units_per_point": "0.5",
                    "opening_money": "500",
                    "issued_money": "250",
                    "redeemed_money": "150",
                    "expired_money": "10",
                    "reversed_money": "0",
                    "adjusted_money": "0",
                    "closing_money": "590",
                    "revaluation_money": None,
                    "deferred_revenue_money": "472",
                    "recognised_breakage_money": "37.5",
                }
            ],
        }
    )
    currency: str | None
    breakage_rate: str
    breakage_rate_source: str
    rows: list[LiabilityRow]


class CohortRow(_Open):
    cohort: str
    issued: int
    redeemed: int
    expired: int
    reversed: int
    outstanding: int
    observed_breakage_rate: str | None
    projected_breakage_rate: str | None


class BreakageReport(_Report):
    model_config = _example(
        {
            "report": "breakage",
            **_REPORT_HEADER,
            "breakage_rate": "0.1",
            "breakage_rate_source": "observed",
            "rows": [
                {
                    "cohort": "2026-01-01",
                    "issued": 1000,
                    "redeemed": 600,
                    "expired": 100,
                    "reversed": 0,
                    "outstanding": 300,
                    "observed_breakage_rate": "0.1000",
                    "projected_breakage_rate": "0.1300",
                }
            ],
            "totals": {
                "cohort": "total",
                "issued": 1000,
                "redeemed": 600,
                "expired": 100,
                "reversed": 0,
                "outstanding": 300,
                "observed_breakage_rate": "0.1000",
                "projected_breakage_rate": "0.1300",
            },
        }
    )
    breakage_rate: str
    breakage_rate_source: str
    rows: list[CohortRow]
    totals: CohortRow


class ExpiringRow(_Open):
    period: str
    points: int
    lots: int


class ExpiringReport(_Report):
    model_config = _example(
        {
            "report": "expiring",
            **_REPORT_HEADER,
            "overdue": {"points": 0, "lots": 0},
            "total_points": 700,
            "rows": [{"period": "2026-01-01", "points": 700, "lots": 9}],
        }
    )
    overdue: dict[str, int]
    total_points: int
    rows: list[ExpiringRow]


class FunnelRow(_Open):
    cohort: str
    earned: int
    reached_reward: int
    redeemed_once: int
    redeemed_twice: int
    reached_reward_rate: str | None
    redeemed_once_rate: str | None
    redeemed_twice_rate: str | None


class FunnelReport(_Report):
    model_config = _example(
        {
            "report": "funnel",
            **_REPORT_HEADER,
            "cheapest_reward_points": 150,
            "rows": [
                {
                    "cohort": "2026-01-01",
                    "earned": 100,
                    "reached_reward": 40,
                    "redeemed_once": 20,
                    "redeemed_twice": 5,
                    "reached_reward_rate": "0.4000",
                    "redeemed_once_rate": "0.2000",
                    "redeemed_twice_rate": "0.2500",
                }
            ],
        }
    )
    cheapest_reward_points: int | None
    rows: list[FunnelRow]


class RewardRow(_Open):
    reward_id: str
    name: str | None
    redemptions: int
    completed: int
    cancelled: int
    failed: int
    in_progress: int
    points: int


class Heatmap(_Open):
    weekdays: list[str]
    counts: list[list[int]] = Field(description="[weekday][hour]: redemptions started")


class RewardsReport(_Report):
    model_config = _example(
        {
            "report": "rewards",
            **_REPORT_HEADER,
            "time_zone": "UTC",
            "rows": [
                {
                    "reward_id": "mug",
                    "name": "Coffee mug",
                    "redemptions": 3,
                    "completed": 2,
                    "cancelled": 1,
                    "failed": 0,
                    "in_progress": 0,
                    "points": 300,
                }
            ],
            "failures": {},
            "heatmap": {
                "weekdays": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                "counts": [[0] * 24 for _ in range(7)],
            },
        }
    )
    time_zone: str
    rows: list[RewardRow]
    failures: dict[str, int]
    heatmap: Heatmap


class TierShare(_Open):
    tier: str | None
    members: int
    share: str | None


class MembersRow(_Open):
    period: str
    new_members: int


class MembersReport(_Report):
    model_config = _example(
        {
            "report": "members",
            **_REPORT_HEADER,
            "members": 120,
            "active": {"30d": 40, "90d": 75},
            "tiers": [{"tier": "gold", "members": 20, "share": "0.1667"}],
            "rows": [{"period": "2026-01-01", "new_members": 12}],
        }
    )
    members: int
    active: dict[str, int]
    tiers: list[TierShare]
    rows: list[MembersRow]
