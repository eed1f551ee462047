"""What an account shard does for each kind of operation: one handler per `OpKind`.

Contract: a handler applies one operation of a batch to in-memory working copies of
accounts (`Work`) and never awaits, so checking and changing an account happen with
nothing in between (the shard's serialization point). It reads what the shard knows from
PostgreSQL through `Context`, which the shard's prefetch filled before the batch was
applied. It writes nothing itself: it adds rows to `work.write`, and the shard commits the
batch in one transaction and answers after COMMIT.

Two families, two tables:

    KEYED       credit, debit, refund, event, reverse, confirm. The shard runs them inside
                its idempotency frame (a key seen before answers from memory; the account
                is found, or created by the kinds in CREATES_ACCOUNT). The handler returns
                the outcome, which the shard remembers under the key, or raises PointsError:
                a refusal.
    STANDALONE  expire, retier (the shard's own passes, not keyed), decide (an operator's
                decision on a review: idempotent by the review's state, not by a key) and
                an event's dry run (`DRY_RUN`, answers what the event would earn; nothing
                is written). The handler answers the operation itself, at once or after
                commit.

Risk control (domain/risk.py, domain/reviews.py) is applied here, on the account, so the
shard serializes it like the balance: a debit (a redemption's too) and a credit by a
`service` key are counted against the program's velocity limits in the account's own
counters, and a debit above the review threshold is held (a `hold` transaction and a
pending review, written in the same commit) instead of spent.

Why here and not in ShardCore: the core keeps the batch mechanics (prefetch, the apply
loop, commit, publish, idempotency replay); each operation's rules fit on one screen here.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from actors.group_commit import answer
from actors.protocol import AccountCommand, OpKind, Outcome
from db.ledger_repo import (
    AccountKey,
    BatchWrite,
    EventRow,
    IdemKey,
    ProgramConfig,
    RefundSource,
    StoredEvent,
)
from domain.earning import member_context, record, update_tier
from domain.errors import Code, PointsError
from domain.experiments import Arm, Experiment, assign, parse_experiment
from domain.ids import uuid7
from domain.ledger import (
    DEBIT,
    HELD_UNTIL_CONFIRMED,
    HOLD,
    REFUND,
    RELEASE,
    Account,
    Lot,
    Transaction,
    activate,
    available,
    capture,
    confirm,
    credit,
    debit,
    expire,
    hold,
    new_account,
    refund,
    release,
    reverse,
    transaction_view,
)
from domain.limits import PENDING_REVIEWS_PER_MEMBER_MAX
from domain.policy import Policy, available_at, expires_at, local_day, parse_policy
from domain.reversals import reversal
from domain.reviews import (
    APPROVE,
    HELD_FOR_REVIEW,
    Review,
    ReviewKind,
    ReviewStatus,
    check_decision_reason,
    decide,
    record_decision,
    review_view,
)
from domain.risk import charge, needs_review
from domain.rules import (
    Evaluation,
    EventIn,
    RuleSet,
    compile_rule_set,
    evaluate,
    explanation_json,
)

# Ids the random source gives a UUIDv7 (RFC 9562: 80 random bits besides the timestamp).
UUID7_RANDOM_BYTES = 10

EventKey = tuple[str, str]  # (program_id, event_id)
Pinned = dict[AccountKey, Account]


@dataclass(slots=True)
class CompiledConfig:
    """A program's policy and compiled rule sets (newest effective first)."""

    policy: Policy
    policy_version: int
    rule_sets: list[tuple[datetime, RuleSet]]
    loaded_at: float
    # Running experiments, each with its arms' rule sets by version (domain/experiments.py).
    experiments: tuple[tuple[Experiment, dict[int, RuleSet]], ...] = ()

    def experiment_rules(
        self, member_id: str, moment: datetime
    ) -> tuple[Experiment, Arm, RuleSet] | None:
        """The experiment running at `moment` (the first, if several), the member's arm
        and its rules; None when none runs."""
        for experiment, by_version in self.experiments:
            if experiment.running_at(moment):
                arm = assign(experiment, member_id)
                return experiment, arm, by_version[arm.rule_version]
        return None

    def rule_set_at(self, moment: datetime, now: datetime) -> RuleSet | None:
        """The version in effect when the event occurred. An event older than the first
        version uses the first one (once it has started): a program's rules apply to the
        late events of its first days too."""
        for effective_from, rule_set in self.rule_sets:
            if effective_from <= moment:
                return rule_set
        if self.rule_sets and self.rule_sets[-1][0] <= now:
            return self.rule_sets[-1][1]
        return None


def compile_config(config: ProgramConfig, loaded_at: float) -> CompiledConfig:
    policy = parse_policy(config.policy)
    rule_sets = sorted(
        (
            (effective_from, compile_rule_set(rules, version))
            for version, effective_from, rules in config.rule_sets
        ),
        key=lambda item: (item[0], item[1].version),
        reverse=True,
    )
    by_version = {rule_set.version: rule_set for _, rule_set in rule_sets}
    experiments = tuple(
        (experiment, {arm.rule_version: by_version[arm.rule_version] for arm in experiment.arms})
        for experiment in (
            parse_experiment(
                config.program_id, experiment_id, arms, starts_at, ends_at, set(by_version)
            )
            for experiment_id, arms, starts_at, ends_at in config.experiments
        )
    )
    return CompiledConfig(policy, config.policy_version, rule_sets, loaded_at, experiments)


class Lru(OrderedDict[Any, Any]):
    def __init__(self, capacity: int) -> None:
        super().__init__()
        assert capacity > 0
        self.capacity = capacity

    def get_fresh(self, key: Any) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


@dataclass(slots=True)
class Op:
    kind: OpKind
    program_id: str
    member_id: str
    points: int
    reason: str
    expires_at: datetime | None
    key: str
    request_hash: str
    future: asyncio.Future[Outcome]
    # A refund: the debit it gives back.
    refund_of: uuid.UUID | None = None
    # An event to apply (EVENT), or the event to reverse (REVERSE).
    event: EventIn | None = None
    event_id: str | None = None
    # REVERSE: the amount of the event reversed (decimal text; None: all of it).
    amount: str | None = None
    dry_run: bool = False
    # The account's slot (set by the shard on arrival: ownership is checked by slot).
    slot: int = -1
    # A credit by a `service` key (counted against service_credit_points_per_day).
    by_service: bool = False
    # A redemption's debit: the redemption and its reward.
    redemption_id: uuid.UUID | None = None
    reward_id: str | None = None
    # DECIDE: the review and the decision (approve or reject).
    review_id: uuid.UUID | None = None
    decision: str = ""
    # The request it serves, for the commit's log line (actors/tracing.py).
    request_id: str = ""

    @staticmethod
    def of(command: AccountCommand, future: asyncio.Future[Outcome]) -> Op:
        """The shard's working form of a command (one flat record for the batch loop)."""
        event = getattr(command, "event", None)
        return Op(
            command.kind,
            command.program_id,
            command.member_id,
            getattr(command, "points", 0),
            getattr(command, "reason", ""),
            getattr(command, "expires_at", None),
            command.key,
            command.request_hash,
            future,
            getattr(command, "refund_of", None),
            event,
            getattr(command, "event_id", None) or (event.event_id if event is not None else None),
            getattr(command, "amount", None),
            bool(getattr(command, "dry_run", False)),
            -1,
            bool(getattr(command, "by_service", False)),
            getattr(command, "redemption_id", None),
            getattr(command, "reward_id", None),
            getattr(command, "review_id", None),
            getattr(command, "decision", ""),
        )


@dataclass(slots=True)
class Work:
    """State of the batch being applied: copies of accounts and the rows to write."""

    write: BatchWrite = field(default_factory=BatchWrite)
    # account key -> (working copy, version loaded; 0 = new account)
    accounts: dict[AccountKey, tuple[Account, int]] = field(default_factory=dict)
    changed: set[AccountKey] = field(default_factory=set)
    # key -> index in `results` of the first operation that used it in this batch
    keys: dict[IdemKey, int] = field(default_factory=dict)
    results: list[Outcome] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    # operations answered only once the batch commits: (op, index in results)
    waiting: list[tuple[Op, int]] = field(default_factory=list)
    # debits refunded by this batch
    refunded: set[uuid.UUID] = field(default_factory=set)
    # events applied in this batch, and reversal state of events changed by it
    events: set[EventKey] = field(default_factory=set)
    reversals: dict[EventKey, tuple[str, int]] = field(default_factory=dict)
    # reviews decided by this batch: review id -> (decision, its answer)
    decided: dict[uuid.UUID, tuple[str, Outcome]] = field(default_factory=dict)

    def wait(self, op: Op, result: Outcome, request_hash: str) -> int:
        """Answer `op` with `result` once the batch commits; returns the result's index."""
        self.results.append(result)
        self.hashes.append(request_hash)
        index = len(self.results) - 1
        self.waiting.append((op, index))
        return index


@dataclass(slots=True)
class Context:
    """What handlers read besides the accounts: the shard's knowledge of PostgreSQL, as its
    prefetch left it for the batch being applied. `stats` is the shard's own dict."""

    random_bytes: Callable[[int], bytes]
    stats: dict[str, float]
    taken_events: Lru  # event ids found recorded: another member's, or past the retention
    programs: set[str] = field(default_factory=set)
    configs: dict[str, CompiledConfig] = field(default_factory=dict)
    # Per batch: the events it reverses or confirms, the debits it refunds (as stored).
    stored_events: dict[EventKey, StoredEvent] = field(default_factory=dict)
    sources: dict[uuid.UUID, RefundSource] = field(default_factory=dict)
    # Per batch: the reviews it decides, as committed.
    reviews: dict[uuid.UUID, Review] = field(default_factory=dict)

    def new_id(self, now: datetime) -> uuid.UUID:
        return uuid7(int(now.timestamp() * 1000), self.random_bytes(UUID7_RANDOM_BYTES))

    def config(self, program_id: str) -> CompiledConfig:
        config = self.configs.get(program_id)
        if config is None:
            raise PointsError(Code.UNAVAILABLE, f"program {program_id}: policy not loaded")
        return config


# ----------------------------------------------------------------- shared by handlers


def working_copy(
    ctx: Context, work: Work, akey: AccountKey, committed: Account, now: datetime
) -> tuple[Account, int]:
    """A batch's copy of a committed account, with its due pending lots activated first
    (so every operation sees them spendable, and the activation is in the ledger)."""
    entry = (committed.clone(), committed.version)
    work.accounts[akey] = entry
    account = entry[0]
    if any(lot.due(now) for lot in account.lots):
        activate_lots(ctx, work, account, akey, now, None)
    return entry


def activate_lots(
    ctx: Context,
    work: Work,
    account: Account,
    akey: AccountKey,
    now: datetime,
    lots: list[Lot] | None,
) -> Transaction | None:
    """Activate pending lots (due ones, or `lots`) and add the writes to the batch."""
    before = {lot.lot_id: (lot, lot.remaining) for lot in account.lots if not lot.active}
    txn = activate(account, now, ctx.new_id(now), lots)
    if txn is None:
        return None
    work.write.transactions.append((txn, None))
    for lot, remaining in before.values():
        if lot.active:
            work.write.lot_states.append(lot)
            if lot.remaining != remaining:  # debt repaid from it
                work.write.lot_deltas[lot.lot_id] += remaining - lot.remaining
    work.changed.add(akey)
    return txn


def _moved(work: Work, op: Op, account: Account, txn: Transaction, now: datetime) -> Outcome:
    """Add a credit, debit or refund to the batch; its answer."""
    work.write.transactions.append((txn, op.key))
    _lot_deltas(work, txn)
    if txn.kind == REFUND:
        assert txn.refers_to is not None
        work.refunded.add(txn.refers_to)
    body = transaction_view(txn)
    body["balance"] = _balance(account, now)
    return Outcome.created(body)


def _lot_deltas(work: Work, txn: Transaction) -> None:
    """What a transaction took from lots (a debit, a hold) or gave back (a refund, a
    release). Not for the debit that spends held points: the hold took them already."""
    if txn.kind in (DEBIT, HOLD):
        for lot_id, taken in txn.allocations:
            work.write.lot_deltas[lot_id] += taken
    elif txn.kind in (REFUND, RELEASE):
        for lot_id, taken in txn.allocations:
            work.write.lot_deltas[lot_id] -= taken


def _balance(account: Account, now: datetime) -> dict[str, int]:
    return {"available": available(account, now), "total": account.balance}


# ----------------------------------------------------------------- keyed handlers


def apply_credit(
    ctx: Context, work: Work, op: Op, account: Account, now: datetime, txn_id: uuid.UUID
) -> Outcome:
    velocity = account.velocity
    if op.by_service:
        policy = ctx.config(op.program_id).policy
        velocity = charge(velocity, policy.risk, policy.time_zone, now, service_credited=op.points)
    txn = credit(account, op.points, op.reason, now, txn_id, ctx.new_id(now), op.expires_at)
    account.velocity = velocity  # counted only once the credit is made
    return _moved(work, op, account, txn, now)


def apply_debit(
    ctx: Context, work: Work, op: Op, account: Account, now: datetime, txn_id: uuid.UUID
) -> Outcome:
    """Spend points, or hold them for review above the program's threshold. Either way
    the debit counts against the velocity limits first (a redemption's also as one
    redemption), and nothing is counted when it is refused."""
    policy = ctx.config(op.program_id).policy
    risk = policy.risk
    velocity = charge(
        account.velocity,
        risk,
        policy.time_zone,
        now,
        debited=op.points,
        redemptions=1 if op.redemption_id is not None else 0,
    )
    if not needs_review(risk, op.points):
        txn = debit(account, op.points, op.reason, now, txn_id)
        account.velocity = velocity
        return _moved(work, op, account, txn, now)
    if len(account.holds) >= PENDING_REVIEWS_PER_MEMBER_MAX:
        raise PointsError(
            Code.LIMIT_EXCEEDED,
            f"{PENDING_REVIEWS_PER_MEMBER_MAX} reviews of this member are pending already",
            extra={"limit": {"name": "pending_reviews", "value": PENDING_REVIEWS_PER_MEMBER_MAX}},
        )
    review_id = ctx.new_id(now)
    txn = hold(account, op.points, op.reason, now, txn_id, review_id)
    account.velocity = velocity
    review = Review(
        review_id=review_id,
        program_id=op.program_id,
        member_id=op.member_id,
        kind=ReviewKind.DEBIT if op.redemption_id is None else ReviewKind.REDEMPTION,
        points=op.points,
        reason=op.reason,
        status=ReviewStatus.PENDING,
        hold_txn_id=txn.txn_id,
        key=op.key,
        created_at=now,
        redemption_id=op.redemption_id,
        reward_id=op.reward_id if op.redemption_id is not None else None,
    )
    review.check()
    work.write.new_reviews.append(review)
    outcome = _moved(work, op, account, txn, now)
    # 201 like any debit (a hold and a review were recorded), its status saying it waits.
    outcome.body["status"] = HELD_FOR_REVIEW
    outcome.body["review_id"] = str(review_id)
    return outcome


def apply_refund(
    ctx: Context, work: Work, op: Op, account: Account, now: datetime, txn_id: uuid.UUID
) -> Outcome:
    """Give back everything a debit took, into the lots it took it from."""
    source = ctx.sources.get(op.refund_of) if op.refund_of is not None else None
    if (
        source is None
        or source.kind != DEBIT
        or (source.program_id, source.member_id) != (op.program_id, op.member_id)
    ):
        raise PointsError(Code.NOT_FOUND, f"debit {op.refund_of} of this member not found")
    if source.refunded or source.txn_id in work.refunded:
        raise PointsError(Code.IDEMPOTENCY_CONFLICT, f"debit {source.txn_id} already refunded")
    if sum(taken for _, taken in source.allocations) != op.points:
        raise PointsError(Code.VALIDATION_ERROR, "a refund gives back the whole debit")
    txn = refund(account, source.txn_id, source.allocations, source.lots, op.reason, now, txn_id)
    return _moved(work, op, account, txn, now)


def _evaluate(
    ctx: Context, op: Op, account: Account, now: datetime
) -> tuple[CompiledConfig, RuleSet, Evaluation, tuple[str, str] | None]:
    """The rule set in effect when the event occurred (or the member's arm's, inside a
    running experiment, for the event types it handles), what it awards (an event type no
    rule handles is a validation error), and the (experiment, arm) that scored it."""
    assert op.event is not None
    config = ctx.config(op.program_id)
    event = op.event
    rule_set = config.rule_set_at(event.occurred_at, now)
    assignment = None
    arm_rules = config.experiment_rules(op.member_id, event.occurred_at)
    if arm_rules is not None and event.type in arm_rules[2].by_type:
        experiment, arm, rule_set = arm_rules
        assignment = (experiment.experiment_id, arm.name)
    if rule_set is None or event.type not in rule_set.by_type:
        version = f"rule set version {rule_set.version}" if rule_set else "no rule set"
        raise PointsError(
            Code.VALIDATION_ERROR,
            f"unknown event type {event.type!r}: no rule handles it ({version} in effect"
            f" at {event.occurred_at.isoformat()})",
        )
    context = member_context(account.earning, config.policy, event.occurred_at)
    return config, rule_set, evaluate(rule_set, event, context, config.policy), assignment


def _event_body(op: Op, rule_set: RuleSet, evaluation: Evaluation, dry_run: bool) -> dict[str, Any]:
    assert op.event is not None
    return {
        "event_id": op.event.event_id,
        "member_id": op.member_id,
        "type": op.event.type,
        "points": evaluation.points,
        "rule_version": rule_set.version,
        "why": explanation_json(evaluation),
        "dry_run": dry_run,
    }


def apply_event(
    ctx: Context, work: Work, op: Op, account: Account, now: datetime, txn_id: uuid.UUID
) -> Outcome:
    """Evaluate the program's rules for the event and credit what it earns."""
    event = op.event
    assert event is not None
    ekey = (op.program_id, event.event_id)
    if ekey in work.events:
        raise PointsError(
            Code.IDEMPOTENCY_CONFLICT,
            f"event id {event.event_id} was already used for another member",
        )
    if ekey in ctx.taken_events:
        # Recorded in `events` but its key unknown: another member's event, or this one's
        # applied longer ago than the idempotency retention (its answer was purged; the
        # event row is kept so that it never earns twice).
        raise PointsError(
            Code.IDEMPOTENCY_CONFLICT,
            f"event id {event.event_id} was already used for another member, or applied"
            " longer ago than the idempotency retention",
        )
    config, rule_set, evaluation, assignment = _evaluate(ctx, op, account, now)
    policy = config.policy
    body = _event_body(op, rule_set, evaluation, False)
    if assignment is not None:
        experiment_id, arm_name = assignment
        body["experiment"] = {"id": experiment_id, "arm": arm_name}
        work.write.assignments.append((op.program_id, experiment_id, op.member_id, arm_name))
    points = body["points"]
    txn = None
    if points > 0:
        becomes_available = (
            None  # a matched rule holds this award for review
            if evaluation.hold is not None
            else available_at(policy.pending, now, policy.time_zone)
        )
        txn = credit(
            account,
            points,
            f"{event.type} {event.event_id}",
            now,
            txn_id,
            ctx.new_id(now),
            # Held until confirmed: the expiry is set when it is confirmed.
            None if becomes_available is None else expires_at(policy, becomes_available),
            HELD_UNTIL_CONFIRMED if becomes_available is None else becomes_available,
            event.event_id,
        )
        work.write.transactions.append((txn, op.key))
        record(account.earning, policy, event.occurred_at, evaluation, local_day(policy, now))
    before = account.earning.get("tier")
    decision = update_tier(account.earning, policy, account.lifetime_earned, now)
    if decision is not None and decision.changed:
        work.write.tier_changes.append(
            (op.program_id, op.member_id, before, decision.tier, decision.reason)
        )
    work.events.add(ekey)
    work.write.events.append(
        EventRow(
            op.program_id,
            event.event_id,
            op.member_id,
            event.type,
            event.occurred_at,
            event.attributes,
            body["rule_version"],
            points,
            body["why"],
            txn.txn_id if txn is not None else None,
        )
    )
    ctx.stats["events"] += 1
    if txn is not None:
        body["transaction"] = transaction_view(txn)
    body["balance"] = _balance(account, now)
    if decision is not None:
        body["tier"] = decision.tier
    return Outcome.created(body)


def apply_reverse(
    ctx: Context, work: Work, op: Op, account: Account, now: datetime, txn_id: uuid.UUID
) -> Outcome:
    """Claw back what an event earned, in proportion to the amount reversed."""
    assert op.event_id is not None
    ekey = (op.program_id, op.event_id)
    stored = ctx.stored_events.get(ekey)
    if stored is None or stored.member_id != op.member_id:
        raise PointsError(Code.NOT_FOUND, f"event {op.event_id} of this member not found")
    reversed_text, reversed_points = work.reversals.get(
        ekey, (stored.reversed_amount, stored.reversed_points)
    )
    new_reversed, target, claw = reversal(
        stored.points, stored.attributes.get("amount"), reversed_text, reversed_points, op.amount
    )
    txn, unrecovered = (None, 0)
    if claw > 0:
        txn, unrecovered = reverse(
            account,
            op.event_id,
            claw,
            f"reversal of {op.event_id}",
            now,
            txn_id,
            ctx.config(op.program_id).policy.allow_debt,
        )
        if txn is not None:
            work.write.transactions.append((txn, op.key))
            for lot_id, taken in txn.allocations:
                work.write.lot_deltas[lot_id] += taken
    # Plain notation: str() would write 1E-7, which the next reversal could not read back.
    reversed_text = format(new_reversed, "f")
    work.reversals[ekey] = (reversed_text, target)
    work.write.event_reversals[ekey] = (reversed_text, target)
    body = {
        "event_id": op.event_id,
        "member_id": op.member_id,
        "event_points": stored.points,
        "reversed_amount": reversed_text,
        # From the member's lots; what was already spent is owed (debt) or unrecovered.
        "clawed_back": txn.points - txn.debt_change if txn is not None else 0,
        "owed": txn.debt_change if txn is not None else 0,
        "unrecovered": unrecovered,
        "debt": account.debt,
        "reversed_points_total": target,
        "transaction": transaction_view(txn) if txn is not None else None,
        "balance": _balance(account, now),
    }
    return Outcome(Code.CREATED if txn is not None else Code.OK, body)


def apply_confirm(
    ctx: Context, work: Work, op: Op, account: Account, now: datetime, txn_id: uuid.UUID
) -> Outcome:
    """Release the points an event holds until confirmation (idempotent)."""
    assert op.event_id is not None
    stored = ctx.stored_events.get((op.program_id, op.event_id))
    if stored is None or stored.member_id != op.member_id:
        raise PointsError(Code.NOT_FOUND, f"event {op.event_id} of this member not found")
    policy = ctx.config(op.program_id).policy
    held = confirm(account, op.event_id, now, expires_at(policy, now))
    points = sum(lot.remaining for lot in held)
    if held:
        activate_lots(ctx, work, account, (op.program_id, op.member_id), now, held)
    assert points >= 0
    body = {
        "event_id": op.event_id,
        "member_id": op.member_id,
        "released_points": points,
        "balance": _balance(account, now),
    }
    return Outcome.done(body)


# ----------------------------------------------------------------- standalone handlers


def apply_dry_run(ctx: Context, work: Work, op: Op, now: datetime, pinned: Pinned) -> None:
    """What the event would earn now; nothing is written or remembered."""
    if op.program_id not in ctx.programs:
        answer(op, Outcome.refused(Code.NOT_FOUND, f"program {op.program_id} not found"))
        return
    akey = (op.program_id, op.member_id)
    entry = work.accounts.get(akey)
    account = entry[0] if entry else pinned.get(akey)
    if account is None:
        account = new_account(op.program_id, op.member_id)
    try:
        _, rule_set, evaluation, _ = _evaluate(ctx, op, account, now)
    except PointsError as exc:
        answer(op, Outcome.of_error(exc))
        return
    answer(op, Outcome.done(_event_body(op, rule_set, evaluation, True)))


def apply_retier(ctx: Context, work: Work, op: Op, now: datetime, pinned: Pinned) -> None:
    """Re-decide the member's tier; written (and answered after commit) only if it moved."""
    akey = (op.program_id, op.member_id)
    config = ctx.configs.get(op.program_id)
    entry = work.accounts.get(akey)
    committed = pinned.get(akey)
    if config is None or config.policy.tiers is None or (entry is None and committed is None):
        answer(op, Outcome.done({"changed": False}))
        return
    if entry is None:
        assert committed is not None
        entry = working_copy(ctx, work, akey, committed, now)
    account = entry[0]
    before = account.earning.get("tier")
    below_before = account.earning.get("below_since")
    decision = update_tier(account.earning, config.policy, account.lifetime_earned, now)
    assert decision is not None
    if not decision.changed and account.earning.get("below_since") == below_before:
        account.earning["tier"], account.earning["below_since"] = before, below_before
        answer(op, Outcome.done({"changed": False}))
        return
    work.accounts[akey] = entry
    if decision.changed:
        work.write.tier_changes.append(
            (op.program_id, op.member_id, before, decision.tier, decision.reason)
        )
    work.changed.add(akey)
    work.wait(op, Outcome.done({"changed": decision.changed}), "")


def apply_expire(ctx: Context, work: Work, op: Op, now: datetime, pinned: Pinned) -> None:
    """Write off the account's points past expiry."""
    akey = (op.program_id, op.member_id)
    entry = work.accounts.get(akey)
    if entry is None:
        committed = pinned.get(akey)
        if committed is None:
            answer(op, Outcome.done({"expired_points": 0}))
            return
        entry = working_copy(ctx, work, akey, committed, now)
    account = entry[0]
    txn = expire(account, now, ctx.new_id(now))
    if txn is None:
        if akey in work.changed:  # pending points were activated: answer after commit
            work.wait(op, Outcome.done({"expired_points": 0}), "")
        else:
            answer(op, Outcome.done({"expired_points": 0}))
        return
    work.write.transactions.append((txn, None))
    for lot_id, taken in txn.allocations:
        work.write.lot_deltas[lot_id] += taken
    work.changed.add(akey)
    work.wait(op, Outcome.done({"expired_points": txn.points}), "")


def apply_decide(ctx: Context, work: Work, op: Op, now: datetime, pinned: Pinned) -> None:
    """An operator's decision on a review: approve spends the held points (a debit from
    member:held), reject gives them back into their lots (a release). Deciding again the
    way it was decided answers the decision as it was made; the other way, invalid_state."""
    review_id, decision = op.review_id, op.decision
    assert review_id is not None and decision
    try:
        check_decision_reason(op.reason)
    except PointsError as exc:
        answer(op, Outcome.of_error(exc))
        return
    earlier = work.decided.get(review_id)
    if earlier is not None:  # decided earlier in this very batch: answer after its commit
        made, outcome = earlier
        if made != decision:
            outcome = Outcome.refused(Code.INVALID_STATE, f"review {review_id} is being {made}d")
        work.wait(op, outcome, "")
        return
    stored = ctx.reviews.get(review_id)
    akey = (op.program_id, op.member_id)
    committed = pinned.get(akey)
    if stored is None or (stored.program_id, stored.member_id) != akey or committed is None:
        answer(op, Outcome.refused(Code.NOT_FOUND, f"review {review_id} not found"))
        return
    entry = work.accounts.get(akey)
    if entry is None:
        entry = working_copy(ctx, work, akey, committed, now)
    account = entry[0]
    if review_id not in account.holds:
        # Not pending on the account: decided and committed, as the stored row says.
        if stored.status is ReviewStatus.PENDING:
            answer(op, Outcome.refused(Code.UNAVAILABLE, "review state settling; retry"))
            return
        try:
            made_now = decide(stored, decision)
        except PointsError as exc:
            answer(op, Outcome.of_error(exc))
            return
        assert not made_now
        answer(op, Outcome.done(review_view(stored)))
        return
    assert stored.status is ReviewStatus.PENDING
    review = replace(stored)
    txn_id = ctx.new_id(now)
    if decision == APPROVE:
        # The debit the member asked for, with its own reason; the hold took the lots.
        txn = capture(account, review_id, review.reason, now, txn_id)
    else:
        txn = release(account, review_id, f"review {review_id} rejected", now, txn_id)
        _lot_deltas(work, txn)
    record_decision(review, decision, txn_id, op.reason, now)
    work.write.transactions.append((txn, None))
    work.write.decided_reviews.append(review)
    work.changed.add(akey)
    outcome = Outcome.done(review_view(review))
    work.decided[review_id] = (decision, outcome)
    work.wait(op, outcome, "")


KeyedHandler = Callable[[Context, Work, Op, Account, datetime, uuid.UUID], Outcome]
StandaloneHandler = Callable[[Context, Work, Op, datetime, Pinned], None]

KEYED: dict[OpKind, KeyedHandler] = {
    OpKind.CREDIT: apply_credit,
    OpKind.DEBIT: apply_debit,
    OpKind.REFUND: apply_refund,
    OpKind.EVENT: apply_event,
    OpKind.REVERSE: apply_reverse,
    OpKind.CONFIRM: apply_confirm,
}
STANDALONE: dict[OpKind, StandaloneHandler] = {
    OpKind.EXPIRE: apply_expire,
    OpKind.RETIER: apply_retier,
    OpKind.DECIDE: apply_decide,
}
# An event with `dry_run` set (the only kind that has one).
DRY_RUN: StandaloneHandler = apply_dry_run
# The kinds that may open an account (it joins the batch only if the operation succeeds).
CREATES_ACCOUNT = frozenset({OpKind.CREDIT, OpKind.EVENT})
# The kinds that read the program's policy and rule sets (the prefetch loads them).
NEEDS_CONFIG = frozenset(
    {
        OpKind.EVENT,
        OpKind.REVERSE,
        OpKind.EXPIRE,
        OpKind.CONFIRM,
        OpKind.RETIER,
        # Risk control: velocity limits and the review threshold.
        OpKind.CREDIT,
        OpKind.DEBIT,
    }
)
# The kinds that read a stored event (the prefetch loads it).
NEEDS_EVENT = frozenset({OpKind.REVERSE, OpKind.CONFIRM})
# Every account operation has exactly one handler (reward kinds go to reward shards).
assert set(KEYED).isdisjoint(STANDALONE)
assert set(KEYED) | set(STANDALONE) == {
    OpKind.CREDIT,
    OpKind.DEBIT,
    OpKind.REFUND,
    OpKind.EVENT,
    OpKind.REVERSE,
    OpKind.CONFIRM,
    OpKind.EXPIRE,
    OpKind.RETIER,
    OpKind.DECIDE,
}
