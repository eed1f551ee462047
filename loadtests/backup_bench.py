"""Benchmark: backup and restore of a ledger of 10^6 transactions (times and sizes).

    python -m loadtests.backup_bench [--transactions 1000000] [--members 100000]
        [--batch 1000] [--shards 2] [--database-url ADMIN_URL] [--keep] [--json out.json]

What: the ledger is written through the real commit path, in-process (ShardCore +
LedgerRepo, no Ray, no HTTP): one program, credits of 100 points spread round-robin over
--members members and debits of 10 points (one operation in five, on members credited in an
earlier round), so the ledger holds both kinds. Each of --shards shards owns a disjoint part
of the members and appends to its own hash chain (account-0, account-1, ...); each round
gathers --batch operations per shard, so group commits are about --batch operations each.

Then `db.backup.backup` (REPEATABLE READ snapshot, manifest, `pg_dump --format=custom`) is
timed into a temporary directory, and `db.backup.restore` into a second, empty database
(checksum, `pg_restore`, the manifest computed again, every ledger invariant and the hash
chains against the manifest's heads). `restore` returns no sub-timings, so the verification
part (`db.verify_repo.run_checks`) is timed again on its own on the restored database; that
second run finds the data in PostgreSQL's cache, so it is a lower bound of its share.

Both databases are created on the given PostgreSQL (admin URL) and dropped at the end, with
the backup directory, unless --keep. Every figure printed is measured during this run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from actors.protocol import Credit, Debit
from actors.routing import slot_of
from actors.shard_core import ShardCore
from actors.topology import EverythingOwned
from db.backup import backup, manifest_anchors, restore
from db.engine import libpq_url, migrate
from db.ledger_repo import LedgerRepo
from db.verify_repo import run_checks
from domain.idempotency import request_hash
from loadtests.bench import DEFAULT_ADMIN_URL, with_dbname

PROGRAM = "backup-bench"
CREDIT_POINTS = 100
DEBIT_POINTS = 10
DEBIT_EVERY = 5  # one operation in five is a debit
MB = 1_000_000


@contextlib.contextmanager
def database(admin_url: str, prefix: str, keep: bool) -> Iterator[str]:
    """A new, empty database on the server of `admin_url` (dropped afterwards unless
    `keep`); yields its URL."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_dbname(admin_url, name)
    finally:
        if not keep:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def command(kind: str, member: str, points: int, key: str) -> Credit | Debit:
    fields: dict[str, Any] = {"points": points, "reason": "backup bench"}
    hashed = request_hash(kind, {"program_id": PROGRAM, "member_id": member, **fields})
    cls = Credit if kind == "credit" else Debit
    return cls(program_id=PROGRAM, member_id=member, key=key, request_hash=hashed, **fields)


def shard_core(url: str, shard: int) -> ShardCore:
    """A shard that owns every slot unfenced (no topology in this database), appending to
    its own chain `account-<shard>`; the bench gives each shard a disjoint set of members."""
    ownership = EverythingOwned("account", slot_of)
    ownership.shard = shard
    return ShardCore(LedgerRepo(url), ownership=ownership)


async def write_ledger(
    url: str, transactions: int, members: int, batch: int, shards: int, console: Console
) -> dict[str, Any]:
    """`transactions` operations through ShardCore; returns what was answered and when."""
    cores = [shard_core(url, s) for s in range(shards)]
    rng = random.Random(11)
    answers: Counter[str] = Counter()
    credits = 0  # credits answered so far: members 0 .. min(credits, members)-1 have points
    sent = 0
    started = time.perf_counter()
    try:
        with Progress(
            TextColumn("writing the ledger"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task("ops", total=transactions)
            while sent < transactions:
                credited = min(credits, members)
                futures = []
                kinds = Counter[str]()
                for _ in range(min(batch * shards, transactions - sent)):
                    if credited > 0 and sent % DEBIT_EVERY == DEBIT_EVERY - 1:
                        index = rng.randrange(credited)
                        kind, points = "debit", DEBIT_POINTS
                    else:
                        index = (credits + kinds["credit"]) % members
                        kind, points = "credit", CREDIT_POINTS
                    kinds[kind] += 1
                    op = command(kind, f"m{index}", points, f"bb-{sent}")
                    futures.append(cores[index % shards].enqueue(op))
                    sent += 1
                for outcome in await asyncio.gather(*futures):
                    answers[outcome.code.name] += 1
                credits += kinds["credit"]
                progress.advance(bar, len(futures))
        elapsed = time.perf_counter() - started
        batches = sum(core.stats["batches"] for core in cores)
        ops = sum(core.stats["ops"] for core in cores)
    finally:
        for core in cores:
            await core.close()
    return {
        "seconds": elapsed,
        "ops_per_s": transactions / elapsed,
        "answers": dict(answers),
        "commits": int(batches),
        "ops_per_commit": ops / batches if batches else 0.0,
    }


def database_size(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(row[0])


def directory_size(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.rglob("*") if path.is_file())


def mb(size: int) -> str:
    return f"{size / MB:,.1f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.backup_bench", description=__doc__)
    parser.add_argument("--transactions", type=int, default=1_000_000)
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000, help="operations per shard per round")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--database-url", default=DEFAULT_ADMIN_URL, help="admin URL")
    parser.add_argument("--keep", action="store_true", help="keep both databases and the dump")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    assert args.transactions > 0 and args.members > 0 and args.batch > 0 and args.shards > 0
    console = Console()
    admin_url = libpq_url(args.database_url)
    figures: dict[str, Any] = {"transactions_requested": args.transactions}
    work = Path(tempfile.mkdtemp(prefix="points-backup-bench-"))
    try:
        with (
            database(admin_url, "points_backup_bench", args.keep) as source,
            database(admin_url, "points_restore_bench", args.keep) as target,
        ):
            console.print(f"source database {source}\nrestore target  {target}")
            migrate(source)
            with psycopg.connect(source, autocommit=True) as conn:
                conn.execute(
                    "INSERT INTO programs (program_id, name) VALUES (%s, 'Backup bench')",
                    (PROGRAM,),
                )
            written = asyncio.run(
                write_ledger(
                    source, args.transactions, args.members, args.batch, args.shards, console
                )
            )
            figures["write"] = written
            console.print(
                f"wrote {args.transactions:,} operations in {written['seconds']:.1f} s:"
                f" {written['ops_per_s']:,.0f} ops/s, {written['commits']:,} group commits"
                f" ({written['ops_per_commit']:.0f} ops each); answers {written['answers']}"
            )
            with psycopg.connect(source, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE")  # what a settled database looks like
            size_before = database_size(source)
            figures["database_bytes"] = size_before
            console.print(f"database size (pg_database_size): {mb(size_before)}")

            directory = work / "backup"
            started = time.perf_counter()
            made = backup(source, directory)
            backup_s = time.perf_counter() - started
            manifest = made.manifest
            dump_bytes = int(manifest["dump"]["bytes"])
            dir_bytes = directory_size(directory)
            rows = manifest["rows"]
            figures["backup"] = {
                "seconds": backup_s,
                "dump_bytes": dump_bytes,
                "directory_bytes": dir_bytes,
                "rows": rows,
                "chains": sorted(manifest.get("ledger_chain_heads", {})),
            }
            console.print(
                f"backup:  {backup_s:.1f} s, dump {mb(dump_bytes)}, directory {mb(dir_bytes)}"
                f" ({directory})"
            )
            console.print(f"manifest rows: {rows}")
            console.print(f"manifest chain heads: {figures['backup']['chains']}")

            started = time.perf_counter()
            restored = restore(directory, target)
            restore_s = time.perf_counter() - started
            checks = {check.name: check.violations for check in restored.checks}
            started = time.perf_counter()
            again = run_checks(target, manifest_anchors(manifest))
            verify_s = time.perf_counter() - started
            assert all(check.violations == 0 for check in again)
            size_after = database_size(target)
            figures["restore"] = {
                "seconds": restore_s,
                "verify_seconds_again": verify_s,
                "checks": checks,
                "restored_database_bytes": size_after,
            }
            console.print(
                f"restore: {restore_s:.1f} s (checksum, pg_restore, manifest again, "
                f"{len(checks)} checks, all passed: {all(v == 0 for v in checks.values())})"
            )
            console.print(
                f"verify alone on the restored database (run_checks again, warm cache):"
                f" {verify_s:.1f} s; restored database size {mb(size_after)}"
            )

            console.rule("summary")
            summary = [
                ("transactions", f"{rows['transactions']:,}"),
                ("ledger entries", f"{rows['ledger_entries']:,}"),
                ("accounts / lots", f"{rows['accounts']:,} / {rows['lots']:,}"),
                ("write rate (ShardCore)", f"{written['ops_per_s']:,.0f} ops/s"),
                ("database size before", mb(size_before)),
                ("dump size", mb(dump_bytes)),
                ("backup directory", mb(dir_bytes)),
                ("backup time", f"{backup_s:.1f} s"),
                ("restore time (with checks)", f"{restore_s:.1f} s"),
                ("  of which verify (approx.)", f"{verify_s:.1f} s"),
                ("restored database size", mb(size_after)),
            ]
            for label, value in summary:
                console.print(f"{label:<30} {value:>16}")
            if args.keep:
                console.print(f"kept: {source}, {target}, {directory}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
