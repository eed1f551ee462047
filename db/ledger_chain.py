"""The tamper-evident ledger: every committed transaction is linked into a hash chain.

The contract: each group commit of an account shard that writes transactions records their
ids as *pending* for its shard's chain (`account-<n>`), in the same database transaction
(one small row of `ledger_chain_pending`); moments later (every SEAL_INTERVAL_S) the shard
*seals* what is pending into one link: `seq` is the chain's previous seq + 1, `prev_hash`
that link's hash, and

    hash = sha256(prev_hash || utf8(body))

where `body` is the canonical text of the batch's transactions (ordered by txn_id), each one
every immutable column of its `transactions` row and its ledger entries (ordered by
entry_id). Transactions written before the chain existed (a database upgraded from 0007) are
linked by migration 0008 into the chain `genesis`, in chunks.

Why pending, then sealed: computing a link reads back every transaction and entry it links
and renders them (about 10 µs each in PostgreSQL), and a shard commits one batch at a time,
so inside the commit it lengthened every group commit by ~15% and cost ~11% of spread-debit
throughput (loadtests/ops_bench.py). Recording the ids costs one tiny row; the sealing runs
beside the batch loop, on its own connection, and links many batches at once. What is
pending is not yet tamper-evident: under a second in normal operation, and a shard that
crashed seals its leftovers when it starts again; `points verify` (and `points restore`)
seal whatever is pending before checking, and the ledger checks' owner seals pending rows
of chains whose shard is gone. Why one chain per shard: shards never wait on each other's
chain; two sealers of one chain (a stale owner) are serialized by a row lock on the
pending rows and by the link's primary key. Why SQL and not
Python: the writer, the migration's backfill and the verifier all compute a link with the
SQL below (`LINK_BODY`, `link_hash`), so they cannot drift apart. The body is the text of
json_build_array: one rendering per value (strings escaped, `allocations` in jsonb's own
canonical text), and about a quarter cheaper to build than jsonb on the hot path; timestamps enter
it as epoch microseconds, because their text form depends on the session's TimeZone.

What it proves: a row of `transactions` or `ledger_entries` changed, deleted or inserted
behind the service's back (by a superuser with the triggers disabled) breaks a link, and
`points verify` names the first broken link of each chain. What it does not prove: someone
able to rewrite the rows may recompute the whole chain consistently; only heads anchored
elsewhere (a backup manifest's `ledger_chain_heads`) catch that.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

import psycopg

# The chain of transactions written before 0008 (linked by the migration).
GENESIS_CHAIN = "genesis"
# Transactions per genesis link (the backfill's chunk).
GENESIS_LINK_TXNS_MAX = 10_000


def chain_of(kind: str, shard: int) -> str:
    """The chain an account shard appends to: one per shard, so shards never contend."""
    assert kind == "account", "only account shards write transactions"
    assert shard >= 0
    name = f"{kind}-{shard}"
    assert name != GENESIS_CHAIN
    return name


def _us(column: str) -> str:
    """A timestamptz as epoch microseconds (bigint): independent of the session TimeZone.
    extract(epoch …) is numeric since PostgreSQL 14, so the product is exact."""
    return f"(extract(epoch FROM {column}) * 1000000)::bigint"


# One transaction (alias t) as canonical text: every column of `transactions` (all
# immutable: the table is append-only) and its ledger entries with every column but the
# generated entry_id, which orders them. json, not jsonb: the text of json_build_array is
# as deterministic (nothing to reorder in an array) and much cheaper to make.
TXN_DOCUMENT = f"""json_build_array(
    t.txn_id, t.program_id, t.member_id, t.kind, t.points, t.reason, t.balance_after,
    {_us("t.created_at")}, t.idempotency_key, {_us("t.expires_at")}, t.allocations,
    t.refers_to, t.event_id,
    (SELECT json_agg(json_build_array(e.program_id, e.account, e.member_id, e.amount,
                                        {_us("e.created_at")}) ORDER BY e.entry_id)
     FROM ledger_entries e WHERE e.txn_id = t.txn_id))::text"""

# The body of a link over the uuid[] expression {txn_ids}: a subquery with `txns` (how many
# of those transactions exist) and `body`. Use it as a LATERAL subquery.
LINK_BODY = f"""
    SELECT count(*) AS txns,
           coalesce(string_agg({TXN_DOCUMENT}, ',' ORDER BY t.txn_id), '') AS body
    FROM transactions t WHERE t.txn_id = ANY({{txn_ids}})"""


def link_body(txn_ids: str) -> str:
    """LINK_BODY over the uuid[] SQL expression `txn_ids`."""
    return LINK_BODY.format(txn_ids=txn_ids)


def link_hash(prev_hash: str, body: str) -> str:
    """The link's hash as SQL, from the SQL expressions of its prev_hash (bytea, NULL for a
    chain's first link) and its body (text)."""
    return f"sha256(coalesce({prev_hash}, ''::bytea) || convert_to({body}, 'UTF8'))"


def link_hash_of(prev_hash: bytes | None, documents: list[str]) -> bytes:
    """The same hash in Python, from the documents (TXN_DOCUMENT's text) in txn_id order:
    what a check outside PostgreSQL (or a test) recomputes."""
    assert prev_hash is None or len(prev_hash) == hashlib.sha256().digest_size
    digest = hashlib.sha256(prev_hash or b"")
    digest.update(",".join(documents).encode())
    result = digest.digest()
    assert len(result) == hashlib.sha256().digest_size
    return result


# The next link of chain %(chain)s over the transactions %(txn_ids)s (written in this very
# database transaction), at %(at)s. In READ COMMITTED two writers of one chain (a stale
# owner) would both read the same last link: the second fails on the primary key.
APPEND_LINK = f"""
    INSERT INTO ledger_chain (chain, seq, prev_hash, hash, txn_ids, created_at)
    SELECT %(chain)s, coalesce(last.seq, 0) + 1, last.hash, {link_hash("last.hash", "b.body")},
           ids.a, %(at)s
    FROM (SELECT %(txn_ids)s::uuid[] AS a) ids
    CROSS JOIN LATERAL ({link_body("ids.a")}) b
    LEFT JOIN LATERAL (SELECT seq, hash FROM ledger_chain WHERE chain = %(chain)s
                       ORDER BY seq DESC LIMIT 1) last ON true
    WHERE b.txns = cardinality(ids.a)
    """

# How often a shard seals what its commits left pending, and pending rows per link at most.
SEAL_INTERVAL_S = 0.2
SEAL_PENDING_ROWS_MAX = 200

# A group commit's transactions, pending for chain %(chain)s.
ADD_PENDING = """
    INSERT INTO ledger_chain_pending (chain, txn_ids, created_at)
    VALUES (%(chain)s, %(txn_ids)s, %(at)s)
    """

# What chain %(chain)s has pending, oldest first, locked for this sealer (NOWAIT: another
# sealer of the chain is at it; try again next time).
TAKE_PENDING = """
    SELECT id, txn_ids FROM ledger_chain_pending WHERE chain = %(chain)s
    ORDER BY id LIMIT %(rows)s FOR UPDATE NOWAIT
    """

DROP_PENDING = "DELETE FROM ledger_chain_pending WHERE id = ANY(%(ids)s)"

# Chains with rows pending since before %(before)s (a shard gone: scaled down, crashed).
STALE_PENDING_CHAINS = """
    SELECT DISTINCT chain FROM ledger_chain_pending WHERE created_at < %(before)s ORDER BY chain
    """


def sealed_ids(pending: list[tuple[int, list[Any]]]) -> tuple[list[int], list[Any]]:
    """The pending rows' ids, and the transactions they hold, sorted (one link's)."""
    ids = [row_id for row_id, _ in pending]
    txns = sorted({txn for _, txn_ids in pending for txn in txn_ids})
    return ids, txns


def seal_pending(conn: psycopg.Connection[Any], chain: str, at: datetime) -> int:
    """Seal what chain `chain` has pending into links (a transaction per link, on `conn`,
    a non-autocommit connection): returns the transactions linked. Another sealer at it
    (the lock) or a link written first by another (the key) ends this one quietly."""
    linked = 0
    while True:
        try:
            with conn.transaction():
                pending = conn.execute(
                    TAKE_PENDING, {"chain": chain, "rows": SEAL_PENDING_ROWS_MAX}
                ).fetchall()
                if not pending:
                    return linked
                ids, txns = sealed_ids([(row[0], row[1]) for row in pending])
                cur = conn.execute(APPEND_LINK, {"chain": chain, "txn_ids": txns, "at": at})
                if cur.rowcount != 1:
                    raise ChainError(f"{chain}: pending transactions are missing: {ids}")
                conn.execute(DROP_PENDING, {"ids": ids})
        except (psycopg.errors.LockNotAvailable, psycopg.errors.UniqueViolation):
            return linked
        linked += len(txns)


def seal_all(dsn: str, before: datetime | None = None) -> int:
    """Seal every chain's pending rows (those older than `before`, if given): what
    `points verify` and `points restore` do first, and what the ledger checks' owner does
    for shards that are gone. Returns the transactions linked."""
    with psycopg.connect(dsn) as conn:
        if conn.execute("SELECT to_regclass('ledger_chain_pending') IS NULL").fetchone() == (True,):
            return 0
        now = conn.execute("SELECT now()").fetchone()
        assert now is not None
        conn.commit()
        query = (
            STALE_PENDING_CHAINS
            if before is not None
            else ("SELECT DISTINCT chain FROM ledger_chain_pending ORDER BY chain")
        )
        chains = [row[0] for row in conn.execute(query, {"before": before}).fetchall()]
        conn.commit()
        return sum(seal_pending(conn, chain, now[0]) for chain in chains)


# Pending rows that should have been sealed long ago (a sealer that keeps failing: their
# transactions are gone, say).
STUCK_PENDING = """
    SELECT chain, id, created_at, cardinality(txn_ids) AS txns FROM ledger_chain_pending
    WHERE created_at < now() - interval '60 seconds' ORDER BY id
    """


class ChainError(Exception):
    """Pending transactions that cannot be linked (their rows are gone)."""


# The last link of every chain: what a backup manifest anchors.
CHAIN_HEADS = """
    SELECT DISTINCT ON (chain) chain, seq, hash FROM ledger_chain ORDER BY chain, seq DESC
    """

# One batch of the walk over chain %(chain)s: up to %(links)s links after seq %(after)s
# (whose hash was %(prev)s), each with what is wrong with it (all false: a sound link). The
# window runs before the bodies are recomputed, over the limited links only.
WALK_LINKS = f"""
    SELECT l.seq, l.created_at, l.hash, l.gap, l.unlinked,
           b.txns <> cardinality(l.txn_ids) AS missing,
           l.hash <> {link_hash("l.prev_hash", "b.body")} AS altered
    FROM (SELECT seq, created_at, prev_hash, hash, txn_ids,
                 seq <> lag(seq, 1, %(after)s::bigint) OVER w + 1 AS gap,
                 prev_hash IS DISTINCT FROM lag(hash, 1, %(prev)s::bytea) OVER w AS unlinked
          FROM ledger_chain WHERE chain = %(chain)s AND seq > %(after)s
          WINDOW w AS (ORDER BY seq) ORDER BY seq LIMIT %(links)s) l
    CROSS JOIN LATERAL ({link_body("l.txn_ids")}) b
    ORDER BY l.seq
    """

# The transactions a link names that do not exist (any more).
MISSING_TXNS = """
    SELECT id FROM ledger_chain l, unnest(l.txn_ids) AS id
    WHERE l.chain = %(chain)s AND l.seq = %(seq)s
      AND NOT EXISTS (SELECT 1 FROM transactions t WHERE t.txn_id = id)
    ORDER BY id
    """

# Transactions in no link (inserted behind the service's back, or their link deleted) or
# in more than one; pending counts as a link (its sealing links it).
UNLINKED_TXNS = """
    SELECT t.txn_id, t.created_at, count(l.chain) AS links
    FROM transactions t
    LEFT JOIN (SELECT chain, unnest(txn_ids) AS txn_id FROM ledger_chain
               UNION ALL
               SELECT chain, unnest(txn_ids) FROM ledger_chain_pending) l USING (txn_id)
    GROUP BY t.txn_id, t.created_at HAVING count(l.chain) <> 1
    ORDER BY t.created_at, t.txn_id
    """


def broken_link_reason(*, gap: bool, unlinked: bool, missing: bool, altered: bool) -> str:
    """What a broken link's flags (WALK_LINKS) mean, most telling first; '' if sound."""
    if gap:
        return "links before it are missing (seq skips)"
    if unlinked:
        return "prev_hash is not the previous link's hash"
    if missing:
        return "a transaction it links is missing"
    if altered:
        return "hash differs: a transaction or ledger entry it links was changed"
    return ""
