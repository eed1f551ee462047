"""`points demo`: weeks of activity through the real cores, dated day by day, that verify
clean (every invariant, the hash chain, the report rollups)."""

from datetime import UTC, datetime

import psycopg
import pytest

from actors.demo import play
from db.engine import migrate
from db.verify_repo import run_checks
from tests.conftest import temporary_database

NOW = datetime(2026, 11, 29, 18, 0, tzinfo=UTC)


async def test_weeks_of_activity_spread_over_the_days_and_verify_clean(pg_admin_url: str) -> None:
    with temporary_database(pg_admin_url, "points_demo") as url:
        migrate(url)
        played = await play(url, "demo", members=30, weeks=2, seed=3, now=NOW)
        assert played.events > 50 and played.redemptions > 0 and played.days == 14
        with psycopg.connect(url) as conn:
            days = conn.execute(
                "SELECT count(DISTINCT created_at::date), max(created_at)"
                " FROM transactions WHERE program_id = 'demo'"
            ).fetchone()
            kinds = {
                row[0]
                for row in conn.execute(
                    "SELECT DISTINCT kind FROM transactions WHERE program_id = 'demo'"
                )
            }
        assert days is not None and days[0] >= 12 and days[1] <= NOW
        assert {"credit", "debit"} <= kinds
        assert [r.name for r in run_checks(url) if r.violations] == []
        with pytest.raises(ValueError, match="exists"):
            await play(url, "demo", members=3, weeks=1, now=NOW)
