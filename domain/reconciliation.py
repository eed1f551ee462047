"""A program's books for reconciliation: what is outstanding and what flowed, from the
ledger (pure: the sums come from db/api_repo.py `ledger_summary`).

Double entry: every transaction's legs sum to zero, so what members hold (their `member`,
`member:pending` and `member:held` legs) is exactly the negation of the system accounts'
legs (`system:issued`, `system:redeemed`, `system:expired`, ...). The summary states both
and whether they agree; at "now" it also sets them against the accounts table (balances,
debt, pending, held), which the shards keep in step with the ledger.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from domain.ledger import (
    ACTIVATE,
    CREDIT,
    DEBIT,
    EXPIRE,
    HOLD,
    MEMBER_ACCOUNT,
    MEMBER_HELD_ACCOUNT,
    MEMBER_PENDING_ACCOUNT,
    REFUND,
    RELEASE,
    REVERSAL,
    TRANSACTION_TYPES,
)


def summary(
    program_id: str,
    at: datetime | None,
    legs: dict[str, int],
    kinds: dict[str, dict[str, int]],
    accounts: dict[str, int] | None,
) -> dict[str, Any]:
    """The reconciliation view. `legs`: ledger account -> sum of its legs; `kinds`:
    transaction kind -> {count, points}; `accounts`: the accounts table's sums (now only)."""
    net = legs.get(MEMBER_ACCOUNT, 0)
    pending = legs.get(MEMBER_PENDING_ACCOUNT, 0)
    held = legs.get(MEMBER_HELD_ACCOUNT, 0)
    outstanding = net + pending + held
    system = {name: total for name, total in sorted(legs.items()) if name.startswith("system:")}
    by_kind = {kind: kinds.get(kind, {"count": 0, "points": 0}) for kind in TRANSACTION_TYPES}

    def points(kind: str) -> int:
        return by_kind[kind]["points"]

    view: dict[str, Any] = {
        "program_id": program_id,
        "at": None if at is None else at.isoformat().replace("+00:00", "Z"),
        # What members hold: spendable (net of debt), pending, held for review.
        "outstanding": {
            "total": outstanding,
            "spendable_net_of_debt": net,
            "pending": pending,
            "held": held,
        },
        # The system side of the same books: its negation is what members hold.
        "system_accounts": system,
        "balanced": outstanding == -sum(system.values()),
        # What flowed, in points (each kind's transactions, and the usual names for them).
        "flows": {
            "issued": points(CREDIT),
            "redeemed": points(DEBIT) - points(REFUND),
            "refunded": points(REFUND),
            "expired": points(EXPIRE),
            "reversed": points(REVERSAL),
            "activated": points(ACTIVATE),
            "held": points(HOLD),
            "released": points(RELEASE),
        },
        "transactions": by_kind,
        "accounts": None,
    }
    if accounts is not None:
        agrees = (
            accounts["balance"] - accounts["debt"] == net
            and accounts["pending"] == pending
            and accounts["held"] == held
        )
        view["accounts"] = {**accounts, "agree_with_ledger": agrees}
    return view
