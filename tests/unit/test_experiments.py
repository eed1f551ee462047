"""Experiments, pure: validation, the stable weighted assignment, and the statistics."""

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import Code, PointsError
from domain.experiments import ArmStats, arm_results, assign, bucket, parse_experiment

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 2, 1, tzinfo=UTC)
ARMS = [
    {"name": "control", "rule_version": 1, "weight": 70},
    {"name": "b", "rule_version": 2, "weight": 30},
]


def test_a_valid_experiment_parses() -> None:
    experiment = parse_experiment("p", "e1", ARMS, T0, T1, {1, 2})
    assert experiment.control.name == "control"
    assert [a.weight for a in experiment.arms] == [70, 30]


@pytest.mark.parametrize(
    ("arms", "window", "versions", "says"),
    [
        ([{**ARMS[0], "weight": 60}, ARMS[1]], (T0, T1), {1, 2}, "add up to 90"),
        ([ARMS[0], {**ARMS[1], "rule_version": 9}], (T0, T1), {1, 2}, "version 9 does not"),
        ([ARMS[0], {**ARMS[1], "name": "control"}], (T0, T1), {1, 2}, "unique"),
        ([ARMS[0]], (T0, T1), {1, 2}, "2 to 10 arms"),
        (ARMS, (T1, T0), {1, 2}, "before ends_at"),
        ([ARMS[0], {**ARMS[1], "weight": 0}], (T0, T1), {1, 2}, "positive"),
    ],
)
def test_bad_experiments_are_refused(
    arms: list[dict[str, object]],
    window: tuple[datetime, datetime],
    versions: set[int],
    says: str,
) -> None:
    with pytest.raises(PointsError) as refused:
        parse_experiment("p", "e1", arms, window[0], window[1], versions)
    assert refused.value.code is Code.VALIDATION_ERROR and says in refused.value.detail


@given(st.text(min_size=1, max_size=20))
def test_assignment_is_stable_and_follows_the_weights(member: str) -> None:
    experiment = parse_experiment("p", "e1", ARMS, T0, T1, {1, 2})
    arm = assign(experiment, member)
    assert arm == assign(experiment, member)
    assert (arm.name == "control") == (bucket("e1", member) < 70)


def test_weights_split_members_about_as_asked() -> None:
    experiment = parse_experiment("p", "e1", ARMS, T0, T1, {1, 2})
    arms = [assign(experiment, f"member-{i}").name for i in range(10_000)]
    assert 0.67 < arms.count("control") / len(arms) < 0.73


def test_results_compare_each_arm_with_the_control() -> None:
    # control: 4 members with 10, 10, 20, 20 points; b: 4 members with 30 each.
    control = ArmStats("control", 4, 8, 60, 10**2 * 2 + 20**2 * 2, 1)
    b = ArmStats("b", 4, 4, 120, 30**2 * 4, 2)
    out = arm_results([control, b])
    assert out[0]["control"] and out[0]["points_per_member"] == 15
    assert out[1]["points_per_member"] == 30 and out[1]["redemption_rate"] == 0.5
    vs = out[1]["vs_control"]
    assert vs["points_per_member"] == 15 and vs["redemption_rate"] == 0.25
    low, high = vs["points_per_member_ci95"]
    # control's sample variance is 100/3, b's 0: se = sqrt(100/3/4) = 2.887
    assert low == pytest.approx(15 - 1.96 * 2.88675, abs=0.01) and high > 15


def test_an_arm_with_too_few_members_has_no_interval() -> None:
    out = arm_results([ArmStats("control", 1, 1, 5, 25, 0), ArmStats("b", 0, 0, 0, 0, 0)])
    assert out[1]["vs_control"]["points_per_member_ci95"] is None
