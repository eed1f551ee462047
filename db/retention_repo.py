"""Retention: purge idempotency records older than the retention, in small batches.

What is purged: rows of `idempotency_keys` (the remembered answer of a credit, debit,
reversal, confirmation, redemption step or review decision, and of an applied event: its key
is `event <id>`) created before `before`. A retry of such a key is then applied again as a
new request, which is why the retention is at least 7 days (domain/limits.py).

What is kept, whatever its age:
- every record of a member who has a redemption saga not finished or a review pending:
  the saga's debit and a held debit are replayed by their key (recovery, client retries),
  and replaying them must never debit twice;
- the `events` rows: they deduplicate events by (program_id, event_id) for ever (an old
  event sent again is a 409 `idempotency_conflict`, never a second credit), route and bound
  reversals and confirmations, and are audited by `points verify`;
- the ledger (append-only), redemptions (their own key, the saga record) and restocks.

How: each batch is one `DELETE` of at most `rows_per_batch` rows in its own autocommit
transaction, oldest first (the `idempotency_keys_created` index), rows locked by someone
else skipped; then a pause. So the purge holds row locks for milliseconds and never makes a
group commit wait: a commit only inserts new keys (`ON CONFLICT DO NOTHING`), and a key it
finds being deleted waits for that one short statement at most.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import psycopg

from domain.limits import PURGE_BATCHES_PER_PASS_MAX, PURGE_PAUSE_S, PURGE_ROWS_PER_BATCH

# A purge statement waits at most this long for a lock (it should never have to): past it
# the pass fails and the next one tries again, rather than queue behind traffic.
PURGE_LOCK_TIMEOUT_MS = 1000

# ctid = ANY(ARRAY(subselect)): the subselect picks the batch by the created_at index and
# locks it (skipping rows another transaction holds); the DELETE takes exactly those rows.
# Open sagas and pending reviews: see the module docstring (the indexes
# redemptions_by_member and reviews_pending_by_member answer these probes).
_PURGE_SQL = """
DELETE FROM idempotency_keys WHERE ctid = ANY(ARRAY(
  SELECT i.ctid FROM idempotency_keys i
  WHERE i.created_at < %(before)s
    AND NOT EXISTS (
      SELECT 1 FROM redemptions r
      WHERE r.program_id = i.program_id AND r.member_id = i.member_id
        AND r.status NOT IN ('completed', 'failed', 'cancelled'))
    AND NOT EXISTS (
      SELECT 1 FROM reviews v
      WHERE v.program_id = i.program_id AND v.member_id = i.member_id
        AND v.status = 'pending')
  ORDER BY i.created_at
  LIMIT %(rows)s
  FOR UPDATE SKIP LOCKED))
"""


@dataclass(frozen=True, slots=True)
class Purged:
    rows: int
    batches: int


class RetentionRepo:
    def __init__(
        self,
        dsn: str,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        assert dsn
        self.dsn = dsn
        self._sleep = sleep

    async def purge_idempotency(
        self,
        before: datetime,
        *,
        rows_per_batch: int = PURGE_ROWS_PER_BATCH,
        pause_s: float = PURGE_PAUSE_S,
        batches_max: int = PURGE_BATCHES_PER_PASS_MAX,
    ) -> Purged:
        """Delete the idempotency records created before `before` (but those the module
        docstring keeps), `rows_per_batch` per transaction, until none is left or after
        `batches_max` batches (the next pass goes on)."""
        assert before.tzinfo is not None, "an aware time: created_at is timestamptz"
        assert rows_per_batch > 0 and pause_s >= 0 and batches_max > 0
        rows = 0
        batches = 0
        # A connection of its own, per pass (hourly): nothing held between passes.
        async with await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, options=f"-c lock_timeout={PURGE_LOCK_TIMEOUT_MS}"
        ) as conn:
            while batches < batches_max:
                cur = await conn.execute(_PURGE_SQL, {"before": before, "rows": rows_per_batch})
                deleted = cur.rowcount
                assert 0 <= deleted <= rows_per_batch
                batches += 1
                rows += deleted
                if deleted < rows_per_batch:
                    break  # nothing older is left (or only rows locked right now)
                await self._sleep(pause_s)
        assert batches <= batches_max and rows <= batches * rows_per_batch
        return Purged(rows, batches)
