"""Reports against real PostgreSQL: ledger activity written by the shard's own commit path
(ShardCore over LedgerRepo, with a clock we move), then each report reconciles with the
ledger: the liability's last closing is the ledger summary's outstanding total, breakage
cohorts sum to the lots, the rollups equal a GROUP BY over the sources; and migration 0009
backfills data written at 0008."""

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from actors.shard_core import ShardCore
from db.api_repo import ApiRepo
from db.engine import migrate
from db.ledger_repo import LedgerRepo
from db.reports_repo import (
    ROLLUP_DAILY_FLOWS,
    ROLLUP_DAILY_LOTS,
    SOURCE_DAILY_FLOWS,
    SOURCE_DAILY_LOTS,
    ReportsRepo,
)
from domain import reconciliation, reports
from domain.policy import parse_policy
from tests.conftest import temporary_database
from tests.integration.test_shard_core import op

START = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
MEMBERS = 12
POLICY = {
    "point_value": {
        "currency": "EUR",
        "values": [
            {"from": "2026-01-01T00:00:00Z", "minor_units_per_point": "0.5"},
            {"from": "2026-03-01T00:00:00Z", "minor_units_per_point": "0.75"},
        ],
    },
    "breakage_rate": "0.2",
}


@pytest.fixture
def fresh_db(pg_admin_url: str) -> Iterator[str]:
    with temporary_database(pg_admin_url, "points_reports") as url:
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO programs (program_id, name, policy) VALUES ('shop', 'Shop', %s)",
                (Jsonb(POLICY),),
            )
        yield url


async def write_activity(url: str) -> datetime:
    """Three months of credits (some expiring), debits, an expiry pass; returns the clock."""
    now = [START]
    core = ShardCore(LedgerRepo(url), clock=lambda: now[0])
    try:
        for month in range(3):
            now[0] = START + timedelta(days=30 * month)
            for i in range(MEMBERS):
                expiry = now[0] + timedelta(days=20) if i % 3 == 0 else None
                answer = await core.submit(
                    op("credit", "shop", f"m{i}", 100 + i, f"c{month}-{i}", expires_at=expiry)
                )
                assert answer.succeeded, answer
            now[0] += timedelta(days=1)
            for i in range(0, MEMBERS, 2):
                answer = await core.submit(op("debit", "shop", f"m{i}", 30, f"d{month}-{i}"))
                assert answer.succeeded, answer
            now[0] += timedelta(days=25)  # past the expiring lots
            done = await core.expire_due(lambda p, m: True)
            assert done["expired_points"] > 0
    finally:
        await core.close()
    return now[0]


def as_of(found: tuple[Any, ...]) -> tuple[Any, ...]:
    """A repository answer (snapshot, sums...) as the report's arguments (as_of, sums...)."""
    snap, *rest = found
    return (snap.as_of, *rest)


def rows(url: str, sql: str) -> set[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return set(conn.execute(sql).fetchall())  # type: ignore[arg-type]


async def test_rollups_equal_a_group_by_and_reports_reconcile(fresh_db: str) -> None:
    end = await write_activity(fresh_db)
    assert rows(fresh_db, ROLLUP_DAILY_FLOWS) == rows(fresh_db, SOURCE_DAILY_FLOWS)
    assert rows(fresh_db, ROLLUP_DAILY_LOTS) == rows(fresh_db, SOURCE_DAILY_LOTS)
    api = ApiRepo(fresh_db)
    await api.open()
    try:
        repo = ReportsRepo(api)
        policy = parse_policy(POLICY)
        today = end.date()
        # Liability by month, then by week and day: the last closing is what members hold.
        summary = await api.ledger_summary("shop", None)
        assert summary is not None
        books = reconciliation.summary("shop", None, summary["legs"], summary["kinds"], None)
        for granularity, first in (("month", date(2025, 12, 1)), ("week", date(2026, 1, 1))):
            win = reports.window(first, today, granularity, today)
            found = await repo.liability("shop", win.start, win.end)
            assert found is not None
            view = reports.liability("shop", policy, win, *as_of(found))
            last = view["rows"][-1]
            assert last["closing"] == books["outstanding"]["total"]
            assert view["rows"][0]["opening"] == 0
            assert sum(r["issued"] for r in view["rows"]) == books["flows"]["issued"]
            assert sum(r["expired"] for r in view["rows"]) == books["flows"]["expired"]
            for before, after in zip(view["rows"], view["rows"][1:], strict=False):
                assert before["closing"] == after["opening"]
        # A window starting later opens with everything before it.
        win = reports.window(date(2026, 2, 15), today, "day", today)
        found = await repo.liability("shop", win.start, win.end)
        assert found is not None
        view = reports.liability("shop", policy, win, *as_of(found))
        assert view["rows"][0]["opening"] > 0
        assert view["rows"][-1]["closing"] == books["outstanding"]["total"]
        march = [r for r in view["rows"] if r["period"] >= "2026-03-01"]
        assert march and all(r["minor_units_per_point"] == "0.75" for r in march)
        # Breakage: cohorts sum to the lots and to the totals.
        win = reports.window(date(2025, 12, 1), today, "month", today)
        found_b = await repo.breakage("shop", win.start, win.end)
        assert found_b is not None
        view = reports.breakage("shop", policy, win, *as_of(found_b))
        with psycopg.connect(fresh_db) as conn:
            issued, remaining = conn.execute(
                "SELECT sum(original), sum(remaining) FROM lots"
            ).fetchone()  # type: ignore[misc]
        assert view["totals"]["issued"] == issued == sum(r["issued"] for r in view["rows"])
        assert view["totals"]["outstanding"] == remaining
        assert view["totals"]["expired"] == books["flows"]["expired"]
        assert view["breakage_rate_source"] == "policy"
        # Expiring: nothing left to expire here (every expiring lot was written off).
        win = reports.window(None, None, "month", today, ahead=True)
        found_e = await repo.expiring("shop", win.start, win.end)
        assert found_e is not None
        view = reports.expiring("shop", win, *as_of(found_e))
        assert view["total_points"] == 0 and len(view["rows"]) == 12
        # Members: everyone earned; no tiers.
        win = reports.window(date(2026, 1, 1), today, "month", today)
        found_m = await repo.members("shop", win.start, win.end)
        assert found_m is not None
        view = reports.members("shop", win, *as_of(found_m))
        assert view["members"] == MEMBERS
        assert sum(r["new_members"] for r in view["rows"]) == MEMBERS
        assert view["tiers"] == [{"tier": None, "members": MEMBERS, "share": "1.0000"}]
    finally:
        await api.close()


def add_redemptions(url: str, at: datetime) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO rewards (program_id, reward_id, name, cost_points, stocked, reserved,"
            " redeemed, active, fulfillment, version, created_at, updated_at)"
            " VALUES ('shop', 'mug', 'Mug', 150, NULL, 0, 3, true, '{}', 1, now(), now())"
        )
        for n, (member, status) in enumerate(
            [
                ("m0", "completed"),
                ("m0", "completed"),
                ("m1", "completed"),
                ("m2", "failed"),
                ("m3", "cancelled"),
            ]
        ):
            conn.execute(
                "INSERT INTO redemptions (redemption_id, program_id, reward_id, member_id, slot,"
                " idempotency_key, request_hash, quantity, cost_points, points, status,"
                " stock_state, fulfillment, attempts, failure_code, created_at, updated_at)"
                " VALUES (%s, 'shop', 'mug', %s, 0, %s, 'h', 1, 150, 150, %s, 'redeemed', '{}',"
                " 1, %s, %s, %s)",
                (
                    uuid.uuid4(),
                    member,
                    f"k{n}",
                    status,
                    "fulfillment_failed" if status == "failed" else None,
                    at + timedelta(hours=n),
                    at,
                ),
            )


async def test_funnel_and_rewards(fresh_db: str) -> None:
    end = await write_activity(fresh_db)
    add_redemptions(fresh_db, datetime(2026, 2, 2, 9, 0, tzinfo=UTC))  # a Monday
    api = ApiRepo(fresh_db)
    await api.open()
    try:
        repo = ReportsRepo(api)
        today = end.date()
        win = reports.window(date(2026, 1, 1), today, "month", today)
        found = await repo.funnel("shop", win.start, win.end)
        assert found is not None
        view = reports.funnel("shop", win, *as_of(found))
        january = view["rows"][0]
        assert view["cheapest_reward_points"] == 150
        assert january["earned"] == MEMBERS
        assert january["reached_reward"] == MEMBERS  # each earned 300+ over three months
        assert (january["redeemed_once"], january["redeemed_twice"]) == (2, 1)
        assert january["redeemed_twice_rate"] == "0.5000"
        found_r = await repo.rewards("shop", win.start, win.end)
        assert found_r is not None
        view = reports.rewards("shop", parse_policy(POLICY), win, *as_of(found_r))
        assert view["rows"] == [
            {
                "reward_id": "mug",
                "name": "Mug",
                "redemptions": 5,
                "completed": 3,
                "cancelled": 1,
                "failed": 1,
                "in_progress": 0,
                "points": 450,
            }
        ]
        assert view["failures"] == {"fulfillment_failed": 1}
        assert view["heatmap"]["counts"][0][9:14] == [1, 1, 1, 1, 1]
        assert "reward,mug,Mug,5,3,1,1,0,450" in reports.to_csv(view)
    finally:
        await api.close()


def write_old_activity(url: str) -> None:
    """Per member: a credit of 100 (30 of it debited) and one of 50 that expired, on
    different days, with their lots and allocations, as SQL (the 0008 schema)."""
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(MEMBERS):
            member, day = f"m{i}", START + timedelta(days=i)
            kept, lapsed = uuid.uuid4(), uuid.uuid4()
            conn.execute(
                "INSERT INTO accounts (program_id, member_id, balance, version, lifetime_earned,"
                " lifetime_spent, created_at, updated_at)"
                " VALUES ('shop', %s, 70, 1, 150, 30, %s, %s)",
                (member, day, day),
            )
            txns = [  # (txn id, kind, points, at, allocations, new lot)
                (uuid.uuid4(), "credit", 100, day, [], (kept, 70, None)),
                (uuid.uuid4(), "credit", 50, day + timedelta(days=1), [], (lapsed, 0, day)),
                (uuid.uuid4(), "debit", 30, day + timedelta(days=2), [[str(kept), 30]], None),
                (uuid.uuid4(), "expire", 50, day + timedelta(days=40), [[str(lapsed), 50]], None),
            ]
            for txn_id, kind, points, at, allocations, lot in txns:
                conn.execute(
                    "INSERT INTO transactions (txn_id, program_id, member_id, kind, points,"
                    " reason, balance_after, created_at, allocations)"
                    " VALUES (%s, 'shop', %s, %s, %s, 'old', 0, %s, %s)",
                    (txn_id, member, kind, points, at, Jsonb(allocations)),
                )
                if lot is not None:
                    lot_id, remaining, expires = lot
                    conn.execute(
                        "INSERT INTO lots (lot_id, program_id, member_id, txn_id, original,"
                        " remaining, expires_at, created_at)"
                        " VALUES (%s, 'shop', %s, %s, %s, %s, %s, %s)",
                        (lot_id, member, txn_id, points, remaining, expires, at),
                    )


async def test_migration_backfills_data_written_at_0008(pg_admin_url: str) -> None:
    with temporary_database(pg_admin_url, "points_upgrade9") as url:
        migrate(url, "0008")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("INSERT INTO programs (program_id, name) VALUES ('shop', 'Shop')")
        write_old_activity(url)  # as the 0008 shards wrote it: no rollups
        migrate(url)
        assert rows(url, ROLLUP_DAILY_FLOWS) == rows(url, SOURCE_DAILY_FLOWS)
        assert rows(url, ROLLUP_DAILY_LOTS) == rows(url, SOURCE_DAILY_LOTS)
        with psycopg.connect(url) as conn:
            lots = conn.execute(
                "SELECT sum(issued), sum(remaining), sum(expired), sum(reversed)"
                " FROM report_daily_lots"
            ).fetchone()
        assert lots == (150 * MEMBERS, 70 * MEMBERS, 50 * MEMBERS, 0)
        # New commits add to their own chain; the sums stay equal.
        core = ShardCore(LedgerRepo(url))
        try:
            assert (await core.submit(op("credit", "shop", "m1", 5, "after"))).succeeded
            assert (await core.submit(op("debit", "shop", "m1", 3, "after-d"))).succeeded
        finally:
            await core.close()
        assert rows(url, ROLLUP_DAILY_FLOWS) == rows(url, SOURCE_DAILY_FLOWS)
        assert rows(url, ROLLUP_DAILY_LOTS) == rows(url, SOURCE_DAILY_LOTS)
        with psycopg.connect(url) as conn:
            chains = {c for (c,) in conn.execute("SELECT DISTINCT chain FROM report_daily_flows")}
        assert chains == {"backfill", "account-0"}
