"""`points demo`: a program with a few weeks of activity, to see what Points shows.

It creates a program (`demo` unless told otherwise) with a policy (time zone, expiry, tiers,
a point value in money and a breakage estimate), two rule set versions (the second, double
points on orders, in effect only from 2099: for a what-if or an experiment), a catalogue of
rewards, and then plays `weeks` of days: members order (an `order` event, amount in cents),
check in, and redeem rewards when they have the points; a few orders are refunded (the
event reversed). Every operation goes through the real cores (actors/shard_core.py,
actors/reward_core.py) in this process, with a clock that walks through those days, so the
ledger, the lots, the tiers, the reports' rollups and the hash chain are exactly what the
service would have written on those days (the service cannot backdate its own commits).

It writes directly to the database, beside a running service: the program is new, so no
account it touches is held by a running shard (which reads accounts lazily, fenced by
version, when it first needs them). Its shard appends to the chain `account-0`, like the
service's shard 0: two sealers of one chain are serialized (db/ledger_chain.py).
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from actors.earning import event_command
from actors.protocol import PutReward, Redeem, Reverse
from actors.reward_core import RewardCore
from actors.shard_core import ShardCore
from db.ledger_repo import LedgerRepo
from db.reward_repo import RewardRepo
from domain.errors import Code
from domain.idempotency import request_hash

POLICY: dict[str, Any] = {
    "time_zone": "Europe/Paris",
    "expiry": {"kind": "end_of_month", "n": 12},
    "tiers": {
        "basis": "rolling_days",
        "window_days": 90,
        "downgrade_grace_days": 7,
        "tiers": [
            {"name": "member", "threshold": 0, "multiplier": "1"},
            {"name": "silver", "threshold": 500, "multiplier": "1.25"},
            {"name": "gold", "threshold": 1500, "multiplier": "1.5"},
        ],
    },
    "point_value": {
        "currency": "EUR",
        "values": [{"from": "2000-01-01T00:00:00Z", "minor_units_per_point": "1"}],
    },
    "breakage_rate": "0.2",
}
ORDER_RULE: dict[str, Any] = {
    "id": "order_points",
    "event_type": "order",
    "award": {"type": "per_amount", "attribute": "amount", "rate": "0.01", "rounding": "down"},
}
RULES = [
    ORDER_RULE,
    {"id": "check_in", "event_type": "check_in", "award": {"type": "fixed", "points": 5}},
]
DOUBLE_RULES = [{**ORDER_RULE, "award": {**ORDER_RULE["award"], "rate": "0.02"}}, RULES[1]]
REWARDS = [  # (id, name, cost, stock)
    ("coffee", "Free coffee", 150, 2000),
    ("mug", "Coffee mug", 400, 300),
    ("tote", "Tote bag", 900, 100),
    ("voucher", "10 EUR voucher", 1000, 500),
]
FAR_FUTURE = datetime(2099, 1, 1, tzinfo=UTC)


@dataclass
class Played:
    program_id: str
    members: int
    days: int
    events: int = 0
    redemptions: int = 0
    reversals: int = 0
    refused: int = 0
    refusals: dict[str, int] = field(default_factory=dict)


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def create_program(url: str, program_id: str, start: datetime) -> None:
    """The program, its policy and its two rule set versions (refuses an existing id)."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        found = conn.execute("SELECT 1 FROM programs WHERE program_id = %s", (program_id,))
        if found.fetchone() is not None:
            raise ValueError(f"program {program_id!r} exists: choose another with --program")
        conn.execute(
            "INSERT INTO programs (program_id, name, policy, created_at, updated_at)"
            " VALUES (%s, 'Demo shop', %s, %s, %s)",
            (program_id, Jsonb(POLICY), start, start),
        )
        for version, rules, effective in ((1, RULES, start), (2, DOUBLE_RULES, FAR_FUTURE)):
            conn.execute(
                "INSERT INTO rule_sets (program_id, version, rules, effective_from, created_at)"
                " VALUES (%s, %s, %s, %s, %s)",
                (program_id, version, Jsonb(rules), effective, start),
            )


async def play(
    url: str,
    program_id: str = "demo",
    members: int = 200,
    weeks: int = 6,
    seed: int = 7,
    progress: Callable[[int, int], None] | None = None,
    now: datetime | None = None,
) -> Played:
    """Create the program and play `weeks` of activity up to `now` (default: now)."""
    assert members >= 1 and weeks >= 1
    rng = random.Random(seed)
    end = (now or datetime.now(UTC)).replace(microsecond=0)
    start = (end - timedelta(weeks=weeks)).replace(hour=6, minute=0, second=0)
    create_program(url, program_id, start)
    clock = _Clock(start)
    accounts = ShardCore(LedgerRepo(url), clock=clock)
    rewards = RewardCore(
        RewardRepo(url), accounts.submit, slot_of=lambda p, r: 0, clock=clock, recovery_interval_s=0
    )
    played = Played(program_id, members, weeks * 7)
    member_ids = [f"member-{i:04d}" for i in range(members)]
    # Some members shop often, most now and then: a weight per member.
    appetite = {m: rng.choice((0.05, 0.1, 0.1, 0.2, 0.35)) for m in member_ids}
    balances: dict[str, int] = dict.fromkeys(member_ids, 0)
    orders: list[tuple[str, str]] = []
    try:
        for reward_id, name, cost, stock in REWARDS:
            put = PutReward(
                program_id=program_id,
                reward_id=reward_id,
                name=name,
                cost_points=cost,
                stock=stock,
                per_member_limit=None,
                active=True,
                fulfillment={"type": "none"},
            )
            answer = await rewards.submit(put)
            assert answer.code in (Code.CREATED, Code.OK), answer.body
        for day in range(weeks * 7):
            for hour in (9, 12, 15, 18, 21):
                clock.now = start + timedelta(days=day, hours=hour - 6, minutes=rng.randrange(60))
                await _hour(
                    rng,
                    clock,
                    accounts,
                    rewards,
                    played,
                    program_id,
                    member_ids,
                    appetite,
                    balances,
                    orders,
                )
            if progress is not None:
                progress(day + 1, weeks * 7)
    finally:
        await rewards.close()
        await accounts.close()
    return played


async def _hour(
    rng: random.Random,
    clock: _Clock,
    accounts: ShardCore,
    rewards: RewardCore,
    played: Played,
    program_id: str,
    member_ids: list[str],
    appetite: dict[str, float],
    balances: dict[str, int],
    orders: list[tuple[str, str]],
) -> None:
    at = clock.now
    earning = []
    for member in member_ids:
        if rng.random() < appetite[member] / 5:
            kind = "order" if rng.random() < 0.8 else "check_in"
            event_id = f"{kind}-{secrets.token_hex(6)}"
            raw = {
                "id": event_id,
                "member_id": member,
                "type": kind,
                "occurred_at": at.isoformat(),
                "attributes": {"amount": rng.randrange(1_000, 25_000)} if kind == "order" else {},
            }
            earning.append(accounts.submit(event_command(program_id, raw, False, at)))
            if kind == "order":
                orders.append((member, event_id))
    for answer in await asyncio.gather(*earning):
        if answer.code is Code.CREATED:
            played.events += 1
            balances[answer.body["member_id"]] = answer.body["balance"]["available"]
        else:
            played.refused += 1
            played.refusals[answer.code.value] = played.refusals.get(answer.code.value, 0) + 1
    redeeming = []
    spending: list[tuple[str, int]] = []
    for member in member_ids:
        affordable = [r for r in REWARDS if r[2] <= balances[member]]
        if affordable and rng.random() < 0.08:
            reward_id, _, cost, _ = rng.choice(affordable)
            spending.append((member, cost))
            fields: dict[str, Any] = {
                "program_id": program_id,
                "member_id": member,
                "reward_id": reward_id,
                "quantity": 1,
            }
            redeeming.append(
                rewards.submit(
                    Redeem(
                        **fields,
                        key=secrets.token_hex(8),
                        request_hash=request_hash("redeem", fields),
                    )
                )
            )
    for (member, cost), answer in zip(spending, await asyncio.gather(*redeeming), strict=True):
        if answer.code is Code.CREATED:
            played.redemptions += 1
            balances[member] -= cost
        else:
            played.refused += 1
            played.refusals[answer.code.value] = played.refusals.get(answer.code.value, 0) + 1
    if orders and rng.random() < 0.1:  # now and then an order is refunded: its points go
        member, event_id = orders.pop(rng.randrange(len(orders)))
        reverse = Reverse(
            program_id=program_id,
            member_id=member,
            event_id=event_id,
            key=f"reverse {event_id}",
            request_hash=request_hash("reverse", {"program_id": program_id, "event_id": event_id}),
        )
        answer = await accounts.submit(reverse)
        played.reversals += answer.code in (Code.CREATED, Code.OK)
