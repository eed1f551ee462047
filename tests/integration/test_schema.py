"""db/models.py (the reference schema) and the Alembic migrations describe the same schema.

Alembic's `compare_metadata` sees tables, columns, types, nullability, server defaults,
foreign keys, unique constraints and indexes, but neither CHECK constraints nor the WHERE of
a partial index. So the second test also builds the schema from models.py in another fresh
database and compares PostgreSQL's own rendering of every column, constraint and index.
"""

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from db.engine import migrate, sqlalchemy_url
from db.models import metadata
from tests.conftest import temporary_database

# Columns in order: their rank, not PostgreSQL's attnum, which keeps a hole where a
# migration dropped a column (0004 dropped idempotency_keys.status).
COLUMNS = """
    SELECT table_name,
           rank() OVER (PARTITION BY table_name ORDER BY ordinal_position),
           column_name, data_type, is_nullable, column_default
    FROM information_schema.columns
    WHERE table_schema = 'public' AND table_name <> 'alembic_version'
    ORDER BY 1, 2
"""
CONSTRAINTS = """
    SELECT c.conrelid::regclass::text, c.conname, c.contype, pg_get_constraintdef(c.oid)
    FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
    WHERE n.nspname = 'public' AND c.conrelid <> 0
      AND c.conrelid::regclass::text <> 'alembic_version'
    ORDER BY 1, 2
"""
INDEXES = """
    SELECT tablename, indexname, indexdef FROM pg_indexes
    WHERE schemaname = 'public' AND tablename <> 'alembic_version'
    ORDER BY 1, 2
"""
TRIGGERS = """
    SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2
"""


@pytest.fixture(scope="module")
def migrated_url(pg_admin_url: str) -> Iterator[str]:
    with temporary_database(pg_admin_url, "points_schema") as url:
        migrate(url)
        yield url


def catalog(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def test_models_match_the_migrations_for_alembic(migrated_url: str) -> None:
    engine = create_engine(sqlalchemy_url(migrated_url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_models_match_the_migrations_in_the_catalog(migrated_url: str, pg_admin_url: str) -> None:
    """Columns (in order), every constraint incl. CHECKs, every index incl. partial ones."""
    with temporary_database(pg_admin_url, "points_schema_models") as models_url:
        engine = create_engine(sqlalchemy_url(models_url))
        try:
            metadata.create_all(engine)
        finally:
            engine.dispose()
        for sql in (COLUMNS, CONSTRAINTS, INDEXES):
            assert catalog(models_url, sql) == catalog(migrated_url, sql)


def test_the_catalog_comparison_sees_checks_and_partial_indexes(migrated_url: str) -> None:
    """The rows the comparison above relies on are there (it is not comparing nothing)."""
    constraints = {row[1]: row[3] for row in catalog(migrated_url, CONSTRAINTS)}
    assert "'refund'" in constraints["transactions_kind_known"]
    assert "'expire'" in constraints["transactions_kind_known"]
    assert "refers_to IS NOT NULL" in constraints["transactions_refund_refers"]
    assert "reserved + redeemed" in constraints["rewards_not_oversold"]
    indexes = {row[1]: row[2] for row in catalog(migrated_url, INDEXES)}
    assert indexes["transactions_one_refund"].startswith("CREATE UNIQUE INDEX")
    assert "WHERE (kind = 'refund'::text)" in indexes["transactions_one_refund"]
    assert "WHERE (status <> ALL" in indexes["redemptions_open"]
    assert "WHERE (remaining > 0)" in indexes["lots_open_by_member"]


def test_the_ledger_tables_are_append_only_after_migrating(migrated_url: str) -> None:
    """Triggers live only in the migration (models.py cannot express them)."""
    assert catalog(migrated_url, TRIGGERS) == [
        ("audit_log", "audit_log_append_only"),
        ("audit_log", "audit_log_no_truncate"),
        ("ledger_chain", "ledger_chain_append_only"),
        ("ledger_chain", "ledger_chain_no_truncate"),
        ("ledger_entries", "ledger_entries_append_only"),
        ("ledger_entries", "ledger_entries_no_truncate"),
        ("transactions", "transactions_append_only"),
        ("transactions", "transactions_no_truncate"),
    ]
