"""Invariant checks run directly on PostgreSQL (used by `python -m loadtests.verify`).

Each check is one query returning the violating rows (empty = the invariant holds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

EXAMPLES_MAX = 5


@dataclass(frozen=True)
class Check:
    name: str
    sql: str


CHECKS: tuple[Check, ...] = (
    Check(
        "member balances are never negative",
        "SELECT program_id, member_id, balance FROM accounts WHERE balance < 0",
    ),
    Check(
        "balance equals the sum of the member's lots",
        """
        SELECT a.program_id, a.member_id, a.balance, coalesce(l.total, 0) AS lots
        FROM accounts a
        LEFT JOIN (SELECT program_id, member_id, sum(remaining) AS total FROM lots
                   GROUP BY program_id, member_id) l USING (program_id, member_id)
        WHERE a.balance <> coalesce(l.total, 0)
        """,
    ),
    Check(
        "balance equals the sum of the member's ledger entries",
        """
        SELECT a.program_id, a.member_id, a.balance, coalesce(e.total, 0) AS entries
        FROM accounts a
        LEFT JOIN (SELECT program_id, member_id, sum(amount) AS total FROM ledger_entries
                   WHERE account = 'member' GROUP BY program_id, member_id) e
          USING (program_id, member_id)
        WHERE a.balance <> coalesce(e.total, 0)
        """,
    ),
    Check(
        "every transaction is balanced (legs sum to zero, at least two legs)",
        """
        SELECT t.txn_id, coalesce(sum(e.amount), 0) AS total, count(e.entry_id) AS legs
        FROM transactions t LEFT JOIN ledger_entries e USING (txn_id)
        GROUP BY t.txn_id
        HAVING coalesce(sum(e.amount), 0) <> 0 OR count(e.entry_id) < 2
        """,
    ),
    Check(
        "ledger entries belong to a transaction and sum to zero overall",
        """
        SELECT count(*) AS orphan_or_total FROM ledger_entries e
        WHERE NOT EXISTS (SELECT 1 FROM transactions t WHERE t.txn_id = e.txn_id)
        HAVING count(*) > 0
        UNION ALL
        SELECT sum(amount) FROM ledger_entries HAVING sum(amount) <> 0
        """,
    ),
    Check(
        "lots stay within 0 <= remaining <= original",
        "SELECT lot_id, original, remaining FROM lots WHERE remaining < 0 OR remaining > original",
    ),
    Check(
        "lifetime totals equal the member's credits and debits",
        """
        SELECT a.program_id, a.member_id, a.lifetime_earned, coalesce(t.earned, 0),
               a.lifetime_spent, coalesce(t.spent, 0)
        FROM accounts a
        LEFT JOIN (SELECT program_id, member_id,
                          sum(points) FILTER (WHERE kind = 'credit') AS earned,
                          sum(points) FILTER (WHERE kind = 'debit') AS spent
                   FROM transactions GROUP BY program_id, member_id) t
          USING (program_id, member_id)
        WHERE a.lifetime_earned <> coalesce(t.earned, 0)
           OR a.lifetime_spent <> coalesce(t.spent, 0)
        """,
    ),
    Check(
        "no idempotency key moved points twice",
        """
        SELECT program_id, member_id, idempotency_key, count(*) FROM transactions
        WHERE idempotency_key IS NOT NULL
        GROUP BY program_id, member_id, idempotency_key HAVING count(*) > 1
        """,
    ),
    Check(
        "every applied key has its idempotency record",
        """
        SELECT t.program_id, t.member_id, t.idempotency_key FROM transactions t
        WHERE t.idempotency_key IS NOT NULL AND NOT EXISTS (
          SELECT 1 FROM idempotency_keys i WHERE i.program_id = t.program_id
            AND i.member_id = t.member_id AND i.key = t.idempotency_key)
        """,
    ),
)


@dataclass(frozen=True)
class Result:
    name: str
    violations: int
    examples: list[tuple[Any, ...]]


def run_checks(dsn: str) -> list[Result]:
    """All checks in one REPEATABLE READ snapshot, so concurrent traffic cannot fake a gap."""
    results = []
    with psycopg.connect(dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            for check in CHECKS:
                rows = conn.execute(check.sql).fetchall()  # type: ignore[arg-type]
                results.append(Result(check.name, len(rows), rows[:EXAMPLES_MAX]))
    return results
