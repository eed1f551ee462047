"""The `simulations` job table and the reads a what-if replay makes.

Two sides, one table:

- `SimulationsRepo` (async, the ingress's pool): create a queued job, read one. A read
  first fails a queued or running job whose heartbeat is older than SIMULATION_STALE_S
  (its worker died: the Ray task, or the replica that started it), so every replica shows
  the same final answer and no job stays "running" forever.
- `SimulationStore` (sync, its own connection, in the job's process): claim the job, read
  the program's policy, its tier changes and its events in application order (a
  server-side cursor, one sort, fetched a page at a time), write progress and the result.
  Every write of the job is conditional on the job still being queued or running: a job
  failed as stale meanwhile stays failed, and its late worker stops.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_loads

from domain.limits import SIMULATION_PAGE_EVENTS, SIMULATION_STALE_S
from domain.simulation import (
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_QUEUED,
    STATUS_RUNNING,
    STATUSES,
    TierChange,
)

ERROR_LENGTH_MAX = 500
STALE_ERROR = (
    f"the job stopped reporting progress for {SIMULATION_STALE_S} s (its worker died); start"
    " it again"
)
JOB_COLUMNS = (
    "simulation_id, program_id, status, rules, window_from, window_to, top_members,"
    " events_total, events_done, result, error, created_at, started_at, finished_at"
)
LIVE = f"status IN ('{STATUS_QUEUED}', '{STATUS_RUNNING}')"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def job_view(row: dict[str, Any]) -> dict[str, Any]:
    """A job row as the API shows it."""
    assert row["status"] in STATUSES
    view = {
        "simulation_id": str(row["simulation_id"]),
        "program_id": row["program_id"],
        "status": row["status"],
        "from": _iso(row["window_from"]),
        "to": _iso(row["window_to"]),
        "top_members": row["top_members"],
        "rules": row["rules"],
        "progress": {"events_done": row["events_done"], "events_total": row["events_total"]},
        "created_at": _iso(row["created_at"]),
        "started_at": _iso(row["started_at"]),
        "finished_at": _iso(row["finished_at"]),
        "error": row["error"],
        "result": row["result"],
    }
    assert (view["status"] == STATUS_DONE) == (view["result"] is not None)
    return view


class SimulationsRepo:
    """The ingress's side: shares the ApiRepo's checked pooled connections."""

    def __init__(
        self, connection: Callable[[], contextlib.AbstractAsyncContextManager[Any]]
    ) -> None:
        self._connection = connection

    async def has_events(self, program_id: str, from_at: datetime, to_at: datetime) -> bool:
        """Whether any event of the program occurred in [from, to)."""
        assert from_at < to_at
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT EXISTS (SELECT 1 FROM events WHERE program_id = %s"
                " AND occurred_at >= %s AND occurred_at < %s)",
                (program_id, from_at, to_at),
            )
            row = await cur.fetchone()
        return bool(row[0])

    async def create(
        self,
        program_id: str,
        rules: list[dict[str, Any]],
        from_at: datetime,
        to_at: datetime,
        top_members: int,
        key_id: str | None,
    ) -> dict[str, Any]:
        """A new queued job (its heartbeat: now)."""
        assert from_at < to_at and top_members > 0
        async with self._connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "INSERT INTO simulations (simulation_id, program_id, status, rules,"
                " window_from, window_to, top_members, key_id, created_at, heartbeat_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now(), now())"
                f" RETURNING {JOB_COLUMNS}",
                (
                    uuid.uuid4(),
                    program_id,
                    STATUS_QUEUED,
                    Jsonb(rules),
                    from_at,
                    to_at,
                    top_members,
                    key_id,
                ),
            )
            row = await cur.fetchone()
        assert row is not None and row["status"] == STATUS_QUEUED
        return job_view(row)

    async def get(self, program_id: str, simulation_id: uuid.UUID) -> dict[str, Any] | None:
        """The job, after failing it if it went stale; None if the program has no such."""
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE simulations SET status = %s, error = %s, finished_at = now()"
                f" WHERE simulation_id = %s AND program_id = %s AND {LIVE}"
                " AND heartbeat_at < now() - make_interval(secs => %s)",
                (STATUS_FAILED, STALE_ERROR, simulation_id, program_id, SIMULATION_STALE_S),
            )
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"SELECT {JOB_COLUMNS} FROM simulations"
                " WHERE simulation_id = %s AND program_id = %s",
                (simulation_id, program_id),
            )
            row = await cur.fetchone()
        return None if row is None else job_view(row)


@dataclass(frozen=True)
class Job:
    simulation_id: uuid.UUID
    program_id: str
    rules: list[dict[str, Any]]
    window_from: datetime
    window_to: datetime
    top_members: int
    policy: dict[str, Any]


class SimulationStore:
    """The job's side: one connection of its own, for the whole job."""

    def __init__(self, dsn: str) -> None:
        assert dsn
        self._conn = psycopg.connect(dsn, autocommit=True, row_factory=dict_row)
        # orjson parses the events' attributes and explanations about 2x faster.
        set_json_loads(orjson.loads, self._conn)

    def close(self) -> None:
        self._conn.close()

    def claim(self, simulation_id: uuid.UUID) -> Job | None:
        """Mark the queued job running and read it with its program's policy; None if it is
        not queued (already claimed, finished or failed)."""
        row = self._conn.execute(
            "UPDATE simulations s SET status = %s, started_at = now(), heartbeat_at = now()"
            " FROM programs p WHERE s.simulation_id = %s AND s.status = %s"
            " AND p.program_id = s.program_id"
            " RETURNING s.simulation_id, s.program_id, s.rules, s.window_from, s.window_to,"
            " s.top_members, p.policy",
            (STATUS_RUNNING, simulation_id, STATUS_QUEUED),
        ).fetchone()
        if row is None:
            return None
        job = Job(**row)
        assert job.window_from < job.window_to
        return job

    def count(self, program_id: str, from_at: datetime, to_at: datetime) -> int:
        row = self._conn.execute(
            "SELECT count(*) AS n FROM events WHERE program_id = %s"
            " AND occurred_at >= %s AND occurred_at < %s",
            (program_id, from_at, to_at),
        ).fetchone()
        assert row is not None
        return int(row["n"])

    def tier_changes(
        self, program_id: str, from_at: datetime, to_at: datetime
    ) -> dict[str, list[TierChange]]:
        """Per member with an event in [from, to): their tier changes, in order."""
        changes: dict[str, list[TierChange]] = {}
        cur = self._conn.execute(
            "SELECT member_id, changed_at, from_tier, to_tier FROM tier_changes"
            " WHERE program_id = %s AND member_id IN (SELECT DISTINCT member_id FROM events"
            " WHERE program_id = %s AND occurred_at >= %s AND occurred_at < %s)"
            " ORDER BY member_id, changed_at, change_id",
            (program_id, program_id, from_at, to_at),
        )
        for row in cur:
            changes.setdefault(row["member_id"], []).append(
                (row["changed_at"], row["from_tier"], row["to_tier"])
            )
        return changes

    def events(
        self,
        program_id: str,
        window: tuple[datetime, datetime],
        context: tuple[datetime, datetime],
        page_events: int = SIMULATION_PAGE_EVENTS,
    ) -> Iterator[list[dict[str, Any]]]:
        """The program's events that occurred in `context`, in application order
        (created_at; then occurred_at, event_id within one commit), a page at a time, each
        with `in_window` and the member's current tier. Events outside the window carry
        what their awards need for the cap counters only (no attributes)."""
        assert context[0] <= window[0] < window[1] <= context[1] and page_events > 0
        with (
            self._conn.transaction(),
            self._conn.cursor(name=f"sim_{uuid.uuid4().hex}") as cur,
        ):
            cur.itersize = page_events
            cur.execute(
                "SELECT e.event_id, e.member_id, e.type, e.occurred_at, e.created_at,"
                " e.points, e.explanation, a.tier AS current_tier,"
                " (e.occurred_at >= %(from)s AND e.occurred_at < %(to)s) AS in_window,"
                " CASE WHEN e.occurred_at >= %(from)s AND e.occurred_at < %(to)s"
                " THEN e.attributes END AS attributes"
                " FROM events e JOIN accounts a"
                " ON a.program_id = e.program_id AND a.member_id = e.member_id"
                " WHERE e.program_id = %(program)s"
                " AND e.occurred_at >= %(start)s AND e.occurred_at < %(end)s"
                " ORDER BY e.created_at, e.occurred_at, e.event_id",
                {
                    "program": program_id,
                    "from": window[0],
                    "to": window[1],
                    "start": context[0],
                    "end": context[1],
                },
            )
            while page := cur.fetchmany(page_events):
                yield page

    def progress(self, simulation_id: uuid.UUID, done: int, total: int) -> bool:
        """Record progress (and a heartbeat); False if the job is no longer live."""
        assert 0 <= done <= total
        cur = self._conn.execute(
            "UPDATE simulations SET events_done = %s, events_total = %s, heartbeat_at = now()"
            f" WHERE simulation_id = %s AND {LIVE}",
            (done, total, simulation_id),
        )
        return cur.rowcount == 1

    def finish(self, simulation_id: uuid.UUID, result: dict[str, Any]) -> bool:
        cur = self._conn.execute(
            "UPDATE simulations SET status = %s, result = %s, finished_at = now(),"
            f" heartbeat_at = now() WHERE simulation_id = %s AND {LIVE}",
            (STATUS_DONE, Jsonb(result), simulation_id),
        )
        return cur.rowcount == 1

    def fail(self, simulation_id: uuid.UUID, error: str) -> bool:
        assert error
        cur = self._conn.execute(
            "UPDATE simulations SET status = %s, error = %s, finished_at = now(),"
            f" heartbeat_at = now() WHERE simulation_id = %s AND {LIVE}",
            (STATUS_FAILED, error[:ERROR_LENGTH_MAX], simulation_id),
        )
        return cur.rowcount == 1


@contextlib.contextmanager
def simulation_store(dsn: str) -> Iterator[SimulationStore]:
    store = SimulationStore(dsn)
    try:
        yield store
    finally:
        store.close()
