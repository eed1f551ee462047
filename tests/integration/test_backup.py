"""Backup and restore: a consistent dump with its manifest, restored and proved."""

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from db.backup import MANIFEST_FILE, BackupError, backup, restore
from tests.conftest import temporary_database
from tests.integration.test_verify import activity, fresh_db  # noqa: F401  (a fixture)


@pytest.fixture
def empty_db(pg_admin_url: str) -> Iterator[str]:
    with temporary_database(pg_admin_url, "points_restore") as url:
        yield url


def test_a_backup_restores_into_an_empty_database_and_proves_itself(
    fresh_db: str,  # noqa: F811
    empty_db: str,
    tmp_path: Path,
) -> None:
    asyncio.run(activity(fresh_db))
    made = backup(fresh_db, tmp_path / "b1")
    manifest = made.manifest
    assert manifest["rows"]["transactions"] == 120  # 20 credits, 100 debits
    assert manifest["ledger"]["shop"]["system:issued"] == -20 * 50
    assert manifest["schema_revision"] and manifest["dump"]["bytes"] > 0
    restored = restore(tmp_path / "b1", empty_db)
    assert all(check.violations == 0 for check in restored.checks)
    with psycopg.connect(empty_db) as conn:
        row = conn.execute("SELECT count(*) FROM ledger_entries").fetchone()
    assert row is not None and row[0] == manifest["rows"]["ledger_entries"]
    # Into a database that is not empty: refused.
    with pytest.raises(BackupError, match="not empty"):
        restore(tmp_path / "b1", empty_db)


def test_a_restore_that_differs_from_its_manifest_fails_loudly(
    fresh_db: str,  # noqa: F811
    empty_db: str,
    tmp_path: Path,
) -> None:
    asyncio.run(activity(fresh_db))
    backup(fresh_db, tmp_path / "b2")
    path = tmp_path / "b2" / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest["ledger"]["shop"]["system:issued"] -= 1  # the books say one more point
    path.write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match="differs from the manifest"):
        restore(tmp_path / "b2", empty_db)


def test_a_damaged_dump_is_refused_before_anything_is_restored(
    fresh_db: str,  # noqa: F811
    empty_db: str,
    tmp_path: Path,
) -> None:
    backup(fresh_db, tmp_path / "b3")
    dump = tmp_path / "b3" / "points.dump"
    dump.write_bytes(dump.read_bytes()[:-10])
    with pytest.raises(BackupError, match="checksum"):
        restore(tmp_path / "b3", empty_db)
    with pytest.raises(BackupError, match="not empty"):
        backup(fresh_db, tmp_path / "b3")


def test_points_backup_and_points_restore(
    fresh_db: str,  # noqa: F811
    empty_db: str,
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from serve_app.cli import app

    asyncio.run(activity(fresh_db))
    runner = CliRunner()
    made = runner.invoke(app, ["backup", "--to", str(tmp_path / "cli"), "--database-url", fresh_db])
    assert made.exit_code == 0, made.output
    assert "120 transactions" in made.output
    restored = runner.invoke(app, ["restore", str(tmp_path / "cli"), "--database-url", empty_db])
    assert restored.exit_code == 0, restored.output
    assert "restored and verified" in restored.output
    again = runner.invoke(app, ["restore", str(tmp_path / "cli"), "--database-url", empty_db])
    assert again.exit_code == 1 and "not empty" in again.output
