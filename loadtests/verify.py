"""Post-run verifier: check the ledger's invariants directly in PostgreSQL.

    python -m loadtests.verify --database-url postgresql://user@host:5432/points

Exits 1 if any invariant is violated (each violation is listed with examples), else 0.
"""

from __future__ import annotations

import argparse
import os
import sys

from db.engine import libpq_url
from db.verify_repo import run_checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.verify", description=__doc__)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("give --database-url or set DATABASE_URL")
    results = run_checks(libpq_url(args.database_url))
    failed = 0
    for result in results:
        mark = "ok  " if result.violations == 0 else "FAIL"
        print(f"{mark} {result.name}" + (f": {result.violations}" if result.violations else ""))
        for example in result.examples:
            print(f"       {example}")
        failed += result.violations > 0
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
