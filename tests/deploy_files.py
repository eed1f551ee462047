"""Readers for the monitoring files in deploy/ (Prometheus rules and scrape config, the
Grafana dashboard) and the metric catalog in docs/metrics.md, shared by the unit test of
those files (tests/unit/test_deploy_files.py) and the e2e test that runs the dashboard's
queries against a real Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "points.json"
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERT_RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS_DIR = PROMETHEUS_DIR / "tests"
METRICS_DOC = ROOT / "docs" / "metrics.md"

# What Grafana puts in place of its built-in interval variables, for running a panel's
# query outside Grafana.
INTERVAL = "1m"

# An identifier in PromQL (metric and recording-rule names may contain ':').
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
# A metric in the catalog: a table row starting with | `name` | type |.
_CATALOG_ROW = re.compile(r"^\|\s*`(points_[a-z0-9_]+)`\s*\|\s*([a-z]+)\s*\|", re.MULTILINE)
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def dashboard_panels(path: Path = DASHBOARD) -> Iterator[dict[str, Any]]:
    """Every panel of the dashboard that shows data: rows left out, a collapsed row's
    panels included."""
    dashboard = json.loads(path.read_text())

    def walk(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in panels:
            if panel.get("type") == "row":
                yield from walk(panel.get("panels", []))
            else:
                yield panel

    yield from walk(dashboard["panels"])


def substitute(expr: str, program: str | None = None) -> str:
    """A panel query with the dashboard's variables replaced: `$program` by `program`
    (a value or a regex; unset: `.*`, every program, as the variable's "All"), and
    Grafana's `$__rate_interval` / `$__interval` by INTERVAL."""
    replacements = {
        "__rate_interval": INTERVAL,
        "__interval": INTERVAL,
        "program": ".*" if program is None else program,
    }

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return replacements.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", replace, expr)


def dashboard_queries(path: Path = DASHBOARD, program: str | None = None) -> list[tuple[str, str]]:
    """(panel title, query) for every query of every panel, variables substituted
    (see substitute)."""
    return [
        (panel["title"], substitute(target["expr"], program))
        for panel in dashboard_panels(path)
        for target in panel.get("targets", [])
        if target.get("expr", "").strip()
    ]


def rule_groups(path: Path = ALERT_RULES) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(path.read_text())["groups"]
    return groups


def rules(path: Path = ALERT_RULES) -> list[dict[str, Any]]:
    """Every rule (recording and alerting) of the rule file."""
    return [rule for group in rule_groups(path) for rule in group["rules"]]


def alert_rules(path: Path = ALERT_RULES) -> list[dict[str, Any]]:
    return [rule for rule in rules(path) if "alert" in rule]


def rule_tests(directory: Path = RULE_TESTS_DIR) -> dict[str, dict[str, int]]:
    """Per alert name, how many promtool test cases expect it to fire ("fires") and how
    many expect it quiet ("quiet")."""
    counts: dict[str, dict[str, int]] = {}
    for path in sorted(directory.glob("*.yml")):
        for test in yaml.safe_load(path.read_text()).get("tests", []):
            for case in test.get("alert_rule_test", []):
                seen = counts.setdefault(case["alertname"], {"fires": 0, "quiet": 0})
                seen["fires" if case.get("exp_alerts") else "quiet"] += 1
    return counts


def catalog(path: Path = METRICS_DOC) -> dict[str, str]:
    """The metric catalog: name -> type (counter, gauge, histogram)."""
    return dict(_CATALOG_ROW.findall(path.read_text()))


def catalog_series_names(path: Path = METRICS_DOC) -> set[str]:
    """Every series name the catalog's metrics have in Prometheus: a histogram's
    _bucket, _sum and _count too."""
    names = set()
    for name, kind in catalog(path).items():
        names.add(name)
        if kind == "histogram":
            names.update(name + suffix for suffix in _HISTOGRAM_SUFFIXES)
    return names


def metric_names(expr: str) -> set[str]:
    """The Points metric names a query uses: identifiers starting with `points_`;
    recording-rule names (`points:…:…`) are not metrics and are left out."""
    return {
        word for word in _IDENTIFIER.findall(expr) if word.startswith("points_") and ":" not in word
    }
