"""The tamper-evident ledger: every committed transaction is linked into a hash chain.

The contract: each group commit of an account shard that writes transactions appends one
link to its shard's chain (`account-<n>`) in the same database transaction: `seq` is the
chain's previous seq + 1, `prev_hash` that link's hash, and

    hash = sha256(prev_hash || utf8(body))

where `body` is the canonical text of the batch's transactions (ordered by txn_id), each one
every immutable column of its `transactions` row and its ledger entries (ordered by
entry_id). Transactions written before the chain existed (a database upgraded from 0007) are
linked by migration 0008 into the chain `genesis`, in chunks.

Why one link per batch and one chain per shard: a link costs one statement in the batch's
pipeline (no extra round trip), and shards never wait on each other's chain. Why SQL and not
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
# in more than one.
UNLINKED_TXNS = """
    SELECT t.txn_id, t.created_at, count(l.chain) AS links
    FROM transactions t
    LEFT JOIN (SELECT chain, unnest(txn_ids) AS txn_id FROM ledger_chain) l USING (txn_id)
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
