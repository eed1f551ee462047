"""The metric helpers: flows by program, counter deltas, the scrape targets file, the
request id on the wire and in log lines."""

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pytest

from actors import metrics, tracing
from actors.metrics import FLOWS, REDEMPTION_STATUSES, ShardMetrics, flows
from actors.protocol import Credit, command_from_wire, command_to_wire, request_id_of_wire
from domain.ledger import TRANSACTION_TYPES
from domain.rewards import SagaState
from serve_app import logs, scrape


@dataclass
class Txn:
    program_id: str
    kind: str
    points: int


def test_every_transaction_kind_has_a_flow_and_every_status_is_known() -> None:
    assert set(FLOWS) == set(TRANSACTION_TYPES)
    assert len(set(FLOWS.values())) == len(FLOWS)
    assert set(REDEMPTION_STATUSES) == {state.value for state in SagaState}


def test_flows_sum_points_by_program_and_flow_and_count_kinds() -> None:
    points, count = flows(
        [Txn("a", "credit", 10), Txn("a", "credit", 5), Txn("a", "debit", 3), Txn("b", "expire", 7)]
    )
    assert points == {("a", "issued"): 15, ("a", "redeemed"): 3, ("b", "expired"): 7}
    assert count == {("a", "credit"): 2, ("a", "debit"): 1, ("b", "expire"): 1}


class Recorded:
    def __init__(self) -> None:
        self.incs: list[tuple[float, dict[str, str] | None]] = []

    def inc(self, value: float, tags: dict[str, str] | None = None) -> None:
        assert value > 0
        self.incs.append((value, tags))


def test_sync_exports_the_growth_of_the_cores_counters_once() -> None:
    shard = ShardMetrics("account-7", clock=lambda: 1000.0)
    fenced = Recorded()
    shard._counters["fenced"] = fenced  # type: ignore[assignment]
    shard.sync(0, 0, "closed", {"fenced": 2})
    shard.sync(0, 0, "closed", {"fenced": 2})  # no growth: nothing
    shard.sync(3, 10, "open", {"fenced": 5})
    assert fenced.incs == [(2.0, {"shard": "account-7"}), (3.0, {"shard": "account-7"})]


def test_breaker_states_are_numbered_for_the_gauge() -> None:
    assert metrics.BREAKER_STATES == {"closed": 0, "half_open": 1, "open": 2}


def test_scrape_targets_are_live_nodes_metrics_ports(tmp_path: Path) -> None:
    nodes = [
        {"Alive": True, "NodeManagerAddress": "10.0.0.2", "MetricsExportPort": 9001},
        {"Alive": False, "NodeManagerAddress": "10.0.0.3", "MetricsExportPort": 9001},
        {"Alive": True, "NodeManagerAddress": "10.0.0.1", "MetricsExportPort": 9002},
        {"Alive": True, "NodeManagerAddress": "10.0.0.4"},
    ]
    targets = scrape.node_targets(nodes)
    assert targets == ["10.0.0.1:9002", "10.0.0.2:9001"]
    path = scrape.targets_path(tmp_path)
    assert scrape.write_targets(path, targets)
    assert json.loads(path.read_text()) == [{"targets": targets, "labels": {"service": "points"}}]
    assert not scrape.write_targets(path, targets)  # unchanged: not rewritten
    assert scrape.write_targets(path, [])
    assert json.loads(path.read_text()) == []


def test_the_request_id_travels_beside_the_command() -> None:
    command = Credit(program_id="p", member_id="m", key="k", points=5, reason="r")
    wire = command_to_wire(command, "req-1")
    assert request_id_of_wire(wire) == "req-1"
    assert command_from_wire(wire) == command
    assert request_id_of_wire(wire[:2]) == ""  # an older caller's two-part form


def test_commit_lines_name_their_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    logs.configure("json", out)
    token = tracing.REQUEST_ID.set("outer")
    try:
        logging.getLogger("points.shard").info(
            "committed", extra={"shard": "account-0", "request_ids": ["a", "b"]}
        )
    finally:
        tracing.REQUEST_ID.reset(token)
        logs.configure("text")
    line = json.loads(out.getvalue())
    assert line["request_id"] == "outer"
    assert line["shard"] == "account-0" and line["request_ids"] == ["a", "b"]
