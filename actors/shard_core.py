"""The logic an AccountShard actor runs, as a plain class (no Ray): testable on its own.

Request path inside a shard:

1. `submit` puts the operation on the queue and awaits its future.
2. The batch loop takes everything queued (up to `batch_max`), prefetches what it needs from
   PostgreSQL (accounts not cached, programs not known, the policies, events and debits
   the operations refer to) in a few set-based queries, then applies every operation to
   in-memory *copies* of the accounts with no `await` between checking and changing:
   operations on an account are strictly serialized without any lock.
3. The batch is written in one PostgreSQL transaction (group commit), fenced by account
   versions. Only after COMMIT are the copies swapped into the cache and the callers
   answered; reads use the cache, so they never show an uncommitted effect.
4. If the commit fails, every operation of the batch gets a retryable `unavailable` answer
   and the touched accounts are evicted, to be reloaded from PostgreSQL next time.

One batch is in flight at a time; operations arriving meanwhile form the next batch, so the
batch size grows with load by itself (natural group commit). The queue and the batch loop
are the engine both shard kinds share (`actors.group_commit`); what each kind of operation
does to an account is in `actors.account_ops`. This class keeps the batch mechanics:
prefetch, the apply loop inside the idempotency frame, commit, publish, replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from actors import tracing
from actors.account_ops import (
    CREATES_ACCOUNT,
    DRY_RUN,
    KEYED,
    NEEDS_CONFIG,
    NEEDS_EVENT,
    STANDALONE,
    CompiledConfig,
    Context,
    Lru,
    Op,
    Work,
    compile_config,
    working_copy,
)
from actors.breaker import Breaker
from actors.group_commit import QUEUED_MAX, RETRY_S, DatabaseUnreachable, GroupCommitter, answer
from actors.metrics import ShardMetrics
from actors.protocol import AccountCommand, Expire, Outcome, Retier
from actors.routing import slot_of
from actors.topology import EverythingOwned, Ownership, SlotMoved, moved_outcome
from db.errors import unreachable
from db.ledger_chain import SEAL_INTERVAL_S, chain_of
from db.ledger_repo import (
    AccountKey,
    EventsTaken,
    FencedError,
    IdemKey,
    KeysExist,
    LedgerRepo,
)
from domain.earning import tier_view
from domain.errors import Code, PointsError
from domain.idempotency import StoredResponse, replay
from domain.ledger import Account, account_view, new_account
from domain.limits import EXPIRING_SOON_DAYS, LOTS_IN_VIEW_MAX
from domain.policy import zone

log = logging.getLogger("points.shard")

BATCH_MAX = 1024
ACCOUNTS_CACHED_MAX = 200_000
KEYS_CACHED_MAX = 200_000
# How long to wait for more operations before starting a batch when the queue is not
# already full. 0 = natural batching only (operations queue while a commit is in flight).
BATCH_WINDOW_S = 0.0
# A batch re-runs after finding keys already committed; a second re-run is already unusual.
KEY_RETRIES_MAX = 3
TIER_ACCOUNTS_PER_PASS = 2000
# A program's policy and rule sets are re-read at most this old (a PUT also tells shards).
PROGRAM_CONFIG_TTL_S = 2.0
# The expiry job: how many accounts one pass looks at.
EXPIRY_ACCOUNTS_PER_PASS = 500
# A closing shard seals what is pending for at most this long.
SEAL_ON_CLOSE_S = 2.0


def utcnow() -> datetime:
    return datetime.now(UTC)


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
        ownership: Ownership | None = None,
        queued_max: int = QUEUED_MAX,
        commit_retry_s: float = RETRY_S,
        breaker: Breaker | None = None,
        metrics: ShardMetrics | None = None,
    ) -> None:
        """`ownership`: the slots this shard owns (actors/topology.py); without one it owns
        every slot unfenced, which only a test of one shard's logic may do. `queued_max`,
        `commit_retry_s`, `breaker`: overload and outage handling (actors/group_commit.py).
        `metrics`: where commits are counted (actors/metrics.py; named after the shard)."""
        assert batch_max > 0 and batch_window_s >= 0
        self.repo = repo
        self.ownership = ownership or EverythingOwned("account", slot_of)
        self.ownership.on_lost = self._forget_slots
        self.name = f"{self.ownership.kind}-{self.ownership.shard}"
        self.metrics = metrics or ShardMetrics(self.name)
        self._commit_seq = 0
        # Every batch's transactions are linked into this shard's own hash chain.
        self._chain = chain_of(self.ownership.kind, self.ownership.shard)
        self._sealer = repo.sealer()
        self._sealer_task: asyncio.Task[None] | None = None
        # Something may be pending (at start: whatever a previous life left).
        self._unsealed = True
        # Reads and pings come from other coroutines than the batch loop: own connection.
        self.reader = repo.reader()
        self._clock = clock
        self._accounts: Lru = Lru(accounts_cached_max)
        self._keys: Lru = Lru(keys_cached_max)
        self._expiry_task: asyncio.Task[None] | None = None
        self._tier_cursor: AccountKey = ("", "")
        self._commits: GroupCommitter[Op] = GroupCommitter(
            self._process,
            batch_max=batch_max,
            batch_window_s=batch_window_s,
            clock=clock,
            name="shard",
            log=log,
            queued_max=queued_max,
            retry_s=commit_retry_s,
            breaker=breaker,
        )
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
            "moved": 0,
            "replays": 0,
        }
        # What the operation handlers read besides accounts (filled by the prefetch). Event
        # ids found recorded for another member are bounded like the key cache.
        self._ctx = Context(random_bytes, self.stats, Lru(keys_cached_max))

    # ----------------------------------------------------------------- public API

    async def submit(self, command: AccountCommand) -> Outcome:
        """Apply one operation; answers its outcome after commit.

        A refund (`refund_of`: a debit's transaction id) gives back everything that debit took,
        into the lots it took it from. The redemption saga uses it to compensate.
        """
        return await self.enqueue(command)

    def enqueue(self, command: AccountCommand, request_id: str = "") -> asyncio.Future[Outcome]:
        """Queue one operation; its future gets the answer after commit. Many at once cost
        no Task each (gather over futures), which matters for batches of 1,000 events.
        `request_id`: the request it serves, named in the commit's log line."""
        assert isinstance(command, AccountCommand), type(command)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        op = Op.of(command, future)
        op.request_id = request_id or tracing.request_id()
        op.slot = self.ownership.slot_of(op.program_id, op.member_id)
        self._commits.add(op)
        return future

    async def get_account(self, program_id: str, member_id: str) -> dict[str, Any] | None:
        """The committed state of an account (cache, else PostgreSQL), or None. While the
        breaker is open the database is not asked: `unavailable` at once."""
        if self.breaker.is_open(time.monotonic()):
            raise PointsError(Code.UNAVAILABLE, "database unavailable (circuit open), retry")
        key = (program_id, member_id)
        slot = self.ownership.slot_of(program_id, member_id)
        await self.ownership.ensure([slot])
        if self.ownership.epoch(slot) is None:
            # Not (or no longer) ours: what the cache holds may be stale. The router asks
            # the map again and reads from the owner.
            raise SlotMoved(f"slot {slot} is not owned by this shard")
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
        config = self._ctx.configs.get(program_id)
        if config is not None and time.monotonic() - config.loaded_at < PROGRAM_CONFIG_TTL_S:
            return config
        try:
            loaded = (await self.reader.load_program_configs([program_id])).get(program_id)
            return None if loaded is None else compile_config(loaded, time.monotonic())
        except PointsError:
            log.exception("program %s has an invalid stored policy or rule set", program_id)
            return None

    @property
    def breaker(self) -> Breaker:
        """The circuit breaker around this shard's database (actors/breaker.py)."""
        return self._commits.breaker

    def export_metrics(self) -> None:
        """Gauges and counter growth to Ray's metrics (the actor calls it periodically)."""
        self.metrics.sync(
            self._commits.queued,
            len(self._accounts),
            self._commits.breaker.state.value,
            {**self.stats, "shed": self._commits.shed},
        )

    async def ping(self) -> dict[str, Any]:
        await self.reader.ping()
        return {
            "cached_accounts": len(self._accounts),
            "queued": self._commits.queued,
            "failed": self._commits.failed,
            "queued_peak": self._commits.queued_peak,
            "shed": self._commits.shed,
            "reruns": self._commits.reruns,
            "breaker": self._commits.breaker.state.value,
            "breaker_opened": self._commits.breaker.opened,
            **self.stats,
        }

    async def release(self, slots: list[int], timeout_s: float) -> dict[str, int]:
        """Hand slots off (actors/topology.py): refuse their requests from now on (`moved`),
        let the batch in flight finish, then forget their accounts. False `settled`: the
        batch did not finish in time (the epoch fence still stops its commit)."""
        wanted = set(slots)
        released = self.ownership.release(wanted)
        settled = await self._commits.settle(timeout_s)
        evicted = [key for key in self._accounts if self.ownership.slot_of(*key) in wanted]
        for key in evicted:
            self._accounts.pop(key, None)
        return {"released": len(released), "evicted": len(evicted), "settled": int(settled)}

    def forget_program(self, program_id: str) -> None:
        self._ctx.programs.discard(program_id)
        self._ctx.configs.pop(program_id, None)

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
        if self._sealer_task is not None:
            self._sealer_task.cancel()
        self._commits.close()
        with contextlib.suppress(Exception):  # what is pending is sealed by whoever is next
            await asyncio.wait_for(self.seal_chain(), SEAL_ON_CLOSE_S)
        await self.repo.close()
        await self.reader.close()
        await self._sealer.close()

    # ----------------------------------------------------------------- hash chain

    def start_sealer(self, interval_s: float = SEAL_INTERVAL_S) -> None:
        """Every `interval_s`, seal what this shard's commits left pending into a link of
        its chain (db/ledger_chain.py), beside the batch loop, on its own connection. The
        first pass seals what a previous life of this shard left (a crash)."""
        assert interval_s > 0
        if self._sealer_task is None or self._sealer_task.done():
            self._sealer_task = asyncio.get_running_loop().create_task(self._seal_loop(interval_s))

    async def seal_chain(self) -> int:
        """Seal what is pending now; the transactions linked."""
        return await self._sealer.seal_chain(self._chain, self._commits.now())

    async def _seal_loop(self, interval_s: float) -> None:
        while True:
            if self._unsealed:
                self._unsealed = False
                try:
                    await self.seal_chain()
                except Exception as exc:  # the database away: next time
                    self._unsealed = True
                    await self._sealer.reset()
                    log.warning("sealing the hash chain failed, retrying: %r", exc)
            await asyncio.sleep(interval_s)

    # ----------------------------------------------------------------- batch loop

    async def _process(self, batch: list[Op]) -> None:
        started = time.perf_counter()
        try:
            batch = await self.ownership.keep_owned(batch, lambda op: op.slot, self._moved)
        except Exception as exc:
            if unreachable(exc):
                raise DatabaseUnreachable(f"reading the slot map: {exc!r}"[:200]) from exc
            self._commits.fail(batch, f"database unavailable: {type(exc).__name__}")
            return
        if not batch:
            return
        try:
            pinned = await self._prefetch(batch)
        except Exception as exc:
            await self.repo.reset()
            if unreachable(exc):
                raise DatabaseUnreachable(f"prefetch: {exc!r}"[:200]) from exc
            self._commits.fail(batch, f"database unavailable: {type(exc).__name__}")
            return
        self.stats["prefetch_s"] += time.perf_counter() - started

        for _attempt in range(KEY_RETRIES_MAX):
            work = await self._apply_and_commit(batch, pinned)
            if work is None:  # failed and answered, or nothing left to do
                return
            if isinstance(work, EventsTaken):
                # The same event id was applied for another member of the program (or for
                # this one, longer ago than the idempotency retention): those operations
                # are conflicts; the rest of the batch runs again.
                for taken in work.keys:
                    self._ctx.taken_events.put(taken, True)
                batch = [op for op in batch if not op.future.done()]
                continue
            if isinstance(work, KeysExist):
                # Keys committed before this shard's cache knew them (a restart, an
                # eviction): load their stored answers and run the batch again.
                try:
                    stored = await self.repo.lookup_idempotency(work.keys)
                except Exception as exc:
                    await self.repo.reset()
                    if unreachable(exc):
                        raise DatabaseUnreachable(f"idempotency lookup: {exc!r}"[:200]) from exc
                    self._commits.fail(batch, f"database unavailable: {type(exc).__name__}")
                    return
                for ikey, response in stored.items():
                    self._keys.put(ikey, response)
                batch = [op for op in batch if not op.future.done()]
                continue
            self._publish(work, len(batch))
            return
        self._commits.fail(batch, "idempotency keys kept changing, retry")

    async def _apply_and_commit(
        self, batch: list[Op], pinned: dict[AccountKey, Account]
    ) -> Work | KeysExist | EventsTaken | None:
        applied_at = time.perf_counter()
        now = self._commits.now()
        work = Work()
        work.write.chain = self._chain
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
            await self._commits.commit_failed(exc, self.repo.reset, self.stats)
            # Whatever this shard believed about these accounts may be stale: reload later.
            for key in work.accounts:
                self._accounts.pop(key, None)
            if isinstance(exc, FencedError):  # another shard may own some of our slots now
                with contextlib.suppress(Exception):
                    await self.ownership.refresh(force=True)
            elif unreachable(exc):
                # Committed or not, nobody was answered: the engine runs the batch again
                # from a fresh prefetch (its keys make a committed first run a replay).
                raise DatabaseUnreachable(f"commit: {exc!r}"[:200]) from exc
            self._commits.fail([op for op, _ in work.waiting], f"commit failed, retry: {exc}")
            return None
        finally:
            self.stats["commit_s"] += time.perf_counter() - committing_at
        self.metrics.committed(len(batch), time.perf_counter() - committing_at)
        return work

    def _forget_slots(self, lost: set[int]) -> None:
        """Slots a refresh of the map found gone (a move that did not reach this shard):
        what the cache holds for them is stale."""
        log.warning("lost %d slots to a move this shard was not told of", len(lost))
        for key in [k for k in self._accounts if self.ownership.slot_of(*k) in lost]:
            self._accounts.pop(key, None)

    def _publish(self, work: Work, ops: int) -> None:
        """After COMMIT: swap the new state into the cache, then answer the callers."""
        for key in work.changed:
            account, loaded_version = work.accounts[key]
            account.version = loaded_version + 1
            account.check()
            if self.ownership.epoch(self.ownership.slot_of(*key)) is None:
                # Released while this batch committed (a hand-off that gave up waiting):
                # do not cache what the new owner may change next.
                self._accounts.pop(key, None)
                continue
            self._accounts.put(key, account)
        for ikey, stored in work.write.idempotency:
            self._keys.put(ikey, stored)
        self.stats["batches"] += 1
        self.stats["ops"] += ops
        self.metrics.ledger(txn for txn, _ in work.write.transactions)
        if work.write.transactions:
            self._unsealed = True
        self._log_commit(work, ops)
        for op, index in work.waiting:  # `answer` inlined: the hottest loop of a batch
            if not op.future.done():
                op.future.set_result(work.results[index])

    async def _prefetch(self, batch: list[Op]) -> dict[AccountKey, Account]:
        """Load, in set-based queries, the programs and accounts the batch needs.

        Returns the committed state of every existing account the batch touches, held for
        the batch itself: the LRU may evict entries meanwhile, and an evicted account must
        not look like a new (or unknown) one to this batch.

        Idempotency keys are not looked up here: a new key is the normal case, so the commit
        inserts keys first and reports any that already exist (KeysExist).
        """
        ctx = self._ctx
        programs = list({op.program_id for op in batch} - ctx.programs)
        if programs:
            ctx.programs |= await self.repo.existing_programs(programs)
        # Earning operations need the program's policy and rule sets.
        monotonic = time.monotonic()
        stale = {
            op.program_id
            for op in batch
            if op.kind in NEEDS_CONFIG
            and (
                op.program_id not in ctx.configs
                or monotonic - ctx.configs[op.program_id].loaded_at >= PROGRAM_CONFIG_TTL_S
            )
        }
        if stale:
            for program_id, config in (await self.repo.load_program_configs(list(stale))).items():
                try:
                    ctx.configs[program_id] = compile_config(config, monotonic)
                except PointsError:
                    log.exception("program %s has an invalid stored policy or rules", program_id)
        reversed_events = list(
            {(op.program_id, op.event_id) for op in batch if op.kind in NEEDS_EVENT and op.event_id}
        )
        ctx.stored_events = await self.repo.load_events(reversed_events) if reversed_events else {}
        wanted = {(op.program_id, op.member_id) for op in batch}
        pinned: dict[AccountKey, Account] = {}
        for key in wanted:
            cached = self._accounts.get_fresh(key)
            if cached is not None:
                pinned[key] = cached
        # Refunds: the debits they give back and those debits' lots, as stored.
        sources = [op.refund_of for op in batch if op.refund_of is not None]
        ctx.sources = await self.repo.load_refund_sources(sources) if sources else {}
        # Decisions: the reviews they decide, as committed.
        reviews = [op.review_id for op in batch if op.review_id is not None]
        ctx.reviews = await self.repo.load_reviews(reviews) if reviews else {}
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

    def _moved(self, op: Op) -> bool:
        """Answer `moved` to an operation whose slot this shard does not own (nothing is
        applied: its router sends it to the owner)."""
        if self.ownership.epoch(op.slot) is not None:
            return False
        self.stats["moved"] += 1
        answer(op, moved_outcome(op.slot))
        return True

    def _apply(self, op: Op, work: Work, now: datetime, pinned: dict[AccountKey, Account]) -> None:
        """One operation: its handler (actors.account_ops), inside the idempotency frame for
        the keyed kinds. Check and change, no await."""
        if self._moved(op):  # released while the batch was being prefetched
            return
        standalone = DRY_RUN if op.dry_run else STANDALONE.get(op.kind)
        if standalone is not None:
            standalone(self._ctx, work, op, now, pinned)
            return
        ikey = (op.program_id, op.member_id, op.key)

        stored = self._keys.get_fresh(ikey)
        if stored is not None:  # committed earlier: answer at once
            self._answer_replay(op, stored)
            return
        first = work.keys.get(ikey)
        if first is not None:  # same key earlier in this very batch: answer after its commit
            if work.hashes[first] != op.request_hash:
                conflict = Outcome.refused(
                    Code.IDEMPOTENCY_CONFLICT,
                    "this Idempotency-Key was already used with a different request body",
                )
                work.wait(op, conflict, op.request_hash)
            else:  # a replay of the first: same code and body
                self.stats["replays"] += 1
                work.wait(op, work.results[first].as_replay(), op.request_hash)
            return

        if op.program_id not in self._ctx.programs:
            answer(op, Outcome.refused(Code.NOT_FOUND, f"program {op.program_id} not found"))
            return

        akey = (op.program_id, op.member_id)
        entry = work.accounts.get(akey)
        is_new = False
        if entry is None:
            committed = pinned.get(akey)
            if committed is not None:
                entry = working_copy(self._ctx, work, akey, committed, now)
            elif op.kind in CREATES_ACCOUNT:
                # Joins the batch only if the operation succeeds (below).
                entry = (new_account(op.program_id, op.member_id), 0)
                is_new = True
            else:
                answer(op, Outcome.refused(Code.NOT_FOUND, f"member {op.member_id} not found"))
                return
            if not is_new:
                work.accounts[akey] = entry

        try:
            result = KEYED[op.kind](self._ctx, work, op, entry[0], now, self._ctx.new_id(now))
        except PointsError as exc:
            if exc.code in (Code.VALIDATION_ERROR, Code.NOT_FOUND, Code.UNAVAILABLE) or is_new:
                # Bad input changes nothing and is not remembered under the key; neither is
                # an answer that may change (an event not yet known, a passing outage).
                answer(op, Outcome.of_error(exc))
                return
            result = Outcome.of_error(exc)
        else:
            if is_new:
                work.accounts[akey] = entry
        self._remember(op, work, akey, ikey, result)

    def _remember(
        self, op: Op, work: Work, akey: AccountKey, ikey: IdemKey, result: Outcome
    ) -> None:
        """Answer after commit and store the answer under the key."""
        # Any remembered answer bumps the account version, so a stale owner cannot record
        # an answer computed from stale state.
        work.changed.add(akey)
        work.keys[ikey] = work.wait(op, result, op.request_hash)
        work.write.idempotency.append(
            (ikey, StoredResponse(op.request_hash, result.code, result.body))
        )

    def _log_commit(self, work: Work, ops: int) -> None:
        """One line per group commit that wrote something: the requests it wrote, so a
        request id found in the ingress's lines leads to the commit (actors/tracing.py)."""
        if work.write.empty:
            return
        self._commit_seq += 1
        log.info(
            "%s committed batch %d: %d operations, %d transactions",
            self.name,
            self._commit_seq,
            ops,
            len(work.write.transactions),
            extra={
                "shard": self.name,
                "batch": self._commit_seq,
                "ops": ops,
                "transactions": len(work.write.transactions),
                "request_ids": sorted({op.request_id for op, _ in work.waiting if op.request_id}),
            },
        )

    def _answer_replay(self, op: Op, stored: StoredResponse) -> None:
        self.stats["replays"] += 1
        try:
            original = replay(stored, op.request_hash)
        except PointsError as exc:
            answer(op, Outcome.of_error(exc))
            return
        answer(op, Outcome(original.code, original.body, replayed=True))

    def _collect_account_writes(self, work: Work) -> None:
        if work.changed:
            work.write.fence = self.ownership.fence(
                {self.ownership.slot_of(*key) for key in work.changed}
            )
        for key in work.changed:
            account, loaded_version = work.accounts[key]
            account.check()
            if loaded_version == 0:
                work.write.new_accounts.append(account)
            else:
                work.write.updated_accounts.append((account, loaded_version))
