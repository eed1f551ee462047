"""Backups: a consistent snapshot of the database with a manifest, and a restore that
proves itself.

`backup` opens a REPEATABLE READ transaction, exports its snapshot, computes the manifest
in it (schema revision, per-program sums of every ledger account, row counts, the head of
every hash chain: db/ledger_chain.py) and runs
`pg_dump --snapshot` on that very snapshot: the dump and its manifest describe the same
instant, however much traffic runs meanwhile. `restore` refuses a database that is not
empty, runs `pg_restore`, computes the manifest again in the restored database and runs
every ledger invariant (db/verify_repo.py), the hash chain's included, with the manifest's
chain heads as anchors; any difference fails loudly.

The chain heads are the manifest's anchor: kept apart from the database (with the backup),
they catch a chain that someone rewrote consistently after the backup (`points verify
--manifest`), which the chain alone cannot.

pg_dump and pg_restore come from the embedded PostgreSQL's installation (pgserver), else
from PATH.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import psycopg

from db.verify_repo import ChainHeads, Result, chain_heads, has_chain, run_checks

DUMP_FILE = "points.dump"
MANIFEST_FILE = "manifest.json"
# 2: ledger_chain_heads (absent from version 1 manifests, and from a schema before 0008).
MANIFEST_VERSION = 2
CHAIN_HEADS_KEY = "ledger_chain_heads"
# The ledger's tables: their row counts are in the manifest.
COUNTED_TABLES = ("transactions", "ledger_entries", "accounts", "lots", "redemptions")


class BackupError(Exception):
    """A backup or restore that cannot be trusted: the message says why."""


def tool(name: str) -> str:
    """pg_dump / pg_restore: the embedded PostgreSQL's, else the one on PATH."""
    try:
        from pgserver._commands import POSTGRES_BIN_PATH

        bundled = Path(POSTGRES_BIN_PATH) / name
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} not found (install PostgreSQL's client tools)")
    return found


def _state(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """What a restore must reproduce exactly: schema revision, ledger sums, row counts."""
    revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    ledger: dict[str, dict[str, int]] = {}
    for program_id, account, total in conn.execute(
        "SELECT program_id, account, sum(amount)::bigint FROM ledger_entries"
        " GROUP BY program_id, account ORDER BY program_id, account"
    ).fetchall():
        ledger.setdefault(program_id, {})[account] = int(total)
    counts = {
        table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]
        for table in COUNTED_TABLES
    }
    state: dict[str, Any] = {
        "schema_revision": None if revision is None else revision[0],
        "ledger": ledger,
        "rows": counts,
    }
    if has_chain(conn):
        state[CHAIN_HEADS_KEY] = chain_heads(conn)
    return state


def manifest_anchors(manifest: dict[str, Any]) -> ChainHeads | None:
    """The chain heads a manifest anchors (None: a manifest from before the chain)."""
    heads: ChainHeads | None = manifest.get(CHAIN_HEADS_KEY)
    return heads


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of the backup in `directory` (a directory, or its manifest file)."""
    path = directory if directory.is_file() else directory / MANIFEST_FILE
    if not path.exists():
        raise BackupError(f"no {MANIFEST_FILE} in {directory}")
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


@dataclass(frozen=True)
class Backup:
    directory: Path
    manifest: dict[str, Any]


def backup(dsn: str, directory: Path) -> Backup:
    """A consistent dump of `dsn` into `directory` (created; must be empty) with its
    manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise BackupError(f"{directory} is not empty")
    dump = directory / DUMP_FILE
    with psycopg.connect(dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()
            assert snapshot is not None
            state = _state(conn)
            taken_at = conn.execute("SELECT now()").fetchone()
            assert taken_at is not None
            done = subprocess.run(
                [
                    tool("pg_dump"),
                    "--format=custom",
                    "--no-owner",
                    "--no-privileges",
                    f"--snapshot={snapshot[0]}",
                    f"--file={dump}",
                    f"--dbname={dsn}",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
    if done.returncode != 0:
        raise BackupError(f"pg_dump failed: {done.stderr.strip()}")
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "taken_at": taken_at[0].astimezone(UTC).isoformat().replace("+00:00", "Z"),
        **state,
        "dump": {"file": DUMP_FILE, "bytes": dump.stat().st_size, "sha256": _sha256(dump)},
    }
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return Backup(directory, manifest)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Restored:
    manifest: dict[str, Any]
    checks: list[Result]


def restore(directory: Path, dsn: str) -> Restored:
    """Restore the backup in `directory` into the empty database `dsn`, then prove it: the
    dump's checksum, the manifest computed again, every ledger invariant. Raises
    BackupError on any difference."""
    manifest = read_manifest(directory)
    dump = directory / manifest["dump"]["file"]
    if _sha256(dump) != manifest["dump"]["sha256"]:
        raise BackupError(f"{dump} does not match the manifest's checksum")
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
    if tables is None or tables[0] != 0:
        raise BackupError("the target database is not empty: restore into a new one")
    done = subprocess.run(
        [
            tool("pg_restore"),
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            f"--dbname={dsn}",
            str(dump),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BackupError(f"pg_restore failed: {done.stderr.strip()}")
    with psycopg.connect(dsn) as conn:
        state = _state(conn)
    expected = {key: manifest[key] for key in state if key != CHAIN_HEADS_KEY}
    if CHAIN_HEADS_KEY in manifest:  # a version 1 manifest has none to compare
        expected[CHAIN_HEADS_KEY] = manifest[CHAIN_HEADS_KEY]
    found = {key: state.get(key) for key in expected}
    if found != expected:
        differing = sorted(key for key in expected if found[key] != expected[key])
        raise BackupError(f"the restored database differs from the manifest: {differing}")
    checks = run_checks(dsn, manifest_anchors(manifest))
    failed = [check.name for check in checks if check.violations]
    if failed:
        raise BackupError(f"ledger invariants violated after restore: {failed}")
    return Restored(manifest, checks)
