"""Accounts, lots and double-entry transactions: the ledger math.

A member account holds its points in lots. A credit creates a lot (with an optional expiry);
a debit consumes lots soonest-expiry first (lots that never expire last, ties by age) and
records exactly which lots it took from, so a later refund can put points back where they
came from. Each transaction carries double-entry legs that sum to zero: the member leg and
one system account leg (`issued` for credits, `redeemed` for debits).

Invariants asserted here (see DESIGN.md):
- points are integers, every operation moves 1..POINTS_PER_OPERATION_MAX;
- book balance == sum of lot remainders, never negative;
- every transaction's entries sum to zero.
"""

from __future__ import annotations

import copy
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from domain.errors import Code, PointsError
from domain.limits import BALANCE_MAX, POINTS_PER_OPERATION_MAX, REASON_LENGTH_MAX

SYSTEM_ISSUED = "system:issued"
SYSTEM_REDEEMED = "system:redeemed"
SYSTEM_EXPIRED = "system:expired"
SYSTEM_ADJUSTED = "system:adjusted"
MEMBER_ACCOUNT = "member"
# A member's pending points: awarded (issued) but not spendable yet. Activation moves them
# to the member account with an `activate` transaction.
MEMBER_PENDING_ACCOUNT = "member:pending"
# A member's points held for an operator's review: taken from their lots (so neither
# spendable nor expiring) but not spent. A `hold` moves them here; the review's approval
# spends them (a `debit` from here to system:redeemed), its rejection gives them back (a
# `release` into the very lots they came from).
MEMBER_HELD_ACCOUNT = "member:held"
MEMBER_ACCOUNTS = (MEMBER_ACCOUNT, MEMBER_PENDING_ACCOUNT, MEMBER_HELD_ACCOUNT)

CREDIT = "credit"
DEBIT = "debit"
# Gives back what one debit took, into the very lots it took from (their expiry unchanged).
REFUND = "refund"
# Writes off what is left in lots past their expiry (legs: member / system:expired).
EXPIRE = "expire"
# Claws back points an event earned (refunded order): legs member / system:issued.
REVERSAL = "reversal"
# Pending points become spendable: legs member:pending -p / member +p.
ACTIVATE = "activate"
# Points held for review: legs member -p / member:held +p, taken from lots like a debit.
HOLD = "hold"
# A rejected review gives held points back: legs member:held -p / member +p, into the lots.
RELEASE = "release"
TRANSACTION_TYPES = (CREDIT, DEBIT, REFUND, EXPIRE, REVERSAL, ACTIVATE, HOLD, RELEASE)


# available_at of a lot held until its event is confirmed (no date is known yet).
HELD_UNTIL_CONFIRMED = datetime(9999, 12, 31, tzinfo=UTC)


@dataclass(slots=True)
class Lot:
    lot_id: uuid.UUID
    original: int
    remaining: int
    expires_at: datetime | None
    created_at: datetime
    # Pending points: not spendable before available_at, and not before activation (an
    # `activate` transaction moves them from member:pending into the balance).
    available_at: datetime | None = None
    # The event that awarded this lot, if any (reversals take from it first).
    event_id: str | None = None
    # False while pending: its points count in `Account.pending`, not in the balance.
    active: bool = True

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def due(self, now: datetime) -> bool:
        """Pending, and its date has come: the next activation makes it spendable."""
        return not self.active and self.available_at is not None and self.available_at <= now

    @property
    def held(self) -> bool:
        """Pending until its event is confirmed (no date yet)."""
        return not self.active and self.available_at == HELD_UNTIL_CONFIRMED

    def spendable(self, now: datetime) -> bool:
        return self.active and self.remaining > 0 and not self.expired(now)

    def copy(self) -> Lot:
        return Lot(
            self.lot_id,
            self.original,
            self.remaining,
            self.expires_at,
            self.created_at,
            self.available_at,
            self.event_id,
            self.active,
        )


@dataclass(frozen=True, slots=True)
class Hold:
    """Points held for one review: what the hold took from which lots, and those lots as
    they were (a lot the hold emptied leaves the in-memory account; a release needs it)."""

    review_id: uuid.UUID
    txn_id: uuid.UUID
    points: int
    allocations: tuple[tuple[uuid.UUID, int], ...]
    lots: dict[uuid.UUID, Lot]

    def check(self) -> None:
        assert self.points > 0
        assert sum(taken for _, taken in self.allocations) == self.points
        assert all(lot_id in self.lots for lot_id, _ in self.allocations)


@dataclass(slots=True)
class Account:
    """In-memory state of one member account, as loaded from or committed to the database.

    `version` is the fencing token: the database row is only updated where its version
    still equals the version this state was loaded with.
    """

    program_id: str
    member_id: str
    version: int
    balance: int
    lifetime_earned: int
    lifetime_spent: int
    lots: list[Lot] = field(default_factory=list)
    # Earning state (JSON-ready): cap counters by local day and month, earnings by day for
    # tiers, the tier and since when the member is below it. See domain/earning.py.
    earning: dict[str, Any] = field(default_factory=dict)
    # Points owed (a reversal of points already spent, where the program allows debt).
    # The next credits repay it first. Member ledger legs sum to balance - debt.
    debt: int = 0
    # Pending points (inactive lots); member:pending ledger legs sum to it.
    pending: int = 0
    # Points held for review (out of the lots, not spent); member:held legs sum to it, and
    # `holds` (the account's pending reviews, by review id) too.
    held: int = 0
    holds: dict[uuid.UUID, Hold] = field(default_factory=dict)
    # Velocity-limit counters of the current windows (domain/risk.py).
    velocity: dict[str, Any] = field(default_factory=dict)

    def clone(self) -> Account:
        """Copy to mutate inside a batch; the committed state stays untouched until commit."""
        return Account(
            self.program_id,
            self.member_id,
            self.version,
            self.balance,
            self.lifetime_earned,
            self.lifetime_spent,
            [lot.copy() for lot in self.lots],
            _copy_earning(self.earning),
            self.debt,
            self.pending,
            self.held,
            dict(self.holds),  # Holds are frozen: a new dict is a full copy
            dict(self.velocity),  # flat: str -> str | int
        )

    def check(self) -> None:
        """Invariant 3 and 4: never negative, balance equals the sum of the active lots and
        pending the sum of the pending ones."""
        assert self.balance >= 0, "balance below zero"
        assert self.balance == sum(lot.remaining for lot in self.lots if lot.active), (
            "balance != sum(active lots)"
        )
        assert self.pending == sum(lot.remaining for lot in self.lots if not lot.active), (
            "pending != sum(pending lots)"
        )
        assert all(0 <= lot.remaining <= lot.original for lot in self.lots)
        assert self.lifetime_earned >= 0 and self.lifetime_spent >= 0
        assert self.debt >= 0, "debt below zero"
        assert self.held == sum(hold.points for hold in self.holds.values()), "held != sum(holds)"


def _copy_earning(earning: dict[str, Any]) -> dict[str, Any]:
    """A copy of the earning state deep enough for every change made to it (its known
    two-level shape: days -> counters, months -> totals); 5x cheaper than deepcopy, which
    was the largest cost of cloning an account per batch under event load."""
    if not earning:
        return {}
    result = dict(earning)
    days = earning.get("days")
    if days is not None:
        result["days"] = {day: dict(counters) for day, counters in days.items()}
    months = earning.get("months")
    if months is not None:
        result["months"] = dict(months)
    if any(isinstance(v, dict | list) for k, v in result.items() if k not in ("days", "months")):
        return copy.deepcopy(earning)  # an unknown nested value: take no chances
    return result


def new_account(program_id: str, member_id: str) -> Account:
    """An account that does not exist yet in the database (version 0 means 'insert')."""
    return Account(program_id, member_id, 0, 0, 0, 0, [])


@dataclass(frozen=True, slots=True)
class Entry:
    account: str
    amount: int


@dataclass(frozen=True, slots=True)
class Transaction:
    txn_id: uuid.UUID
    program_id: str
    member_id: str
    kind: str
    points: int
    reason: str
    created_at: datetime
    balance_after: int
    entries: tuple[Entry, ...]
    # (lot_id, points) taken from each lot by a debit, or the one lot a credit created.
    allocations: tuple[tuple[uuid.UUID, int], ...]
    new_lot: Lot | None = None
    # A refund: the debit it gives back.
    refers_to: uuid.UUID | None = None
    # The event that earned (credit) or is reversed (reversal) by this transaction.
    event_id: str | None = None
    # Debt this transaction changed: + owed by a reversal of spent points, - repaid by a
    # credit. Lots move the rest: allocations + |debt_change| == points.
    debt_change: int = 0

    def check(self) -> None:
        """Invariant 2: the legs of one transaction sum to zero."""
        assert sum(entry.amount for entry in self.entries) == 0, "unbalanced transaction"
        assert sum(points for _, points in self.allocations) + abs(self.debt_change) == self.points
        assert self.debt_change == 0 or self.kind in (CREDIT, REVERSAL, ACTIVATE)
        assert self.kind in TRANSACTION_TYPES
        assert (self.kind == REFUND) == (self.refers_to is not None)


def _check_points(points: int) -> None:
    if type(points) is not int:
        raise PointsError(Code.VALIDATION_ERROR, "points must be an integer")
    if not 1 <= points <= POINTS_PER_OPERATION_MAX:
        raise PointsError(
            Code.VALIDATION_ERROR, f"points must be between 1 and {POINTS_PER_OPERATION_MAX}"
        )


def _check_reason(reason: str) -> None:
    if not isinstance(reason, str) or not 1 <= len(reason) <= REASON_LENGTH_MAX:
        raise PointsError(
            Code.VALIDATION_ERROR, f"reason must be 1..{REASON_LENGTH_MAX} characters"
        )
    if "\x00" in reason:
        raise PointsError(Code.VALIDATION_ERROR, "reason must not contain NUL characters")


def available(account: Account, now: datetime) -> int:
    """Points the member can spend at `now`: lots not yet expired nor pending, less debt."""
    total = sum(lot.remaining for lot in account.lots if lot.spendable(now))
    assert 0 <= total <= account.balance
    return max(0, total - account.debt)


def spend_order(lots: list[Lot], now: datetime) -> list[Lot]:
    """Spendable lots in the order a debit consumes them.

    Soonest expiry first so members lose as little as possible to expiry; lots that never
    expire last; ties by age (oldest first) and then id, so the order is deterministic.
    """
    spendable = [lot for lot in lots if lot.spendable(now)]
    return sorted(
        spendable,
        key=lambda lot: (
            lot.expires_at is None,
            lot.expires_at or lot.created_at,
            lot.created_at,
            lot.lot_id,
        ),
    )


def credit(
    account: Account,
    points: int,
    reason: str,
    now: datetime,
    txn_id: uuid.UUID,
    lot_id: uuid.UUID,
    expires_at: datetime | None = None,
    available_at: datetime | None = None,
    event_id: str | None = None,
) -> Transaction:
    """Add `points` to the account as a new lot. Mutates `account`.

    `available_at` in the future (or HELD_UNTIL_CONFIRMED) makes the lot pending: its points
    go to member:pending, not to the balance, until `activate` moves them.
    """
    _check_points(points)
    _check_reason(reason)
    if expires_at is not None and expires_at <= now:
        raise PointsError(Code.VALIDATION_ERROR, "expires_at must be in the future")
    if available_at is not None and available_at <= now:
        available_at = None  # available already: not pending
    if available_at is not None and expires_at is not None and expires_at <= available_at:
        raise PointsError(Code.VALIDATION_ERROR, "points would expire before they are available")
    # Pending and held points count: they may join the balance later.
    if account.balance + account.pending + account.held + points > BALANCE_MAX:
        raise PointsError(Code.LIMIT_EXCEEDED, f"balance would exceed {BALANCE_MAX} points")
    balance_before = account.balance
    pending_before = account.pending

    # A pending lot is booked to member:pending (debt is repaid when it is activated);
    # otherwise debt is repaid first and only the rest becomes a lot.
    pending = available_at is not None
    repaid = 0 if pending else min(points, account.debt)
    account.debt -= repaid
    kept = points - repaid
    lot: Lot | None = None
    if kept > 0:
        lot = Lot(lot_id, kept, kept, expires_at, now, available_at, event_id, not pending)
        account.lots.append(lot)
    if pending:
        account.pending += kept
    else:
        account.balance += kept
    account.lifetime_earned += points
    member_leg = MEMBER_PENDING_ACCOUNT if pending else MEMBER_ACCOUNT
    txn = Transaction(
        txn_id,
        account.program_id,
        account.member_id,
        CREDIT,
        points,
        reason,
        now,
        account.balance,
        (Entry(member_leg, points), Entry(SYSTEM_ISSUED, -points)),
        ((lot_id, kept),) if lot is not None else (),
        lot,
        None,
        event_id,
        -repaid,
    )

    assert account.balance + account.pending == balance_before + pending_before + kept
    account.check()
    txn.check()
    return txn


def debit(
    account: Account,
    points: int,
    reason: str,
    now: datetime,
    txn_id: uuid.UUID,
) -> Transaction:
    """Take `points` from the account's spendable lots. Mutates `account` only on success."""
    _check_points(points)
    _check_reason(reason)
    spendable = available(account, now)
    if spendable < points:
        raise PointsError(
            Code.INSUFFICIENT_POINTS,
            f"{points} points requested, {spendable} available",
        )
    balance_before = account.balance
    allocations = _take(account, points, now)
    account.lifetime_spent += points
    txn = Transaction(
        txn_id,
        account.program_id,
        account.member_id,
        DEBIT,
        points,
        reason,
        now,
        account.balance,
        (Entry(MEMBER_ACCOUNT, -points), Entry(SYSTEM_REDEEMED, points)),
        tuple(allocations),
    )

    assert account.balance == balance_before - points >= 0
    txn.check()
    return txn


def _take(account: Account, points: int, now: datetime) -> list[tuple[uuid.UUID, int]]:
    """Take `points` from the spendable lots, soonest expiry first (the caller checked they
    are available); the balance follows. Returns (lot_id, points) per lot taken from."""
    assert 0 < points <= available(account, now)
    allocations: list[tuple[uuid.UUID, int]] = []
    still_needed = points
    for lot in spend_order(account.lots, now):
        take = min(lot.remaining, still_needed)
        lot.remaining -= take
        allocations.append((lot.lot_id, take))
        still_needed -= take
        if still_needed == 0:
            break
    assert still_needed == 0
    # Fully spent lots leave the in-memory state; the database keeps them (remaining = 0).
    account.lots = [lot for lot in account.lots if lot.remaining > 0]
    account.balance -= points
    assert sum(taken for _, taken in allocations) == points
    return allocations


def _put_back(
    account: Account,
    allocations: list[tuple[uuid.UUID, int]] | tuple[tuple[uuid.UUID, int], ...],
    lots: dict[uuid.UUID, Lot],
) -> int:
    """Give points back into the lots they were taken from (a refund, a release); the
    balance follows. `lots` describes those lots as stored, for the ones fully spent, which
    the in-memory account no longer holds. Validates every lot before changing any."""
    held = {lot.lot_id: lot for lot in account.lots}
    if len({lot_id for lot_id, _ in allocations}) != len(allocations):
        raise PointsError(Code.VALIDATION_ERROR, "a debit names each lot once")
    for lot_id, taken in allocations:
        lot = held.get(lot_id) or lots.get(lot_id)
        if lot is None or taken <= 0:
            raise PointsError(Code.VALIDATION_ERROR, f"lot {lot_id} of the debit is unknown")
        remaining = lot.remaining if lot_id in held else 0
        if remaining + taken > lot.original:
            raise PointsError(Code.VALIDATION_ERROR, f"refund would overfill lot {lot_id}")
    balance_before = account.balance
    points = 0
    for lot_id, taken in allocations:
        lot = held.get(lot_id)
        if lot is None:
            # A fully spent lot left the in-memory state with remaining 0: bring it back.
            stored = lots[lot_id]
            lot = Lot(
                lot_id,
                stored.original,
                0,
                stored.expires_at,
                stored.created_at,
                stored.available_at,
                stored.event_id,
            )
            account.lots.append(lot)
            held[lot_id] = lot
        lot.remaining += taken
        points += taken
        assert lot.remaining <= lot.original
    account.balance += points
    assert account.balance == balance_before + points
    return points


def refund(
    account: Account,
    source_id: uuid.UUID,
    allocations: list[tuple[uuid.UUID, int]],
    lots: dict[uuid.UUID, Lot],
    reason: str,
    now: datetime,
    txn_id: uuid.UUID,
) -> Transaction:
    """Give back everything debit `source_id` took, into the lots it took it from.

    `allocations` are the debit's (lot_id, points); `lots` describes those lots as stored
    (needed for the ones fully spent, which the in-memory account no longer holds). Each lot
    keeps its own expiry: points refunded into an expired lot are expired points. Mutates
    `account`.
    """
    _check_reason(reason)
    points = sum(taken for _, taken in allocations)
    _check_points(points)
    if account.balance + points > BALANCE_MAX:
        raise PointsError(Code.LIMIT_EXCEEDED, f"balance would exceed {BALANCE_MAX} points")
    if account.lifetime_spent < points:
        raise PointsError(Code.VALIDATION_ERROR, "refund larger than the points ever spent")
    balance_before = account.balance
    _put_back(account, allocations, lots)
    account.lifetime_spent -= points
    txn = Transaction(
        txn_id,
        account.program_id,
        account.member_id,
        REFUND,
        points,
        reason,
        now,
        account.balance,
        (Entry(MEMBER_ACCOUNT, points), Entry(SYSTEM_REDEEMED, -points)),
        tuple(allocations),
        None,
        source_id,
    )
    assert account.balance == balance_before + points
    account.check()
    txn.check()
    return txn


def hold(
    account: Account,
    points: int,
    reason: str,
    now: datetime,
    txn_id: uuid.UUID,
    review_id: uuid.UUID,
) -> Transaction:
    """Hold `points` for review `review_id`: taken from the spendable lots as a debit would
    take them, but not spent (legs member -p / member:held +p). Mutates `account` only on
    success; `capture` or `release` ends the hold."""
    _check_points(points)
    _check_reason(reason)
    assert review_id not in account.holds
    spendable = available(account, now)
    if spendable < points:
        raise PointsError(
            Code.INSUFFICIENT_POINTS,
            f"{points} points requested, {spendable} available",
        )
    balance_before, held_before = account.balance, account.held
    # The lots as they are before the hold: a release puts points back into them.
    taken_from = {lot.lot_id: lot.copy() for lot in account.lots}
    allocations = tuple(_take(account, points, now))
    record = Hold(
        review_id, txn_id, points, allocations, {i: taken_from[i] for i, _ in allocations}
    )
    record.check()
    account.holds[review_id] = record
    account.held += points
    txn = Transaction(
        txn_id,
        account.program_id,
        account.member_id,
        HOLD,
        points,
        reason,
        now,
        account.balance,
        (Entry(MEMBER_ACCOUNT, -points), Entry(MEMBER_HELD_ACCOUNT, points)),
        allocations,
    )
    assert account.balance == balance_before - points >= 0
    assert account.held == held_before + points
    account.check()
    txn.check()
    return txn


def capture(
    account: Account, review_id: uuid.UUID, reason: str, now: datetime, txn_id: uuid.UUID
) -> Transaction:
    """An approved review spends its held points: a `debit` from member:held to
    system:redeemed. It names the lots the hold took from, so that a refund of it (a
    redemption compensated later) gives the points back where they came from."""
    _check_reason(reason)
    record = account.holds.pop(review_id)
    balance_before, held_before = account.balance, account.held
    account.held -= record.points
    account.lifetime_spent += record.points
    txn = Transaction(
        txn_id,
        account.program_id,
        account.member_id,
        DEBIT,
        record.points,
        reason,
        now,
        account.balance,
        (Entry(MEMBER_HELD_ACCOUNT, -record.points), Entry(SYSTEM_REDEEMED, record.points)),
        record.allocations,
    )
    assert account.balance == balance_before
    assert account.held == held_before - record.points >= 0
    account.check()
    txn.check()
    return txn


def release(
    account: Account, review_id: uuid.UUID, reason: str, now: datetime, txn_id: uuid.UUID
) -> Transaction:
    """A rejected review gives its held points back into the very lots they came from
    (each keeps its expiry: points released into an expired lot are expired points)."""
    _check_reason(reason)
    record = account.holds[review_id]
    if account.balance + record.points > BALANCE_MAX:
        raise PointsError(Code.LIMIT_EXCEEDED, f"balance would exceed {BALANCE_MAX} points")
    balance_before, held_before = account.balance, account.held
    _put_back(account, record.allocations, record.lots)
    del account.holds[review_id]
    account.held -= record.points
    txn = Transaction(
        txn_id,
        account.program_id,
        account.member_id,
        RELEASE,
        record.points,
        reason,
        now,
        account.balance,
        (Entry(MEMBER_HELD_ACCOUNT, -record.points), Entry(MEMBER_ACCOUNT, record.points)),
        record.allocations,
    )
    assert account.balance == balance_before + record.points
    assert account.held == held_before - record.points >= 0
    account.check()
    txn.check()
    return txn


def expire(account: Account, now: datetime, txn_id: uuid.UUID) -> Transaction | None:
    """Write off what is left in every lot past its expiry, as one transaction.

    None when nothing is due, so running it twice (or concurrently with traffic, since the
    shard serializes it) never writes anything twice. Mutates `account`.
    """
    account.check()
    # Pending lots are activated first (the shard does it before any write-off).
    due = [lot for lot in account.lots if lot.active and lot.remaining > 0 and lot.expired(now)]
    if not due:
        return None
    points = sum(lot.remaining for lot in due)
    balance_before = account.balance
    allocations = tuple((lot.lot_id, lot.remaining) for lot in due)
    for lot in due:
        lot.remaining = 0
    account.lots = [lot for lot in account.lots if lot.remaining > 0]
    account.balance -= points
    txn = Transaction(
        txn_id,
        account.program_id,
        account.member_id,
        EXPIRE,
        points,
        "expired",
        now,
        account.balance,
        (Entry(MEMBER_ACCOUNT, -points), Entry(SYSTEM_EXPIRED, points)),
        allocations,
    )
    assert account.balance == balance_before - points >= 0
    account.check()
    txn.check()
    return txn


def reverse(
    account: Account,
    event_id: str,
    points: int,
    reason: str,
    now: datetime,
    txn_id: uuid.UUID,
    allow_debt: bool = False,
) -> tuple[Transaction | None, int]:
    """Claw back up to `points` an event earned: from that event's own lots first (pending
    or not), then from the member's other spendable lots, soonest expiry first.

    Returns (transaction or None, points that could not be clawed back because they were
    already spent). Without debt the shortfall stays with the member and is reported; the
    balance never goes below zero. Mutates `account`.
    """
    _check_points(points)
    _check_reason(reason)
    balance_before = account.balance
    own = sorted(
        (lot for lot in account.lots if lot.event_id == event_id and lot.remaining > 0),
        key=lambda lot: (lot.created_at, lot.lot_id),
    )
    own_ids = {lot.lot_id for lot in own}
    others = [lot for lot in spend_order(account.lots, now) if lot.lot_id not in own_ids]
    allocations: list[tuple[uuid.UUID, int]] = []
    still = points
    taken_pending = 0
    for lot in [*own, *others]:
        if still == 0:
            break
        take = min(lot.remaining, still)
        if take == 0:
            continue
        lot.remaining -= take
        allocations.append((lot.lot_id, take))
        still -= take
        if not lot.active:
            taken_pending += take
    taken = points - still
    taken_active = taken - taken_pending
    # What was already spent: owed as debt where the program allows it, else unrecovered.
    owed = still if allow_debt else 0
    if taken + owed == 0:
        return None, still
    account.lots = [lot for lot in account.lots if lot.remaining > 0]
    account.balance -= taken_active
    account.pending -= taken_pending
    account.debt += owed
    entries = [Entry(SYSTEM_ISSUED, taken + owed)]
    if taken_active + owed:
        entries.append(Entry(MEMBER_ACCOUNT, -(taken_active + owed)))
    if taken_pending:
        entries.append(Entry(MEMBER_PENDING_ACCOUNT, -taken_pending))
    # Earned less than was thought: the lifetime total follows the correction.
    account.lifetime_earned -= min(taken + owed, account.lifetime_earned)
    txn = Transaction(
        txn_id,
        account.program_id,
        account.member_id,
        REVERSAL,
        taken + owed,
        reason,
        now,
        account.balance,
        tuple(entries),
        tuple(allocations),
        None,
        None,
        event_id,
        owed,
    )
    assert account.balance == balance_before - taken_active >= 0
    account.check()
    txn.check()
    return txn, still - owed


def activate(
    account: Account, now: datetime, txn_id: uuid.UUID, lots: list[Lot] | None = None
) -> Transaction | None:
    """Move pending lots whose date has come (or the `lots` given) into the balance, as one
    `activate` transaction (legs member:pending -p / member +p). Debt is repaid first from
    what is activated. None when nothing is due: safe to run any number of times."""
    account.check()
    due = lots if lots is not None else [lot for lot in account.lots if lot.due(now)]
    due = [lot for lot in due if not lot.active and lot.remaining > 0]
    if not due:
        return None
    points = sum(lot.remaining for lot in due)
    balance_before = account.balance
    repaid_total = 0
    allocations: list[tuple[uuid.UUID, int]] = []
    for lot in due:
        lot.active = True
        repaid = min(lot.remaining, account.debt)
        account.debt -= repaid
        repaid_total += repaid
        lot.remaining -= repaid
        if lot.remaining > 0:
            allocations.append((lot.lot_id, lot.remaining))
    account.pending -= points
    account.balance += points - repaid_total
    account.lots = [lot for lot in account.lots if lot.remaining > 0]
    txn = Transaction(
        txn_id,
        account.program_id,
        account.member_id,
        ACTIVATE,
        points,
        "pending points available",
        now,
        account.balance,
        (Entry(MEMBER_PENDING_ACCOUNT, -points), Entry(MEMBER_ACCOUNT, points)),
        tuple(allocations),
        None,
        None,
        None,
        -repaid_total,
    )
    assert account.balance == balance_before + points - repaid_total
    account.check()
    txn.check()
    return txn


def confirm(
    account: Account, event_id: str, now: datetime, expires_at: datetime | None
) -> list[Lot]:
    """Date the lots an event holds until confirmation: available from now, expiring at
    `expires_at` (counted from now by the caller's policy). The caller activates them
    (`activate(..., lots=...)`). Returns the lots changed; none when already confirmed."""
    account.check()
    held = [lot for lot in account.lots if lot.event_id == event_id and lot.held]
    for lot in held:
        lot.available_at = now
        lot.expires_at = expires_at
    assert all(not lot.held for lot in account.lots if lot.event_id == event_id)
    assert all(lot.due(now) for lot in held)
    return held


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def account_view(
    account: Account,
    now: datetime,
    lots_max: int,
    tz: tzinfo | None = None,
    soon_days: int = 30,
) -> dict[str, object]:
    """The member resource as the API shows it (JSON-ready).

    `available`: spendable now; `pending`: awarded but not activated yet; `total`: both
    (includes points past expiry not yet written off); `expiring_soon`: spendable
    or pending points by local expiry date (program time zone `tz`) in the next `soon_days`.
    """
    assert lots_max > 0 and soon_days > 0
    account.check()
    lots = spend_order(account.lots, now)
    spendable = available(account, now)
    pending = account.pending
    horizon = now + timedelta(days=soon_days)
    soon: dict[str, int] = defaultdict(int)
    for lot in account.lots:
        if lot.remaining > 0 and lot.expires_at is not None and now < lot.expires_at <= horizon:
            # The last local day on which the points can still be spent.
            last_moment = lot.expires_at - timedelta(microseconds=1)
            local = last_moment.astimezone(tz) if tz is not None else last_moment
            soon[local.date().isoformat()] += lot.remaining
    view = {
        "program_id": account.program_id,
        "member_id": account.member_id,
        "balance": {
            "available": spendable,
            "pending": pending,
            # All held: includes points in lots past expiry not yet written off.
            "total": account.balance + account.pending,
            # Owed after reversals of spent points; repaid by the next credits first.
            "debt": account.debt,
            # Held for an operator's review (not spendable, not spent).
            "held": account.held,
        },
        "expiring_soon": [{"date": day, "points": soon[day]} for day in sorted(soon)],
        "lifetime_earned": account.lifetime_earned,
        "lifetime_spent": account.lifetime_spent,
        "lots": [
            {
                "lot_id": str(lot.lot_id),
                "original": lot.original,
                "remaining": lot.remaining,
                "expires_at": _iso(lot.expires_at),
                "created_at": _iso(lot.created_at),
                **(
                    {"available_at": _iso(lot.available_at)}
                    if lot.available_at and not lot.held
                    else {}
                ),
                **({"event_id": lot.event_id} if lot.event_id else {}),
            }
            for lot in lots[:lots_max]
        ],
        "lots_total": len(lots),
        "pending_lots": [
            {
                "lot_id": str(lot.lot_id),
                "points": lot.remaining,
                "available_at": None if lot.held else _iso(lot.available_at),
                **({"held_until_confirmed": True} if lot.held else {}),
                "expires_at": _iso(lot.expires_at),
                **({"event_id": lot.event_id} if lot.event_id else {}),
            }
            for lot in account.lots
            if lot.remaining > 0 and not lot.active
        ][:lots_max],
    }
    assert spendable <= account.balance
    return view


def transaction_view(txn: Transaction) -> dict[str, object]:
    """The transaction resource as a write answers it (JSON-ready)."""
    txn.check()
    return {
        "transaction_id": str(txn.txn_id),
        "program_id": txn.program_id,
        "member_id": txn.member_id,
        "type": txn.kind,
        "points": txn.points,
        "reason": txn.reason,
        "created_at": _iso(txn.created_at),
        "expires_at": _iso(txn.new_lot.expires_at) if txn.new_lot else None,
        "balance_after": txn.balance_after,
        **({"debt_change": txn.debt_change} if txn.debt_change else {}),
        **({"refers_to": str(txn.refers_to)} if txn.refers_to is not None else {}),
        **({"event_id": txn.event_id} if txn.event_id is not None else {}),
        **(
            {"available_at": _iso(txn.new_lot.available_at)}
            if txn.new_lot is not None
            and txn.new_lot.available_at is not None
            and not txn.new_lot.held
            else {}
        ),
        **({"held_until_confirmed": True} if txn.new_lot is not None and txn.new_lot.held else {}),
    }
