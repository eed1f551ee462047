"""A circuit breaker around a dependency (PostgreSQL, for the shards' group commits).

Contract: the caller asks `allow(now_s)` before it uses the dependency and reports the
result with `succeeded()` or `failed(now_s)`. `failed` is for the dependency being
unreachable (connection lost, server restarting or down), never for a refusal the
dependency made on purpose (a fenced write, a key already recorded): those prove it works.

- closed: everything is allowed; `failures_to_open` failures in a row open it.
- open: nothing is allowed for `cooldown_s` (callers fail fast instead of queueing behind
  a database that does not answer); then the next `allow` lets one probe through.
- half-open: that one probe is out; nothing else is allowed until it reports. Success
  closes the breaker, failure opens it for another cool-down.

Why a pure class with the time passed in: it is a state machine, tested in microseconds
with a made-up clock; the shard (actors/group_commit.py) feeds it `time.monotonic()`.
"""

from __future__ import annotations

from enum import StrEnum

# Defaults (serve_app/settings.py names them for operators). A PostgreSQL restart here takes
# 0.2-0.3 s and the batch loop's retries back off from 50 ms to 500 ms, so ten failures in a
# row span about 3 s: a short restart is ridden out by retries, a real outage opens.
FAILURES_TO_OPEN = 10
COOLDOWN_S = 2.0


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    def __init__(self, failures_to_open: int = FAILURES_TO_OPEN, cooldown_s: float = COOLDOWN_S):
        assert failures_to_open >= 1
        assert cooldown_s > 0
        self.failures_to_open = failures_to_open
        self.cooldown_s = cooldown_s
        self.state = BreakerState.CLOSED
        self.failures = 0  # in a row, while closed
        self.opened_at_s = 0.0
        self.opened = 0  # times it opened (a metric)

    def is_open(self, now_s: float) -> bool:
        """Open and still cooling down: fail fast without asking. No state change."""
        return self.state is BreakerState.OPEN and now_s < self.opened_at_s + self.cooldown_s

    def retry_after_s(self, now_s: float) -> float:
        """How long until a probe may go through (0 when the breaker is not cooling down)."""
        if not self.is_open(now_s):
            return 0.0
        remaining = self.opened_at_s + self.cooldown_s - now_s
        assert 0 < remaining <= self.cooldown_s
        return remaining

    def allow(self, now_s: float) -> bool:
        """May the caller use the dependency now? After the cool-down, the first caller
        asking becomes the one probe (half-open)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.HALF_OPEN:
            return False  # the probe is out
        if now_s < self.opened_at_s + self.cooldown_s:
            return False
        self.state = BreakerState.HALF_OPEN
        return True

    def succeeded(self) -> None:
        """The dependency answered: closed again, the count starts over."""
        self.state = BreakerState.CLOSED
        self.failures = 0
        assert self.state is BreakerState.CLOSED and self.failures == 0

    def failed(self, now_s: float) -> None:
        """The dependency could not be reached."""
        if self.state is BreakerState.HALF_OPEN:
            self._open(now_s)  # the probe failed: cool down again
        elif self.state is BreakerState.CLOSED:
            self.failures += 1
            if self.failures >= self.failures_to_open:
                self._open(now_s)
        # Already open: a call allowed before it opened failed late; nothing changes.
        assert self.state is not BreakerState.CLOSED or self.failures < self.failures_to_open

    def _open(self, now_s: float) -> None:
        self.state = BreakerState.OPEN
        self.opened_at_s = now_s
        self.failures = 0
        self.opened += 1
