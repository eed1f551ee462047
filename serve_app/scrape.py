"""Prometheus scrape targets: every live Ray node's metrics export port, written as a
file-based discovery file (`<data dir>/prometheus/targets.json`) that
deploy/prometheus/prometheus.yml reads. `points up` writes it once the service is up and
keeps it current while it runs (nodes join and leave); Prometheus re-reads the file when
it changes. The file is replaced atomically (written beside it, then renamed), so
Prometheus never reads half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

TARGETS_FILE = Path("prometheus") / "targets.json"
LABELS = {"service": "points"}


def targets_path(data_dir: Path) -> Path:
    return data_dir / TARGETS_FILE


def node_targets(nodes: Iterable[Mapping[str, Any]]) -> list[str]:
    """`host:port` of each live node's metrics agent (ray.nodes() entries), sorted."""
    found = set()
    for node in nodes:
        port = node.get("MetricsExportPort")
        host = node.get("NodeManagerAddress")
        if node.get("Alive") and port and host:
            found.add(f"{host}:{int(port)}")
    return sorted(found)


def discovery(targets: list[str]) -> list[dict[str, Any]]:
    """The file's content: one target group (Prometheus `file_sd_configs` format)."""
    return [{"targets": targets, "labels": dict(LABELS)}] if targets else []


def write_targets(path: Path, targets: list[str]) -> bool:
    """Write the discovery file if its content changed; returns whether it wrote."""
    text = json.dumps(discovery(targets), indent=2) + "\n"
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(text)
    os.replace(partial, path)
    return True
