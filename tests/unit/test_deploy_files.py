"""The monitoring files in deploy/ agree with the metric catalog (docs/metrics.md) and with
each other: every dashboard panel has a query, every metric the dashboard and the rules use
is in the catalog, every alert has promtool tests that fire it and keep it quiet.

promtool itself (check config / check rules / test rules) runs in `make promtool`; the test
at the end also has it check the dashboard's queries when it is installed.
"""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests import deploy_files as files


def test_the_catalog_is_read() -> None:
    catalog = files.catalog()
    docs_rows = files.METRICS_DOC.read_text().count("\n| `points_")
    assert catalog["points_http_requests_total"] == "counter"
    assert catalog["points_http_request_duration_seconds"] == "histogram"
    assert catalog["points_ledger_check_timestamp_seconds"] == "gauge"
    assert len(catalog) == docs_rows  # every row of every table
    names = files.catalog_series_names()
    assert "points_shard_batch_size_bucket" in names
    assert "points_shard_queue_depth_bucket" not in names


def test_metric_names_leave_out_recording_rules() -> None:
    expr = (
        "points:ledger_points_issued:increase1d / points:ledger_points_issued:increase1d_avg7d"
        ' and sum(rate(points_http_requests_total{code=~"5.."}[5m])) > 0'
    )
    assert files.metric_names(expr) == {"points_http_requests_total"}


def test_the_dashboard_is_provisionable() -> None:
    dashboard = json.loads(files.DASHBOARD.read_text())
    assert dashboard["uid"] == "points"
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert variables["program"]["definition"] == (
        "label_values(points_ledger_points_total, program)"
    )
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in files.dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


def test_every_panel_has_a_query() -> None:
    panels = list(files.dashboard_panels())
    assert len(panels) >= 20
    for panel in panels:
        exprs = [target.get("expr", "").strip() for target in panel.get("targets", [])]
        assert exprs, f"panel {panel['title']!r} has no target"
        assert all(exprs), f"panel {panel['title']!r} has a target without a query"


def test_dashboard_queries_substitute_the_variables() -> None:
    queries = files.dashboard_queries()
    assert len(queries) >= len(list(files.dashboard_panels()))
    for title, expr in queries:
        assert "$" not in expr, (title, expr)
    issued = dict(files.dashboard_queries(program="shop"))["Points issued/s"]
    assert issued == (
        'sum by (program) (rate(points_ledger_points_total{flow="issued", program=~"shop"}[1m]))'
    )
    assert files.substitute('x{program=~"${program}"}[$__interval]') == 'x{program=~".*"}[1m]'


def _used_metrics() -> dict[str, set[str]]:
    used: dict[str, set[str]] = {}
    for title, expr in files.dashboard_queries():
        for name in files.metric_names(expr):
            used.setdefault(name, set()).add(f"dashboard panel {title!r}")
    for rule in files.rules():
        for name in files.metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"rule {rule.get('alert') or rule['record']}")
    return used


def test_every_metric_used_is_in_the_catalog() -> None:
    used = _used_metrics()
    unknown = {name: sorted(where) for name, where in used.items()}
    for name in files.catalog_series_names():
        unknown.pop(name, None)
    assert not unknown, f"not in docs/metrics.md: {unknown}"
    # The dashboard covers the catalog: every metric shows on some panel.
    shown = {name for _, expr in files.dashboard_queries() for name in files.metric_names(expr)}
    for name, kind in files.catalog().items():
        series = {name + suffix for suffix in ("_bucket", "_sum", "_count")}
        assert name in shown or (kind == "histogram" and series & shown), name


def test_every_alert_is_labelled_and_annotated() -> None:
    alerts = files.alert_rules()
    assert len(alerts) >= 12
    names = [alert["alert"] for alert in alerts]
    assert len(names) == len(set(names))
    for alert in alerts:
        assert alert["labels"]["severity"] in {"critical", "warning"}, alert["alert"]
        assert alert["annotations"]["summary"].strip(), alert["alert"]
        assert alert["annotations"]["description"].strip(), alert["alert"]


def test_every_alert_has_promtool_tests_that_fire_it_and_keep_it_quiet() -> None:
    tested = files.rule_tests()
    for alert in files.alert_rules():
        name = alert["alert"]
        assert tested.get(name, {}).get("fires"), f"no promtool test fires {name}"
        assert tested.get(name, {}).get("quiet"), f"no promtool test keeps {name} quiet"
    unknown = set(tested) - {alert["alert"] for alert in files.alert_rules()}
    assert not unknown, f"promtool tests of alerts that do not exist: {unknown}"


def test_the_scrape_config_renames_points_metrics_and_loads_the_rules() -> None:
    config = yaml.safe_load(files.PROMETHEUS_CONFIG.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "points"]
    (sd,) = job["file_sd_configs"]
    (targets,) = sd["files"]
    assert targets.endswith("/prometheus/targets.json")
    (relabel,) = job["metric_relabel_configs"]
    assert relabel["source_labels"] == ["__name__"]
    assert relabel["regex"] == "ray_points_(.*)"
    assert relabel["target_label"] == "__name__"
    assert relabel["replacement"] == "points_$1"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_accepts_the_dashboard_queries(tmp_path: Path) -> None:
    # Each query as a recording rule: promtool check rules parses every expression.
    queries = files.dashboard_queries()
    group = {
        "name": "dashboard",
        "rules": [
            {"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(queries)
        ],
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
