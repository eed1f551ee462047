"""Reward stock arithmetic and the redemption saga's transitions."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import Code, PointsError
from domain.rewards import (
    TERMINAL_STATES,
    Redemption,
    Reward,
    RewardStock,
    SagaState,
    advance,
    confirm,
    release,
    reserve,
    restock,
)


def test_reserve_confirm_release_keep_the_arithmetic() -> None:
    stock = RewardStock("mug", stocked=10)
    reserve(stock, 3)
    assert (stock.available, stock.reserved) == (7, 3)
    confirm(stock, 2)
    assert (stock.available, stock.reserved, stock.redeemed) == (7, 1, 2)
    release(stock, 1)
    assert (stock.available, stock.reserved) == (8, 0)
    release(stock, 2, redeemed=True)  # an operator cancelled a completed redemption
    assert (stock.available, stock.redeemed) == (10, 0)
    restock(stock, 5)
    assert stock.available == 15


def test_out_of_stock_inactive_and_per_member_limit_change_nothing() -> None:
    stock = RewardStock("mug", stocked=2)
    reserve(stock, 2)
    with pytest.raises(PointsError) as err:
        reserve(stock, 1)
    assert err.value.code is Code.OUT_OF_STOCK
    limited = RewardStock("tee", stocked=None)
    with pytest.raises(PointsError) as err:
        reserve(limited, 2, member_redeemed=1, per_member_limit=2)
    assert err.value.code is Code.LIMIT_EXCEEDED
    limited.active = False
    with pytest.raises(PointsError) as err:
        reserve(limited, 1)
    assert err.value.code is Code.REWARD_INACTIVE
    assert (stock.reserved, limited.reserved) == (2, 0)


@pytest.mark.parametrize("quantity", [0, -1, 1.5, True, 10**7])
def test_bad_quantities_are_refused(quantity: object) -> None:
    with pytest.raises(PointsError) as err:
        reserve(RewardStock("mug", stocked=10), quantity)  # type: ignore[arg-type]
    assert err.value.code is Code.VALIDATION_ERROR


def test_unlimited_rewards_only_count_and_cannot_be_restocked() -> None:
    stock = RewardStock("voucher", stocked=None)
    reserve(stock, 1000)
    assert stock.available is None and stock.reserved == 1000
    with pytest.raises(PointsError):
        restock(stock, 1)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=50),
    st.lists(
        st.tuples(st.sampled_from(["reserve", "confirm", "release", "restock"]), st.integers(1, 5)),
        max_size=80,
    ),
)
def test_random_sequences_never_oversell(initial: int, ops: list[tuple[str, int]]) -> None:
    stock = RewardStock("r", stocked=initial)
    granted = 0
    for op, quantity in ops:
        if op == "reserve":
            try:
                reserve(stock, quantity)
                granted += quantity
            except PointsError as exc:
                assert exc.code is Code.OUT_OF_STOCK
                assert quantity > (stock.available or 0)
        elif op == "confirm" and stock.reserved >= quantity:
            confirm(stock, quantity)
        elif op == "release" and stock.reserved >= quantity:
            release(stock, quantity)
            granted -= quantity
        elif op == "restock":
            restock(stock, quantity)
        assert stock.reserved + stock.redeemed == granted
        assert stock.reserved + stock.redeemed <= stock.stocked
        assert stock.available == stock.stocked - granted


def test_saga_moves_forward_compensates_and_stops_at_terminal_states() -> None:
    state = SagaState.STARTED
    for step in (
        SagaState.STOCK_RESERVED,
        SagaState.POINTS_DEBITED,
        SagaState.PENDING_FULFILLMENT,
        SagaState.COMPLETED,
    ):
        state = advance(state, step)
        assert advance(state, state) is state  # a step re-run after a crash
    state = advance(state, SagaState.COMPENSATING)
    state = advance(state, SagaState.CANCELLED)
    for target in SagaState:
        if target is not state:
            with pytest.raises(PointsError):
                advance(state, target)
    assert {SagaState.FAILED, SagaState.CANCELLED, SagaState.COMPLETED} == TERMINAL_STATES
    with pytest.raises(PointsError):
        advance(SagaState.STARTED, SagaState.COMPLETED)  # no skipping the debit


# ----------------------------------------------------------------- redemptions on a reward


def _reward(stocked: int | None, limit: int | None) -> Reward:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, tzinfo=UTC)
    return Reward(
        "p", "r", "R", 10, RewardStock("r", stocked), limit, {"type": "none"}, 1, now, now
    )


@settings(max_examples=300, deadline=None)
@given(
    st.integers(min_value=0, max_value=12),
    st.one_of(st.none(), st.integers(min_value=1, max_value=3)),
    st.lists(
        st.tuples(
            st.sampled_from(["start", "complete", "fail", "cancel"]),
            st.integers(0, 4),  # member
            st.integers(1, 3),  # quantity, or which redemption
        ),
        max_size=60,
    ),
)
def test_random_sagas_keep_counters_holders_and_stock_consistent(
    stocked: int, limit: int | None, ops: list[tuple[str, int, int]]
) -> None:
    import uuid
    from datetime import UTC, datetime

    from domain.rewards import RELEASED, start_redemption
    from domain.rewards import move as saga_move

    now = datetime(2026, 1, 1, tzinfo=UTC)
    reward = _reward(stocked, limit)
    redemptions: list[Redemption] = []
    for kind, member, n in ops:
        if kind == "start":
            try:
                redemptions.append(
                    start_redemption(reward, uuid.uuid4(), f"m{member}", n, "k", "h", now)
                )
            except PointsError as exc:
                assert exc.code in (Code.OUT_OF_STOCK, Code.LIMIT_EXCEEDED)
        elif redemptions:
            r = redemptions[n % len(redemptions)]
            try:
                if kind == "complete":
                    saga_move(reward, r, SagaState.POINTS_DEBITED, now)
                    saga_move(reward, r, SagaState.COMPLETED, now)
                elif kind == "fail":
                    saga_move(reward, r, SagaState.FAILED, now)
                else:
                    saga_move(reward, r, SagaState.COMPENSATING, now)
                    saga_move(reward, r, SagaState.CANCELLED, now)
            except PointsError as exc:
                assert exc.code is Code.VALIDATION_ERROR  # a move the saga does not allow
        held = [r for r in redemptions if r.stock_state != RELEASED]
        stock = reward.stock
        assert stock.reserved == sum(r.quantity for r in held if r.stock_state == "reserved")
        assert stock.redeemed == sum(r.quantity for r in held if r.stock_state == "redeemed")
        assert stock.reserved + stock.redeemed <= stocked
        for m in range(5):
            units = sum(r.quantity for r in held if r.member_id == f"m{m}")
            assert reward.holders.get(f"m{m}", 0) == units
            if limit is not None:
                assert units <= limit
