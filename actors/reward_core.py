"""The logic a RewardShard actor runs, as a plain class (no Ray): reward stock and the
redemption saga.

Stock is owned the way accounts are: every operation on a reward goes through its owner's
queue, is applied in memory with no `await` between check and change, and is written in one
group commit fenced by the reward's version. A reward is loaded whole (its row, its
redemptions and restocks) the first time a batch needs it, so from then on every answer
that changes nothing (out of stock, per-member limit, inactive, a replayed key) is given
from memory: a sold-out reward costs neither PostgreSQL nor any account shard.

The redemption saga (states in `domain.rewards.SagaState`, persisted in `redemptions`):

    reserve stock -> debit points -> fulfil -> complete
                     |    ^   |            |
                     v    |   v            v
           pending_review |  failed <- compensating (refund the debit into its own lots,
          (points held;   |     ^                    release the units)
           units reserved)|     |
                     approve  reject (the held points went back; the units go back)

Above the program's review threshold the account shard holds the points instead of
spending them and answers `pending_review` with its review; the saga waits there (its units
reserved) until an operator decides: the decision is made and committed on the account
shard, and then this shard is told to drive the saga on (`Resume`); the recovery pass finds
decided reviews of waiting sagas too, should that message be lost.

Each step is idempotent: the debit and the refund carry keys derived from the redemption
id, so re-running a step after a crash finds the first result. Whoever finds a redemption
half-way (the request that started it, a replay of its key, the recovery pass) drives it
on; one driver per redemption at a time within a shard, and fencing across shards.

The queue and the batch loop are the engine the account shards use too
(`actors.group_commit`); this class keeps what a batch of reward operations does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from actors.breaker import Breaker
from actors.group_commit import QUEUED_MAX, RETRY_S, DatabaseUnreachable, GroupCommitter, answer
from actors.metrics import ShardMetrics
from actors.protocol import (
    AccountCommand,
    Cancel,
    Debit,
    Outcome,
    PutReward,
    Redeem,
    Refund,
    Resume,
    RewardCommand,
)
from actors.protocol import Restock as RestockCommand
from actors.topology import EverythingOwned, Ownership, moved_outcome
from db.errors import FencedError, unreachable
from db.reward_repo import (
    LoadedReward,
    RedemptionKeysExist,
    Restock,
    RewardKey,
    RewardRepo,
    RewardWrite,
)
from domain.errors import RETRYABLE_CODES, Code, PointsError
from domain.idempotency import request_hash
from domain.reviews import HELD_FOR_REVIEW, ReviewStatus
from domain.rewards import (
    TERMINAL_STATES,
    Redemption,
    Reward,
    RewardStock,
    SagaState,
    advance,
    move,
    redemption_view,
    restock,
    reward_view,
    set_available,
    start_redemption,
)

log = logging.getLogger("points.rewards")

BATCH_MAX = 2048
# Steps one driver takes before giving up for now (a step keeps failing: recovery retries).
SAGA_STEPS_MAX = 12
RECOVERY_INTERVAL_S = 10.0
# Account-side keys of a redemption's steps. A space cannot appear in a client's key.
DEBIT_KEY = "saga {} debit"
REFUND_KEY = "saga {} refund"

Submit = Callable[[AccountCommand], Awaitable[Outcome]]
Fulfil = Callable[[Redemption], Awaitable[tuple[bool, str]]]


def utcnow() -> datetime:
    return datetime.now(UTC)


# Failure codes of a redemption that answer as a refusal (nothing was taken, or what was
# taken is given back): the codes of the debit's own refusals. A redemption that failed
# later (its fulfilment, or its review rejected) answers `created` with its view, status
# "failed".
IN_FLIGHT_CODES = RETRYABLE_CODES | {Code.INTERNAL, Code.FULFILLMENT_FAILED, Code.REVIEW_REJECTED}


@dataclass(frozen=True, slots=True)
class _Load:
    """Internal: load a reward into memory (the saga driver and recovery need it)."""

    program_id: str
    reward_id: str


@dataclass(frozen=True, slots=True)
class _Move:
    """Internal: persist one saga step (and, with `then`, the next one in the same commit)."""

    program_id: str
    reward_id: str
    redemption_id: uuid.UUID
    target: SagaState
    then: SagaState | None = None
    debit_txn_id: uuid.UUID | None = None
    balance_after: int | None = None
    refund_txn_id: uuid.UUID | None = None
    compensate_to: SagaState | None = None
    failure_code: Code | None = None
    failure_reason: str | None = None
    failure_extra: dict[str, Any] | None = None
    review_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class _Started:
    """Internal answer to a redeem: the redemption to drive, and whether it existed."""

    redemption_id: uuid.UUID
    replayed: bool


_Command = RewardCommand | _Load | _Move
_Answer = Outcome | _Started


@dataclass(slots=True)
class _Op:
    cmd: _Command
    future: asyncio.Future[_Answer]

    @property
    def reward_key(self) -> RewardKey:
        return (self.cmd.program_id, self.cmd.reward_id)


@dataclass(slots=True)
class _State:
    """A loaded reward: its definition and stock, and every redemption it has."""

    reward: Reward
    redemptions: dict[uuid.UUID, Redemption] = field(default_factory=dict)
    keys: dict[tuple[str, str], uuid.UUID] = field(default_factory=dict)  # (member, key)
    restocks: dict[str, Restock] = field(default_factory=dict)


@dataclass(slots=True)
class _Work:
    write: RewardWrite = field(default_factory=RewardWrite)
    touched: dict[RewardKey, int] = field(default_factory=dict)  # version loaded
    new_redemptions: set[uuid.UUID] = field(default_factory=set)
    updated: dict[uuid.UUID, Redemption] = field(default_factory=dict)
    waiting: list[tuple[_Op, _Answer]] = field(default_factory=list)


class RewardCore:
    def __init__(
        self,
        repo: RewardRepo,
        accounts: Submit,
        *,
        slot_of: Callable[[str, str], int],
        ownership: Ownership | None = None,
        fulfil: Fulfil | None = None,
        clock: Callable[[], datetime] = utcnow,
        batch_max: int = BATCH_MAX,
        batch_window_s: float = 0.0,
        recovery_interval_s: float = RECOVERY_INTERVAL_S,
        queued_max: int = QUEUED_MAX,
        commit_retry_s: float = RETRY_S,
        breaker: Breaker | None = None,
        metrics: ShardMetrics | None = None,
    ) -> None:
        self.repo = repo
        self.reader = repo.reader()
        self._accounts = accounts
        self._slot_of = slot_of
        # The slots this shard owns (actors/topology.py); without one it owns every slot
        # unfenced, which only a test of one shard's logic may do.
        self.ownership = ownership or EverythingOwned("reward", slot_of)
        self.ownership.on_lost = self._forget_slots
        self.metrics = metrics or ShardMetrics(f"reward-{self.ownership.shard}")
        # Slots being handed off: new requests for them get `moved`, while the sagas in
        # flight on them may still take their steps (until `release` gives up waiting).
        self._draining: set[int] = set()
        self._driver_keys: dict[uuid.UUID, RewardKey] = {}
        self._fulfil = fulfil
        self._recovery_interval_s = recovery_interval_s
        self._rewards: dict[RewardKey, _State] = {}
        self._programs: set[str] = set()
        self._commits: GroupCommitter[_Op] = GroupCommitter(
            self._process,
            batch_max=batch_max,
            batch_window_s=batch_window_s,
            clock=clock,
            name="reward shard",
            log=log,
            queued_max=queued_max,
            retry_s=commit_retry_s,
            breaker=breaker,
        )
        self._recovery_task: asyncio.Task[None] | None = None
        self._drivers: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._fulfilling: dict[uuid.UUID, asyncio.Task[None]] = {}
        self.stats: dict[str, float] = {
            "batches": 0,
            "ops": 0,
            "commit_failures": 0,
            "fenced": 0,
            "recovered": 0,
            "answered_from_memory": 0,
            # Round trips to PostgreSQL made by the batch loop (loads and commits).
            "db_loads": 0,
            "db_commits": 0,
            "moved": 0,
            "replays": 0,
        }

    # ----------------------------------------------------------------- public API

    async def submit(self, command: RewardCommand) -> Outcome:
        """Apply one reward operation; its outcome once committed (for a redemption: once
        the saga went as far as it goes without waiting on a third party)."""
        if isinstance(command, Redeem):
            return await self.redeem(command)
        if isinstance(command, Cancel):
            return await self.cancel(command)
        if isinstance(command, Resume):
            return await self.resume(command)
        assert isinstance(command, PutReward | RestockCommand), type(command)
        answer = await self._submit(command)
        assert isinstance(answer, Outcome)
        return answer

    async def redeem(self, command: Redeem) -> Outcome:
        """Start (or replay) a redemption and drive it as far as it goes without waiting on a
        third party."""
        started = await self._submit(command)
        if isinstance(started, Outcome):
            return started
        rid = started.redemption_id
        key = (command.program_id, command.reward_id)
        redemption = None
        for _ in range(3):
            await self.drive(key, rid)
            redemption = self._redemption(key, rid)
            # A fulfilment that failed at once may already be compensating: wait for it.
            if redemption is None or rid not in self._drivers:
                break
        if redemption is None and self._lost(key):
            # The reward's slot moved while the saga ran: its new owner drives it on when
            # the router resends this request (a replay of the same key).
            return self._moved_outcome(key)
        if redemption is None:  # evicted by a failed commit meanwhile
            return Outcome.refused(
                Code.UNAVAILABLE, "redemption in progress; retry with the same key"
            )
        return self.answer_for(redemption).as_replay(started.replayed)

    async def cancel(self, command: Cancel) -> Outcome:
        """Operator cancellation: refund the points, give the units back. Idempotent."""
        result = await self._submit(command)
        assert isinstance(result, Outcome)
        if not result.succeeded:
            return result
        key = (command.program_id, command.reward_id)
        rid = command.redemption_id
        await self.drive(key, rid)
        redemption = self._redemption(key, rid)
        if redemption is None and self._lost(key):
            return self._moved_outcome(key)
        if redemption is None or redemption.status is not SagaState.CANCELLED:
            return Outcome.refused(Code.UNAVAILABLE, "cancellation in progress; retry")
        return Outcome.done(redemption_view(redemption))

    async def resume(self, command: Resume) -> Outcome:
        """Drive a redemption on now (its review was decided); its outcome as a replay of
        the redemption would answer it."""
        key = (command.program_id, command.reward_id)
        rid = command.redemption_id
        if self._lost(key) or self._slot_of(*key) in self._draining:
            return self._moved_outcome(key)
        await self.drive(key, rid)
        redemption = self._redemption(key, rid)
        if redemption is None and self._lost(key):
            return self._moved_outcome(key)
        if redemption is None:
            return Outcome.refused(Code.NOT_FOUND, f"redemption {rid} not found")
        return self.answer_for(redemption)

    def _forget_slots(self, lost: set[int]) -> None:
        """Slots a refresh of the map found gone: what memory holds for them is stale."""
        log.warning("lost %d slots to a move this shard was not told of", len(lost))
        for key in [k for k in self._rewards if self._slot_of(*k) in lost]:
            del self._rewards[key]

    def _lost(self, key: RewardKey) -> bool:
        return self.ownership.epoch(self._slot_of(*key)) is None

    def _moved_outcome(self, key: RewardKey) -> Outcome:
        self.stats["moved"] += 1
        return moved_outcome(self._slot_of(*key))

    async def release(self, slots: list[int], *, sagas_s: float, settle_s: float) -> dict[str, int]:
        """Hand slots off (actors/topology.py): new requests for them get `moved` at once;
        the sagas in flight on them get up to `sagas_s` to finish their steps here; then the
        slots are forgotten, the batch in flight settles and their rewards are dropped. A
        saga still running after that is refused its next step (fenced, if it got that
        far) and its new owner's recovery pass, or the router resending the request that
        started it, drives it on."""
        wanted = set(slots)
        self._draining |= wanted
        try:
            # Sagas and webhook deliveries in flight on these slots (a delivery started
            # here must end here, or the new owner's recovery would send it again).
            waiting = [
                task
                for rid, task in [*self._drivers.items(), *self._fulfilling.items()]
                if rid in self._driver_keys and self._slot_of(*self._driver_keys[rid]) in wanted
            ]
            if waiting:
                await asyncio.wait(waiting, timeout=sagas_s)
            released = self.ownership.release(wanted)
            settled = await self._commits.settle(settle_s)
            dropped = [key for key in self._rewards if self._slot_of(*key) in wanted]
            for key in dropped:
                del self._rewards[key]
        finally:
            self._draining -= wanted
        return {
            "released": len(released),
            "evicted": len(dropped),
            "settled": int(settled),
            "sagas_waited": len(waiting),
        }

    @staticmethod
    def answer_for(redemption: Redemption) -> Outcome:
        """The outcome of a redemption in its current state (first answer and replays)."""
        view = redemption_view(redemption)
        if redemption.status is SagaState.FAILED and redemption.failure_code is not None:
            code = Code._value2member_map_.get(redemption.failure_code)
            if isinstance(code, Code) and code not in IN_FLIGHT_CODES:
                return Outcome.refused(
                    code,
                    redemption.failure_reason or str(code),
                    redemption=view,
                    **(redemption.failure_extra or {}),
                )
            return Outcome.created(view)
        if redemption.status in (
            SagaState.COMPLETED,
            SagaState.PENDING_REVIEW,
            SagaState.PENDING_FULFILLMENT,
            SagaState.CANCELLED,
            SagaState.FAILED,
        ):
            return Outcome.created(view)
        return Outcome.refused(
            Code.UNAVAILABLE,
            "redemption in progress; retry with the same key",
            redemption=view,
        )

    def export_metrics(self) -> None:
        """Gauges and counter growth to Ray's metrics (the actor calls it periodically)."""
        self.metrics.sync(
            self._commits.queued,
            len(self._rewards),
            self._commits.breaker.state.value,
            {**self.stats, "shed": self._commits.shed},
        )

    async def ping(self) -> dict[str, Any]:
        self._ensure_loop()
        await self.reader.ping()
        return {
            "rewards_loaded": len(self._rewards),
            "queued": self._commits.queued,
            "failed": self._commits.failed,
            "queued_peak": self._commits.queued_peak,
            "shed": self._commits.shed,
            "reruns": self._commits.reruns,
            "breaker": self._commits.breaker.state.value,
            "breaker_opened": self._commits.breaker.opened,
            "sagas_in_flight": len(self._drivers),
            "fulfilling": len(self._fulfilling),
            **self.stats,
        }

    async def close(self) -> None:
        self._commits.close()
        for task in (self._recovery_task, *self._fulfilling.values()):
            if task is not None:
                task.cancel()
        await self.repo.close()
        await self.reader.close()

    # ----------------------------------------------------------------- saga driver

    async def drive(self, key: RewardKey, rid: uuid.UUID) -> None:
        """Drive a redemption on until it is terminal, waits on fulfilment, or a step is
        unavailable (then recovery or a replay resumes it). One driver per redemption."""
        task = self._drivers.get(rid)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._run_saga(key, rid))
            self._drivers[rid] = task
            self._driver_keys[rid] = key

            def done(_task: asyncio.Task[None]) -> None:
                self._drivers.pop(rid, None)
                if rid not in self._fulfilling:
                    self._driver_keys.pop(rid, None)

            task.add_done_callback(done)
        await asyncio.shield(task)

    async def _run_saga(self, key: RewardKey, rid: uuid.UUID) -> None:
        try:
            for _step in range(SAGA_STEPS_MAX):
                redemption = await self._load_redemption(key, rid)
                if redemption is None or redemption.status in TERMINAL_STATES:
                    return
                if not await self._step(key, redemption):
                    return
        except Exception:
            log.exception("saga %s stopped; recovery will resume it", rid)

    async def _step(self, key: RewardKey, r: Redemption) -> bool:
        """One step; True when the saga moved and should go on."""
        status = r.status
        if status is SagaState.STOCK_RESERVED:
            answer = await self._accounts(
                Debit(
                    program_id=r.program_id,
                    member_id=r.member_id,
                    points=r.points,
                    reason=f"redemption {r.redemption_id} of {r.reward_id}",
                    key=DEBIT_KEY.format(r.redemption_id),
                    request_hash=request_hash("saga-debit", {"id": str(r.redemption_id)}),
                    redemption_id=r.redemption_id,
                    reward_id=r.reward_id,
                )
            )
            if answer.code is Code.CREATED and answer.body.get("status") == HELD_FOR_REVIEW:
                # Held for review: the units stay reserved until an operator decides.
                return await self._move(
                    key,
                    r,
                    SagaState.PENDING_REVIEW,
                    review_id=uuid.UUID(str(answer.body["review_id"])),
                )
            if answer.code is Code.CREATED:
                # Debited, and with no fulfilment to wait for, completed: one commit.
                after = (
                    SagaState.COMPLETED
                    if r.fulfillment.get("type", "none") == "none"
                    else SagaState.PENDING_FULFILLMENT
                )
                return await self._move(
                    key,
                    r,
                    SagaState.POINTS_DEBITED,
                    then=after,
                    debit_txn_id=uuid.UUID(str(answer.body["transaction_id"])),
                    balance_after=answer.body["balance_after"],
                )
            if answer.code in RETRYABLE_CODES or answer.code is Code.INTERNAL:
                return False
            # Refused (not enough points, a velocity limit, unknown member): nothing was
            # taken. The refusal's extra fields (the limit it names) are answered again.
            extra = {k: v for k, v in answer.body.items() if k != "detail"}
            return await self._move(
                key,
                r,
                SagaState.FAILED,
                failure_code=answer.code,
                failure_reason=answer.detail,
                failure_extra=extra or None,
            )
        if status is SagaState.PENDING_REVIEW:
            return await self._after_review(key, r)
        if status is SagaState.POINTS_DEBITED:
            if r.fulfillment.get("type", "none") == "none":
                return await self._move(key, r, SagaState.COMPLETED)
            return await self._move(key, r, SagaState.PENDING_FULFILLMENT)
        if status is SagaState.PENDING_FULFILLMENT:
            self._start_fulfilment(key, r)
            return False  # the caller is told pending_fulfillment; the webhook goes on
        if status is SagaState.COMPENSATING:
            refund_txn_id = None
            if r.debit_txn_id is not None and r.refund_txn_id is None:
                answer = await self._accounts(
                    Refund(
                        program_id=r.program_id,
                        member_id=r.member_id,
                        points=r.points,
                        reason=f"refund of redemption {r.redemption_id}",
                        key=REFUND_KEY.format(r.redemption_id),
                        request_hash=request_hash("saga-refund", {"id": str(r.redemption_id)}),
                        refund_of=r.debit_txn_id,
                    )
                )
                if answer.code is not Code.CREATED:
                    log.warning("refund of %s: %s", r.redemption_id, answer)
                    return False
                refund_txn_id = uuid.UUID(str(answer.body["transaction_id"]))
            target = r.compensate_to or SagaState.FAILED
            return await self._move(key, r, target, refund_txn_id=refund_txn_id)
        raise AssertionError(f"no step from {status}")

    async def _after_review(self, key: RewardKey, r: Redemption) -> bool:
        """Pending review: go on once the review is decided (committed by the account
        shard). Approved: the held points were spent, on to fulfilment. Rejected: they went
        back into the member's lots; the units go back too."""
        assert r.review_id is not None
        decision = (await self.reader.review_decisions([r.review_id])).get(r.review_id)
        if decision is None or decision.status is ReviewStatus.PENDING:
            return False  # waits for an operator
        if decision.status is ReviewStatus.APPROVED:
            assert decision.decision_txn_id is not None
            after = (
                SagaState.COMPLETED
                if r.fulfillment.get("type", "none") == "none"
                else SagaState.PENDING_FULFILLMENT
            )
            return await self._move(
                key,
                r,
                SagaState.POINTS_DEBITED,
                then=after,
                debit_txn_id=decision.decision_txn_id,
                balance_after=decision.balance_after,
            )
        return await self._move(
            key,
            r,
            SagaState.FAILED,
            failure_code=Code.REVIEW_REJECTED,
            failure_reason=(decision.decision_reason or "rejected")[:500],
        )

    async def _move(
        self,
        key: RewardKey,
        r: Redemption,
        target: SagaState,
        then: SagaState | None = None,
        **fields: Any,
    ) -> bool:
        """Persist a step (and, with `then`, the next one in the same commit)."""
        move_step = _Move(key[0], key[1], r.redemption_id, target, then, **fields)
        result = await self._submit(move_step)
        assert isinstance(result, Outcome)
        return result.succeeded

    def _start_fulfilment(self, key: RewardKey, r: Redemption) -> None:
        rid = r.redemption_id
        if rid in self._fulfilling:
            return
        task = asyncio.get_running_loop().create_task(self._fulfil_and_settle(key, rid))
        self._fulfilling[rid] = task
        self._driver_keys.setdefault(rid, key)

        def done(_task: asyncio.Task[None]) -> None:
            self._fulfilling.pop(rid, None)
            if rid not in self._drivers:
                self._driver_keys.pop(rid, None)

        task.add_done_callback(done)

    async def _fulfil_and_settle(self, key: RewardKey, rid: uuid.UUID) -> None:
        try:
            redemption = await self._load_redemption(key, rid)
            if redemption is None or redemption.status is not SagaState.PENDING_FULFILLMENT:
                return
            if self._slot_of(*key) in self._draining or self._lost(key):
                # The slot is being handed off: its new owner's recovery sends the webhook
                # (two owners sending at once would deliver it twice, concurrently).
                return
            if self._fulfil is None:
                ok, reason = False, "no fulfilment sender configured"
            else:
                ok, reason = await self._fulfil(redemption)
            redemption = await self._load_redemption(key, rid)
            if redemption is None or redemption.status is not SagaState.PENDING_FULFILLMENT:
                return
            if ok:
                await self._move(key, redemption, SagaState.COMPLETED)
            else:
                moved = await self._move(
                    key,
                    redemption,
                    SagaState.COMPENSATING,
                    compensate_to=SagaState.FAILED,
                    failure_code=Code.FULFILLMENT_FAILED,
                    failure_reason=reason[:500],
                )
                if moved:
                    await self.drive(key, rid)
        except Exception:
            log.exception("fulfilment of %s stopped; recovery will resume it", rid)

    # ----------------------------------------------------------------- recovery

    async def recover_once(self) -> int:
        """Find redemptions left half-way in this shard's slots and drive each on."""
        # Read the map each pass: a move whose coordinator died before telling this shard
        # of its new slots would leave their sagas unresumed. Not while handing slots off
        # (the map already says they are moving: reading it would cut their drain short).
        if self._draining:
            await self.ownership.ensure([])
        else:
            await self.ownership.refresh(force=True)
        keys = await self.reader.open_reward_keys(self.ownership.slots)
        resumed = 0
        for key in keys:
            await self._submit(_Load(key[0], key[1]))
            state = self._rewards.get(key)
            if state is None:
                continue
            decided = await self._decided_reviews(state)
            for rid, redemption in list(state.redemptions.items()):
                if redemption.status in TERMINAL_STATES or rid in self._drivers:
                    continue
                if redemption.status is SagaState.PENDING_REVIEW and rid not in decided:
                    continue  # still waits for an operator
                if redemption.status is SagaState.PENDING_FULFILLMENT:
                    if rid not in self._fulfilling:
                        self._start_fulfilment(key, redemption)
                        resumed += 1
                    continue
                resumed += 1
                asyncio.get_running_loop().create_task(self.drive(key, rid))
        self.stats["recovered"] += resumed
        return resumed

    async def _decided_reviews(self, state: _State) -> set[uuid.UUID]:
        """The redemptions of a reward waiting on a review that is decided (one query)."""
        waiting = {
            r.review_id: rid
            for rid, r in state.redemptions.items()
            if r.status is SagaState.PENDING_REVIEW and r.review_id is not None
        }
        if not waiting:
            return set()
        decisions = await self.reader.review_decisions(list(waiting))
        return {
            waiting[review_id]
            for review_id, decision in decisions.items()
            if decision.status is not ReviewStatus.PENDING
        }

    async def _recovery_loop(self) -> None:
        while True:
            try:
                resumed = await self.recover_once()
                if resumed:
                    log.info("recovery resumed %d redemptions", resumed)
            except Exception as exc:
                log.warning("recovery pass failed: %r", exc)
            await asyncio.sleep(self._recovery_interval_s)

    # ----------------------------------------------------------------- batch loop

    async def _submit(self, command: _Command) -> _Answer:
        future: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        # A saga's own steps finish work already accepted: never shed for a full queue.
        self._commits.add(_Op(command, future), bounded=not isinstance(command, _Load | _Move))
        self._ensure_recovery()
        return await future

    def _ensure_loop(self) -> None:
        self._commits.ensure_running()
        self._ensure_recovery()

    def _ensure_recovery(self) -> None:
        if self._recovery_interval_s > 0 and (
            self._recovery_task is None or self._recovery_task.done()
        ):
            self._recovery_task = asyncio.get_running_loop().create_task(self._recovery_loop())

    async def _load_redemption(self, key: RewardKey, rid: uuid.UUID) -> Redemption | None:
        redemption = self._redemption(key, rid)
        if redemption is None and key not in self._rewards:
            await self._submit(_Load(key[0], key[1]))
            redemption = self._redemption(key, rid)
        return redemption

    def _redemption(self, key: RewardKey, rid: uuid.UUID) -> Redemption | None:
        state = self._rewards.get(key)
        return state.redemptions.get(rid) if state else None

    def _moved(self, op: _Op) -> bool:
        """Answer `moved` to an operation whose slot this shard does not own (or is handing
        off: then only the steps of sagas in flight still run here)."""
        slot = self._slot_of(*op.reward_key)
        if self.ownership.epoch(slot) is not None and (
            slot not in self._draining or isinstance(op.cmd, _Load | _Move)
        ):
            return False
        self.stats["moved"] += 1
        answer(op, moved_outcome(slot))
        return True

    async def _process(self, batch: list[_Op]) -> None:
        try:
            batch = await self.ownership.keep_owned(
                batch, lambda op: self._slot_of(*op.reward_key), self._moved
            )
        except Exception as exc:
            if unreachable(exc):
                raise DatabaseUnreachable(f"reading the slot map: {exc!r}"[:200]) from exc
            self._commits.fail(batch, f"database unavailable: {type(exc).__name__}")
            return
        if not batch:
            return
        try:
            await self._prefetch(batch)
        except Exception as exc:
            await self.repo.reset()
            if unreachable(exc):
                raise DatabaseUnreachable(f"prefetch: {exc!r}"[:200]) from exc
            self._commits.fail(batch, f"database unavailable: {type(exc).__name__}")
            return
        now = self._commits.now()
        work = _Work()
        for op in batch:  # check and change, no await in between
            if self._moved(op):  # released while the batch was being prefetched
                continue
            try:
                self._apply(op, work, now)
            except PointsError as exc:
                answer(op, Outcome.refused(exc.code, exc.detail))
                self.stats["answered_from_memory"] += 1
        for rkey, version in work.touched.items():
            reward = self._rewards[rkey].reward
            reward.updated_at = now
            if version == 0:
                work.write.new_rewards.append(reward)
            else:
                work.write.updated_rewards.append((reward, version))
        if work.touched:
            work.write.fence = self.ownership.fence({self._slot_of(*rkey) for rkey in work.touched})
        work.write.updated_redemptions = [
            r for rid, r in work.updated.items() if rid not in work.new_redemptions
        ]
        committing_at = time.perf_counter()
        try:
            if not work.write.empty:
                self.stats["db_commits"] += 1
            await self.repo.commit_rewards(work.write, now)
        except RedemptionKeysExist as exc:
            # A key used before for another reward's redemption: a conflict. Everything
            # else in the batch runs again from a fresh load.
            taken = set(exc.keys)
            self._evict(work)
            retry = []
            for op, _ in work.waiting:
                r = op.cmd
                if isinstance(r, Redeem) and (r.program_id, r.member_id, r.key) in taken:
                    answer(
                        op,
                        Outcome.refused(
                            Code.IDEMPOTENCY_CONFLICT,
                            "this Idempotency-Key was already used for another redemption",
                        ),
                    )
                else:
                    retry.append(op)
            self._commits.requeue_front(retry)
            return
        except Exception as exc:
            await self._commits.commit_failed(exc, self.repo.reset, self.stats)
            self._evict(work)
            if isinstance(exc, FencedError):
                # Another shard may own some of our slots now (a move that did not reach
                # us): read the map again; the rewards of this batch are dropped already.
                with contextlib.suppress(Exception):
                    await self.ownership.refresh(force=True)
            elif unreachable(exc):
                # Committed or not, nobody was answered: the engine runs the batch again
                # from a fresh load (a committed first run is found by its keys).
                raise DatabaseUnreachable(f"commit: {exc!r}"[:200]) from exc
            self._commits.fail([op for op, _ in work.waiting], f"commit failed, retry: {exc}"[:300])
            return
        for rkey, version in work.touched.items():
            state = self._rewards.get(rkey)
            if state is None:  # dropped by a release while this batch committed
                continue
            if self._lost(rkey):  # released meanwhile: what memory holds may go stale
                del self._rewards[rkey]
                continue
            state.reward.version = version + 1
            available = state.reward.stock.available
            if available is not None:
                self.metrics.stock(rkey[0], rkey[1], available)
        self.stats["batches"] += 1
        self.stats["ops"] += len(batch)
        if not work.write.empty:
            self.metrics.committed(len(batch), time.perf_counter() - committing_at)
        self.metrics.redemptions(
            [(r.program_id, str(r.status)) for r, _ in work.write.new_redemptions]
            + [(r.program_id, str(r.status)) for r in work.write.updated_redemptions]
        )
        for op, result in work.waiting:
            answer(op, result)

    def _evict(self, work: _Work) -> None:
        """The batch did not commit: what memory holds for its rewards is ahead of the
        database. Drop it; the next batch reloads."""
        for rkey in work.touched:
            self._rewards.pop(rkey, None)

    async def _prefetch(self, batch: list[_Op]) -> None:
        programs = list({op.cmd.program_id for op in batch} - self._programs)
        if programs:
            self.stats["db_loads"] += 1
            self._programs |= await self.repo.existing_programs(programs)
        missing = list({op.reward_key for op in batch} - self._rewards.keys())
        if not missing:
            return
        self.stats["db_loads"] += 1
        loaded = await self.repo.load_rewards(missing)
        for rkey, item in loaded.items():
            self._rewards[rkey] = self._install(item)

    @staticmethod
    def _install(item: LoadedReward) -> _State:
        state = _State(item.reward, restocks=item.restocks)
        holders: dict[str, int] = {}
        for r in item.redemptions:
            state.redemptions[r.redemption_id] = r
            state.keys[(r.member_id, r.key)] = r.redemption_id
            if r.stock_state != "released":
                holders[r.member_id] = holders.get(r.member_id, 0) + r.quantity
        item.reward.holders = holders
        item.reward.stock.check()
        return state

    # ----------------------------------------------------------------- apply (no await)

    def _touch(self, work: _Work, state: _State) -> None:
        reward = state.reward
        work.touched.setdefault((reward.program_id, reward.reward_id), reward.version)

    def _apply(self, op: _Op, work: _Work, now: datetime) -> None:
        """One operation, by its command's type (the tables below the class)."""
        cmd = op.cmd
        if cmd.program_id not in self._programs:
            raise PointsError(Code.NOT_FOUND, f"program {cmd.program_id} not found")
        state = self._rewards.get(op.reward_key)
        may_create = _ON_ANY_REWARD.get(type(cmd))
        if may_create is not None:
            may_create(self, op, cmd, state, work, now)
            return
        if state is None:
            raise PointsError(Code.NOT_FOUND, f"reward {cmd.reward_id} not found")
        _ON_LOADED_REWARD[type(cmd)](self, op, cmd, state, work, now)

    def _apply_load(
        self, op: _Op, req: _Load, state: _State | None, work: _Work, now: datetime
    ) -> None:
        answer(op, Outcome.done())

    def _apply_put(
        self, op: _Op, req: PutReward, state: _State | None, work: _Work, now: datetime
    ) -> None:
        if state is None:
            stock = RewardStock(req.reward_id, None, 0, 0, req.active)
            set_available(stock, req.stock)
            reward = Reward(
                req.program_id,
                req.reward_id,
                req.name,
                req.cost_points,
                stock,
                req.per_member_limit,
                req.fulfillment,
                0,
                now,
                now,
            )
            state = _State(reward)
            self._rewards[op.reward_key] = state
            code = Code.CREATED
        else:
            reward = state.reward
            stocked = req.stock
            if stocked is not None and stocked < reward.stock.reserved + reward.stock.redeemed:
                raise PointsError(
                    Code.INVALID_STATE,
                    f"stock {stocked} is below the {reward.stock.reserved} units reserved and "
                    f"{reward.stock.redeemed} redeemed",
                )
            reward.name = req.name
            reward.cost_points = req.cost_points
            reward.per_member_limit = req.per_member_limit
            reward.fulfillment = req.fulfillment
            reward.stock.active = req.active
            reward.stock.stocked = stocked
            reward.stock.check()
            code = Code.OK
        self._touch(work, state)
        work.waiting.append((op, Outcome(code, reward_view(state.reward))))

    def _apply_restock(
        self, op: _Op, req: RestockCommand, state: _State, work: _Work, now: datetime
    ) -> None:
        done = state.restocks.get(req.key)
        if done is not None:
            if done.request_hash != req.request_hash:
                raise PointsError(
                    Code.IDEMPOTENCY_CONFLICT,
                    "this Idempotency-Key was already used with a different request body",
                )
            answer(op, Outcome.created(_restock_view(state.reward, done)).as_replay())
            return
        restock(state.reward.stock, req.quantity)
        assert state.reward.stock.stocked is not None
        record = Restock(req.key, req.request_hash, req.quantity, state.reward.stock.stocked, now)
        state.restocks[record.key] = record
        work.write.restocks.append((state.reward, record))
        self._touch(work, state)
        work.waiting.append((op, Outcome.created(_restock_view(state.reward, record))))

    def _apply_redeem(
        self, op: _Op, req: Redeem, state: _State, work: _Work, now: datetime
    ) -> None:
        rid = state.keys.get((req.member_id, req.key))
        if rid is not None:
            if state.redemptions[rid].request_hash != req.request_hash:
                raise PointsError(
                    Code.IDEMPOTENCY_CONFLICT,
                    "this Idempotency-Key was already used with a different request body",
                )
            self.stats["replays"] += 1
            if rid in work.new_redemptions:
                # Started earlier in this very batch, not committed yet: the saga must not
                # move before it is (a failed commit evicts it); answer after the commit.
                work.waiting.append((op, _Started(rid, replayed=True)))
            else:
                answer(op, _Started(rid, replayed=True))
            return
        redemption = start_redemption(
            state.reward,
            uuid.uuid4(),
            req.member_id,
            req.quantity,
            req.key,
            req.request_hash,
            now,
        )
        rid = redemption.redemption_id
        state.redemptions[rid] = redemption
        state.keys[(redemption.member_id, redemption.key)] = rid
        slot = self._slot_of(redemption.program_id, redemption.reward_id)
        work.write.new_redemptions.append((redemption, slot))
        work.new_redemptions.add(rid)
        self._touch(work, state)
        work.waiting.append((op, _Started(rid, replayed=False)))

    def _apply_move(self, op: _Op, req: _Move, state: _State, work: _Work, now: datetime) -> None:
        redemption = state.redemptions.get(req.redemption_id)
        if redemption is None:
            raise PointsError(Code.NOT_FOUND, f"redemption {req.redemption_id} not found")
        if redemption.status == req.target:
            answer(op, Outcome.done())  # a step re-run: already there
            return
        if req.then is not None:
            advance(req.target, req.then)  # check both moves before changing anything
        move(state.reward, redemption, req.target, now)
        if req.then is not None:
            move(state.reward, redemption, req.then, now)
        if req.debit_txn_id is not None:
            redemption.debit_txn_id = req.debit_txn_id
            redemption.balance_after = req.balance_after
        if req.refund_txn_id is not None:
            redemption.refund_txn_id = req.refund_txn_id
        if req.compensate_to is not None:
            redemption.compensate_to = req.compensate_to
        if req.failure_code is not None:
            redemption.failure_code = req.failure_code.value
            redemption.failure_reason = req.failure_reason
            redemption.failure_extra = req.failure_extra
        if req.review_id is not None:
            redemption.review_id = req.review_id
        work.updated[redemption.redemption_id] = redemption
        self._touch(work, state)
        work.waiting.append((op, Outcome.done()))

    def _apply_cancel(
        self, op: _Op, req: Cancel, state: _State, work: _Work, now: datetime
    ) -> None:
        rid = req.redemption_id
        redemption = state.redemptions.get(rid)
        if redemption is None:
            raise PointsError(Code.NOT_FOUND, f"redemption {rid} not found")
        status = redemption.status
        if status is SagaState.CANCELLED or (
            status is SagaState.COMPENSATING and redemption.compensate_to is SagaState.CANCELLED
        ):
            answer(op, Outcome.done())
            return
        if status is SagaState.FAILED:
            raise PointsError(
                Code.INVALID_STATE, "a failed redemption was already compensated; nothing to cancel"
            )
        if status is SagaState.PENDING_REVIEW:
            raise PointsError(
                Code.INVALID_STATE,
                f"redemption is {status}: approve or reject review {redemption.review_id}",
            )
        if status not in (SagaState.COMPLETED, SagaState.PENDING_FULFILLMENT):
            raise PointsError(Code.INVALID_STATE, f"redemption is {status}; retry shortly")
        move(state.reward, redemption, SagaState.COMPENSATING, now)
        redemption.compensate_to = SagaState.CANCELLED
        work.updated[rid] = redemption
        self._touch(work, state)
        work.waiting.append((op, Outcome.done()))


# Operations by command type: those that may find no reward loaded (a load, a new reward),
# and those on a reward that exists.
_ON_ANY_REWARD: dict[
    type[Any], Callable[[RewardCore, _Op, Any, _State | None, _Work, datetime], None]
] = {
    _Load: RewardCore._apply_load,
    PutReward: RewardCore._apply_put,
}
_ON_LOADED_REWARD: dict[
    type[Any], Callable[[RewardCore, _Op, Any, _State, _Work, datetime], None]
] = {
    RestockCommand: RewardCore._apply_restock,
    Redeem: RewardCore._apply_redeem,
    _Move: RewardCore._apply_move,
    Cancel: RewardCore._apply_cancel,
}


def _restock_view(reward: Reward, record: Restock) -> dict[str, Any]:
    return {
        "program_id": reward.program_id,
        "reward_id": reward.reward_id,
        "quantity": record.quantity,
        "stocked_after": record.stocked_after,
        "created_at": record.created_at.isoformat().replace("+00:00", "Z"),
    }
