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

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from domain.errors import Code, PointsError
from domain.limits import BALANCE_MAX, POINTS_PER_OPERATION_MAX, REASON_LENGTH_MAX

SYSTEM_ISSUED = "system:issued"
SYSTEM_REDEEMED = "system:redeemed"
SYSTEM_EXPIRED = "system:expired"
SYSTEM_ADJUSTED = "system:adjusted"
MEMBER_ACCOUNT = "member"

CREDIT = "credit"
DEBIT = "debit"
# Gives back what one debit took, into the very lots it took from (their expiry unchanged).
REFUND = "refund"
TRANSACTION_TYPES = (CREDIT, DEBIT, REFUND)


@dataclass(slots=True)
class Lot:
    lot_id: uuid.UUID
    original: int
    remaining: int
    expires_at: datetime | None
    created_at: datetime

    def spendable(self, now: datetime) -> bool:
        return self.remaining > 0 and (self.expires_at is None or self.expires_at > now)


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

    def clone(self) -> Account:
        """Copy to mutate inside a batch; the committed state stays untouched until commit."""
        return Account(
            self.program_id,
            self.member_id,
            self.version,
            self.balance,
            self.lifetime_earned,
            self.lifetime_spent,
            [
                Lot(lot.lot_id, lot.original, lot.remaining, lot.expires_at, lot.created_at)
                for lot in self.lots
            ],
        )

    def check(self) -> None:
        """Invariant 3 and 4: never negative, balance equals the sum of the lots."""
        assert self.balance >= 0, "balance below zero"
        assert self.balance == sum(lot.remaining for lot in self.lots), "balance != sum(lots)"
        assert all(0 <= lot.remaining <= lot.original for lot in self.lots)
        assert self.lifetime_earned >= 0 and self.lifetime_spent >= 0


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

    def check(self) -> None:
        """Invariant 2: the legs of one transaction sum to zero."""
        assert sum(entry.amount for entry in self.entries) == 0, "unbalanced transaction"
        assert sum(points for _, points in self.allocations) == self.points
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
    """Points the member can spend at `now`: lots not yet expired."""
    total = sum(lot.remaining for lot in account.lots if lot.spendable(now))
    assert 0 <= total <= account.balance
    return total


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
) -> Transaction:
    """Add `points` to the account as a new lot. Mutates `account`."""
    _check_points(points)
    _check_reason(reason)
    if expires_at is not None and expires_at <= now:
        raise PointsError(Code.VALIDATION_ERROR, "expires_at must be in the future")
    if account.balance + points > BALANCE_MAX:
        raise PointsError(Code.LIMIT_EXCEEDED, f"balance would exceed {BALANCE_MAX} points")
    balance_before = account.balance

    lot = Lot(lot_id, points, points, expires_at, now)
    account.lots.append(lot)
    account.balance += points
    account.lifetime_earned += points
    txn = Transaction(
        txn_id,
        account.program_id,
        account.member_id,
        CREDIT,
        points,
        reason,
        now,
        account.balance,
        (Entry(MEMBER_ACCOUNT, points), Entry(SYSTEM_ISSUED, -points)),
        ((lot_id, points),),
        lot,
    )

    assert account.balance == balance_before + points
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
    held = {lot.lot_id: lot for lot in account.lots}
    # Validate every lot before changing any.
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
    for lot_id, taken in allocations:
        lot = held.get(lot_id)
        if lot is None:
            # A fully spent lot left the in-memory state with remaining 0: bring it back.
            stored = lots[lot_id]
            lot = Lot(lot_id, stored.original, 0, stored.expires_at, stored.created_at)
            account.lots.append(lot)
            held[lot_id] = lot
        lot.remaining += taken
        assert lot.remaining <= lot.original
    account.balance += points
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


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def account_view(account: Account, now: datetime, lots_max: int) -> dict[str, object]:
    """The member resource as the API shows it (JSON-ready)."""
    assert lots_max > 0
    account.check()
    lots = spend_order(account.lots, now)
    spendable = sum(lot.remaining for lot in lots)
    view = {
        "program_id": account.program_id,
        "member_id": account.member_id,
        "balance": {
            "available": spendable,
            # Book balance: includes points in lots past expiry not yet written off.
            "total": account.balance,
        },
        "lifetime_earned": account.lifetime_earned,
        "lifetime_spent": account.lifetime_spent,
        "lots": [
            {
                "lot_id": str(lot.lot_id),
                "original": lot.original,
                "remaining": lot.remaining,
                "expires_at": _iso(lot.expires_at),
                "created_at": _iso(lot.created_at),
            }
            for lot in lots[:lots_max]
        ],
        "lots_total": len(lots),
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
        **({"refers_to": str(txn.refers_to)} if txn.refers_to is not None else {}),
    }
