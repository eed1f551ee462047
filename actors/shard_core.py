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
from typing import Any

from db.ledger_repo import (
    AccountKey,
    BatchWrite,
    FencedError,
    IdemKey,
    KeysExist,
    LedgerRepo,
    RefundSource,
)
from domain.errors import HTTP_STATUS, Code, PointsError
from domain.idempotency import StoredResponse, replay
from domain.ids import uuid7
from domain.ledger import (
    CREDIT,
    DEBIT,
    REFUND,
    Account,
    account_view,
    available,
    credit,
    debit,
    new_account,
    refund,
    transaction_view,
)
from domain.limits import LOTS_IN_VIEW_MAX

log = logging.getLogger("points.shard")

BATCH_MAX = 1024
ACCOUNTS_CACHED_MAX = 200_000
KEYS_CACHED_MAX = 200_000
# How long to wait for more operations before starting a batch when the queue is not
# already full. 0 = natural batching only (operations queue while a commit is in flight).
BATCH_WINDOW_S = 0.0
# A batch re-runs after finding keys already committed; a second re-run is already unusual.
KEY_RETRIES_MAX = 3


def utcnow() -> datetime:
    return datetime.now(UTC)


def problem(code: Code, detail: str) -> dict[str, Any]:
    return {"status": HTTP_STATUS[code], "body": {"code": str(code), "detail": detail}}


def _answer(op: Op, result: dict[str, Any]) -> None:
    if not op.future.done():  # a caller that went away must not break the batch
        op.future.set_result(result)


@dataclass(slots=True)
class Op:
    kind: str
    program_id: str
    member_id: str
    points: int
    reason: str
    expires_at: datetime | None
    key: str
    request_hash: str
    future: asyncio.Future[dict[str, Any]]
    # A refund: the debit it gives back.
    refund_of: uuid.UUID | None = None


@dataclass(slots=True)
class _Work:
    """State of the batch being applied: copies of accounts and the rows to write."""

    write: BatchWrite = field(default_factory=BatchWrite)
    # account key -> (working copy, version loaded; 0 = new account)
    accounts: dict[AccountKey, tuple[Account, int]] = field(default_factory=dict)
    changed: set[AccountKey] = field(default_factory=set)
    # key -> index in `results` of the first operation that used it in this batch
    keys: dict[IdemKey, int] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    # operations answered only once the batch commits: (op, index in results)
    waiting: list[tuple[Op, int]] = field(default_factory=list)
    # debits refunded by this batch
    refunded: set[uuid.UUID] = field(default_factory=set)


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
        }

    # ----------------------------------------------------------------- public API

    async def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        """Apply one credit, debit or refund; answers {"status", "body", "replayed"} after commit.

        A refund (`refund_of`: a debit's transaction id) gives back everything that debit took,
        into the lots it took it from. The redemption saga uses it to compensate.
        """
        assert request["kind"] in (CREDIT, DEBIT, REFUND)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._queue.append(
            Op(
                request["kind"],
                request["program_id"],
                request["member_id"],
                request["points"],
                request["reason"],
                request.get("expires_at"),
                request["key"],
                request["request_hash"],
                future,
                request.get("refund_of"),
            )
        )
        self._ensure_loop()
        assert self._wakeup is not None
        self._wakeup.set()
        return await future

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
        return account_view(account, self._clock(), LOTS_IN_VIEW_MAX)

    async def ping(self) -> dict[str, Any]:
        await self.reader.ping()
        return {"cached_accounts": len(self._accounts), "queued": len(self._queue), **self.stats}

    def forget_program(self, program_id: str) -> None:
        self._programs.discard(program_id)

    async def close(self) -> None:
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
    ) -> _Work | KeysExist | None:
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
        except KeysExist as exc:
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
                self._wait(op, work, {**conflict, "replayed": False}, op.request_hash)
            else:  # a replay of the first: same status and body
                self._wait(op, work, {**work.results[first], "replayed": True}, op.request_hash)
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
                entry = (committed.clone(), committed.version)
            elif op.kind == CREDIT:
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
            if op.kind == CREDIT:
                txn = credit(
                    account, op.points, op.reason, now, txn_id, self._new_id(now), op.expires_at
                )
            elif op.kind == REFUND:
                txn = self._refund(op, account, work, now, txn_id)
            else:
                txn = debit(account, op.points, op.reason, now, txn_id)
        except PointsError as exc:
            if exc.code is Code.VALIDATION_ERROR or is_new:
                # Bad input changes nothing and is not remembered under the key.
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
            result = {"status": 201, "body": body}

        # Any remembered answer bumps the account version, so a stale owner cannot record
        # an answer computed from stale state.
        work.changed.add(akey)
        work.keys[ikey] = self._wait(op, work, {**result, "replayed": False}, op.request_hash)
        work.write.idempotency.append(
            (ikey, StoredResponse(op.request_hash, result["status"], result["body"]))
        )

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
    def _wait(op: Op, work: _Work, result: dict[str, Any], request_hash: str) -> int:
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
        _answer(op, {"status": original.status, "body": original.body, "replayed": True})

    def _collect_account_writes(self, work: _Work) -> None:
        for key in work.changed:
            account, loaded_version = work.accounts[key]
            account.check()
            if loaded_version == 0:
                work.write.new_accounts.append(account)
            else:
                work.write.updated_accounts.append((account, loaded_version))
