"""The circuit breaker's state machine, with a made-up clock (seconds as plain floats)."""

import pytest

from actors.breaker import Breaker, BreakerState

pytestmark = pytest.mark.unit


def opened(failures: int = 3, cooldown_s: float = 2.0, at_s: float = 10.0) -> Breaker:
    breaker = Breaker(failures, cooldown_s)
    for _ in range(failures):
        breaker.failed(at_s)
    assert breaker.state is BreakerState.OPEN
    return breaker


def test_closed_allows_and_opens_only_after_failures_in_a_row() -> None:
    breaker = Breaker(failures_to_open=3, cooldown_s=2.0)
    breaker.failed(0.0)
    breaker.failed(0.1)
    breaker.succeeded()  # a success in between starts the count over
    breaker.failed(0.2)
    breaker.failed(0.3)
    assert breaker.state is BreakerState.CLOSED and breaker.allow(0.3)
    breaker.failed(0.4)
    assert breaker.state is BreakerState.OPEN and breaker.opened == 1


def test_open_fails_fast_for_the_cool_down() -> None:
    breaker = opened(at_s=10.0)
    assert breaker.is_open(10.0) and breaker.is_open(11.9)
    assert not breaker.allow(11.9)
    assert breaker.retry_after_s(11.0) == pytest.approx(1.0)
    assert breaker.state is BreakerState.OPEN  # asking changed nothing


def test_after_the_cool_down_exactly_one_probe_goes_through() -> None:
    breaker = opened(at_s=10.0)
    assert not breaker.is_open(12.0)
    assert breaker.allow(12.0)
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow(12.0) and not breaker.allow(20.0)  # the probe is out
    assert breaker.retry_after_s(12.0) == 0.0


def test_a_probe_that_succeeds_closes() -> None:
    breaker = opened(at_s=10.0)
    assert breaker.allow(12.5)
    breaker.succeeded()
    assert breaker.state is BreakerState.CLOSED and breaker.failures == 0
    assert breaker.allow(12.5)


def test_a_probe_that_fails_opens_for_another_cool_down() -> None:
    breaker = opened(at_s=10.0)
    assert breaker.allow(12.5)
    breaker.failed(12.6)
    assert breaker.state is BreakerState.OPEN and breaker.opened == 2
    assert not breaker.allow(14.5)
    assert breaker.allow(14.6)


def test_a_late_failure_while_open_changes_nothing() -> None:
    breaker = opened(at_s=10.0)
    breaker.failed(11.0)
    assert breaker.opened_at_s == 10.0 and breaker.allow(12.0)


@pytest.mark.parametrize(("failures", "cooldown_s"), [(0, 1.0), (1, 0.0)])
def test_bounds_are_checked(failures: int, cooldown_s: float) -> None:
    with pytest.raises(AssertionError):
        Breaker(failures, cooldown_s)
