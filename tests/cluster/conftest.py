"""A multi-node Ray cluster on one machine, with Points deployed on it.

Ray's own test utility (`ray.cluster_utils.Cluster`) starts a head and worker nodes as
separate raylets (each with its own worker processes) in this process's children; the test
driver connects to the head like any driver would (`runtime.start_ray` with `ray_address`).
Every node has the same IP, so "a node dies" is simulated by killing its raylet and every
process below it (`kill_worker_node`).

Ports: the head's GCS gets a free port of its own (never Ray's default 6379: Redis owns it on
CI and on development machines); every other Ray port is picked by Ray.

Token authentication: Ray 2.60 turns it on for a local `ray.init()` (and for `ray start
--head` when a token exists), but `cluster_utils` builds its nodes directly and does
neither, so by default this cluster would run without it. The layer runs it on, as
deploy/README.md recommends for real clusters: one token for the run, put in the
environment before the first node starts (`use_token_auth`), so every node, the driver and
`points up` (a subprocess) share it; a client without it is refused (tried by hand: "Failed
to connect to Ray cluster"). An explicit RAY_AUTH_MODE in the environment is respected.

One pytest process, one Ray driver: this layer runs in its own pytest process (`make
cluster`, `make test`); in a run that also collects the e2e layer (a bare `pytest`), its
tests are deselected, with a note.

Serve profile: "default" (Serve's own proxy on every node). The "fast" profile needs its
settings in the environment of every node's `ray start` (deploy/README.md, "Serve
profile"); the driver's environment does not reach an already running cluster.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import psutil
import pytest
import ray
from ray._private.node import Node
from ray.cluster_utils import Cluster

ADMIN_KEY = "pts_cluster_" + secrets.token_hex(16)
WORKER_NODES = 2
# Ray's CPUs per node: Serve's replicas ask for none and the shards for a token share
# (serve_app/wiring.py), but a node with no CPU would take no shard and no task; the machine
# has 2 cores for all of it.
NODE_CPUS = 1
# Object store per node (Ray's test default is 150 MiB; Points moves small messages).
NODE_OBJECT_STORE_BYTES = 100 * 1024 * 1024
NODE_START_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 120.0
# GCS marks a node dead after its health checks fail (Ray's defaults: about 15-30 s).
NODE_DEAD_TIMEOUT_S = 90.0
KILL_WAIT_S = 10.0
HTTP_TIMEOUT_S = 15.0


class ClusterService(NamedTuple):
    """Points deployed on a local multi-node cluster."""

    base_url: str
    admin_key: str
    cluster: Cluster
    dsn: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that bring their own cluster (and destroy it) run first: the shared cluster
    starts lazily on the first test that needs it, so two clusters never run at once.

    With the e2e layer in the same run, this layer's tests are deselected: the e2e service
    starts its own local head in this process, and a process has one Ray driver."""
    here = Path(__file__).parent
    mine = [item for item in items if here in Path(str(item.fspath)).parents]
    if not mine:
        return
    if any("e2e" in Path(str(item.fspath)).parts for item in items):
        config.hook.pytest_deselected(items=mine)
        items[:] = [item for item in items if item not in mine]
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(
                f"tests/cluster: {len(mine)} tests deselected (one Ray driver per process:"
                " run them on their own, `make cluster`)"
            )
        return

    def shared(item: pytest.Item) -> bool:
        names = getattr(item, "fixturenames", ())
        uses = "points_cluster" in names or "points_cluster_session" in names
        return uses and item in mine

    items.sort(key=shared)  # stable: the order is otherwise kept


def use_token_auth() -> None:
    """Ray token authentication for every node started from here on, this driver and its
    subprocesses: one token for the run, in the environment (an explicit RAY_AUTH_MODE is
    respected). Ray reads the mode into its config once: read it again."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if "RAY_AUTH_MODE" in os.environ:
        return
    from ray._raylet import (  # type: ignore[attr-defined]  # Cython, no stubs for these
        AuthenticationMode,
        Config,
        get_authentication_mode,
    )

    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    Config.initialize("")
    assert get_authentication_mode() == AuthenticationMode.TOKEN


# --- the cluster ---------------------------------------------------------------------------


def start_cluster(workers: int = WORKER_NODES) -> Cluster:
    """A head and `workers` worker nodes, each its own raylet, all registered."""
    from serve_app import runtime

    # Processes whose parent dies (a killed raylet's workers) are adopted by this process,
    # so `stop_cluster` can end them (Linux; a no-op elsewhere).
    runtime.become_subreaper()
    use_token_auth()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "gcs_server_port": runtime.free_port(),
            "num_cpus": NODE_CPUS,
            "object_store_memory": NODE_OBJECT_STORE_BYTES,
            "include_dashboard": False,
        },
    )
    try:
        for _ in range(workers):
            add_worker_node(cluster)
        cluster.wait_for_nodes(timeout=NODE_START_TIMEOUT_S)
    except BaseException:
        stop_cluster(cluster)
        raise
    assert cluster.address and not cluster.address.endswith(":6379")
    return cluster


def add_worker_node(cluster: Cluster) -> Node:
    node: Node = cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=NODE_OBJECT_STORE_BYTES)
    return node


def node_processes(node: Node) -> list[psutil.Process]:
    """Every live process of a node: its own (raylet, agents, GCS on the head, ...) and
    everything below them (the raylet's worker processes: actors, Serve replicas)."""
    found: dict[int, psutil.Process] = {}
    for infos in node.all_processes.values():
        for info in infos:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(info.process.pid)
                found[proc.pid] = proc
                for child in proc.children(recursive=True):
                    found[child.pid] = child
    return list(found.values())


def _kill_hard(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    _, alive = psutil.wait_procs(procs, timeout=KILL_WAIT_S)
    assert not alive, f"still running after SIGKILL: {[p.pid for p in alive]}"


def kill_worker_node(cluster: Cluster, node: Node) -> int:
    """Kill a worker node hard, as a machine dying would: SIGKILL to its raylet and every
    process below it (actors, Serve replicas and proxy), all at once, no goodbye to GCS.
    Returns how many processes were killed. GCS learns of it by its health checks (see
    `wait_node_dead`)."""
    assert node is not cluster.head_node, "the driver is connected to the head: kill a worker"
    assert node in cluster.worker_nodes
    procs = node_processes(node)
    _kill_hard(procs)
    # Cluster's bookkeeping (its processes are all dead already: nothing graceful left).
    cluster.remove_node(node, allow_graceful=False)
    return len(procs)


def kill_head_node(cluster: Cluster) -> int:
    """Kill the head hard (GCS, raylet and its workers): the cluster is gone for drivers."""
    assert cluster.head_node is not None
    procs = node_processes(cluster.head_node)
    _kill_hard(procs)
    cluster.remove_node(cluster.head_node, allow_graceful=False)
    return len(procs)


def alive_node_ids() -> set[str]:
    """Nodes GCS considers alive (the driver must be connected)."""
    nodes = ray.nodes()  # type: ignore[no-untyped-call]  # Ray: unannotated
    return {node["NodeID"] for node in nodes if node["Alive"]}


def wait_node_dead(node_id: str, timeout_s: float = NODE_DEAD_TIMEOUT_S) -> float:
    """Wait until GCS marks the node dead; returns the seconds waited."""
    start = time.monotonic()
    while node_id in alive_node_ids():
        assert time.monotonic() - start < timeout_s, f"node {node_id[:8]} still alive in GCS"
        time.sleep(0.5)
    return time.monotonic() - start


def stop_cluster(cluster: Cluster) -> None:
    """Disconnect the driver and kill every node hard; bounded, and nothing is left behind
    (checked: no process of this test run's Ray remains below this process)."""
    from serve_app import runtime

    with contextlib.suppress(Exception):
        ray.shutdown()
    for node in [*cluster.worker_nodes, *([cluster.head_node] if cluster.head_node else [])]:
        with contextlib.suppress(Exception):
            _kill_hard(node_processes(node))
        with contextlib.suppress(Exception):
            cluster.remove_node(node, allow_graceful=False)
    with contextlib.suppress(Exception):
        # Resets the address file and Ray's cached GCS addresses.
        cluster.shutdown()  # type: ignore[no-untyped-call]
    # Orphans (adopted by this process as subreaper) and anything else Ray left below us.
    runtime.reap_descendants(grace_s=5.0, ray_only=True)
    left = [p for p in psutil.Process().children(recursive=True) if _is_ray(p)]
    assert not left, f"Ray processes left behind: {[(p.pid, _name(p)) for p in left]}"


def _is_ray(proc: psutil.Process) -> bool:
    name = _name(proc)
    return "ray" in name or "gcs_server" in name or "raylet" in name


def _name(proc: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return " ".join(proc.cmdline()[:2]) or proc.name()
    return "?"


# --- the service -----------------------------------------------------------------------------


def wait_ready(base_url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until GET /readyz answers 200 (database and every shard answer)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(f"{base_url}/readyz", timeout=5)
            if answer.status_code == 200:
                return
            last = f"{answer.status_code} {answer.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise TimeoutError(f"{base_url} not ready after {timeout_s:.0f} s: {last}")


def topology(service: ClusterService) -> dict[str, Any]:
    """GET /v1/admin/topology: slots per shard and the node each shard runs on."""
    answer = httpx.get(
        f"{service.base_url}/v1/admin/topology", headers=service.headers, timeout=HTTP_TIMEOUT_S
    )
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


def shard_nodes(view: dict[str, Any]) -> dict[str, str]:
    """{"account:0": node_id, ..., "reward:1": node_id} from a topology view."""
    placed = {f"account:{s['index']}": s["node_id"] for s in view["account_shards"]}
    placed.update({f"reward:{s['index']}": s["node_id"] for s in view["reward_shards"]})
    return placed


def node_by_id(cluster: Cluster, node_id: str) -> Node:
    nodes: list[Node] = cluster.list_all_nodes()  # type: ignore[no-untyped-call]
    for node in nodes:
        if node.node_id == node_id:
            return node
    raise KeyError(node_id)


@pytest.fixture(scope="session")
def points_cluster_session(database_url: str, redis_url: str) -> Iterator[ClusterService]:
    """Points on a head and two worker nodes: 2 account shards, 2 reward shards."""
    from serve_app import runtime
    from serve_app.settings import load_settings

    cluster = start_cluster(WORKER_NODES)
    try:
        settings = load_settings(
            database_url=database_url,
            redis_url=redis_url,
            admin_key=ADMIN_KEY,
            data_dir=Path(tempfile.mkdtemp(prefix="points-cluster-")),
            port=runtime.free_port(),
            ray_address=cluster.address,
            shards=2,
            reward_shards=2,
            # Its own stream: the e2e layer's consumer group uses the default one.
            event_stream=f"points:events:cluster-{secrets.token_hex(4)}",
            serve_profile="default",
            recovery_interval_s=1.0,
        )
        runtime.prepare_database(settings, database_url)
        assert runtime.start_ray(settings) is False  # joined, not started
        base_url = runtime.deploy(settings, database_url, redis_url)
        wait_ready(base_url)
        yield ClusterService(base_url, ADMIN_KEY, cluster, database_url)
    finally:
        stop_cluster(cluster)


@pytest.fixture
def points_cluster(points_cluster_session: ClusterService) -> ClusterService:
    """The shared deployment with its full set of worker nodes: a node an earlier test
    killed is replaced by a new one first (shards that moved stay where they are)."""
    cluster = points_cluster_session.cluster
    if len(cluster.worker_nodes) < WORKER_NODES:
        for _ in range(WORKER_NODES - len(cluster.worker_nodes)):
            add_worker_node(cluster)
        cluster.wait_for_nodes(timeout=NODE_START_TIMEOUT_S)
    wait_ready(points_cluster_session.base_url)
    return points_cluster_session
