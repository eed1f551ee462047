"""A bank workload: concurrent credits and debits whose every acknowledged effect is checked.

`run_bank` creates a fresh program with `members` members (each credited SEED_POINTS
first, so that every account exists) and runs `clients` concurrent clients, each doing
random credits and debits (one at a time, each with a new Idempotency-Key) until
`duration_s` has passed and `during` (a node kill, a scaling, a slot move: anything run
alongside) has finished. A 5xx answer, a transport error or a timeout is
not an answer: the client sends THE SAME request with THE SAME key again (small backoff)
until it gets a definitive one (2xx or 4xx), within OP_DEADLINE_S per operation; an
operation that never got one is reported in `unresolved`.

Acknowledged: a credit or debit answered 201 (its transaction id recorded). A debit answered
409 insufficient_points is a refusal: nothing moved. Anything else is `unexpected`.

`verify` then reads everything back through the API: each member's balance (and lifetime
totals) equals their acknowledged credits minus debits, and their history holds each
acknowledged transaction exactly once and nothing else. `verify_ledger` runs the ledger's
invariant checks (db/verify_repo.py, as `python -m loadtests.verify` does) and compares the
program's rows in PostgreSQL with the acknowledged operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

# Per operation: from the first try to a definitive answer, retries included. A node's
# death takes GCS its health checks to notice (Ray's defaults: ~15-30 s), then the shards
# restart elsewhere; this leaves room for that and more.
OP_DEADLINE_S = 120.0
REQUEST_TIMEOUT_S = 10.0
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 1.0
CREDIT_SHARE = 0.55  # the rest are debits; some are refused (insufficient points)
POINTS_MAX = 100
SEED_POINTS = 100  # each member's first credit, before the clients start
PAGE_SIZE = 200  # the API's largest page
READERS = 8  # concurrent members read back by `verify`
SERVER_ERROR = 500
CREATED = 201
CONFLICT = 409
TOO_MANY_REQUESTS = 429


@dataclass(frozen=True)
class Ack:
    """An acknowledged operation: answered 201 with this transaction."""

    member_id: str
    kind: str  # "credit" or "debit"
    points: int
    idempotency_key: str
    transaction_id: str


@dataclass
class Tries:
    """What it took to get definitive answers."""

    retries: int = 0  # requests sent again (same key) after a non-answer
    server_errors: int = 0  # 5xx answers
    transport_errors: int = 0  # connection errors and timeouts
    throttled: int = 0  # 429 (retryable, like 5xx)


@dataclass
class BankResult:
    program_id: str
    members: list[str]
    acks: list[Ack] = field(default_factory=list)
    refusals: int = 0  # debits answered 409 insufficient_points
    replays: int = 0  # 201s marked Idempotent-Replayed: an earlier try had committed
    tries: Tries = field(default_factory=Tries)
    unexpected: list[str] = field(default_factory=list)  # answers that are neither
    unresolved: list[str] = field(default_factory=list)  # keys with no definitive answer
    elapsed_s: float = 0.0

    @property
    def ops_acknowledged(self) -> int:
        return len(self.acks)

    @property
    def retries(self) -> int:
        return self.tries.retries

    @property
    def server_errors(self) -> int:
        return self.tries.server_errors

    def expected_balances(self) -> dict[str, int]:
        balances = dict.fromkeys(self.members, 0)
        for ack in self.acks:
            balances[ack.member_id] += ack.points if ack.kind == "credit" else -ack.points
        return balances

    def summary(self) -> str:
        credits = sum(1 for a in self.acks if a.kind == "credit")
        return (
            f"bank {self.program_id}: {self.ops_acknowledged} acknowledged"
            f" ({credits} credits, {self.ops_acknowledged - credits} debits),"
            f" {self.refusals} refusals, {self.tries.retries} retries"
            f" ({self.tries.server_errors} 5xx, {self.tries.transport_errors} transport"
            f" errors/timeouts, {self.tries.throttled} 429), {self.replays} replays,"
            f" {len(self.unexpected)} unexpected, {len(self.unresolved)} unresolved,"
            f" in {self.elapsed_s:.1f} s"
        )


@contextlib.asynccontextmanager
async def _client(base_url: str, key: str, connections: int) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=REQUEST_TIMEOUT_S,
        limits=limits,
    ) as http:
        yield http


async def definitive(
    http: httpx.AsyncClient,
    tries: Tries,
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
    deadline_s: float = OP_DEADLINE_S,
    params: dict[str, Any] | None = None,
) -> httpx.Response | None:
    """Send until a definitive answer (2xx-4xx but 429); the same request, with the same
    key, every time. None: no definitive answer within `deadline_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_s
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    backoff = BACKOFF_FIRST_S
    while True:
        try:
            answer = await http.request(method, path, json=body, headers=headers, params=params)
        except httpx.TransportError:  # connection refused/reset, timeouts
            tries.transport_errors += 1
        else:
            if answer.status_code == TOO_MANY_REQUESTS:
                tries.throttled += 1
            elif answer.status_code >= SERVER_ERROR:
                tries.server_errors += 1
            else:
                return answer
        if loop.time() + backoff > deadline:
            return None
        tries.retries += 1
        await asyncio.sleep(backoff * (0.5 + random.random()))
        backoff = min(backoff * 2, BACKOFF_MAX_S)


async def _operation(
    http: httpx.AsyncClient, result: BankResult, member: str, kind: str, points: int, key: str
) -> None:
    """One credit or debit, sent until it has a definitive answer, and recorded."""
    answer = await definitive(
        http,
        result.tries,
        "POST",
        f"/v1/programs/{result.program_id}/members/{member}/{kind}s",
        body={"points": points, "reason": f"bank {kind} {key}"},
        idempotency_key=key,
    )
    if answer is None:
        result.unresolved.append(key)
        return
    if answer.status_code == CREATED:
        body = answer.json()
        assert abs(body["points"]) == points and body["member_id"] == member, body
        result.acks.append(Ack(member, kind, points, key, body["transaction_id"]))
        if answer.headers.get("Idempotent-Replayed") == "true":
            result.replays += 1
    elif (
        kind == "debit"
        and answer.status_code == CONFLICT
        and answer.json().get("code") == "insufficient_points"
    ):
        result.refusals += 1
    else:
        result.unexpected.append(f"{kind} {key}: {answer.status_code} {answer.text[:300]}")


async def _bank_client(
    http: httpx.AsyncClient,
    result: BankResult,
    rng: random.Random,
    name: str,
    stop: asyncio.Event,
) -> None:
    sequence = 0
    while not stop.is_set():
        sequence += 1
        member = rng.choice(result.members)
        kind = "credit" if rng.random() < CREDIT_SHARE else "debit"
        points = rng.randint(1, POINTS_MAX)
        key = f"{result.program_id}-{name}-{sequence}"
        await _operation(http, result, member, kind, points, key)


async def run_bank(
    base_url: str,
    key: str,
    *,
    members: int = 40,
    clients: int = 16,
    duration_s: float = 20.0,
    during: Callable[[], Awaitable[None]] | None = None,
    seed: int | None = None,
) -> BankResult:
    """Run the workload (see the module's docstring). An exception raised by `during` is
    raised here, once the clients have finished their operations in flight."""
    assert members > 0 and clients > 0 and duration_s >= 0
    rng = random.Random(seed)
    program_id = f"bank-{secrets.token_hex(4)}"
    result = BankResult(program_id, [f"member-{i:03d}" for i in range(members)])
    async with _client(base_url, key, clients + 1) as http:
        created = await definitive(
            http, Tries(), "PUT", f"/v1/programs/{program_id}", body={"name": "Bank"}
        )
        assert created is not None and created.status_code == CREATED, created
        # Every member's account exists before the clients start (a debit of a member
        # never credited is a 404): one acknowledged credit each.
        seeding = asyncio.Semaphore(clients)

        async def first_credit(member: str) -> None:
            async with seeding:
                key = f"{program_id}-seed-{member}"
                await _operation(http, result, member, "credit", SEED_POINTS, key)

        await asyncio.gather(*(first_credit(member) for member in result.members))
        stop = asyncio.Event()
        started = time.monotonic()
        workers = [
            asyncio.create_task(
                _bank_client(http, result, random.Random(rng.random()), f"c{i}", stop)
            )
            for i in range(clients)
        ]
        side = asyncio.ensure_future(during()) if during is not None else None
        try:
            await asyncio.sleep(duration_s)
            if side is not None:
                await side
        finally:
            stop.set()
            if side is not None and not side.done():
                side.cancel()
            # Each operation in flight ends by its deadline; then every client stops.
            await asyncio.gather(*workers)
            result.elapsed_s = time.monotonic() - started
    return result


async def _history(http: httpx.AsyncClient, tries: Tries, path: str) -> list[dict[str, Any]]:
    """Every transaction of a member, newest first, following next_cursor."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": PAGE_SIZE}
        if cursor is not None:
            params["cursor"] = cursor
        answer = await definitive(http, tries, "GET", path, params=params)
        assert answer is not None, f"GET {path}: no answer"
        assert answer.status_code == 200, f"GET {path}: {answer.status_code} {answer.text}"
        page = answer.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            return items


async def _check_member(
    http: httpx.AsyncClient, result: BankResult, member: str, acks: list[Ack], expected: int
) -> list[str]:
    tries = Tries()
    base = f"/v1/programs/{result.program_id}/members/{member}"
    answer = await definitive(http, tries, "GET", base)
    assert answer is not None, f"GET {base}: no answer"
    if answer.status_code == 404:  # never credited: no account at all
        return [] if not acks else [f"{member}: 404 but {len(acks)} acknowledged operations"]
    assert answer.status_code == 200, f"GET {base}: {answer.status_code} {answer.text}"
    problems: list[str] = []
    account = answer.json()
    balance = account["balance"]
    if balance["available"] != expected or balance["total"] != expected:
        problems.append(f"{member}: balance {balance}, acknowledged net {expected}")
    earned = sum(a.points for a in acks if a.kind == "credit")
    spent = sum(a.points for a in acks if a.kind == "debit")
    if (account["lifetime_earned"], account["lifetime_spent"]) != (earned, spent):
        problems.append(
            f"{member}: lifetime earned/spent {account['lifetime_earned']}/"
            f"{account['lifetime_spent']}, acknowledged {earned}/{spent}"
        )
    history = await _history(http, tries, f"{base}/transactions")
    seen = Counter(item["transaction_id"] for item in history)
    by_id = {item["transaction_id"]: item for item in history}
    for ack in acks:
        if seen[ack.transaction_id] != 1:
            problems.append(
                f"{member}: {ack.kind} {ack.idempotency_key} ({ack.transaction_id}) appears"
                f" {seen[ack.transaction_id]} times in the history"
            )
            continue
        item = by_id[ack.transaction_id]
        if (item["type"], abs(item["points"])) != (ack.kind, ack.points):
            problems.append(f"{member}: {ack} is {item['type']} {item['points']} in history")
    extra = set(seen) - {a.transaction_id for a in acks}
    if extra:
        problems.append(f"{member}: history holds unacknowledged transactions {sorted(extra)}")
    return problems


async def verify(base_url: str, key: str, result: BankResult) -> None:
    """Balances and histories, read through the API, match the acknowledged operations
    exactly. Raises AssertionError listing every mismatch. Members with an unresolved
    operation cannot be checked exactly (its effect is unknown): callers assert there are
    none first."""
    assert not result.unresolved, f"{len(result.unresolved)} operations never resolved"
    acks_of: dict[str, list[Ack]] = {member: [] for member in result.members}
    for ack in result.acks:
        acks_of[ack.member_id].append(ack)
    expected = result.expected_balances()
    readers = asyncio.Semaphore(READERS)

    async def check(member: str) -> list[str]:
        async with readers:
            return await _check_member(http, result, member, acks_of[member], expected[member])

    async with _client(base_url, key, READERS) as http:
        found = await asyncio.gather(*(check(member) for member in result.members))
    problems = [problem for member_problems in found for problem in member_problems]
    assert not problems, f"{len(problems)} mismatches:\n" + "\n".join(problems[:50])


def verify_ledger(dsn: str, result: BankResult) -> list[str]:
    """The ledger's invariants over the whole database (db/verify_repo.py), and this
    program's rows in PostgreSQL against the acknowledged operations. Returns the
    failures (empty: all hold)."""
    import psycopg

    from db.engine import libpq_url
    from db.verify_repo import run_checks

    url = libpq_url(dsn)
    failures = [
        f"{check.name}: {check.violations} violations, e.g. {check.examples}"
        for check in run_checks(url)
        if check.violations
    ]
    with psycopg.connect(url) as conn:
        txns = conn.execute(
            "SELECT txn_id::text, member_id, kind FROM transactions WHERE program_id = %s",
            (result.program_id,),
        ).fetchall()
        rows = conn.execute(
            "SELECT member_id, balance FROM accounts WHERE program_id = %s",
            (result.program_id,),
        ).fetchall()
    balances: dict[str, int] = {member: balance for member, balance in rows}
    acknowledged = {a.transaction_id: (a.member_id, a.kind) for a in result.acks}
    stored = {txn_id: (member, kind) for txn_id, member, kind in txns}
    if len(txns) != len(stored) or stored != acknowledged:
        failures.append(
            f"transactions in PostgreSQL ({len(txns)}) are not the acknowledged ones"
            f" ({len(acknowledged)}): {len(set(stored) - set(acknowledged))} extra,"
            f" {len(set(acknowledged) - set(stored))} missing"
        )
    for member, net in result.expected_balances().items():
        if balances.get(member, 0) != net:
            failures.append(f"{member}: balance {balances.get(member)} in PostgreSQL, net {net}")
    return failures
