"""Where an actor runs (its node and process) and which code (the release's version), for
the topology view and `points status`."""

import functools
import importlib.metadata
import os
from typing import Any

import ray

# The release a process runs: named by whoever created it (an upgrade names the shards it
# creates), else the installed package's version.
CODE_VERSION_ENV = "POINTS_CODE_VERSION"


@functools.cache
def code_version() -> str:
    """Read once per process (importlib.metadata scans the installed distributions: too
    slow for /healthz, which answers it on every call)."""
    found = os.environ.get(CODE_VERSION_ENV)
    if found:
        return found
    try:
        return importlib.metadata.version("points")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def placement() -> dict[str, Any]:
    """The node (id and address) and process of the calling actor."""
    context = ray.get_runtime_context()
    found = {
        "node_id": context.get_node_id(),
        "node_ip": ray.util.get_node_ip_address(),  # type: ignore[no-untyped-call]  # Ray: unannotated
        "pid": os.getpid(),
        "version": code_version(),
    }
    assert found["node_id"] and found["pid"] > 0
    return found
