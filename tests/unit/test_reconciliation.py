"""The reconciliation view from the ledger's sums (pure)."""

from datetime import UTC, datetime

from domain.reconciliation import summary


def test_members_hold_what_the_system_accounts_gave_them() -> None:
    legs = {
        "member": 1200,
        "member:pending": 150,
        "member:held": 30,
        "system:issued": -1900,
        "system:redeemed": 500,
        "system:expired": 20,
    }
    kinds = {
        "credit": {"count": 12, "points": 1900},
        "debit": {"count": 4, "points": 520},
        "refund": {"count": 1, "points": 20},
        "expire": {"count": 1, "points": 20},
        "hold": {"count": 1, "points": 30},
    }
    accounts = {"members": 7, "balance": 1200, "debt": 0, "pending": 150, "held": 30}
    view = summary("shop", None, legs, kinds, accounts)
    assert view["outstanding"] == {
        "total": 1380,
        "spendable_net_of_debt": 1200,
        "pending": 150,
        "held": 30,
    }
    assert view["balanced"] is True and view["accounts"]["agree_with_ledger"] is True
    assert view["flows"]["issued"] == 1900 and view["flows"]["redeemed"] == 500
    assert view["transactions"]["reversal"] == {"count": 0, "points": 0}


def test_a_broken_book_says_so() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    view = summary("shop", at, {"member": 10, "system:issued": -9}, {}, None)
    assert view["balanced"] is False and view["accounts"] is None
    assert view["at"] == "2026-01-01T00:00:00Z"
    owed = summary(
        "shop",
        None,
        {"member": -5, "system:issued": 5},
        {},
        {"members": 1, "balance": 0, "debt": 5, "pending": 0, "held": 0},
    )
    # A member in debt: the ledger's member legs are balance - debt.
    assert owed["balanced"] and owed["accounts"]["agree_with_ledger"]
    drifted = summary(
        "shop",
        None,
        {"member": 10, "system:issued": -10},
        {},
        {"members": 1, "balance": 11, "debt": 0, "pending": 0, "held": 0},
    )
    assert drifted["balanced"] and not drifted["accounts"]["agree_with_ledger"]
