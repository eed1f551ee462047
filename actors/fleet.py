"""The shard actors of a deployment: created (or found) by kind and index, and retired.

Both the ingress (at start) and the move coordinator (when a move adds shards) create them
here, with the same options: named in the `points` namespace so any process finds them,
detached so they outlive the process that created them, and spread over the cluster's
nodes (Ray's SPREAD strategy: each new actor goes to the node holding fewest of them;
the shards ask for no CPU, so without it Ray would pack them all on one node). A move
places each shard it creates on the live node holding fewest shards (`least_loaded`), so a
node added to the cluster takes the shards of the next `points scale`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.account_shard import AccountShard
from actors.reward_shard import RewardShard
from actors.routing import NAMESPACE, reward_shard_name, shard_name
from db.topology_repo import Kind

SHARD_PLACEMENT = "SPREAD"
# But Ray applies a strategy only to an actor that asks for some resource: one that asks
# for none (num_cpus=0) goes to a node picked at random, SPREAD or node affinity alike
# (ray-project/ray PR 25360). Measured on a head and two workers (Ray 2.60, the local
# cluster of tests/cluster), sets of 2 + 2 detached shard-like actors: with num_cpus=0, of 60
# sets the first 2 shared a node in 21 and all 4 shared one node once (a soft node affinity
# was ignored too); with SHARD_CPUS every set went round robin (8 of 8) and a soft node
# affinity was obeyed. Hence a token CPU share: the most shards there can be (1024 account +
# 1024 reward) hold 0.2 of a CPU.
SHARD_CPUS = 0.0001


def name_of(kind: Kind, index: int) -> str:
    return shard_name(index) if kind == "account" else reward_shard_name(index)


def shard_actor(
    kind: Kind,
    index: int,
    dsn: str,
    config: dict[str, Any],
    runtime_env: dict[str, Any] | None = None,
    node_id: str | None = None,
) -> Any:
    """The handle of shard `index` of `kind`, created if it does not run yet, in
    `runtime_env` (the code of a release; none: the creator's own), on `node_id` if given
    (soft: elsewhere if that node is gone), else spread."""
    assert index >= 0
    actor_class = AccountShard if kind == "account" else RewardShard
    options: dict[str, Any] = {} if runtime_env is None else {"runtime_env": runtime_env}
    placement: Any = SHARD_PLACEMENT
    if node_id is not None:
        placement = NodeAffinitySchedulingStrategy(node_id, soft=True)
    # mypy keeps a decorated class's own type (it ignores class decorators' return types),
    # so it does not see the ActorClass that @ray.remote made.
    return actor_class.options(  # type: ignore[union-attr]
        name=name_of(kind, index),
        namespace=NAMESPACE,
        get_if_exists=True,
        lifetime="detached",
        scheduling_strategy=placement,
        num_cpus=SHARD_CPUS,
        **options,
    ).remote(index, dsn, config)


def alive_nodes() -> list[str]:
    """The ids of the cluster's live nodes."""
    return sorted(node["NodeID"] for node in ray.nodes() if node["Alive"])  # type: ignore[no-untyped-call]  # Ray: unannotated


def least_loaded(kind: Kind, nodes: list[str], placed: dict[tuple[Kind, int], str]) -> str | None:
    """The node for a new shard of `kind`: the one holding fewest shards of that kind, then
    fewest of any kind (so a node just added gets the next shards)."""
    if not nodes:
        return None
    same: dict[str, int] = dict.fromkeys(nodes, 0)
    every: dict[str, int] = dict.fromkeys(nodes, 0)
    for (placed_kind, _), node in placed.items():
        if node in every:
            every[node] += 1
            if placed_kind == kind:
                same[node] += 1
    return min(nodes, key=lambda node: (same[node], every[node], node))


def retire(kind: Kind, index: int) -> bool:
    """End shard `index` of `kind` for good (it owns no slot any more). False: not running."""
    try:
        handle = ray.get_actor(name_of(kind, index), namespace=NAMESPACE)
    except ValueError:
        return False
    with contextlib.suppress(Exception):
        ray.kill(handle, no_restart=True)
    return True


def restart(handle: Any) -> None:
    """Kill a shard so that Ray starts it again with nothing in memory (a hand-off whose
    release it did not answer: whatever it cached for the slots is gone with it)."""
    with contextlib.suppress(Exception):
        ray.kill(handle, no_restart=False)
