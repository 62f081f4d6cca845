"""The alert rules pass `promtool check rules` and their unit tests (alerts_test.yml)."""

from __future__ import annotations

import json
import subprocess

import yaml

from tests.metrics.conftest import DASHBOARD, PROMETHEUS_DIR, require_binary


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_binary("promtool"), *args], cwd=PROMETHEUS_DIR,
                          capture_output=True, text=True, timeout=60)


def test_alert_rules_are_valid():
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass():
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_example_is_a_valid_prometheus_config():
    result = _promtool("check", "config", "scrape-example.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_unit_test_and_a_runbook():
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"][0]["rules"]
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
             if case.get("exp_alerts")}
    names = {rule["alert"] for rule in rules}
    assert names - fired == set(), "alerts without a test that makes them fire"
    docs = (PROMETHEUS_DIR.parents[1] / "docs" / "operations.md").read_text().lower()
    for rule in rules:
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert f"### {anchor}" in docs, f"{rule['alert']}: no section in docs/operations.md"


def test_runbook_links_work_from_alerts_and_the_dashboard():
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"][0]["rules"]
    for rule in rules:
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        # An absolute link once Prometheus has the txgate_runbook external label (the unit
        # tests set it and check the rendered URL of every alert).
        assert rule["annotations"]["runbook_url"] == "{{ $externalLabels.txgate_runbook }}#" + anchor
    scrape = yaml.safe_load((PROMETHEUS_DIR / "scrape-example.yml").read_text())
    assert scrape["global"]["external_labels"]["txgate_runbook"].startswith("https://")
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    [link] = [link for link in dashboard["links"] if link["title"] == "Runbooks"]
    assert link["url"] == "${runbook}#alerts" and "runbook" in variables
    docs = (PROMETHEUS_DIR.parents[1] / "docs" / "operations.md").read_text()
    assert "\n## Alerts\n" in docs
