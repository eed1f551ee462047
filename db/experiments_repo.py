"""Experiments of earning rules (domain/experiments.py): their rows, their end (with the
promotion of an arm's rules as a new rule set version), and the sums their results are
computed from. The shards read running experiments with the program's configuration
(db/ledger_repo.py load_program_configs) and record assignments in their group commits."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from db.access_repo import AuditEntry, record
from domain.errors import Code, PointsError
from domain.experiments import ArmStats, Experiment, experiment_json

COLUMNS = (
    "program_id, experiment_id, arms, starts_at, ends_at, ended_at, promoted_arm,"
    " promoted_version, created_at"
)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "program_id": row["program_id"],
        "experiment_id": row["experiment_id"],
        "arms": row["arms"],
        "control": row["arms"][0]["name"],
        "starts_at": _iso(row["starts_at"]),
        "ends_at": _iso(row["ends_at"]),
        "status": "ended" if row["ended_at"] is not None else "running",
        "ended_at": _iso(row["ended_at"]),
        "promoted_arm": row["promoted_arm"],
        "promoted_version": row["promoted_version"],
        "created_at": _iso(row["created_at"]),
    }


class ExperimentsRepo:
    def __init__(
        self, connection: Callable[[], contextlib.AbstractAsyncContextManager[Any]]
    ) -> None:
        # The ingress's checked pooled connections (ApiRepo.connection).
        self._connection = connection

    async def rule_versions(self, program_id: str) -> set[int] | None:
        """The program's rule set versions; None if the program does not exist."""
        async with self._connection() as conn:
            cur = conn.cursor()
            await cur.execute(
                "SELECT p.program_id, r.version FROM programs p"
                " LEFT JOIN rule_sets r USING (program_id) WHERE p.program_id = %s",
                (program_id,),
            )
            rows = await cur.fetchall()
        if not rows:
            return None
        return {int(version) for _, version in rows if version is not None}

    async def put(self, experiment: Experiment, audit: AuditEntry) -> tuple[dict[str, Any], bool]:
        """Create the experiment; (its view, created). The same body again answers the
        stored experiment (200); a different one for an existing id is a conflict."""
        wanted = experiment_json(experiment)
        async with self._connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"""
                INSERT INTO experiments (program_id, experiment_id, arms, starts_at, ends_at,
                                         created_at)
                VALUES (%s, %s, %s, %s, %s, now())
                ON CONFLICT DO NOTHING RETURNING {COLUMNS}
                """,
                (
                    experiment.program_id,
                    experiment.experiment_id,
                    Jsonb(wanted["arms"]),
                    experiment.starts_at,
                    experiment.ends_at,
                ),
            )
            row = await cur.fetchone()
            if row is not None:
                view = _view(row)
                await record(conn, replace(audit, after=view))
                return view, True
            await cur.execute(
                f"SELECT {COLUMNS} FROM experiments WHERE program_id = %s AND experiment_id = %s",
                (experiment.program_id, experiment.experiment_id),
            )
            row = await cur.fetchone()
        assert row is not None
        same = (
            row["arms"] == wanted["arms"]
            and row["starts_at"] == experiment.starts_at
            and row["ends_at"] == experiment.ends_at
        )  # compared as stored (datetimes), before the view renders them
        if not same:
            raise PointsError(
                Code.INVALID_STATE,
                f"experiment {experiment.experiment_id} exists with other arms or another"
                " window: experiments are not edited; create another",
            )
        return _view(row), False

    async def get(self, program_id: str, experiment_id: str) -> dict[str, Any] | None:
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {COLUMNS} FROM experiments WHERE program_id = %s AND experiment_id = %s",
                (program_id, experiment_id),
            )
            row = await cur.fetchone()
        return None if row is None else _view(row)

    async def list(self, program_id: str) -> list[dict[str, Any]]:
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {COLUMNS} FROM experiments WHERE program_id = %s"
                " ORDER BY created_at DESC, experiment_id",
                (program_id,),
            )
            rows = await cur.fetchall()
        return [_view(row) for row in rows]

    async def end(
        self, program_id: str, experiment_id: str, promote: str | None, audit: AuditEntry
    ) -> dict[str, Any] | None:
        """End it now (its window closes: later events use the version in effect), and
        promote an arm: its rules become a new rule set version, in effect now. Ending an
        ended experiment again with the same promotion answers it as it is."""
        async with self._connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {COLUMNS} FROM experiments WHERE program_id = %s AND experiment_id = %s"
                " FOR UPDATE",
                (program_id, experiment_id),
            )
            row = await cur.fetchone()
            if row is None:
                return None
            before = _view(row)
            if row["ended_at"] is not None:
                if row["promoted_arm"] != promote:
                    raise PointsError(
                        Code.INVALID_STATE,
                        f"experiment {experiment_id} already ended"
                        + (f", promoting {row['promoted_arm']}" if row["promoted_arm"] else ""),
                    )
                return before
            version = None
            if promote is not None:
                arm = next((a for a in row["arms"] if a["name"] == promote), None)
                if arm is None:
                    raise PointsError(Code.VALIDATION_ERROR, f"promote: no arm named {promote!r}")
                await cur.execute(
                    "SELECT 1 FROM programs WHERE program_id = %s FOR UPDATE", (program_id,)
                )
                await cur.execute(
                    """
                    INSERT INTO rule_sets (program_id, version, rules, effective_from, created_at)
                    SELECT %s, (SELECT max(version) + 1 FROM rule_sets WHERE program_id = %s),
                           rules, now(), now()
                    FROM rule_sets WHERE program_id = %s AND version = %s
                    RETURNING version
                    """,
                    (program_id, program_id, program_id, arm["rule_version"]),
                )
                made = await cur.fetchone()
                assert made is not None
                version = made["version"]
            await cur.execute(
                f"""
                UPDATE experiments SET ended_at = now(), ends_at = least(ends_at, now()),
                                       promoted_arm = %s, promoted_version = %s
                WHERE program_id = %s AND experiment_id = %s RETURNING {COLUMNS}
                """,
                (promote, version, program_id, experiment_id),
            )
            ended = await cur.fetchone()
            assert ended is not None
            view = _view(ended)
            await record(conn, replace(audit, before=before, after=view))
        return view

    async def arm_stats(
        self, program_id: str, experiment_id: str, starts_at: datetime, ends_at: datetime
    ) -> dict[str, ArmStats]:
        """Per arm: assigned members, their events and points inside the window (with the
        sum of squares of points per member) and members with a completed redemption."""
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                """
                WITH a AS (SELECT member_id, arm FROM experiment_assignments
                           WHERE program_id = %(p)s AND experiment_id = %(e)s),
                ev AS (SELECT e.member_id, count(*) AS events, sum(e.points) AS points
                       FROM events e JOIN a USING (member_id)
                       WHERE e.program_id = %(p)s AND e.occurred_at >= %(s)s
                         AND e.occurred_at < %(t)s
                       GROUP BY e.member_id),
                rd AS (SELECT DISTINCT r.member_id FROM redemptions r JOIN a USING (member_id)
                       WHERE r.program_id = %(p)s AND r.status = 'completed'
                         AND r.created_at >= %(s)s AND r.created_at < %(t)s)
                SELECT a.arm, count(*) AS members, coalesce(sum(ev.events), 0) AS events,
                       coalesce(sum(ev.points), 0) AS points,
                       coalesce(sum(ev.points * ev.points), 0) AS points_squared,
                       count(rd.member_id) AS redeemers
                FROM a LEFT JOIN ev USING (member_id) LEFT JOIN rd USING (member_id)
                GROUP BY a.arm
                """,
                {"p": program_id, "e": experiment_id, "s": starts_at, "t": ends_at},
            )
            rows = await cur.fetchall()
        return {
            row["arm"]: ArmStats(
                row["arm"],
                int(row["members"]),
                int(row["events"]),
                int(row["points"]),
                int(row["points_squared"]),
                int(row["redeemers"]),
            )
            for row in rows
        }
