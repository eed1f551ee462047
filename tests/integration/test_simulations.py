"""What-if replay against a real PostgreSQL: events applied by ShardCore (the shards' own
path: rules, caps, tiers, group commits), then jobs replaying them with the same rules (no
difference at all) and with one rule doubled (exactly that rule's points more), read back
as the API reads them; a stale job fails on read, a broken one fails with its error."""

import asyncio
import secrets
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from actors.earning import event_command
from actors.shard_core import ShardCore
from actors.simulation_job import run_simulation
from db.api_repo import ApiRepo
from db.ledger_repo import LedgerRepo
from db.simulations_repo import STALE_ERROR, SimulationsRepo
from domain.errors import Code
from domain.rules import compile_rule_set, rule_set_to_json
from domain.simulation import TIER_FROM_CURRENT, TIER_FROM_EXPLANATION, TIER_FROM_HISTORY
from tests.integration.test_earning_core import Clock

T0 = datetime(2026, 5, 20, 12, 0, tzinfo=UTC)
RULES: list[dict[str, Any]] = [
    {
        "id": "order_points",
        "event_type": "order",
        "award": {"type": "per_amount", "attribute": "amount", "rate": "0.01"},
        "priority": 10,
    },
    {
        "id": "big_order",
        "event_type": "order",
        "condition": "attributes.amount >= 50000",
        "award": {"type": "fixed", "points": 25},
        "priority": 20,
    },
    {
        "id": "check_in",
        "event_type": "check_in",
        "award": {"type": "fixed", "points": 10},
        "caps": {"per_member_day": 20},
    },
]
POLICY = {
    "caps": {"per_member_day": 5000},
    "tiers": {
        "basis": "lifetime",
        "tiers": [
            {"name": "member", "threshold": 0, "multiplier": "1"},
            {"name": "gold", "threshold": 800, "multiplier": "1.5"},
        ],
    },
}


def make_program(url: str) -> str:
    program_id = f"sim-{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO programs (program_id, name, policy) VALUES (%s, 'S', %s)",
            (program_id, Jsonb(POLICY)),
        )
        conn.execute(
            "INSERT INTO rule_sets (program_id, version, rules, effective_from, created_at)"
            " VALUES (%s, 1, %s, %s, %s)",
            (program_id, Jsonb(RULES), T0 - timedelta(days=400), T0),
        )
    return program_id


def event(member: str, kind: str, at: datetime, amount: int = 0) -> dict[str, Any]:
    return {
        "id": f"ev-{secrets.token_hex(6)}",
        "member_id": member,
        "type": kind,
        "occurred_at": at.isoformat(),
        "attributes": {"amount": amount} if kind == "order" else {},
    }


@pytest.fixture
async def repo(database_url: str) -> AsyncIterator[SimulationsRepo]:
    api = ApiRepo(database_url)
    await api.open()
    yield SimulationsRepo(api.connection)
    await api.close()


@pytest.fixture(scope="module")
async def applied(database_url: str) -> tuple[str, int]:
    """A program whose events the shards scored: (program id, points awarded in total)."""
    program = make_program(database_url)
    clock = Clock(T0)
    core = ShardCore(LedgerRepo(database_url), clock=clock)
    awarded = 0
    try:
        for day in range(3):
            clock.now = T0 + timedelta(days=day)
            for m in range(4):
                member = f"m{m}"
                at = clock.now - timedelta(minutes=30 - m)
                events = [
                    event(member, "order", at, 100 * (70 + 230 * m * (day + 1))),
                    event(member, "check_in", at),
                    event(member, "check_in", at + timedelta(minutes=1)),
                    event(member, "check_in", at + timedelta(minutes=2)),  # over the day cap
                ]
                # One member's events of a day in one group commit, the others one by one.
                commands = [event_command(program, e, False, clock.now) for e in events]
                if m == 0:
                    answers = await asyncio.gather(*(core.submit(c) for c in commands))
                else:
                    answers = [await core.submit(c) for c in commands]
                assert all(a.code is Code.CREATED for a in answers), answers
                awarded += sum(a.body["points"] for a in answers)
    finally:
        await core.close()
    return program, awarded


async def simulate(
    repo: SimulationsRepo,
    url: str,
    program: str,
    rules: list[dict[str, Any]],
    from_at: datetime = T0 - timedelta(days=1),
    to_at: datetime = T0 + timedelta(days=3),
) -> dict[str, Any]:
    normal = rule_set_to_json(compile_rule_set(rules, 1))
    job = await repo.create(program, normal, from_at, to_at, 3, "k1")
    assert job["status"] == "queued" and job["progress"]["events_done"] == 0
    assert run_simulation(url, uuid.UUID(job["simulation_id"])) == "done"
    done = await repo.get(program, uuid.UUID(job["simulation_id"]))
    assert done is not None and done["status"] == "done", done
    assert done["progress"]["events_done"] == done["progress"]["events_total"]
    return done


async def test_the_same_rules_show_no_difference(
    database_url: str, repo: SimulationsRepo, applied: tuple[str, int]
) -> None:
    program, awarded = applied
    result = (await simulate(repo, database_url, program, RULES))["result"]
    assert result["events"] == 48 and result["members"] == 4
    assert result["actual_points"] == result["candidate_points"] == awarded
    assert result["difference"] == 0 and result["events_changed"] == 0
    assert all(row["difference"] == 0 for row in result["by_rule"])
    assert {row["tier"] for row in result["by_tier"]} >= {None, "member", "gold"}
    sources = result["tiers_from"]
    assert sources[TIER_FROM_EXPLANATION] > 0 and sources[TIER_FROM_HISTORY] > 0
    assert sources[TIER_FROM_CURRENT] == 0 and sum(sources.values()) == 48
    assert result["top_members"] == []


async def test_a_doubled_rule_shows_exactly_its_difference(
    database_url: str, repo: SimulationsRepo, applied: tuple[str, int]
) -> None:
    program, _ = applied
    doubled = [
        {**rule, "award": {"type": "fixed", "points": 50}} if rule["id"] == "big_order" else rule
        for rule in RULES
    ]
    result = (await simulate(repo, database_url, program, doubled))["result"]
    same = (await simulate(repo, database_url, program, RULES))["result"]
    rules = {row["rule_id"]: row for row in result["by_rule"]}
    big = rules["big_order"]
    assert big["candidate_points"] == 2 * big["actual_points"] > 0
    assert big["difference"] == big["actual_points"]
    assert rules["order_points"]["difference"] == rules["check_in"]["difference"] == 0
    # Gold members' tier multiplier applies to the whole base: its program line moves too.
    assert result["difference"] == big["difference"] + rules["@program"]["difference"]
    assert result["actual_points"] == same["actual_points"]
    changed = {row["member_id"] for row in result["top_members"]}
    assert changed and len(result["top_members"]) <= 3
    types = {row["event_type"]: row["difference"] for row in result["by_event_type"]}
    assert types == {"order": result["difference"], "check_in": 0}


async def test_a_window_replays_only_its_events_with_the_caps_of_the_day(
    database_url: str, repo: SimulationsRepo, applied: tuple[str, int]
) -> None:
    program, _ = applied
    # Day 1, from 26.5 minutes before T0 + 1 day: m2's third check-in (capped to 0 by the
    # two before the window), m3's second and third: the caps count what came before.
    day = T0 + timedelta(days=1)
    start, end = day - timedelta(minutes=26, seconds=30), day
    result = (await simulate(repo, database_url, program, RULES, start, end))["result"]
    assert result["events"] == 3 and result["members"] == 2
    assert [row["event_type"] for row in result["by_event_type"]] == ["check_in"]
    assert result["difference"] == 0 and result["events_changed"] == 0
    assert result["actual_points"] in (10, 15)  # m3's second check-in (gold: x1.5)
    assert await repo.has_events(program, start, end)
    assert not await repo.has_events(program, T0 + timedelta(days=30), T0 + timedelta(days=31))


async def test_a_stale_job_fails_when_read_and_is_never_run(
    database_url: str, repo: SimulationsRepo, applied: tuple[str, int]
) -> None:
    program, _ = applied
    job = await repo.create(program, RULES, T0, T0 + timedelta(days=1), 5, None)
    job_id = uuid.UUID(job["simulation_id"])
    assert (await repo.get(program, job_id))["status"] == "queued"  # type: ignore[index]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE simulations SET heartbeat_at = now() - interval '1 hour'"
            " WHERE simulation_id = %s",
            (job_id,),
        )
    failed = await repo.get(program, job_id)
    assert failed is not None and failed["status"] == "failed" and failed["error"] == STALE_ERROR
    assert failed["result"] is None and failed["finished_at"] is not None
    assert run_simulation(database_url, job_id) == "skipped"
    assert await repo.get("other-program", job_id) is None
    assert await repo.get(program, uuid.uuid4()) is None


async def test_a_job_that_breaks_fails_with_its_error(
    database_url: str, repo: SimulationsRepo, applied: tuple[str, int]
) -> None:
    program, _ = applied
    job = await repo.create(program, [{"id": "x"}], T0, T0 + timedelta(days=1), 5, None)
    job_id = uuid.UUID(job["simulation_id"])
    assert run_simulation(database_url, job_id) == "failed"
    failed = await repo.get(program, job_id)
    assert failed is not None and failed["status"] == "failed"
    assert "PointsError" in failed["error"] and "event_type" in failed["error"]
