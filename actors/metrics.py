"""The service's metrics (docs/metrics.md), recorded through Ray's metrics API.

Ray's metrics agent on each node exports what every worker records, in Prometheus format,
as `ray_<name>`; deploy/prometheus/prometheus.yml renames `ray_points_*` to `points_*`.
Recording costs about 2 µs per call (measured in an actor: 20,000 `inc` with two tags), so
the hot paths record per group commit or per request, never per ledger row; counters the
cores already keep (`stats`) are exported as deltas by `ShardMetrics.sync`, which the shard
actors call every `SYNC_INTERVAL_S` and after each batch is cheap enough not to need.

Outside Ray (unit and integration tests of the cores) the same calls record into a process
that exports nothing: harmless, so the cores never ask whether they run in Ray.

Labels stay bounded: programs, rewards, shards, route templates, codes; never members.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from ray.util.metrics import Counter, Gauge, Histogram

log = logging.getLogger("points.metrics")

# How often a shard actor exports its gauges and counters (queue depth, cache, breaker).
SYNC_INTERVAL_S = 2.0

# Seconds: from a cache hit (~1 ms) to a request that waited out a database restart.
LATENCY_BOUNDARIES = [
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
]
# Operations per group commit: powers of two up to the largest batch (BATCH_MAX 4,096).
BATCH_BOUNDARIES = [float(2**i) for i in range(13)]

# A transaction kind's flow in `points_ledger_points_total`.
FLOWS = {
    "credit": "issued",
    "debit": "redeemed",
    "expire": "expired",
    "refund": "refunded",
    "reversal": "clawed_back",
    "activate": "activated",
    "hold": "held",
    "release": "released",
}
# `points_redemptions_total`'s statuses (domain/rewards.py SagaState).
REDEMPTION_STATUSES = (
    "started",
    "stock_reserved",
    "pending_review",
    "points_debited",
    "pending_fulfillment",
    "completed",
    "compensating",
    "failed",
    "cancelled",
)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
# Core counters exported as `points_shard_<name>_total` deltas.
SHARD_COUNTERS = ("commit_failures", "fenced", "shed", "replays")


@functools.cache
def counter(name: str, description: str, tags: tuple[str, ...] = ()) -> Counter:
    """One Counter per name and process (Ray wants each metric made once)."""
    return Counter(name, description=description, tag_keys=tags)


@functools.cache
def gauge(name: str, description: str, tags: tuple[str, ...] = ()) -> Gauge:
    return Gauge(name, description=description, tag_keys=tags)


@functools.cache
def histogram(
    name: str, description: str, boundaries: tuple[float, ...], tags: tuple[str, ...] = ()
) -> Histogram:
    return Histogram(name, description=description, boundaries=list(boundaries), tag_keys=tags)


def zero(metric: Counter, tags: dict[str, str] | None = None) -> None:
    """Export a counter at 0 before its first event. Prometheus's increase() and rate()
    only see growth between two samples, so a counter that appears at 1 hides its first
    event from the alert rules (a first failed commit would never alert). Ray's `inc`
    refuses 0; its recording step takes it (a private method: if a Ray upgrade removes it,
    the counter just appears at its first event, as before)."""
    record = getattr(metric, "_record", None)
    if record is not None:
        try:
            record(0.0, tags=tags)
        except Exception:
            log.debug("could not export %s at 0", metric, exc_info=True)


# ----------------------------------------------------------------- HTTP


class HttpMetrics:
    """Requests answered by an ingress replica, by route template, method and status."""

    def __init__(self) -> None:
        self._requests = counter(
            "points_http_requests",
            "HTTP requests answered, by route template, method and status code",
            ("route", "method", "code"),
        )
        self._duration = histogram(
            "points_http_request_duration_seconds",
            "Time from a request's arrival at a replica to its answer",
            tuple(LATENCY_BOUNDARIES),
            ("route", "method"),
        )
        self._limited = counter(
            "points_rate_limited", "Requests refused 429, by limit (key, member, auth)", ("limit",)
        )
        for limit in ("key", "member", "auth"):
            zero(self._limited, {"limit": limit})

    def answered(self, route: str, method: str, code: int, seconds: float) -> None:
        self._requests.inc(1, tags={"route": route, "method": method, "code": str(code)})
        self._duration.observe(seconds, tags={"route": route, "method": method})

    def rate_limited(self, limit: str) -> None:
        self._limited.inc(1, tags={"limit": limit})


# ----------------------------------------------------------------- shards


Flows = dict[tuple[str, str], int]


async def export_every(export: Callable[[], Awaitable[None] | None], interval_s: float) -> None:
    """Call `export` (plain or async) every `interval_s` until cancelled; a failure is
    logged, not fatal."""
    assert interval_s > 0
    while True:
        try:
            pending = export()
            if pending is not None:
                await pending
        except Exception:
            log.exception("exporting metrics failed")
        await asyncio.sleep(interval_s)


def flows(
    transactions: Iterable[Any],
) -> tuple[Flows, Flows]:
    """Points by (program, flow) and transactions by (program, kind) of committed
    transactions (anything with program_id, kind and points)."""
    points: dict[tuple[str, str], int] = defaultdict(int)
    count: dict[tuple[str, str], int] = defaultdict(int)
    for txn in transactions:
        points[(txn.program_id, FLOWS[txn.kind])] += txn.points
        count[(txn.program_id, txn.kind)] += 1
    return points, count


class ShardMetrics:
    """One shard's metrics (`shard`: `account-<n>` or `reward-<n>`)."""

    def __init__(self, shard: str, clock: Any = time.time) -> None:
        assert shard
        self.shard = shard
        self._tags = {"shard": shard}
        self._exported: dict[str, float] = dict.fromkeys(SHARD_COUNTERS, 0.0)
        shard_tag = ("shard",)
        self._batch = histogram(
            "points_shard_batch_size",
            "Operations per group commit",
            tuple(BATCH_BOUNDARIES),
            shard_tag,
        )
        self._commit = histogram(
            "points_shard_commit_duration_seconds",
            "Duration of one group commit's database transaction",
            tuple(LATENCY_BOUNDARIES),
            shard_tag,
        )
        self._commits = counter("points_shard_commits", "Group commits that committed", shard_tag)
        self._counters = {
            "commit_failures": counter(
                "points_shard_commit_failures",
                "Group commits that failed (fenced ones included)",
                shard_tag,
            ),
            "fenced": counter(
                "points_shard_fenced",
                "Commits refused because another owner moved a row or slot first",
                shard_tag,
            ),
            "shed": counter(
                "points_shard_shed",
                "Operations refused at once (queue full, breaker open)",
                shard_tag,
            ),
            "replays": counter(
                "points_shard_replays",
                "Operations answered from a stored answer (idempotent replays)",
                shard_tag,
            ),
        }
        self._queue = gauge(
            "points_shard_queue_depth", "Operations waiting for the next group commit", shard_tag
        )
        self._cached = gauge(
            "points_shard_cached_accounts",
            "Accounts (account shards) or rewards (reward shards) held in memory",
            shard_tag,
        )
        self._breaker = gauge(
            "points_shard_breaker_state",
            "Circuit breaker around PostgreSQL: 0 closed, 1 half-open, 2 open",
            shard_tag,
        )
        self._points = counter(
            "points_ledger_points",
            "Points moved by committed ledger transactions, by program and flow",
            ("program", "flow"),
        )
        self._transactions = counter(
            "points_ledger_transactions",
            "Ledger transactions committed, by program and kind",
            ("program", "kind"),
        )
        self._redemptions = counter(
            "points_redemptions", "Redemptions reaching a status", ("program", "status")
        )
        self._stock = gauge(
            "points_reward_stock",
            "Stock left of a reward, as its shard last committed it",
            ("program", "reward"),
        )
        for metric in (self._commits, *self._counters.values()):
            zero(metric, self._tags)
        self._started = gauge(
            "points_shard_start_time_seconds",
            "When this shard's actor (re)started, Unix time",
            shard_tag,
        )
        self._started_at = clock()
        self._started.set(self._started_at, tags=self._tags)
        # Last stock of each reward: re-set by `sync` (Ray drops a gauge not set lately).
        self._stocks: dict[tuple[str, str], int] = {}
        self._programs: set[str] = set()

    def committed(self, ops: int, seconds: float) -> None:
        """One group commit that committed: its size and its transaction's duration."""
        self._commits.inc(1, tags=self._tags)
        self._batch.observe(ops, tags=self._tags)
        self._commit.observe(seconds, tags=self._tags)

    def ledger(self, transactions: Iterable[Any]) -> None:
        """Committed ledger transactions: points by flow and counts by kind, per program."""
        points, count = flows(transactions)
        for program, _ in count:
            self._first_seen(program)
        for (program, flow), value in points.items():
            self._points.inc(value, tags={"program": program, "flow": flow})
        for (program, kind), value in count.items():
            self._transactions.inc(value, tags={"program": program, "kind": kind})

    def _first_seen(self, program: str) -> None:
        """A program's flows, kinds and redemption statuses, at 0 from its first commit in
        this shard on (see `zero`)."""
        if program in self._programs:
            return
        self._programs.add(program)
        for kind, flow in FLOWS.items():
            zero(self._points, {"program": program, "flow": flow})
            zero(self._transactions, {"program": program, "kind": kind})
        for status in REDEMPTION_STATUSES:
            zero(self._redemptions, {"program": program, "status": status})

    def redemptions(self, statuses: Iterable[tuple[str, str]]) -> None:
        """Redemptions (program, status) committed in a new status."""
        found: dict[tuple[str, str], int] = defaultdict(int)
        for key in statuses:
            self._first_seen(key[0])
            found[key] += 1
        for (program, status), value in found.items():
            self._redemptions.inc(value, tags={"program": program, "status": status})

    def stock(self, program: str, reward: str, left: int) -> None:
        self._stocks[(program, reward)] = left
        self._stock.set(left, tags={"program": program, "reward": reward})

    def sync(self, queued: int, cached: int, breaker: str, counters: Mapping[str, float]) -> None:
        """Gauges now, and the growth of the cores' own counters since the last sync.
        Ray forgets a gauge that was not set for a while (its metric TTL), so the ones that
        rarely change are set again here too."""
        self._started.set(self._started_at, tags=self._tags)
        for (program, reward), left in self._stocks.items():
            self._stock.set(left, tags={"program": program, "reward": reward})
        self._queue.set(queued, tags=self._tags)
        self._cached.set(cached, tags=self._tags)
        self._breaker.set(BREAKER_STATES.get(breaker, 2), tags=self._tags)
        for name in SHARD_COUNTERS:
            value = float(counters.get(name, 0.0))
            grown = value - self._exported[name]
            if grown > 0:
                self._counters[name].inc(grown, tags=self._tags)
            self._exported[name] = value


# ----------------------------------------------------------------- stream, webhooks


class StreamMetrics:
    """The event stream's consumer: lag, pending entries, dead letters, entries handled."""

    OUTCOMES = ("applied", "duplicates", "dead_lettered", "retry_later", "reclaimed")

    def __init__(self) -> None:
        self._lag = gauge(
            "points_stream_lag", "Entries of the stream not yet delivered to the consumer group"
        )
        self._pending = gauge("points_stream_pending", "Entries delivered but not acknowledged")
        self._dead = gauge("points_stream_dead_letters", "Entries in the dead-letter stream")
        self._entries = counter(
            "points_stream_entries", "Stream entries handled, by outcome", ("outcome",)
        )
        self._exported: dict[str, float] = dict.fromkeys(self.OUTCOMES, 0.0)
        for name in self.OUTCOMES:
            zero(self._entries, {"outcome": name})

    def sync(
        self, lag: int | None, pending: int | None, dead: int | None, totals: Mapping[str, float]
    ) -> None:
        """Gauges now (None: unknown, left as they were), and the growth of the totals."""
        for metric, value in ((self._lag, lag), (self._pending, pending), (self._dead, dead)):
            if value is not None:
                metric.set(value)
        for name in self.OUTCOMES:
            total = float(totals.get(name, 0.0))
            grown = total - self._exported[name]
            if grown > 0:
                self._entries.inc(grown, tags={"outcome": name})
            self._exported[name] = total


class WebhookMetrics:
    """Redemption webhooks: each HTTP attempt, and deliveries that failed every attempt."""

    def __init__(self) -> None:
        self._attempts = counter(
            "points_webhook_attempts", "Webhook HTTP attempts, by outcome", ("outcome",)
        )
        self._failures = counter(
            "points_webhook_failures", "Webhook deliveries that failed after every attempt"
        )
        zero(self._failures)
        for outcome in ("delivered", "failed"):
            zero(self._attempts, {"outcome": outcome})

    def attempt(self, delivered: bool) -> None:
        self._attempts.inc(1, tags={"outcome": "delivered" if delivered else "failed"})

    def failed(self) -> None:
        self._failures.inc(1)
