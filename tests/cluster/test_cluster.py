"""Points on a multi-node Ray cluster (one machine, a raylet per node): shards spread over
the nodes, the books stay exact while a worker node dies mid-run, and `points up` ends when
its cluster goes away."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster.bank import run_bank, verify, verify_ledger
from tests.cluster.conftest import (
    ClusterService,
    alive_node_ids,
    kill_head_node,
    kill_worker_node,
    node_by_id,
    shard_nodes,
    start_cluster,
    stop_cluster,
    topology,
    wait_node_dead,
    wait_ready,
)
from tests.conftest import temporary_database

REPO = Path(__file__).resolve().parents[2]
BANK_MEMBERS = 40
BANK_CLIENTS = 16
BANK_DURATION_S = 20.0
KILL_AFTER_S = 5.0  # of bank traffic before the node dies
TRAFFIC_AFTER_RECOVERY_S = 5.0  # of bank traffic once every shard answers again
SHARDS_MOVED_TIMEOUT_S = 120.0
UP_READY_TIMEOUT_S = 120.0
# `points up` gives the cluster 20 s (runtime.CLUSTER_GONE_AFTER_S), then stops (ray.shutdown
# waits ~5 s for a gone GCS): about 30 s. Ray would end it on its own after 60 s, abruptly.
UP_EXIT_TIMEOUT_S = 50.0


def test_shards_spread_over_the_nodes(points_cluster: ClusterService) -> None:
    """Account and reward shards land on more than one node: Ray's SPREAD, round robin
    over the nodes, which Ray applies only because each shard asks for a token CPU share
    (serve_app/wiring.py, SHARD_CPUS; asking for none, they landed at random)."""
    view = topology(points_cluster)
    placed = shard_nodes(view)
    alive = alive_node_ids()
    assert len(alive) == 3, "a head and two worker nodes"
    assert set(placed.values()) <= alive, placed
    accounts = {shard["node_id"] for shard in view["account_shards"]}
    rewards = {shard["node_id"] for shard in view["reward_shards"]}
    # Round robin: the two account shards on two nodes, the two reward shards on two nodes.
    assert len(accounts) == 2 and len(rewards) == 2, placed
    assert len({node["node_id"] for node in view["nodes"]}) >= 2
    nodes = sorted(node[:8] for node in alive)
    print(f"\nshards by node: { {k: v[:8] for k, v in placed.items()} } (nodes {nodes})")


@dataclass
class NodeKill:
    """What `during` did: which node died, and where its shards went."""

    victim: str = ""
    processes_killed: int = 0
    seconds_to_dead: float = 0.0  # until GCS marked the node dead
    seconds_to_moved: float = 0.0  # until every shard answered from a live node
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)


def _pids(view: dict[str, Any]) -> dict[str, int]:
    return {
        f"{kind}:{shard['index']}": shard["pid"]
        for kind in ("account", "reward")
        for shard in view[f"{kind}_shards"]
    }


async def _wait_shards_moved(service: ClusterService, victim: str) -> dict[str, Any]:
    """Until the topology answers with every shard on a live node that is not `victim`."""
    deadline = time.monotonic() + SHARDS_MOVED_TIMEOUT_S
    last: object = None
    while time.monotonic() < deadline:
        try:
            view = await asyncio.to_thread(topology, service)
        except (AssertionError, httpx.HTTPError) as exc:  # shards restarting: 503
            last = exc
        else:
            placed = shard_nodes(view)
            alive = await asyncio.to_thread(alive_node_ids)
            if victim not in placed.values() and set(placed.values()) <= alive:
                return view
            last = placed
        await asyncio.sleep(1.0)
    raise TimeoutError(f"shards not back on live nodes: {last}")


async def test_bank_stays_exact_while_a_worker_node_dies(points_cluster: ClusterService) -> None:
    cluster = points_cluster.cluster
    kill = NodeKill()

    async def kill_a_worker_node() -> None:
        await asyncio.sleep(KILL_AFTER_S)
        kill.before = await asyncio.to_thread(topology, points_cluster)
        placed = shard_nodes(kill.before)
        workers = {node.node_id for node in cluster.worker_nodes}
        # The worker node holding most shards (SPREAD puts shards on both workers).
        kill.victim = max(workers, key=lambda n: list(placed.values()).count(n))
        assert kill.victim in placed.values(), placed
        victim = node_by_id(cluster, kill.victim)
        started = time.monotonic()
        kill.processes_killed = await asyncio.to_thread(kill_worker_node, cluster, victim)
        kill.seconds_to_dead = await asyncio.to_thread(wait_node_dead, kill.victim)
        kill.after = await _wait_shards_moved(points_cluster, kill.victim)
        kill.seconds_to_moved = time.monotonic() - started
        await asyncio.sleep(TRAFFIC_AFTER_RECOVERY_S)

    result = await run_bank(
        points_cluster.base_url,
        points_cluster.admin_key,
        members=BANK_MEMBERS,
        clients=BANK_CLIENTS,
        duration_s=BANK_DURATION_S,
        during=kill_a_worker_node,
        seed=1,
    )
    before, after = shard_nodes(kill.before), shard_nodes(kill.after)
    moved = sorted(shard for shard, node in before.items() if node == kill.victim)
    print(
        f"\n{result.summary()}\nkilled node {kill.victim[:8]} ({kill.processes_killed}"
        f" processes; held {', '.join(moved)}): dead in GCS after {kill.seconds_to_dead:.1f} s,"
        f" every shard answering from a live node after {kill.seconds_to_moved:.1f} s"
        f"\nshards before: { {k: v[:8] for k, v in before.items()} }"
        f"\nshards after:  { {k: v[:8] for k, v in after.items()} }"
    )
    assert not result.unexpected, result.unexpected[:10]
    assert not result.unresolved, result.unresolved[:10]
    assert result.ops_acknowledged > 0 and result.refusals > 0
    # The kill happened: one node fewer, the victim's shards run on surviving nodes.
    alive = alive_node_ids()
    assert len(alive) == 2 and kill.victim not in alive
    assert moved and all(after[shard] in alive for shard in moved)
    assert set(after.values()) <= alive
    assert all(_pids(kill.after)[shard] != _pids(kill.before)[shard] for shard in moved)
    # Exact: balances and histories through the API, and the ledger in PostgreSQL.
    await verify(points_cluster.base_url, points_cluster.admin_key, result)
    assert verify_ledger(points_cluster.dsn, result) == []


def test_points_up_exits_when_its_cluster_goes_away(
    pg_admin_url: str, redis_url: str, tmp_path: Path
) -> None:
    """`points up --address` joined a cluster whose head then dies: it must stop by itself,
    cleanly and in bounded time, not wait for a Ctrl-C (nor for Ray to end it abruptly once
    its GCS has been gone 60 s, skipping its stop). Its own cluster: this destroys it."""
    from serve_app.runtime import free_port

    with temporary_database(pg_admin_url, "points_cluster_up") as dsn:
        cluster = start_cluster(workers=1)
        proc: subprocess.Popen[bytes] | None = None
        log_path = tmp_path / "points-up.log"
        try:
            port = free_port()
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
                "POINTS_ADMIN_KEY": "pts_up_" + os.urandom(8).hex(),
                "POINTS_DATA_DIR": str(tmp_path / "data"),
                "POINTS_SERVE_PROFILE": "default",
                "POINTS_EVENT_STREAM": "",
            }
            command = [
                sys.executable,
                "-m",
                "serve_app.cli",
                "up",
                "--address",
                str(cluster.address),
                "--port",
                str(port),
                "--database-url",
                dsn,
                "--redis-url",
                redis_url,
                "--shards",
                "2",
            ]
            with log_path.open("wb") as log:
                proc = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=REPO,
                    start_new_session=True,
                )
            wait_ready(f"http://127.0.0.1:{port}", timeout_s=UP_READY_TIMEOUT_S)
            # The banner comes once `serve.run` has returned (it may lag the first 200).
            deadline = time.monotonic() + UP_READY_TIMEOUT_S
            while "Points is up" not in log_path.read_text():
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.2)

            kill_head_node(cluster)
            killed_at = time.monotonic()
            try:
                code = proc.wait(timeout=UP_EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pytest.fail(
                    f"`points up` still running {UP_EXIT_TIMEOUT_S:.0f} s after its cluster's"
                    f" head died; its output:\n{log_path.read_text()[-3000:]}"
                )
            took = time.monotonic() - killed_at
            output = log_path.read_text()
            print(f"\n`points up` ended {took:.1f} s after the head died, exit code {code}")
            print("its last lines:\n" + "\n".join(output.splitlines()[-4:]))
            # It stopped by itself, cleanly (not ended by Ray after its own 60 s), said why,
            # and left no process behind in its process group.
            gone = output.find("The Ray cluster stopped answering")
            assert gone >= 0 and "\nStopped." in output[gone:], output[-3000:]
            assert code == 1
            with pytest.raises(ProcessLookupError):
                os.killpg(proc.pid, 0)
        finally:
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # it, and anything left in its group
                proc.wait(timeout=10)
            stop_cluster(cluster)
