"""Experiments in the shard's earning path against a real PostgreSQL: a member's events
inside the window are scored by the arm a stable hash gives them, the assignment is
recorded once, events outside the window and event types the arm does not handle use the
version in effect, and an experiment's end stops it."""

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg.types.json import Jsonb

from actors.earning import event_command
from actors.shard_core import ShardCore
from db.ledger_repo import LedgerRepo
from db.verify_repo import run_checks
from domain.errors import Code
from domain.experiments import assign, parse_experiment
from tests.integration.test_earning_core import RULES, T0, Clock, make_program, order
from tests.integration.test_shard_core import db_rows

NOW = T0 + timedelta(days=1)
DOUBLE = [{**RULES[0], "award": {**RULES[0]["award"], "rate": "0.02"}}]
ARMS = [
    {"name": "control", "rule_version": 1, "weight": 50},
    {"name": "double", "rule_version": 2, "weight": 50},
]


def add_experiment(url: str, program: str, starts: datetime, ends: datetime) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO rule_sets (program_id, version, rules, effective_from, created_at)"
            " VALUES (%s, 2, %s, %s, %s)",
            # Version 2 takes effect far in the future: only the experiment uses it now.
            (program, Jsonb(DOUBLE), T0 + timedelta(days=3650), T0),
        )
        conn.execute(
            "INSERT INTO experiments (program_id, experiment_id, arms, starts_at, ends_at,"
            " created_at) VALUES (%s, 'dbl', %s, %s, %s, now())",
            (program, Jsonb(ARMS), starts, ends),
        )


@pytest.fixture
async def core(database_url: str) -> AsyncIterator[ShardCore]:
    shard = ShardCore(LedgerRepo(database_url), clock=Clock(T0 + timedelta(days=1)))
    yield shard
    await shard.close()


async def test_arms_score_their_members_events_inside_the_window(
    database_url: str, core: ShardCore
) -> None:
    program = make_program(database_url, {})
    add_experiment(database_url, program, T0, T0 + timedelta(days=30))
    experiment = parse_experiment(program, "dbl", ARMS, T0, T0 + timedelta(days=30), {1, 2})
    members = [f"m{i}-{secrets.token_hex(2)}" for i in range(24)]
    arms = {m: assign(experiment, m).name for m in members}
    assert set(arms.values()) == {"control", "double"}  # 24 members: both arms drawn

    for member in members:
        for day in (1, 2):  # two events inside the window
            answer = await core.submit(
                event_command(program, order(member, 10_000, T0 + timedelta(hours=day)), False, NOW)
            )
            assert answer.code is Code.CREATED, answer.body
            want = 200 if arms[member] == "double" else 100
            assert answer.body["points"] == want
            assert answer.body["experiment"] == {"id": "dbl", "arm": arms[member]}
            assert answer.body["rule_version"] == (2 if arms[member] == "double" else 1)
    # Before the window: the version in effect, no experiment.
    before = await core.submit(
        event_command(program, order(members[0], 10_000, T0 - timedelta(days=1)), False, NOW)
    )
    assert before.body["points"] == 100 and "experiment" not in before.body

    rows = db_rows(
        database_url,
        "SELECT member_id, arm FROM experiment_assignments WHERE program_id = %s",
        program,
    )
    assert dict(rows) == arms  # one row per member, their hash's arm
    assert not [r.name for r in run_checks(database_url) if r.violations]


async def test_an_ended_experiment_scores_nothing_more(database_url: str) -> None:
    program = make_program(database_url, {})
    add_experiment(database_url, program, T0, T0 + timedelta(days=30))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE experiments SET ended_at = now() WHERE program_id = %s", (program,))
    shard = ShardCore(LedgerRepo(database_url), clock=Clock(T0 + timedelta(days=1)))
    try:
        answer = await shard.submit(
            event_command(program, order("late", 10_000, T0 + timedelta(hours=1)), False, NOW)
        )
    finally:
        await shard.close()
    assert answer.body["points"] == 100 and "experiment" not in answer.body


def test_the_window_is_half_open() -> None:
    experiment = parse_experiment(
        "p", "e", ARMS, datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC), {1, 2}
    )
    assert experiment.running_at(datetime(2026, 1, 1, tzinfo=UTC))
    assert not experiment.running_at(datetime(2026, 2, 1, tzinfo=UTC))
