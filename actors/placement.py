"""Where an actor runs: its node and process, for the topology view and `points status`."""

import os
from typing import Any

import ray


def placement() -> dict[str, Any]:
    """The node (id and address) and process of the calling actor."""
    context = ray.get_runtime_context()
    found = {
        "node_id": context.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]  # Ray: unannotated
        "pid": os.getpid(),
    }
    assert found["node_id"] and found["pid"] > 0
    return found
