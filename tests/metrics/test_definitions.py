"""The metric declarations and the dashboard file, without a server."""

from __future__ import annotations

import json

from prometheus_client import REGISTRY

import metrics.definitions as d
from tests.metrics.conftest import DASHBOARD
from tests.metrics.test_prometheus_e2e import panel_expressions

CONTRACT = {   # docs/protocol.md §6: name -> labels
    "txgate_requests": ("route", "decision"), "txgate_rule_hits": ("rule", "action", "mode"),
    "txgate_stepup": ("method", "outcome"), "txgate_auth_failures": ("reason",),
    "txgate_risk_score": ("route",), "txgate_overhead_seconds": ("route",),
    "txgate_upstream_duration_seconds": ("route",), "txgate_upstream_errors": ("route", "kind"),
    "txgate_state_errors": ("operation",), "txgate_rules_reloads": ("outcome",),
    "txgate_rules_info": ("version", "rules"), "txgate_decision_log_errors": ("sink",),
}


def test_every_contract_metric_is_declared_with_its_labels():
    declared = {m._name: m._labelnames for m in vars(d).values()
                if hasattr(m, "_labelnames") and hasattr(m, "_name")}
    for name, labels in CONTRACT.items():
        assert declared.get(name) == labels, name


def test_precreate_makes_the_divided_label_sets_read_zero():
    d.precreate({"precreate-a": "fail_closed", "precreate-b": "local"})
    value = REGISTRY.get_sample_value
    for decision in d.DECISIONS:
        assert value("txgate_requests_total", {"route": "precreate-a", "decision": decision}) == 0
        assert value("txgate_requests_total", {"route": d.UNMATCHED_ROUTE, "decision": decision}) is not None
    assert value("txgate_overhead_seconds_count", {"route": "precreate-b"}) == 0
    assert value("txgate_upstream_errors_total", {"route": "precreate-b", "kind": "timeout"}) == 0
    assert value("txgate_stepup_total", {"method": "device", "outcome": "locked"}) is not None
    assert value("txgate_rules_reloads_total", {"outcome": "failure"}) is not None
    assert value("txgate_decision_log_errors_total", {"sink": "queue"}) is not None
    # Fail-open exists only where the route's policy can ever produce it.
    assert value("txgate_fail_open_total", {"route": "precreate-b", "policy": "local"}) == 0
    assert value("txgate_fail_open_total", {"route": "precreate-a", "policy": "fail_closed"}) is None


def test_dashboard_has_a_prometheus_datasource_variable_used_by_every_panel():
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert dashboard["schemaVersion"] >= 36   # Grafana 9.4+ imports it as is; 10 is 38
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"]), panel["title"]
    metrics_used = " ".join(expr for _, expr in panel_expressions(dashboard))
    for name in ("txgate_requests_total", "txgate_stepup_total", "txgate_rule_hits_total",
                 "txgate_risk_score_bucket", "txgate_overhead_seconds_bucket",
                 "txgate_upstream_duration_seconds_bucket", "txgate_upstream_errors_total",
                 "txgate_state_errors_total", "txgate_fail_open_total", "txgate_rules_info",
                 "txgate_rules_reloads_total", "txgate_challenger_decisions_total"):
        assert name in metrics_used, f"no panel shows {name}"
