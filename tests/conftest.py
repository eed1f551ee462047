"""Shared fixtures. Layers are marked by folder: unit, integration, e2e, cluster.

PostgreSQL for integration and e2e tests: POINTS_TEST_DATABASE_URL names a server (an admin
connection, e.g. postgresql://postgres@127.0.0.1:5432/postgres); each test run creates its
own fresh database there and drops it afterwards. Unset: the local server on
127.0.0.1:5432 if one answers, else an embedded PostgreSQL (pgserver) in a temp dir.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

LOCAL_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for layer in ("unit", "integration", "e2e", "cluster"):
            if layer in parts:
                item.add_marker(getattr(pytest.mark, layer))


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    url = os.environ.get("POINTS_TEST_DATABASE_URL")
    if url:
        yield url
        return
    if _answers(LOCAL_ADMIN_URL):
        yield LOCAL_ADMIN_URL
        return
    from db.embedded import EmbeddedPostgres

    embedded = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="points-test-pg-")))
    yield embedded.start()
    embedded.stop()


def _with_database(admin_url: str, name: str) -> str:
    base, _, query = admin_url.partition("?")
    base = base.rsplit("/", 1)[0] + "/" + name
    return base + ("?" + query if query else "")


@contextlib.contextmanager
def temporary_database(admin_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database on the server of `admin_url`, dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    try:
        yield _with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def database_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, migrated database for this test session."""
    from db.engine import migrate

    with temporary_database(pg_admin_url, "points_test") as url:
        migrate(url)
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("POINTS_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=2).ping()
        yield url
        return
    except redis.RedisError:
        pass
    from db.embedded import EmbeddedRedis

    embedded = EmbeddedRedis(Path(tempfile.mkdtemp(prefix="points-test-redis-")))
    yield embedded.start()
    embedded.stop()
