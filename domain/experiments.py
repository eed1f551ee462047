"""Experiments of earning rules: arms, the stable assignment of members, and the results'
statistics. Pure: no I/O.

An experiment runs from `starts_at` to `ends_at` on a program. Each arm names a rule set
version and a weight (the weights add up to 100). A member whose event occurs inside the
window is assigned to an arm by a stable hash of (experiment, member): the same member is in
the same arm on every shard, after every restart, without a lookup. That event, and every
later one inside the window, is scored by the arm's rule set instead of the version in
effect (an event type the arm's rules do not handle falls back to the version in effect).
The first arm is the control. Exactly-once is untouched: an event is still applied once, by
its event id, whatever arm scores it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from domain.errors import Code, PointsError
from domain.ids import valid_id

ARMS_MIN = 2
ARMS_MAX = 10
WEIGHTS_TOTAL = 100
# A two-sided 95% interval (normal approximation).
Z_95 = 1.959963984540054


@dataclass(frozen=True, slots=True)
class Arm:
    name: str
    rule_version: int
    weight: int


@dataclass(frozen=True, slots=True)
class Experiment:
    program_id: str
    experiment_id: str
    arms: tuple[Arm, ...]
    starts_at: datetime
    ends_at: datetime

    @property
    def control(self) -> Arm:
        return self.arms[0]

    def running_at(self, moment: datetime) -> bool:
        return self.starts_at <= moment < self.ends_at


def _invalid(detail: str) -> PointsError:
    return PointsError(Code.VALIDATION_ERROR, detail)


def parse_experiment(
    program_id: str,
    experiment_id: str,
    arms: list[dict[str, Any]],
    starts_at: datetime,
    ends_at: datetime,
    versions: set[int],
) -> Experiment:
    """Validate an experiment against the program's rule set versions (422 otherwise)."""
    if not valid_id(experiment_id):
        raise _invalid("experiment_id: 1-64 characters of A-Z a-z 0-9 . _ : @ -")
    if not ARMS_MIN <= len(arms) <= ARMS_MAX:
        raise _invalid(f"an experiment has {ARMS_MIN} to {ARMS_MAX} arms")
    parsed = []
    for index, raw in enumerate(arms):
        name, version, weight = raw.get("name"), raw.get("rule_version"), raw.get("weight")
        if not isinstance(name, str) or not valid_id(name):
            raise _invalid(f"arms[{index}].name: 1-64 characters of A-Z a-z 0-9 . _ : @ -")
        if not isinstance(version, int) or isinstance(version, bool):
            raise _invalid(f"arms[{index}].rule_version: an integer")
        if version not in versions:
            raise _invalid(
                f"arms[{index}].rule_version: rule set version {version} does not exist"
                " in this program"
            )
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 1:
            raise _invalid(f"arms[{index}].weight: a positive integer")
        parsed.append(Arm(name, version, weight))
    if len({arm.name for arm in parsed}) != len(parsed):
        raise _invalid("arm names must be unique")
    total = sum(arm.weight for arm in parsed)
    if total != WEIGHTS_TOTAL:
        raise _invalid(f"the arms' weights add up to {total}, not {WEIGHTS_TOTAL}")
    if starts_at >= ends_at:
        raise _invalid("starts_at must be before ends_at")
    return Experiment(program_id, experiment_id, tuple(parsed), starts_at, ends_at)


def bucket(experiment_id: str, member_id: str) -> int:
    """A member's stable position in 0..WEIGHTS_TOTAL-1 for this experiment."""
    digest = hashlib.blake2b(f"{experiment_id}\x00{member_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % WEIGHTS_TOTAL


def assign(experiment: Experiment, member_id: str) -> Arm:
    """The member's arm: the weights cut 0..99 into consecutive ranges."""
    position = bucket(experiment.experiment_id, member_id)
    for arm in experiment.arms:
        if position < arm.weight:
            return arm
        position -= arm.weight
    raise AssertionError("weights add up to WEIGHTS_TOTAL")


def experiment_json(experiment: Experiment) -> dict[str, Any]:
    return {
        "arms": [
            {"name": a.name, "rule_version": a.rule_version, "weight": a.weight}
            for a in experiment.arms
        ],
        "starts_at": experiment.starts_at,
        "ends_at": experiment.ends_at,
    }


@dataclass(frozen=True, slots=True)
class ArmStats:
    """What the database sums per arm: assigned members, events and points of the window,
    the sum of squares of points per member, and members who redeemed."""

    name: str
    members: int
    events: int
    points: int
    points_squared: int
    redeemers: int


def _interval(diff: float, variance: float) -> list[float] | None:
    if variance < 0 or math.isnan(variance):
        return None
    half = Z_95 * math.sqrt(variance)
    return [round(diff - half, 6), round(diff + half, 6)]


def arm_results(arms: list[ArmStats]) -> list[dict[str, Any]]:
    """Per arm: members, events, points per member, redemption rate, and against the
    control (the first arm) the difference of each with its 95% interval (Welch's normal
    approximation for points per member, the two-proportion one for the rate; null while
    an arm has fewer than two members)."""
    assert arms
    out = []
    control = arms[0]

    def mean_var(a: ArmStats) -> tuple[float, float]:
        if a.members == 0:
            return 0.0, float("nan")
        mean = a.points / a.members
        if a.members < 2:
            return mean, float("nan")
        var = (a.points_squared - a.members * mean * mean) / (a.members - 1)
        return mean, max(var, 0.0)

    c_mean, c_var = mean_var(control)
    c_rate = control.redeemers / control.members if control.members else 0.0
    for arm in arms:
        mean, var = mean_var(arm)
        rate = arm.redeemers / arm.members if arm.members else 0.0
        entry: dict[str, Any] = {
            "arm": arm.name,
            "control": arm is control,
            "members": arm.members,
            "events": arm.events,
            "points": arm.points,
            "points_per_member": round(mean, 6),
            "redemption_rate": round(rate, 6),
        }
        if arm is not control:
            enough = arm.members >= 2 and control.members >= 2
            entry["vs_control"] = {
                "points_per_member": round(mean - c_mean, 6),
                "points_per_member_ci95": _interval(
                    mean - c_mean, var / arm.members + c_var / control.members
                )
                if enough
                else None,
                "redemption_rate": round(rate - c_rate, 6),
                "redemption_rate_ci95": _interval(
                    rate - c_rate,
                    rate * (1 - rate) / arm.members + c_rate * (1 - c_rate) / control.members,
                )
                if enough
                else None,
            }
        out.append(entry)
    return out
