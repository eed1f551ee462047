"""Invariant checks run directly on PostgreSQL (used by `points verify` and
`python -m loadtests.verify`).

Each check is one query returning the violating rows (empty = the invariant holds), except
the hash chain's (db/ledger_chain.py): it walks every chain in batches of links, recomputing
each link from the rows it links, and reports the first broken link of each chain.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from db.ledger_chain import (
    CHAIN_HEADS,
    MISSING_TXNS,
    STUCK_PENDING,
    UNLINKED_TXNS,
    WALK_LINKS,
    ChainError,
    broken_link_reason,
    seal_all,
)
from db.reports_repo import (
    ROLLUP_DAILY_FLOWS,
    ROLLUP_DAILY_LOTS,
    SOURCE_DAILY_FLOWS,
    SOURCE_DAILY_LOTS,
)
from domain.limits import IDEMPOTENCY_RETENTION_DAYS_MIN

EXAMPLES_MAX = 5
# Links recomputed per statement of the chain walk (a genesis link holds up to
# GENESIS_LINK_TXNS_MAX transactions, a shard's link one group commit's).
CHAIN_WALK_LINKS = 500
# A broken link lists its transactions (one of them changed) when it has at most this many.
CULPRITS_LISTED_MAX = 20
CHAIN_LINKED = "every transaction is linked into the hash chain exactly once"
CHAIN_SEALED = "committed transactions are sealed into their chain within a minute"
CHAIN_SOUND = "every hash chain recomputes from the rows it links"
CHAIN_ANCHORED = "the chain heads anchored in the backup manifest are still in their chains"
# A backup manifest's anchors: chain -> {"seq": int, "hash": hex}.
ChainHeads = dict[str, dict[str, Any]]
# Idempotency records surely kept, whatever the retention (see the checks that use it).
_KEYS_KEPT = f"interval '{IDEMPOTENCY_RETENTION_DAYS_MIN - 1} days'"


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
                   WHERE active GROUP BY program_id, member_id) l USING (program_id, member_id)
        WHERE a.balance <> coalesce(l.total, 0)
        """,
    ),
    Check(
        "pending points equal the pending lots and the member:pending ledger entries",
        """
        SELECT a.program_id, a.member_id, a.pending, coalesce(l.total, 0) AS lots,
               coalesce(e.total, 0) AS entries
        FROM accounts a
        LEFT JOIN (SELECT program_id, member_id, sum(remaining) AS total FROM lots
                   WHERE NOT active GROUP BY program_id, member_id) l
          USING (program_id, member_id)
        LEFT JOIN (SELECT program_id, member_id, sum(amount) AS total FROM ledger_entries
                   WHERE account = 'member:pending' GROUP BY program_id, member_id) e
          USING (program_id, member_id)
        WHERE a.pending <> coalesce(l.total, 0) OR a.pending <> coalesce(e.total, 0)
        """,
    ),
    Check(
        "held points equal the member:held ledger entries and the pending reviews",
        """
        SELECT a.program_id, a.member_id, a.held, coalesce(e.total, 0) AS entries,
               coalesce(r.total, 0) AS reviews
        FROM accounts a
        LEFT JOIN (SELECT program_id, member_id, sum(amount) AS total FROM ledger_entries
                   WHERE account = 'member:held' GROUP BY program_id, member_id) e
          USING (program_id, member_id)
        LEFT JOIN (SELECT program_id, member_id, sum(points) AS total FROM reviews
                   WHERE status = 'pending' GROUP BY program_id, member_id) r
          USING (program_id, member_id)
        WHERE a.held <> coalesce(e.total, 0) OR a.held <> coalesce(r.total, 0)
        """,
    ),
    Check(
        "every review is held by one hold and decided by its own debit or release",
        """
        SELECT v.review_id, v.status, h.kind, h.points, d.kind, d.points
        FROM reviews v
        LEFT JOIN transactions h ON h.txn_id = v.hold_txn_id
        LEFT JOIN transactions d ON d.txn_id = v.decision_txn_id
        WHERE h.txn_id IS NULL OR h.kind <> 'hold' OR h.points <> v.points
           OR h.program_id <> v.program_id OR h.member_id <> v.member_id
           OR (v.status = 'approved' AND (d.kind IS DISTINCT FROM 'debit'
               OR d.points <> v.points OR d.member_id <> v.member_id))
           OR (v.status = 'rejected' AND (d.kind IS DISTINCT FROM 'release'
               OR d.points <> v.points OR d.member_id <> v.member_id))
        """,
    ),
    Check(
        "balance equals the sum of the member's ledger entries (less debt)",
        """
        SELECT a.program_id, a.member_id, a.balance, a.debt, coalesce(e.total, 0) AS entries
        FROM accounts a
        LEFT JOIN (SELECT program_id, member_id, sum(amount) AS total FROM ledger_entries
                   WHERE account = 'member' GROUP BY program_id, member_id) e
          USING (program_id, member_id)
        WHERE a.balance - a.debt <> coalesce(e.total, 0)
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
        "lifetime totals equal credits less reversals, and debits less refunds",
        """
        SELECT a.program_id, a.member_id, a.lifetime_earned, coalesce(t.earned, 0),
               a.lifetime_spent, coalesce(t.spent, 0)
        FROM accounts a
        LEFT JOIN (SELECT program_id, member_id,
                          coalesce(sum(points) FILTER (WHERE kind = 'credit'), 0)
                          - coalesce(sum(points) FILTER (WHERE kind = 'reversal'), 0) AS earned,
                          coalesce(sum(points) FILTER (WHERE kind = 'debit'), 0)
                          - coalesce(sum(points) FILTER (WHERE kind = 'refund'), 0) AS spent
                   FROM transactions GROUP BY program_id, member_id) t
          USING (program_id, member_id)
        WHERE a.lifetime_earned <> coalesce(t.earned, 0)
           OR a.lifetime_spent <> coalesce(t.spent, 0)
        """,
    ),
    Check(
        "an event's credit carries exactly the points the event earned",
        """
        SELECT e.program_id, e.event_id, e.points, t.points FROM events e
        LEFT JOIN transactions t ON t.txn_id = e.txn_id
        WHERE (e.txn_id IS NULL) <> (e.points = 0)
           OR (t.txn_id IS NOT NULL AND (t.points <> e.points OR t.kind <> 'credit'
               OR t.member_id <> e.member_id))
        """,
    ),
    Check(
        "reversals never claw back more than their event earned",
        """
        SELECT e.program_id, e.event_id, e.points, r.clawed, e.reversed_points FROM events e
        JOIN (SELECT program_id, event_id, sum(points) AS clawed FROM transactions
              WHERE kind = 'reversal' GROUP BY program_id, event_id) r
          USING (program_id, event_id)
        WHERE r.clawed > e.reversed_points OR e.reversed_points > e.points
        """,
    ),
    Check(
        "expiry writes off only lots past their expiry",
        """
        SELECT t.txn_id, a.pair->>0 FROM transactions t
        CROSS JOIN LATERAL jsonb_array_elements(t.allocations) AS a(pair)
        JOIN lots l ON l.lot_id = (a.pair->>0)::uuid
        WHERE t.kind = 'expire' AND (l.expires_at IS NULL OR l.expires_at > t.created_at)
        """,
    ),
    # A key's record is purged after the retention (db/retention_repo.py), at least
    # IDEMPOTENCY_RETENTION_DAYS_MIN: then the key may move points again, and its old
    # transaction has no record. Within the minimum neither may happen; a day of margin
    # for clocks.
    Check(
        "no idempotency key moved points twice",
        f"""
        SELECT program_id, member_id, idempotency_key, created_at FROM (
          SELECT program_id, member_id, idempotency_key, created_at,
                 lag(created_at) OVER (PARTITION BY program_id, member_id, idempotency_key
                                       ORDER BY created_at) AS previous
          FROM transactions WHERE idempotency_key IS NOT NULL) t
        WHERE previous IS NOT NULL AND created_at - previous < {_KEYS_KEPT}
        """,
    ),
    Check(
        "every applied key has its idempotency record",
        f"""
        SELECT t.program_id, t.member_id, t.idempotency_key FROM transactions t
        WHERE t.idempotency_key IS NOT NULL AND t.created_at > now() - {_KEYS_KEPT}
          AND NOT EXISTS (
          SELECT 1 FROM idempotency_keys i WHERE i.program_id = t.program_id
            AND i.member_id = t.member_id AND i.key = t.idempotency_key)
        """,
    ),
    Check(
        "a redemption's recorded debit and refund are its member's, for its points",
        """
        SELECT d.redemption_id, d.debit_txn_id, d.refund_txn_id
        FROM redemptions d
        LEFT JOIN transactions t ON t.txn_id = d.debit_txn_id
        LEFT JOIN transactions r ON r.txn_id = d.refund_txn_id
        WHERE (d.debit_txn_id IS NOT NULL
               AND (t.txn_id IS NULL OR t.kind <> 'debit' OR t.member_id <> d.member_id
                    OR t.program_id <> d.program_id OR t.points <> d.points))
           OR (d.refund_txn_id IS NOT NULL
               AND (r.txn_id IS NULL OR r.kind <> 'refund'
                    OR r.refers_to IS DISTINCT FROM d.debit_txn_id))
        """,
    ),
    Check(
        "every refund gives back one debit of the same member, whole",
        """
        SELECT r.txn_id, r.refers_to, r.points, d.points, d.kind
        FROM transactions r LEFT JOIN transactions d ON d.txn_id = r.refers_to
        WHERE r.kind = 'refund' AND (d.txn_id IS NULL OR d.kind <> 'debit'
              OR d.program_id <> r.program_id OR d.member_id <> r.member_id
              OR d.points <> r.points)
        """,
    ),
    Check(
        "no reward sold beyond its stock",
        """
        SELECT program_id, reward_id, stocked, reserved, redeemed FROM rewards
        WHERE stocked IS NOT NULL AND reserved + redeemed > stocked
           OR reserved < 0 OR redeemed < 0
        """,
    ),
    Check(
        "reward counters equal the units its redemptions hold",
        """
        SELECT w.program_id, w.reward_id, w.reserved, coalesce(x.reserved, 0),
               w.redeemed, coalesce(x.redeemed, 0)
        FROM rewards w
        LEFT JOIN (SELECT program_id, reward_id,
                          sum(quantity) FILTER (WHERE stock_state = 'reserved') AS reserved,
                          sum(quantity) FILTER (WHERE stock_state = 'redeemed') AS redeemed
                   FROM redemptions GROUP BY program_id, reward_id) x
          USING (program_id, reward_id)
        WHERE w.reserved <> coalesce(x.reserved, 0) OR w.redeemed <> coalesce(x.redeemed, 0)
        """,
    ),
    Check(
        "no member holds more of a reward than its per-member limit",
        """
        SELECT d.program_id, d.reward_id, d.member_id, sum(d.quantity), w.per_member_limit
        FROM redemptions d JOIN rewards w USING (program_id, reward_id)
        WHERE d.stock_state <> 'released' AND w.per_member_limit IS NOT NULL
        GROUP BY d.program_id, d.reward_id, d.member_id, w.per_member_limit
        HAVING sum(d.quantity) > w.per_member_limit
        """,
    ),
    Check(
        "a redemption's stock state matches its status",
        """
        SELECT redemption_id, status, stock_state FROM redemptions
        WHERE (status = 'completed' AND stock_state <> 'redeemed')
           OR (status IN ('failed', 'cancelled') AND stock_state <> 'released')
           OR (status IN ('stock_reserved', 'pending_review', 'points_debited',
                          'pending_fulfillment')
               AND stock_state <> 'reserved')
        """,
    ),
    Check(
        "completed redemptions were paid once; failed and cancelled ones cost nothing",
        """
        SELECT d.redemption_id, d.status, d.points, x.debited, x.refunded
        FROM redemptions d
        CROSS JOIN LATERAL (
          SELECT coalesce(sum(points) FILTER (WHERE kind = 'debit'), 0) AS debited,
                 coalesce(sum(points) FILTER (WHERE kind = 'refund'), 0) AS refunded
          FROM transactions t
          WHERE t.program_id = d.program_id AND t.member_id = d.member_id
            AND (t.idempotency_key IN ('saga ' || d.redemption_id || ' debit',
                                       'saga ' || d.redemption_id || ' refund')
                 -- held for review and approved: the approval's debit paid it
                 OR t.txn_id = (SELECT v.decision_txn_id FROM reviews v
                                WHERE v.redemption_id = d.redemption_id
                                  AND v.status = 'approved'))) x
        WHERE (d.status IN ('completed', 'points_debited', 'pending_fulfillment')
               AND (x.debited <> d.points OR x.refunded <> 0))
           OR (d.status IN ('failed', 'cancelled') AND x.debited <> x.refunded)
        """,
    ),
)


@dataclass(frozen=True)
class Result:
    name: str
    violations: int
    examples: list[tuple[Any, ...]]


ROLLUP_FLOWS_AGREE = "the report rollup of flows equals the transactions by day and kind"
ROLLUP_LOTS_AGREE = "the report rollup of lots equals the lots by cohort day"


def _differences(rollup: str, source: str) -> str:
    """Rows only in the rollup, or only in the source (each side named): none when equal."""
    return f"""
        (SELECT 'rollup' AS side, * FROM ({rollup}) r EXCEPT SELECT 'rollup', * FROM ({source}) s)
        UNION ALL
        (SELECT 'ledger' AS side, * FROM ({source}) s EXCEPT SELECT 'ledger', * FROM ({rollup}) r)
    """


# The reports' rollups (migration 0009), kept by the group commit, against what they sum.
ROLLUP_CHECKS: tuple[Check, ...] = (
    Check(ROLLUP_FLOWS_AGREE, _differences(ROLLUP_DAILY_FLOWS, SOURCE_DAILY_FLOWS)),
    Check(ROLLUP_LOTS_AGREE, _differences(ROLLUP_DAILY_LOTS, SOURCE_DAILY_LOTS)),
)


def run_checks(
    dsn: str, anchors: ChainHeads | None = None, seal_older_than_s: float | None = 0.0
) -> list[Result]:
    """All checks in one REPEATABLE READ snapshot, so concurrent traffic cannot fake a gap.
    `anchors`: chain heads recorded elsewhere (a backup manifest) that must still be there.
    First, what the shards committed but have not sealed into their chains yet is sealed
    (db/ledger_chain.py): everything pending (`seal_older_than_s` 0, the default: the
    service may be stopped), or only rows pending longer than that (the service's own
    checks: its shards seal their own), or nothing (None)."""
    if seal_older_than_s is not None:
        before = datetime.now(UTC) - timedelta(seconds=seal_older_than_s)
        with contextlib.suppress(ChainError):  # reported by the checks below
            seal_all(dsn, before if seal_older_than_s > 0 else None)
    results = []
    with psycopg.connect(dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        with conn.transaction():
            for check in CHECKS:
                rows = conn.execute(check.sql).fetchall()
                results.append(Result(check.name, len(rows), rows[:EXAMPLES_MAX]))
            if has_chain(conn):  # a schema before 0008 has none to check
                rows = conn.execute(UNLINKED_TXNS).fetchall()
                results.append(Result(CHAIN_LINKED, len(rows), rows[:EXAMPLES_MAX]))
                rows = conn.execute(STUCK_PENDING).fetchall()
                results.append(Result(CHAIN_SEALED, len(rows), rows[:EXAMPLES_MAX]))
                results.append(_walk_chains(conn))
                if anchors is not None:
                    results.append(_check_anchors(conn, anchors))
            if has_rollups(conn):  # a schema before 0009 has none to check
                for check in ROLLUP_CHECKS:
                    rows = conn.execute(check.sql).fetchall()
                    results.append(Result(check.name, len(rows), rows[:EXAMPLES_MAX]))
    return results


def has_rollups(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('report_daily_flows') IS NOT NULL").fetchone()
    return bool(row and row[0])


def has_chain(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass('ledger_chain') IS NOT NULL").fetchone()
    return bool(row and row[0])


def chain_heads(conn: psycopg.Connection[Any]) -> ChainHeads:
    """The last link of every chain, as a manifest anchors it."""
    return {
        chain: {"seq": int(seq), "hash": bytes(digest).hex()}
        for chain, seq, digest in conn.execute(CHAIN_HEADS).fetchall()
    }


def _walk_chains(conn: psycopg.Connection[Any]) -> Result:
    """Every link of every chain, in seq order, recomputed; the first broken link of each
    chain is an example, every broken link a violation."""
    broken = 0
    examples: list[tuple[Any, ...]] = []
    chains = [row[0] for row in conn.execute("SELECT DISTINCT chain FROM ledger_chain")]
    for chain in sorted(chains):
        after, prev, first = 0, None, None
        while True:
            rows = conn.execute(
                WALK_LINKS,
                {"chain": chain, "after": after, "prev": prev, "links": CHAIN_WALK_LINKS},
            ).fetchall()
            for seq, created_at, digest, gap, unlinked, missing, altered in rows:
                reason = broken_link_reason(
                    gap=gap, unlinked=unlinked, missing=missing, altered=altered
                )
                if reason:
                    broken += 1
                    if first is None:
                        first = (
                            chain,
                            seq,
                            created_at,
                            reason,
                            _culprits(conn, chain, seq, missing),
                        )
                after, prev = seq, digest
            if len(rows) < CHAIN_WALK_LINKS:
                break
        if first is not None and len(examples) < EXAMPLES_MAX:
            examples.append(first)
    return Result(CHAIN_SOUND, broken, examples)


def _culprits(conn: psycopg.Connection[Any], chain: str, seq: int, missing: bool) -> str:
    """Which transactions of a broken link differ, where that is cheap to know: the missing
    ones; else the link's transactions (a changed row does not say which it was)."""
    if missing:
        ids = [row[0] for row in conn.execute(MISSING_TXNS, {"chain": chain, "seq": seq})]
        return "missing: " + ", ".join(str(txn) for txn in ids[:EXAMPLES_MAX])
    row = conn.execute(
        "SELECT txn_ids FROM ledger_chain WHERE chain = %s AND seq = %s", (chain, seq)
    ).fetchone()
    ids = row[0] if row else []
    if len(ids) > CULPRITS_LISTED_MAX:
        return f"one of its {len(ids)} transactions"
    return "one of: " + ", ".join(str(txn) for txn in ids)


def _check_anchors(conn: psycopg.Connection[Any], anchors: ChainHeads) -> Result:
    """Each anchored head must still be its chain's link at that seq, with that hash: a
    chain rewritten consistently after the anchor was taken fails here."""
    examples = []
    for chain, head in sorted(anchors.items()):
        row = conn.execute(
            "SELECT hash FROM ledger_chain WHERE chain = %s AND seq = %s", (chain, head["seq"])
        ).fetchone()
        found = None if row is None else bytes(row[0]).hex()
        if found != head["hash"]:
            examples.append((chain, head["seq"], head["hash"], found))
    return Result(CHAIN_ANCHORED, len(examples), examples[:EXAMPLES_MAX])
