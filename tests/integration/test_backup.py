"""Backup and restore: a consistent dump with its manifest, restored and proved."""

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from db.backup import CHAIN_HEADS_KEY, MANIFEST_FILE, BackupError, backup, restore
from db.ledger_chain import APPEND_LINK
from db.verify_repo import CHAIN_ANCHORED, CHAIN_SOUND, chain_heads, run_checks
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
    # The chain's head is anchored in the manifest (one shard: one chain).
    with psycopg.connect(fresh_db) as conn:
        heads = chain_heads(conn)
    assert list(heads) == ["account-0"] and heads["account-0"]["seq"] >= 1
    assert manifest[CHAIN_HEADS_KEY] == heads
    restored = restore(tmp_path / "b1", empty_db)
    assert all(check.violations == 0 for check in restored.checks)
    assert {CHAIN_SOUND, CHAIN_ANCHORED} <= {check.name for check in restored.checks}
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


def test_a_restore_whose_chain_heads_differ_from_its_manifest_fails_loudly(
    fresh_db: str,  # noqa: F811
    empty_db: str,
    tmp_path: Path,
) -> None:
    asyncio.run(activity(fresh_db))
    backup(fresh_db, tmp_path / "b4")
    path = tmp_path / "b4" / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest[CHAIN_HEADS_KEY]["account-0"]["hash"] = "00" * 32
    path.write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match=CHAIN_HEADS_KEY):
        restore(tmp_path / "b4", empty_db)


def rewrite_consistently(url: str) -> None:
    """What a superuser who read db/ledger_chain.py can do: change a transaction, then
    recompute its link and every link after it with the service's own statement."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute(
            "UPDATE transactions SET reason = 'rewritten' WHERE txn_id ="
            " (SELECT txn_ids[1] FROM ledger_chain WHERE chain = 'account-0' AND seq = 1)"
        )
        old = conn.execute(
            "DELETE FROM ledger_chain WHERE chain = 'account-0' RETURNING seq, txn_ids, created_at"
        ).fetchall()
        for _seq, txn_ids, created_at in sorted(old):
            conn.execute(APPEND_LINK, {"chain": "account-0", "txn_ids": txn_ids, "at": created_at})


def test_a_chain_rewritten_consistently_is_caught_only_against_the_manifest(
    fresh_db: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from serve_app.cli import app

    asyncio.run(activity(fresh_db))
    made = backup(fresh_db, tmp_path / "b5")
    rewrite_consistently(fresh_db)
    # The chain alone cannot tell: it is consistent again.
    assert [r.name for r in run_checks(fresh_db) if r.violations] == []
    anchored = run_checks(fresh_db, made.manifest[CHAIN_HEADS_KEY])
    assert [r.name for r in anchored if r.violations] == [CHAIN_ANCHORED]
    runner = CliRunner()
    plain = runner.invoke(app, ["verify", "--database-url", fresh_db])
    assert plain.exit_code == 0, plain.output
    against = runner.invoke(
        app, ["verify", "--database-url", fresh_db, "--manifest", str(tmp_path / "b5")]
    )
    assert against.exit_code == 1 and "1 failed" in against.output


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
