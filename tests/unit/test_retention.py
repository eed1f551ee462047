"""Retention settings and the job's logic (the purge itself: tests/integration)."""

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from actors.retention import RetentionJob
from db.retention_repo import Purged
from serve_app.builder import ARG_NAMES
from serve_app.runtime import shard_config
from serve_app.settings import Settings

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_retention_defaults_to_30_days_hourly() -> None:
    settings = Settings()
    assert settings.idempotency_retention_days == 30
    assert settings.retention_interval_s == 3600.0


def test_a_retention_under_7_days_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="idempotency_retention_days"):
        Settings(idempotency_retention_days=6)
    monkeypatch.setenv("POINTS_IDEMPOTENCY_RETENTION_DAYS", "3")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.setenv("POINTS_IDEMPOTENCY_RETENTION_DAYS", "7")
    assert Settings().idempotency_retention_days == 7
    with pytest.raises(ValidationError):
        Settings(retention_interval_s=0)


def test_the_shards_get_the_retention_settings() -> None:
    settings = Settings(
        idempotency_retention_days=9, retention_interval_s=60, webhook_secret="s" * 32
    )
    config = shard_config(settings)
    assert config["idempotency_retention_days"] == 9
    assert config["retention_interval_s"] == 60
    assert {"idempotency_retention_days", "retention_interval_s"} <= set(ARG_NAMES)


async def test_the_job_purges_before_now_less_the_retention_where_it_runs() -> None:
    asked: list[datetime] = []
    here = [True]

    async def purge(before: datetime) -> Purged:
        asked.append(before)
        return Purged(rows=3, batches=1)

    async def runs_here() -> bool:
        return here[0]

    job = RetentionJob(purge, runs_here, lambda: NOW, 30, 3600)
    assert await job.run_once() == Purged(3, 1)
    assert asked == [NOW - timedelta(days=30)]
    here[0] = False  # slot 0 moved to another shard: that one purges
    assert await job.run_once() is None
    assert asked == [NOW - timedelta(days=30)]
    assert job.stats == {"passes": 1, "purged": 3, "failures": 0}


def test_the_job_refuses_a_retention_under_the_minimum() -> None:
    async def purge(before: datetime) -> Purged:
        raise AssertionError("never called")

    async def runs_here() -> bool:
        return True

    with pytest.raises(AssertionError):
        RetentionJob(purge, runs_here, lambda: NOW, 6, 3600)
