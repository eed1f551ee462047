"""The logic an AccountShard actor runs, as a plain class (no Ray): testable on its own.

Request path inside a shard:

1. `submit` puts the operation on the queue and awaits its future.
2. The batch loop takes everything queued (up to `batch_max`), prefetches what it needs from
   PostgreSQL (accounts not cached, programs not known, idempotency keys not cached) in a few
   set-based queries, then applies every operation to in-memory *copies* of the accounts with
   no `await` between checking and changing: operations on an account are strictly
   serialized without any lock.
3. The batch is written in one PostgreSQL transaction (group commit), fenced by account
   versions. Only after COMMIT are the copies swapped into the cache and the callers
   answered; reads use the cache, so they never show an uncommitted effect.
4. If the commit fails, every operation of the batch gets a retryable `unavailable` answer
   and the touched accounts are evicted, to be reloaded from PostgreSQL next time.

One batch is in flight at a time; operations arriving meanwhile form the next batch, so the
batch size grows with load by itself (natural group commit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from actors.protocol import AccountCommand, Expire, OpKind, Outcome, Retier
from db.ledger_repo import (
    AccountKey,
    BatchWrite,
    EventRow,
    EventsTaken,
    FencedError,
    IdemKey,
    KeysExist,
    LedgerRepo,
    ProgramConfig,
    RefundSource,
    StoredEvent,
)
from domain.earning import member_context, record, tier_view, update_tier
from domain.errors import Code, PointsError
from domain.idempotency import StoredResponse, replay
from domain.ids import uuid7
from domain.ledger import (
    CREDIT,
    DEBIT,
    HELD_UNTIL_CONFIRMED,
    REFUND,
    Account,
    account_view,
    activate,
    available,
    confirm,
    credit,
    debit,
    expire,
    new_account,
    refund,
    reverse,
    transaction_view,
)
from domain.limits import EXPIRING_SOON_DAYS, LOTS_IN_VIEW_MAX
from domain.numbers import parse_decimal
from domain.policy import Policy, available_at, expires_at, local_day, parse_policy, zone
from domain.rules import (
    Evaluation,
    EventIn,
    RuleSet,
    compile_rule_set,
    evaluate,
    explanation_json,
)

log = logging.getLogger("points.shard")

BATCH_MAX = 1024
ACCOUNTS_CACHED_MAX = 200_000
KEYS_CACHED_MAX = 200_000
# How long to wait for more operations before starting a batch when the queue is not
# already full. 0 = natural batching only (operations queue while a commit is in flight).
BATCH_WINDOW_S = 0.0
# A batch re-runs after finding keys already committed; a second re-run is already unusual.
KEY_RETRIES_MAX = 3
# Operations of earning programs (besides CREDIT, DEBIT, REFUND).
EVENT = OpKind.EVENT
REVERSE = OpKind.REVERSE
EXPIRE = OpKind.EXPIRE
CONFIRM = OpKind.CONFIRM
# Re-decide a member's tier without an event (earnings leave a rolling window, grace ends).
RETIER = OpKind.RETIER
TIER_ACCOUNTS_PER_PASS = 2000
# A program's policy and rule sets are re-read at most this old (a PUT also tells shards).
PROGRAM_CONFIG_TTL_S = 2.0
# The expiry job: how many accounts one pass looks at.
EXPIRY_ACCOUNTS_PER_PASS = 500


@dataclass(slots=True)
class CompiledConfig:
    """A program's policy and compiled rule sets (newest effective first)."""

    policy: Policy
    policy_version: int
    rule_sets: list[tuple[datetime, RuleSet]]
    loaded_at: float

    def rule_set_at(self, moment: datetime, now: datetime) -> RuleSet | None:
        """The version in effect when the event occurred. An event older than the first
        version uses the first one (once it has started): a program's rules apply to the
        late events of its first days too."""
        for effective_from, rule_set in self.rule_sets:
            if effective_from <= moment:
                return rule_set
        if self.rule_sets and self.rule_sets[-1][0] <= now:
            return self.rule_sets[-1][1]
        return None


_AMOUNT_RANGE = (Fraction(-(2**63 - 1)), Fraction(2**63 - 1))


def _decimal(value: object, field: str) -> Decimal:
    """An amount (int or decimal string) as an exact Decimal; validation error otherwise."""
    return parse_decimal(value, field, *_AMOUNT_RANGE)


def compile_config(config: ProgramConfig, loaded_at: float) -> CompiledConfig:
    policy = parse_policy(config.policy)
    rule_sets = sorted(
        (
            (effective_from, compile_rule_set(rules, version))
            for version, effective_from, rules in config.rule_sets
        ),
        key=lambda item: (item[0], item[1].version),
        reverse=True,
    )
    return CompiledConfig(policy, config.policy_version, rule_sets, loaded_at)


def utcnow() -> datetime:
    return datetime.now(UTC)


problem = Outcome.refused


def _answer(op: Op, result: Outcome) -> None:
    if not op.future.done():  # a caller that went away must not break the batch
        op.future.set_result(result)


@dataclass(slots=True)
class Op:
    kind: OpKind
    program_id: str
    member_id: str
    points: int
    reason: str
    expires_at: datetime | None
    key: str
    request_hash: str
    future: asyncio.Future[Outcome]
    # A refund: the debit it gives back.
    refund_of: uuid.UUID | None = None
    # An event to apply (EVENT), or the event to reverse (REVERSE).
    event: EventIn | None = None
    event_id: str | None = None
    # REVERSE: the amount of the event reversed (decimal text; None: all of it).
    amount: str | None = None
    dry_run: bool = False

    @staticmethod
    def of(command: AccountCommand, future: asyncio.Future[Outcome]) -> Op:
        """The shard's working form of a command (one flat record for the batch loop)."""
        event = getattr(command, "event", None)
        return Op(
            command.kind,
            command.program_id,
            command.member_id,
            getattr(command, "points", 0),
            getattr(command, "reason", ""),
            getattr(command, "expires_at", None),
            command.key,
            command.request_hash,
            future,
            getattr(command, "refund_of", None),
            event,
            getattr(command, "event_id", None) or (event.event_id if event is not None else None),
            getattr(command, "amount", None),
            bool(getattr(command, "dry_run", False)),
        )


@dataclass(slots=True)
class _Work:
    """State of the batch being applied: copies of accounts and the rows to write."""

    write: BatchWrite = field(default_factory=BatchWrite)
    # account key -> (working copy, version loaded; 0 = new account)
    accounts: dict[AccountKey, tuple[Account, int]] = field(default_factory=dict)
    changed: set[AccountKey] = field(default_factory=set)
    # key -> index in `results` of the first operation that used it in this batch
    keys: dict[IdemKey, int] = field(default_factory=dict)
    results: list[Outcome] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    # operations answered only once the batch commits: (op, index in results)
    waiting: list[tuple[Op, int]] = field(default_factory=list)
    # debits refunded by this batch
    refunded: set[uuid.UUID] = field(default_factory=set)
    # events applied in this batch, and reversal state of events changed by it
    events: set[tuple[str, str]] = field(default_factory=set)
    reversals: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)


class _Lru(OrderedDict[Any, Any]):
    def __init__(self, capacity: int) -> None:
        super().__init__()
        assert capacity > 0
        self.capacity = capacity

    def get_fresh(self, key: Any) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.capacity:
            self.popitem(last=False)


class ShardCore:
    def __init__(
        self,
        repo: LedgerRepo,
        *,
        clock: Callable[[], datetime] = utcnow,
        random_bytes: Callable[[int], bytes] = os.urandom,
        batch_max: int = BATCH_MAX,
        batch_window_s: float = BATCH_WINDOW_S,
        accounts_cached_max: int = ACCOUNTS_CACHED_MAX,
        keys_cached_max: int = KEYS_CACHED_MAX,
    ) -> None:
        assert batch_max > 0 and batch_window_s >= 0
        self.repo = repo
        # Reads and pings come from other coroutines than the batch loop: own connection.
        self.reader = repo.reader()
        self._clock = clock
        self._random_bytes = random_bytes
        self._batch_max = batch_max
        self._batch_window_s = batch_window_s
        self._accounts: _Lru = _Lru(accounts_cached_max)
        self._keys: _Lru = _Lru(keys_cached_max)
        self._programs: set[str] = set()
        self._sources: dict[uuid.UUID, RefundSource] = {}
        self._configs: dict[str, CompiledConfig] = {}
        self._stored_events: dict[tuple[str, str], StoredEvent] = {}
        # Event ids found recorded for another member (bounded like the key cache).
        self._taken_events: _Lru = _Lru(keys_cached_max)
        self._expiry_task: asyncio.Task[None] | None = None
        self._tier_cursor: AccountKey = ("", "")
        self._queue: list[Op] = []
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._last_now = datetime.min.replace(tzinfo=UTC)
        self.stats: dict[str, float] = {
            "batches": 0,
            "ops": 0,
            "commit_failures": 0,
            "fenced": 0,
            "prefetch_s": 0.0,
            "apply_s": 0.0,
            "commit_s": 0.0,
            "events": 0,
            "expiry_passes": 0,
            "expired_points": 0,
        }

    # ----------------------------------------------------------------- public API

    async def submit(self, command: AccountCommand) -> Outcome:
        """Apply one operation; answers its outcome after commit.

        A refund (`refund_of`: a debit's transaction id) gives back everything that debit took,
        into the lots it took it from. The redemption saga uses it to compensate.
        """
        return await self.enqueue(command)

    def enqueue(self, command: AccountCommand) -> asyncio.Future[Outcome]:
        """Queue one operation; its future gets the answer after commit. Many at once cost
        no Task each (gather over futures), which matters for batches of 1,000 events."""
        assert isinstance(command, AccountCommand), type(command)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append(Op.of(command, future))
        self._ensure_loop()
        assert self._wakeup is not None
        self._wakeup.set()
        return future

    async def get_account(self, program_id: str, member_id: str) -> dict[str, Any] | None:
        """The committed state of an account (cache, else PostgreSQL), or None."""
        key = (program_id, member_id)
        account = self._accounts.get_fresh(key)
        if account is None:
            # Not cached: read it, but do not cache it. The read's snapshot may predate a
            # commit that this shard has since published and evicted; only batches (which
            # fence their writes) put accounts into the cache.
            account = (await self.reader.load_accounts([key])).get(key)
            if account is None:
                return None
        config = await self._config_for_read(program_id)
        now = self._clock()
        if config is None:
            return account_view(account, now, LOTS_IN_VIEW_MAX)
        policy = config.policy
        view = account_view(
            account, now, LOTS_IN_VIEW_MAX, zone(policy.time_zone), EXPIRING_SOON_DAYS
        )
        tier = tier_view(account.earning, policy, account.lifetime_earned, now)
        if tier is not None:
            view["tier"] = tier
        return view

    async def _config_for_read(self, program_id: str) -> CompiledConfig | None:
        config = self._configs.get(program_id)
        if config is not None and time.monotonic() - config.loaded_at < PROGRAM_CONFIG_TTL_S:
            return config
        try:
            loaded = (await self.reader.load_program_configs([program_id])).get(program_id)
            return None if loaded is None else compile_config(loaded, time.monotonic())
        except PointsError:
            log.exception("program %s has an invalid stored policy or rule set", program_id)
            return None

    async def ping(self) -> dict[str, Any]:
        await self.reader.ping()
        return {"cached_accounts": len(self._accounts), "queued": len(self._queue), **self.stats}

    def forget_program(self, program_id: str) -> None:
        self._programs.discard(program_id)
        self._configs.pop(program_id, None)

    # ----------------------------------------------------------------- expiry job

    def start_expiry(self, owns: Callable[[str, str], bool], interval_s: float) -> None:
        """Every `interval_s`, write off the points past expiry of the accounts this shard
        owns (`owns(program_id, member_id)`), through the batch loop like any operation:
        serialized with traffic, idempotent (an expire finds nothing due the second time)."""
        assert interval_s > 0
        if self._expiry_task is None or self._expiry_task.done():
            self._expiry_task = asyncio.get_running_loop().create_task(
                self._expiry_loop(owns, interval_s)
            )

    async def _expiry_loop(self, owns: Callable[[str, str], bool], interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.expire_due(owns)
                await self.retier(owns)
            except Exception:  # a pass that fails (database down) is retried next time
                log.exception("expiry or tier pass failed")

    async def retier(self, owns: Callable[[str, str], bool]) -> dict[str, int]:
        """One pass of tier maintenance over (up to TIER_ACCOUNTS_PER_PASS) accounts holding
        a tier, continuing where the previous pass stopped: members whose earnings left the
        window, or whose grace period ended, move down without waiting for an event."""
        keys = await self.reader.tiered_accounts(self._tier_cursor, TIER_ACCOUNTS_PER_PASS)
        self._tier_cursor = keys[-1] if len(keys) == TIER_ACCOUNTS_PER_PASS else ("", "")
        mine = [key for key in keys if owns(*key)]
        results = await asyncio.gather(
            *(self.submit(Retier(program_id=p, member_id=m)) for p, m in mine)
        )
        changed = sum(1 for r in results if r.succeeded and r.body.get("changed"))
        return {"accounts": len(mine), "tier_changes": changed}

    async def expire_due(self, owns: Callable[[str, str], bool]) -> dict[str, int]:
        """One pass of the expiry job; returns what it did."""
        keys = await self.reader.due_expiries(self._clock(), EXPIRY_ACCOUNTS_PER_PASS)
        mine = [key for key in keys if owns(*key)]
        results = await asyncio.gather(
            *(self.submit(Expire(program_id=p, member_id=m)) for p, m in mine)
        )
        expired = sum(int(r.body.get("expired_points", 0)) for r in results if r.succeeded)
        self.stats["expiry_passes"] += 1
        self.stats["expired_points"] += expired
        return {"accounts": len(mine), "expired_points": expired}

    async def close(self) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
        if self._loop_task is not None:
            self._loop_task.cancel()
        await self.repo.close()
        await self.reader.close()

    # ----------------------------------------------------------------- batch loop

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wakeup = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            if self._batch_window_s and len(self._queue) < self._batch_max:
                await asyncio.sleep(self._batch_window_s)
            batch = self._queue[: self._batch_max]
            del self._queue[: self._batch_max]
            if not self._queue:
                self._wakeup.clear()
            if not batch:
                continue
            try:
                await self._process(batch)
            except Exception as exc:  # never let the loop die: fail this batch, go on
                log.exception("batch failed unexpectedly")
                for op in batch:
                    if not op.future.done():
                        op.future.set_result(
                            problem(Code.UNAVAILABLE, f"shard error, retry: {type(exc).__name__}")
                        )

    async def _process(self, batch: list[Op]) -> None:
        started = time.perf_counter()
        try:
            pinned = await self._prefetch(batch)
        except Exception as exc:
            await self.repo.reset()
            self._fail(batch, f"database unavailable: {type(exc).__name__}")
            return
        self.stats["prefetch_s"] += time.perf_counter() - started

        for _attempt in range(KEY_RETRIES_MAX):
            work = await self._apply_and_commit(batch, pinned)
            if work is None:  # failed and answered, or nothing left to do
                return
            if isinstance(work, EventsTaken):
                # The same event id was applied for another member of the program: those
                # operations are conflicts; the rest of the batch runs again.
                for taken in work.keys:
                    self._taken_events.put(taken, True)
                batch = [op for op in batch if not op.future.done()]
                continue
            if isinstance(work, KeysExist):
                # Keys committed before this shard's cache knew them (a restart, an
                # eviction): load their stored answers and run the batch again.
                try:
                    stored = await self.repo.lookup_idempotency(work.keys)
                except Exception as exc:
                    await self.repo.reset()
                    self._fail(batch, f"database unavailable: {type(exc).__name__}")
                    return
                for ikey, response in stored.items():
                    self._keys.put(ikey, response)
                batch = [op for op in batch if not op.future.done()]
                continue
            self._publish(work, len(batch))
            return
        self._fail(batch, "idempotency keys kept changing, retry")

    async def _apply_and_commit(
        self, batch: list[Op], pinned: dict[AccountKey, Account]
    ) -> _Work | KeysExist | EventsTaken | None:
        applied_at = time.perf_counter()
        now = self._now()
        work = _Work()
        # Check and change with no await in between: this loop is the serialization point.
        for op in batch:
            self._apply(op, work, now, pinned)
        self._collect_account_writes(work)
        committing_at = time.perf_counter()
        self.stats["apply_s"] += committing_at - applied_at
        if work.write.empty:
            return work
        try:
            await self.repo.commit_batch(work.write, now)
        except (KeysExist, EventsTaken) as exc:
            return exc
        except Exception as exc:
            self.stats["commit_failures"] += 1
            if isinstance(exc, FencedError):
                self.stats["fenced"] += 1
                log.warning("fenced: %s", exc)
            else:
                await self.repo.reset()
            # Whatever this shard believed about these accounts may be stale: reload later.
            for key in work.accounts:
                self._accounts.pop(key, None)
            self._fail([op for op, _ in work.waiting], f"commit failed, retry: {exc}")
            return None
        finally:
            self.stats["commit_s"] += time.perf_counter() - committing_at
        return work

    def _publish(self, work: _Work, ops: int) -> None:
        """After COMMIT: swap the new state into the cache, then answer the callers."""
        for key in work.changed:
            account, loaded_version = work.accounts[key]
            account.version = loaded_version + 1
            account.check()
            self._accounts.put(key, account)
        for ikey, stored in work.write.idempotency:
            self._keys.put(ikey, stored)
        self.stats["batches"] += 1
        self.stats["ops"] += ops
        for op, index in work.waiting:
            if not op.future.done():
                op.future.set_result(work.results[index])

    def _fail(self, ops: list[Op], detail: str) -> None:
        answer = problem(Code.UNAVAILABLE, detail)
        for op in ops:
            if not op.future.done():
                op.future.set_result(answer)

    def _now(self) -> datetime:
        """Wall clock, but never earlier than the previous batch (history stays ordered)."""
        now = max(self._clock(), self._last_now)
        self._last_now = now
        return now

    def _new_id(self, now: datetime) -> Any:
        return uuid7(int(now.timestamp() * 1000), self._random_bytes(10))

    async def _prefetch(self, batch: list[Op]) -> dict[AccountKey, Account]:
        """Load, in set-based queries, the programs and accounts the batch needs.

        Returns the committed state of every existing account the batch touches, held for
        the batch itself: the LRU may evict entries meanwhile, and an evicted account must
        not look like a new (or unknown) one to this batch.

        Idempotency keys are not looked up here: a new key is the normal case, so the commit
        inserts keys first and reports any that already exist (KeysExist).
        """
        programs = list({op.program_id for op in batch} - self._programs)
        if programs:
            self._programs |= await self.repo.existing_programs(programs)
        # Earning operations need the program's policy and rule sets.
        monotonic = time.monotonic()
        stale = {
            op.program_id
            for op in batch
            if op.kind in (EVENT, REVERSE, EXPIRE, CONFIRM, RETIER)
            and (
                op.program_id not in self._configs
                or monotonic - self._configs[op.program_id].loaded_at >= PROGRAM_CONFIG_TTL_S
            )
        }
        if stale:
            for program_id, config in (await self.repo.load_program_configs(list(stale))).items():
                try:
                    self._configs[program_id] = compile_config(config, monotonic)
                except PointsError:
                    log.exception("program %s has an invalid stored policy or rules", program_id)
        reversed_events = list(
            {
                (op.program_id, op.event_id)
                for op in batch
                if op.kind in (REVERSE, CONFIRM) and op.event_id
            }
        )
        self._stored_events = (
            await self.repo.load_events(reversed_events) if reversed_events else {}
        )
        wanted = {(op.program_id, op.member_id) for op in batch}
        pinned: dict[AccountKey, Account] = {}
        for key in wanted:
            cached = self._accounts.get_fresh(key)
            if cached is not None:
                pinned[key] = cached
        # Refunds: the debits they give back and those debits' lots, as stored.
        sources = [op.refund_of for op in batch if op.refund_of is not None]
        self._sources = await self.repo.load_refund_sources(sources) if sources else {}
        missing = [key for key in wanted if key not in pinned]
        if missing:
            loaded = await self.repo.load_accounts(missing)
            for key, account in loaded.items():
                # A batch that committed while we loaded cannot exist (one batch at a time),
                # so what was loaded is the committed state.
                pinned[key] = account
                self._accounts.put(key, account)
        return pinned

    # ----------------------------------------------------------------- apply (no await)

    def _apply(self, op: Op, work: _Work, now: datetime, pinned: dict[AccountKey, Account]) -> None:
        if op.kind == EXPIRE:
            self._apply_expire(op, work, now, pinned)
            return
        if op.kind == RETIER:
            self._apply_retier(op, work, now, pinned)
            return
        if op.kind == EVENT and op.dry_run:
            self._apply_dry_run(op, work, now, pinned)
            return
        ikey = (op.program_id, op.member_id, op.key)

        stored = self._keys.get_fresh(ikey)
        if stored is not None:  # committed earlier: answer at once
            self._answer_replay(op, stored)
            return
        first = work.keys.get(ikey)
        if first is not None:  # same key earlier in this very batch: answer after its commit
            if work.hashes[first] != op.request_hash:
                conflict = problem(
                    Code.IDEMPOTENCY_CONFLICT,
                    "this Idempotency-Key was already used with a different request body",
                )
                self._wait(op, work, conflict, op.request_hash)
            else:  # a replay of the first: same code and body
                self._wait(op, work, work.results[first].as_replay(), op.request_hash)
            return

        if op.program_id not in self._programs:
            _answer(op, problem(Code.NOT_FOUND, f"program {op.program_id} not found"))
            return

        akey = (op.program_id, op.member_id)
        entry = work.accounts.get(akey)
        is_new = False
        if entry is None:
            committed = pinned.get(akey)
            if committed is not None:
                entry = self._working_copy(akey, committed, work, now)
            elif op.kind in (CREDIT, EVENT):
                # Joins the batch only if the credit succeeds (below).
                entry = (new_account(op.program_id, op.member_id), 0)
                is_new = True
            else:
                _answer(op, problem(Code.NOT_FOUND, f"member {op.member_id} not found"))
                return
            if not is_new:
                work.accounts[akey] = entry
        account, _ = entry

        txn_id = self._new_id(now)
        try:
            if op.kind == EVENT:
                result = self._apply_event(op, account, work, now, txn_id)
                if is_new:
                    work.accounts[akey] = entry
                self._remember(op, work, akey, ikey, result)
                return
            if op.kind == REVERSE:
                result = self._apply_reverse(op, account, work, now, txn_id)
                self._remember(op, work, akey, ikey, result)
                return
            if op.kind == CONFIRM:
                result = self._apply_confirm(op, account, work, now)
                self._remember(op, work, akey, ikey, result)
                return
            if op.kind == CREDIT:
                txn = credit(
                    account, op.points, op.reason, now, txn_id, self._new_id(now), op.expires_at
                )
            elif op.kind == REFUND:
                txn = self._refund(op, account, work, now, txn_id)
            else:
                txn = debit(account, op.points, op.reason, now, txn_id)
        except PointsError as exc:
            if exc.code in (Code.VALIDATION_ERROR, Code.NOT_FOUND, Code.UNAVAILABLE) or is_new:
                # Bad input changes nothing and is not remembered under the key; neither is
                # an answer that may change (an event not yet known, a passing outage).
                _answer(op, problem(exc.code, exc.detail))
                return
            result = problem(exc.code, exc.detail)
        else:
            if is_new:
                work.accounts[akey] = entry
            work.write.transactions.append((txn, op.key))
            if txn.kind == DEBIT:
                for lot_id, taken in txn.allocations:
                    work.write.lot_deltas[lot_id] += taken
            elif txn.kind == REFUND:
                assert txn.refers_to is not None
                work.refunded.add(txn.refers_to)
                for lot_id, taken in txn.allocations:
                    work.write.lot_deltas[lot_id] -= taken
            body = transaction_view(txn)
            body["balance"] = {"available": available(account, now), "total": account.balance}
            result = Outcome.created(body)
        self._remember(op, work, akey, ikey, result)

    def _remember(
        self, op: Op, work: _Work, akey: AccountKey, ikey: IdemKey, result: Outcome
    ) -> None:
        """Answer after commit and store the answer under the key."""
        # Any remembered answer bumps the account version, so a stale owner cannot record
        # an answer computed from stale state.
        work.changed.add(akey)
        work.keys[ikey] = self._wait(op, work, result, op.request_hash)
        work.write.idempotency.append(
            (ikey, StoredResponse(op.request_hash, result.code, result.body))
        )

    # ----------------------------------------------------------------- earning (no await)

    def _config(self, program_id: str) -> CompiledConfig:
        config = self._configs.get(program_id)
        if config is None:
            raise PointsError(Code.UNAVAILABLE, f"program {program_id}: policy not loaded")
        return config

    def _evaluate(
        self, op: Op, account: Account, now: datetime
    ) -> tuple[CompiledConfig, RuleSet, Evaluation]:
        """The rule set in effect when the event occurred, and what it awards (an event type
        no rule handles is a validation error)."""
        assert op.event is not None
        config = self._config(op.program_id)
        event = op.event
        rule_set = config.rule_set_at(event.occurred_at, now)
        if rule_set is None or event.type not in rule_set.by_type:
            version = f"rule set version {rule_set.version}" if rule_set else "no rule set"
            raise PointsError(
                Code.VALIDATION_ERROR,
                f"unknown event type {event.type!r}: no rule handles it ({version} in effect"
                f" at {event.occurred_at.isoformat()})",
            )
        context = member_context(account.earning, config.policy, event.occurred_at)
        return config, rule_set, evaluate(rule_set, event, context, config.policy)

    @staticmethod
    def _event_body(
        op: Op, rule_set: RuleSet, evaluation: Evaluation, dry_run: bool
    ) -> dict[str, Any]:
        assert op.event is not None
        return {
            "event_id": op.event.event_id,
            "member_id": op.member_id,
            "type": op.event.type,
            "points": evaluation.points,
            "rule_version": rule_set.version,
            "why": explanation_json(evaluation),
            "dry_run": dry_run,
        }

    def _apply_dry_run(
        self, op: Op, work: _Work, now: datetime, pinned: dict[AccountKey, Account]
    ) -> None:
        """What the event would earn now; nothing is written or remembered."""
        if op.program_id not in self._programs:
            _answer(op, problem(Code.NOT_FOUND, f"program {op.program_id} not found"))
            return
        akey = (op.program_id, op.member_id)
        entry = work.accounts.get(akey)
        account = entry[0] if entry else pinned.get(akey)
        if account is None:
            account = new_account(op.program_id, op.member_id)
        try:
            _, rule_set, evaluation = self._evaluate(op, account, now)
        except PointsError as exc:
            _answer(op, problem(exc.code, exc.detail))
            return
        _answer(op, Outcome.done(self._event_body(op, rule_set, evaluation, True)))

    def _apply_event(
        self, op: Op, account: Account, work: _Work, now: datetime, txn_id: uuid.UUID
    ) -> Outcome:
        """Evaluate the program's rules for the event and credit what it earns."""
        event = op.event
        assert event is not None
        if (op.program_id, event.event_id) in work.events or (
            op.program_id,
            event.event_id,
        ) in self._taken_events:
            raise PointsError(
                Code.IDEMPOTENCY_CONFLICT,
                f"event id {event.event_id} was already used for another member",
            )
        config, rule_set, evaluation = self._evaluate(op, account, now)
        policy = config.policy
        body = self._event_body(op, rule_set, evaluation, False)
        points = body["points"]
        txn = None
        if points > 0:
            becomes_available = (
                None  # a matched rule holds this award for review
                if evaluation.hold is not None
                else available_at(policy.pending, now, policy.time_zone)
            )
            txn = credit(
                account,
                points,
                f"{event.type} {event.event_id}",
                now,
                txn_id,
                self._new_id(now),
                # Held until confirmed: the expiry is set when it is confirmed.
                None if becomes_available is None else expires_at(policy, becomes_available),
                HELD_UNTIL_CONFIRMED if becomes_available is None else becomes_available,
                event.event_id,
            )
            work.write.transactions.append((txn, op.key))
            record(account.earning, policy, event.occurred_at, evaluation, local_day(policy, now))
        before = account.earning.get("tier")
        decision = update_tier(account.earning, policy, account.lifetime_earned, now)
        if decision is not None and decision.changed:
            work.write.tier_changes.append(
                (op.program_id, op.member_id, before, decision.tier, decision.reason)
            )
        work.events.add((op.program_id, event.event_id))
        work.write.events.append(
            EventRow(
                op.program_id,
                event.event_id,
                op.member_id,
                event.type,
                event.occurred_at,
                event.attributes,
                body["rule_version"],
                points,
                body["why"],
                txn.txn_id if txn is not None else None,
            )
        )
        self.stats["events"] += 1
        if txn is not None:
            body["transaction"] = transaction_view(txn)
        body["balance"] = {"available": available(account, now), "total": account.balance}
        if decision is not None:
            body["tier"] = decision.tier
        return Outcome.created(body)

    def _apply_reverse(
        self, op: Op, account: Account, work: _Work, now: datetime, txn_id: uuid.UUID
    ) -> Outcome:
        """Claw back what an event earned, in proportion to the amount reversed."""
        assert op.event_id is not None
        ekey = (op.program_id, op.event_id)
        stored = self._stored_events.get(ekey)
        if stored is None or stored.member_id != op.member_id:
            raise PointsError(Code.NOT_FOUND, f"event {op.event_id} of this member not found")
        reversed_text, reversed_points = work.reversals.get(
            ekey, (stored.reversed_amount, stored.reversed_points)
        )
        total = stored.attributes.get("amount")
        already = _decimal(reversed_text, "reversed_amount")
        if op.amount is None:
            # The whole event, whatever its amount attribute holds (or not).
            target = stored.points
            try:
                new_reversed = _decimal(total, "attributes.amount")
            except PointsError:
                new_reversed = already
        else:
            if total is None or isinstance(total, bool):
                raise PointsError(
                    Code.VALIDATION_ERROR,
                    "the event has no amount attribute: only a full reversal (no amount)",
                )
            event_amount = _decimal(total, "attributes.amount")
            amount = _decimal(op.amount, "amount")
            if amount <= 0:
                raise PointsError(Code.VALIDATION_ERROR, "amount must be positive")
            if event_amount <= 0:
                raise PointsError(Code.VALIDATION_ERROR, "the event's amount is not positive")
            new_reversed = min(already + amount, event_amount)
            # Proportional, rounded down: partial reversals never claw back more in total
            # than a full one, and the last one (reaching the whole amount) takes the rest.
            target = int(stored.points * new_reversed // event_amount)
        target = max(min(target, stored.points), reversed_points)
        claw = target - reversed_points
        txn, unrecovered = (None, 0)
        if claw > 0:
            txn, unrecovered = reverse(
                account,
                op.event_id,
                claw,
                f"reversal of {op.event_id}",
                now,
                txn_id,
                self._config(op.program_id).policy.allow_debt,
            )
            if txn is not None:
                work.write.transactions.append((txn, op.key))
                for lot_id, taken in txn.allocations:
                    work.write.lot_deltas[lot_id] += taken
        work.reversals[ekey] = (str(new_reversed), target)
        work.write.event_reversals[ekey] = (str(new_reversed), target)
        body = {
            "event_id": op.event_id,
            "member_id": op.member_id,
            "event_points": stored.points,
            "reversed_amount": str(new_reversed),
            # From the member's lots; what was already spent is owed (debt) or unrecovered.
            "clawed_back": txn.points - txn.debt_change if txn is not None else 0,
            "owed": txn.debt_change if txn is not None else 0,
            "unrecovered": unrecovered,
            "debt": account.debt,
            "reversed_points_total": target,
            "transaction": transaction_view(txn) if txn is not None else None,
            "balance": {"available": available(account, now), "total": account.balance},
        }
        assert 0 <= target <= stored.points
        return Outcome(Code.CREATED if txn is not None else Code.OK, body)

    def _working_copy(
        self, akey: AccountKey, committed: Account, work: _Work, now: datetime
    ) -> tuple[Account, int]:
        """A batch's copy of a committed account, with its due pending lots activated first
        (so every operation sees them spendable, and the activation is in the ledger)."""
        entry = (committed.clone(), committed.version)
        work.accounts[akey] = entry
        account = entry[0]
        if any(lot.due(now) for lot in account.lots):
            self._activate(account, akey, work, now, None)
        return entry

    def _activate(
        self,
        account: Account,
        akey: AccountKey,
        work: _Work,
        now: datetime,
        lots: list[Any] | None,
    ) -> Any:
        """Activate pending lots (due ones, or `lots`) and add the writes to the batch."""
        before = {lot.lot_id: (lot, lot.remaining) for lot in account.lots if not lot.active}
        txn = activate(account, now, self._new_id(now), lots)
        if txn is None:
            return None
        work.write.transactions.append((txn, None))
        for lot, remaining in before.values():
            if lot.active:
                work.write.lot_states.append(lot)
                if lot.remaining != remaining:  # debt repaid from it
                    work.write.lot_deltas[lot.lot_id] += remaining - lot.remaining
        work.changed.add(akey)
        return txn

    def _apply_confirm(self, op: Op, account: Account, work: _Work, now: datetime) -> Outcome:
        """Release the points an event holds until confirmation (idempotent)."""
        assert op.event_id is not None
        stored = self._stored_events.get((op.program_id, op.event_id))
        if stored is None or stored.member_id != op.member_id:
            raise PointsError(Code.NOT_FOUND, f"event {op.event_id} of this member not found")
        policy = self._config(op.program_id).policy
        held = confirm(account, op.event_id, now, expires_at(policy, now))
        points = sum(lot.remaining for lot in held)
        if held:
            self._activate(account, (op.program_id, op.member_id), work, now, held)
        body = {
            "event_id": op.event_id,
            "member_id": op.member_id,
            "released_points": points,
            "balance": {"available": available(account, now), "total": account.balance},
        }
        assert body["released_points"] >= 0
        return Outcome.done(body)

    def _apply_retier(
        self, op: Op, work: _Work, now: datetime, pinned: dict[AccountKey, Account]
    ) -> None:
        akey = (op.program_id, op.member_id)
        config = self._configs.get(op.program_id)
        entry = work.accounts.get(akey)
        committed = pinned.get(akey)
        if config is None or config.policy.tiers is None or (entry is None and committed is None):
            _answer(op, Outcome.done({"changed": False}))
            return
        if entry is None:
            assert committed is not None
            entry = self._working_copy(akey, committed, work, now)
        account = entry[0]
        before = account.earning.get("tier")
        below_before = account.earning.get("below_since")
        decision = update_tier(account.earning, config.policy, account.lifetime_earned, now)
        assert decision is not None
        if not decision.changed and account.earning.get("below_since") == below_before:
            account.earning["tier"], account.earning["below_since"] = before, below_before
            _answer(op, Outcome.done({"changed": False}))
            return
        work.accounts[akey] = entry
        if decision.changed:
            work.write.tier_changes.append(
                (op.program_id, op.member_id, before, decision.tier, decision.reason)
            )
        work.changed.add(akey)
        self._wait(op, work, Outcome.done({"changed": decision.changed}), "")

    def _apply_expire(
        self, op: Op, work: _Work, now: datetime, pinned: dict[AccountKey, Account]
    ) -> None:
        akey = (op.program_id, op.member_id)
        entry = work.accounts.get(akey)
        if entry is None:
            committed = pinned.get(akey)
            if committed is None:
                _answer(op, Outcome.done({"expired_points": 0}))
                return
            entry = self._working_copy(akey, committed, work, now)
        account = entry[0]
        txn = expire(account, now, self._new_id(now))
        if txn is None:
            if akey in work.changed:  # pending points were activated: answer after commit
                self._wait(op, work, Outcome.done({"expired_points": 0}), "")
            else:
                _answer(op, Outcome.done({"expired_points": 0}))
            return
        work.write.transactions.append((txn, None))
        for lot_id, taken in txn.allocations:
            work.write.lot_deltas[lot_id] += taken
        work.changed.add(akey)
        self._wait(op, work, Outcome.done({"expired_points": txn.points}), "")

    def _refund(
        self, op: Op, account: Account, work: _Work, now: datetime, txn_id: uuid.UUID
    ) -> Any:
        source = self._sources.get(op.refund_of) if op.refund_of is not None else None
        if (
            source is None
            or source.kind != DEBIT
            or (source.program_id, source.member_id) != (op.program_id, op.member_id)
        ):
            raise PointsError(Code.NOT_FOUND, f"debit {op.refund_of} of this member not found")
        if source.refunded or source.txn_id in work.refunded:
            raise PointsError(Code.IDEMPOTENCY_CONFLICT, f"debit {source.txn_id} already refunded")
        if sum(taken for _, taken in source.allocations) != op.points:
            raise PointsError(Code.VALIDATION_ERROR, "a refund gives back the whole debit")
        return refund(
            account, source.txn_id, source.allocations, source.lots, op.reason, now, txn_id
        )

    @staticmethod
    def _wait(op: Op, work: _Work, result: Outcome, request_hash: str) -> int:
        """Answer `op` with `result` once the batch commits; returns the result's index."""
        work.results.append(result)
        work.hashes.append(request_hash)
        index = len(work.results) - 1
        work.waiting.append((op, index))
        return index

    def _answer_replay(self, op: Op, stored: StoredResponse) -> None:
        try:
            original = replay(stored, op.request_hash)
        except PointsError as exc:
            _answer(op, problem(exc.code, exc.detail))
            return
        _answer(op, Outcome(original.code, original.body, replayed=True))

    def _collect_account_writes(self, work: _Work) -> None:
        for key in work.changed:
            account, loaded_version = work.accounts[key]
            account.check()
            if loaded_version == 0:
                work.write.new_accounts.append(account)
            else:
                work.write.updated_accounts.append((account, loaded_version))
