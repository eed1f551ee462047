"""What-if replay: a program's stored events scored again by a candidate rule set.

Contract: `Replay(candidate, policy)` is fed the program's stored events in the order they
were applied (their `created_at`), each with what it was actually awarded (`points` and
the explanation's points per rule) and the member's tier when it was applied. Events in the
window are evaluated again with the candidate rules (`domain.rules.evaluate`, the shard's
own function) and compared with what they were awarded; `result()` is the aggregate
difference: in total, per rule, per tier, per event type, and the members most affected.
Nothing here reads a clock, a database or a ledger: the same input gives the same answer.

Why the events around the window are fed too (`in_window=False`): caps count what a member
already earned that local day (rule and program `per_member_day`) and month (program
`per_member_month`). The shard kept those counters from the events it applied before, in
application order. The replay rebuilds them the same way: an event outside the window adds
what it was actually awarded, an event inside adds what the candidate awards it. So the
window's events are fed with every event of the local months they touch
(`context_range`), and replaying with the very rules that scored them gives back exactly
what they were awarded (tests/unit/test_simulation.py holds that as a property).

What a replay cannot know, and takes as it is: the program's policy (caps, tier
multipliers, time zone) is the current one for every event; the tier is the member's tier
when the event was applied if tier_changes says so, else the member's current tier (counted
in `tiers_from`); events of one member applied in one group commit are ordered by
(occurred_at, event_id) among themselves.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from domain.earning import member_context, record
from domain.errors import PointsError
from domain.limits import (
    SIMULATION_TOP_MEMBERS_MAX,
    SIMULATION_WINDOW_DAYS_MAX,
)
from domain.numbers import invalid
from domain.policy import Policy, local_day, zone
from domain.rules import PROGRAM_LINE_ID, Evaluation, EventIn, RuleSet, evaluate

# Where an event's tier came from (result["tiers_from"]).
# The explanation names the tier the shard used (its "@program" line of the tier's
# multiplier): exact. Else the member's tier changes say it, else it is the current tier.
TIER_FROM_EXPLANATION = "explanation"
TIER_FROM_HISTORY = "tier_changes"
TIER_FROM_CURRENT = "current"
TIER_SOURCES = (TIER_FROM_EXPLANATION, TIER_FROM_HISTORY, TIER_FROM_CURRENT)
# How domain/rules.py `evaluate` notes the tier multiplier: "tier gold ×1.5: 10 → 15".
_TIER_NOTE_PREFIX = "tier "
# Points of a stored explanation that its lines do not account for (hand-made rows): kept
# under this id so that per-rule differences still sum to the total difference.
UNEXPLAINED_LINE_ID = "@unexplained"
# The job's states, in order; done and failed are final.
STATUS_QUEUED = "queued"
STATUS_RUNNING = "running"
STATUS_DONE = "done"
STATUS_FAILED = "failed"
STATUSES = (STATUS_QUEUED, STATUS_RUNNING, STATUS_DONE, STATUS_FAILED)
WINDOW_MAX = timedelta(days=SIMULATION_WINDOW_DAYS_MAX)


def check_window(from_at: datetime, to_at: datetime) -> None:
    """A window [from, to) of occurred_at: forward, and at most SIMULATION_WINDOW_DAYS_MAX."""
    assert from_at.utcoffset() is not None and to_at.utcoffset() is not None
    if not from_at < to_at:
        raise invalid("the window is empty or reversed: `from` must be before `to`")
    if to_at - from_at > WINDOW_MAX:
        raise invalid(
            f"the window is longer than {SIMULATION_WINDOW_DAYS_MAX} days: replay it in parts"
        )
    assert timedelta(0) < to_at - from_at <= WINDOW_MAX


def check_top_members(top_members: int) -> None:
    if not 1 <= top_members <= SIMULATION_TOP_MEMBERS_MAX:
        raise invalid(f"top_members must be 1..{SIMULATION_TOP_MEMBERS_MAX}")


def _month_start(moment: datetime, policy: Policy, months_after: int) -> datetime:
    """Local midnight on the first day of the month `months_after` after `moment`'s."""
    assert months_after >= 0
    local = moment.astimezone(zone(policy.time_zone))
    month = local.month - 1 + months_after
    start = local.replace(
        year=local.year + month // 12,
        month=month % 12 + 1,
        day=1,
        hour=0,
        minute=0,
        second=0,
        microsecond=0,
    )
    assert start.day == 1 and start.hour == 0
    return start


def context_range(policy: Policy, from_at: datetime, to_at: datetime) -> tuple[datetime, datetime]:
    """The events whose awards fill the window's cap counters: every event of the local
    months the window touches, [start of from's month, start of the month after to's)."""
    check_window(from_at, to_at)
    start = _month_start(from_at, policy, 0)
    end = _month_start(to_at, policy, 1)
    assert start <= from_at and to_at < end
    return start, end


def explained_points(explanation: Iterable[Mapping[str, Any]], points: int) -> dict[str, int]:
    """Points per rule id of a stored explanation ("@program" lines: program multipliers
    and caps). Lines sum to the event's points; any rest goes to "@unexplained"."""
    assert points >= 0
    lines: dict[str, int] = {}
    for line in explanation:
        amount = int(line.get("points") or 0)
        if amount:
            rule_id = str(line.get("rule_id"))
            lines[rule_id] = lines.get(rule_id, 0) + amount
    rest = points - sum(lines.values())
    if rest:
        lines[UNEXPLAINED_LINE_ID] = rest
    assert sum(lines.values()) == points
    return lines


# A tier change: (changed_at, from_tier, to_tier), as tier_changes records it.
TierChange = tuple[datetime, str | None, str]


def explained_tier(explanation: Iterable[Mapping[str, Any]]) -> str | None:
    """The tier a stored explanation says the event was evaluated with, if it says."""
    for line in explanation:
        note = line.get("note")
        if (
            line.get("rule_id") == PROGRAM_LINE_ID
            and isinstance(note, str)
            and note.startswith(_TIER_NOTE_PREFIX)
        ):
            return note.split(" ", 2)[1]
    return None


def tier_at(
    changes: Sequence[TierChange],
    applied_at: datetime,
    current: str | None,
    explained: str | None = None,
) -> tuple[str | None, str]:
    """The member's tier when an event was applied at `applied_at`, and its source.

    The explanation's tier (`explained`) is the very tier used. Else: the tier the last
    change before the event's commit left; a change at its very commit or later says what
    it was before (`from_tier`), which is exact unless an earlier event of the same commit
    changed it. With no change at all: the member's `current` tier."""
    if explained is not None:
        return explained, TIER_FROM_EXPLANATION
    if not changes:
        return current, TIER_FROM_CURRENT
    assert changes[0][0] <= changes[-1][0], "changes in order"
    before = bisect.bisect_left(changes, applied_at, key=_changed_at)
    if before > 0:
        return changes[before - 1][2], TIER_FROM_HISTORY
    return changes[0][1], TIER_FROM_HISTORY


def _changed_at(change: TierChange) -> datetime:
    return change[0]


@dataclass(frozen=True, slots=True)
class PastEvent:
    """A stored event, what it was actually awarded and the member's tier when it was."""

    event_id: str
    member_id: str
    type: str
    occurred_at: datetime
    attributes: dict[str, Any]
    points: int
    # Actual points per explanation rule id (explained_points); they sum to `points`.
    lines: Mapping[str, int]
    tier: str | None
    # Where `tier` comes from: one of TIER_SOURCES.
    tier_source: str
    # False: outside the window, fed only for the cap counters (its actual award counts).
    in_window: bool = True


@dataclass(frozen=True, slots=True)
class EventAward:
    event_id: str
    member_id: str
    actual: int
    candidate: int


@dataclass
class _Sums:
    events: int = 0
    actual: int = 0
    candidate: int = 0

    def add(self, actual: int, candidate: int, events: int = 1) -> None:
        self.events += events
        self.actual += actual
        self.candidate += candidate

    def view(self) -> dict[str, int]:
        return {
            "events": self.events,
            "actual_points": self.actual,
            "candidate_points": self.candidate,
            "difference": self.candidate - self.actual,
        }


def _rule_points(lines: Mapping[str, int]) -> dict[str, int]:
    """What the shard added to the rules' daily counters for these lines (rule lines with
    points; "@" lines are program steps, not rules)."""
    return {
        rule: points for rule, points in lines.items() if points > 0 and not rule.startswith("@")
    }


@dataclass
class Replay:
    candidate: RuleSet
    policy: Policy
    # Per member: the earning counters the shard would hold (domain/earning.py's shape).
    _earning: dict[str, dict[str, Any]] = field(default_factory=dict)
    _total: _Sums = field(default_factory=_Sums)
    _changed: int = 0
    _invalid: int = 0
    _by_rule: dict[str, _Sums] = field(default_factory=dict)
    _by_tier: dict[str | None, _Sums] = field(default_factory=dict)
    _by_type: dict[str, _Sums] = field(default_factory=dict)
    _by_member: dict[str, _Sums] = field(default_factory=dict)
    _tiers_from: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIER_SOURCES, 0))

    @property
    def events_done(self) -> int:
        return self._total.events

    def feed(self, event: PastEvent) -> EventAward | None:
        """Replay one event (in application order); its award if it is in the window."""
        assert event.points >= 0
        earning = self._earning.get(event.member_id)
        if earning is None:
            earning = self._earning[event.member_id] = {}
        policy = self.policy
        if not event.in_window:
            if event.points > 0:
                actual = Evaluation(event.points, (), _rule_points(event.lines))
                record(
                    earning, policy, event.occurred_at, actual, local_day(policy, event.occurred_at)
                )
            return None
        earning["tier"] = event.tier
        context = member_context(earning, policy, event.occurred_at)
        try:
            evaluation = evaluate(
                self.candidate,
                EventIn(
                    event.event_id,
                    event.member_id,
                    event.type,
                    event.occurred_at,
                    event.attributes,
                ),
                context,
                policy,
            )
        except PointsError:
            # Stored attributes the rules refuse (a row not written by the shards): the
            # candidate awards nothing, and the result counts it.
            self._invalid += 1
            evaluation = Evaluation(0, (), {})
        candidate = evaluation.points
        record(earning, policy, event.occurred_at, evaluation, local_day(policy, event.occurred_at))
        self._add(event, evaluation)
        award = EventAward(event.event_id, event.member_id, event.points, candidate)
        assert award.candidate >= 0 and award.actual >= 0
        return award

    def _add(self, event: PastEvent, evaluation: Evaluation) -> None:
        actual, candidate = event.points, evaluation.points
        self._total.add(actual, candidate)
        self._changed += actual != candidate
        self._tiers_from[event.tier_source] += 1
        _sums(self._by_tier, event.tier).add(actual, candidate)
        _sums(self._by_type, event.type).add(actual, candidate)
        _sums(self._by_member, event.member_id).add(actual, candidate)
        by_rule = self._by_rule
        for rule_id, points in event.lines.items():
            _sums(by_rule, rule_id).add(points, 0, events=0)
        for line in evaluation.lines:
            if line.points:
                _sums(by_rule, line.rule_id).add(0, line.points, events=0)

    def result(self, top_members: int) -> dict[str, Any]:
        """The aggregate difference (candidate - actual) of the events replayed so far."""
        check_top_members(top_members)
        total = self._total
        difference = total.candidate - total.actual
        affected = heapq.nsmallest(
            top_members,
            (
                (member, sums)
                for member, sums in self._by_member.items()
                if sums.candidate != sums.actual
            ),
            key=lambda item: (-abs(item[1].candidate - item[1].actual), item[0]),
        )
        by_rule: list[dict[str, Any]] = [
            {"rule_id": rule_id, **_points(sums)} for rule_id, sums in sorted(self._by_rule.items())
        ]
        by_type: list[dict[str, Any]] = [
            {"event_type": kind, **sums.view()} for kind, sums in sorted(self._by_type.items())
        ]
        result = {
            "events": total.events,
            "members": len(self._by_member),
            "events_changed": self._changed,
            "events_invalid": self._invalid,
            "actual_points": total.actual,
            "candidate_points": total.candidate,
            "difference": difference,
            "tiers_from": dict(self._tiers_from),
            "by_rule": by_rule,
            "by_tier": [
                {"tier": tier, **sums.view()}
                for tier, sums in sorted(self._by_tier.items(), key=lambda item: item[0] or "")
            ],
            "by_event_type": by_type,
            "top_members": [{"member_id": member, **sums.view()} for member, sums in affected],
        }
        # Every breakdown accounts for the whole difference.
        assert sum(row["difference"] for row in by_rule) == difference
        assert sum(int(row["difference"]) for row in by_type) == difference
        assert sum(self._tiers_from.values()) == total.events
        return result


K = TypeVar("K")


def _sums(sums: dict[K, _Sums], key: K) -> _Sums:
    found = sums.get(key)
    if found is None:
        found = sums[key] = _Sums()
    return found


def _points(sums: _Sums) -> dict[str, int]:
    view = sums.view()
    del view["events"]
    return view


def replay(
    candidate: RuleSet, policy: Policy, events: Iterable[PastEvent], top_members: int
) -> tuple[list[EventAward], dict[str, Any]]:
    """Replay all `events` at once: the per-event awards and the aggregate difference."""
    check_top_members(top_members)
    run = Replay(candidate, policy)
    awards = [award for event in events if (award := run.feed(event)) is not None]
    result = run.result(top_members)
    assert len(awards) == result["events"]
    return awards, result
