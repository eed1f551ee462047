"""Running a what-if replay job: read the window's events, replay them, store the result.

Contract: `run_simulation(dsn, simulation_id)` claims a queued job (db/simulations_repo.py),
replays the program's events through the job's candidate rules with the pure
`domain.simulation.Replay` and stores the result; progress (events done / total) and a
heartbeat are written after every page of SIMULATION_PAGE_EVENTS events. It writes
nothing but the job's own row: no ledger, no account, no event. Any error fails the job
with its message; a job failed meanwhile (stale) is left failed and the run stops.

Where it runs, and why there: the ingress starts `simulation_task` as a Ray task (no CPU
reserved, like the shard actors; no retries) and answers 202 at once. The replay is CPU
work of seconds: in a task it runs in a worker process of its own, so the replica's event
loop keeps serving requests, and it outlives the request that asked for it. Its state is
the job row in PostgreSQL, so any replica answers GET. If the worker or the replica that
owns the task dies, the heartbeat stops and the next read fails the job (stale after
SIMULATION_STALE_S): a plain task needs no named actor to deploy, find or clean up.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import ray

from db.simulations_repo import SimulationStore, simulation_store
from domain.policy import parse_policy
from domain.rules import compile_rule_set
from domain.simulation import (
    TIER_FROM_CURRENT,
    PastEvent,
    Replay,
    TierChange,
    context_range,
    explained_points,
    explained_tier,
    tier_at,
)

log = logging.getLogger("points.simulation")
NO_CHANGES: list[TierChange] = []


def past_event(row: dict[str, Any], tiers: dict[str, list[TierChange]]) -> PastEvent:
    """A stored event row (SimulationStore.events) as the replay takes it."""
    member_id = row["member_id"]
    in_window = bool(row["in_window"])
    explanation = row["explanation"]
    if in_window:
        tier, source = tier_at(
            tiers.get(member_id, NO_CHANGES),
            row["created_at"],
            row["current_tier"],
            explained_tier(explanation),
        )
    else:
        tier, source = None, TIER_FROM_CURRENT  # not evaluated: its tier plays no part
    points = int(row["points"])
    return PastEvent(
        row["event_id"],
        member_id,
        row["type"],
        row["occurred_at"],
        row["attributes"] if in_window else {},
        points,
        explained_points(explanation, points),
        tier,
        source,
        in_window,
    )


def replay_job(store: SimulationStore, simulation_id: uuid.UUID) -> str:
    """Run one job against `store`; its final status ("done", "failed", or "skipped" when
    it was not queued, or "stopped" when it was failed by someone else meanwhile)."""
    job = store.claim(simulation_id)
    if job is None:
        return "skipped"
    try:
        policy = parse_policy(job.policy)
        candidate = compile_rule_set(job.rules, 1)
        window = (job.window_from, job.window_to)
        context = context_range(policy, *window)
        total = store.count(job.program_id, *window)
        if not store.progress(simulation_id, 0, total):
            return "stopped"
        tiers = store.tier_changes(job.program_id, *window)
        run = Replay(candidate, policy)
        for page in store.events(job.program_id, window, context):
            for row in page:
                run.feed(past_event(row, tiers))
            # Events that occurred in the window meanwhile (late ones) are not in `total`.
            total = max(total, run.events_done)
            if not store.progress(simulation_id, run.events_done, total):
                return "stopped"
        result = run.result(job.top_members)
        assert result["events"] == run.events_done
        return "done" if store.finish(simulation_id, result) else "stopped"
    except Exception as exc:
        log.exception("simulation %s failed", simulation_id)
        store.fail(simulation_id, f"{type(exc).__name__}: {exc}")
        return "failed"


def run_simulation(dsn: str, simulation_id: uuid.UUID) -> str:
    with simulation_store(dsn) as store:
        return replay_job(store, simulation_id)


@ray.remote(num_cpus=0, max_retries=0)
def simulation_task(dsn: str, simulation_id: str) -> str:
    """The Ray task the ingress starts: a thin wrapper around run_simulation."""
    return run_simulation(dsn, uuid.UUID(simulation_id))
