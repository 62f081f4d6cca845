"""The dashboard against a real Prometheus: a real `prometheus` scrapes a real gateway every
second while the test drives allow, review, step-up (passed and failed), deny, upstream-error,
bad-signature and fail-open traffic; then every PromQL expression of every panel of
metrics/grafana/txgate.json must return data through Prometheus's HTTP API. A renamed metric,
a wrong label or a broken expression in the dashboard fails here."""

from __future__ import annotations

import json
import re
import subprocess
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest
import requests
import yaml

from tests.fixtures.ports import free_port
from tests.fixtures.processes import wait_until
from tests.fixtures.signing import SignedClient
from tests.metrics.conftest import DASHBOARD, PROMETHEUS_DIR, require_binary

RULES = """
version: 1
counters:
  - {name: user_tx_1h, key: [user_id], window: 1h, aggregate: count}
rules:
  - {id: E-SCORE, description: every payment carries a little risk, when: amount > 0, score: 5}
  - {id: E-SHADOW, description: a candidate rule watched in shadow, when: amount >= 50, action: deny, mode: shadow}
  - {id: E-REVIEW, description: mid-size payments are reviewed, when: amount >= 100 and amount < 200, action: review}
  - {id: E-OTP, description: larger payments need a TOTP code, when: amount >= 200 and amount < 500, action: require_otp}
  - {id: E-DENY, description: very large payments are refused, when: amount >= 500, action: deny}
"""
# A candidate set beside the champion: it would step up what the champion reviews, so the
# "champion vs challenger" panel has pairs that differ.
CHALLENGER = """
version: 1
rules:
  - {id: X-OTP, description: mid-size payments need a code, when: amount >= 100 and amount < 500, action: require_otp}
  - {id: X-DENY, description: very large payments are refused, when: amount >= 500, action: deny}
"""
TX = {"user_id": "json:$.user_id", "amount": "json:$.amount", "currency": "json:$.currency",
      "payee": "json:$.payee"}
# What every Grafana variable of the dashboard stands for in the test's queries.
VARIABLES = {"__rate_interval": "15s", "__range": "1m", "job": "txgate", "route": ".*"}


def panel_expressions(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, rows' nested panels included."""
    found = []
    panels = list(dashboard["panels"])
    while panels:
        panel = panels.pop(0)
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"]))
    return found


def substitute(expr: str) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        assert name in VARIABLES, f"unknown dashboard variable ${name} in {expr}"
        return VARIABLES[name]
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


class Prometheus:
    def __init__(self, tmp_path, targets: list[str]):
        binary = require_binary("prometheus")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = tmp_path / "prometheus.yml"
        # Loading alerts.yml proves the real server accepts the alert rules too.
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
            "scrape_configs": [{"job_name": "txgate", "static_configs": [{"targets": targets}]}],
        }))
        self.log = open(tmp_path / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=self.log)
        wait_until(lambda: requests.get(f"{self.url}/-/ready", timeout=1).ok, what="prometheus ready")

    def query(self, expr: str) -> list[dict]:
        answer = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert answer["status"] == "success", f"{expr}: {answer}"
        return answer["data"]["result"]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
        self.log.close()


@pytest.fixture
def prometheus_for(tmp_path):
    started = []

    def start(targets: list[str]) -> Prometheus:
        server = Prometheus(tmp_path, targets)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def drive(gw, redis_server) -> dict[str, int]:
    """Send every kind of traffic the dashboard shows; return what was sent per decision."""
    client = SignedClient("app", gw.admin_post("/admin/clients", {"id": "app", "hmac": True}).json()["secret"])
    uri = gw.admin_post("/admin/totp/alice").json()["otpauth_uri"]
    totp = pyotp.TOTP(parse_qs(urlsplit(uri).query)["secret"][0])

    def pay(amount, headers=None, path="/pay"):
        return client.request("POST", f"{gw.url}{path}", headers=headers or {},
                              json={"user_id": "alice", "amount": amount, "currency": "EUR",
                                    "payee": "DE02100100109307118603"})

    assert [pay(10).status_code for _ in range(4)] == [200] * 4          # allow
    assert [pay(150).status_code for _ in range(2)] == [200] * 2         # review
    assert [pay(900).status_code for _ in range(3)] == [403] * 3         # deny
    wrong = pay(300).json()["challenge"]                                 # step-up, then failed
    failed = pay(300, {"Txgate-Challenge": wrong, "Txgate-OTP": "000000" if totp.now() != "000000" else "111111"})
    assert failed.status_code == 401
    right = pay(300).json()["challenge"]                                 # step-up, then passed
    assert pay(300, {"Txgate-Challenge": right, "Txgate-OTP": totp.now()}).status_code == 200
    assert client.request("GET", f"{gw.url}/broken").status_code == 502  # upstream error
    assert requests.post(f"{gw.url}/pay", json={}, timeout=5).status_code == 401  # unsigned
    # With the store down the fail_open route still decides, without shared counters.
    redis_server.stop()
    try:
        assert [pay(10, path="/pay-open").status_code for _ in range(2)] == [200, 200]
    finally:
        redis_server.start()
    # payments: allow 4 + passed repeat 1; review 2; deny 3; step_up 3 (two challenges, one
    # failed answer); error 1 (unsigned, matched to the route). pay-open: allow 2.
    return {"allow": 7, "review": 2, "deny": 3, "step_up": 3}


def test_every_dashboard_query_returns_data_from_a_real_prometheus(
        start_gateway, upstream, redis_server, prometheus_for, tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "e2e.yaml").write_text(RULES)
    (tmp_path / "challenger").mkdir()
    (tmp_path / "challenger" / "e2e.yaml").write_text(CHALLENGER)
    route = {"upstream": upstream.url, "transaction": TX}
    gw = start_gateway({
        "state": {"backend": "redis", "url": redis_server.url, "timeout_ms": 200},
        "rules": {"path": str(tmp_path / "rules"), "challenger": str(tmp_path / "challenger"),
                  "reload": "off"},
        "routes": [
            {"name": "payments", "match": {"path": "/pay"}, **route},
            {"name": "payments-open", "match": {"path": "/pay-open"}, **route,
             "on_state_error": "fail_open"},
            # Nothing listens on this port: every forward is an upstream error.
            {"name": "broken", "match": {"path": "/broken"}, "upstream": f"http://127.0.0.1:{free_port()}"},
        ]})
    prometheus = prometheus_for([gw.admin.removeprefix("http://")])
    sent = drive(gw, redis_server)

    def scraped_everything() -> bool:
        got = {r["metric"]["decision"]: int(float(r["value"][1])) for r in prometheus.query(
            'sum by (decision) (txgate_requests_total{job="txgate"})')}
        opened = prometheus.query('sum(txgate_fail_open_total{job="txgate"})')
        return (all(got.get(d) == n for d, n in sent.items())
                and bool(opened) and float(opened[0]["value"][1]) == 2)
    wait_until(scraped_everything, timeout=20, what="prometheus to scrape the driven traffic")
    # A second scrape after the last change, so every rate() window holds two samples of it.
    wait_until(lambda: len(prometheus.query('txgate_requests_total{decision="deny"}[3s]')[0]["values"]) >= 2
               and prometheus.query('count_over_time(up{job="txgate"}[2s])'), timeout=10,
               what="a second scrape")

    expressions = panel_expressions(json.loads(DASHBOARD.read_text()))
    assert len(expressions) >= 15
    empty = [f"{title}: {expr}" for title, expr in expressions
             if not prometheus.query(substitute(expr))]
    assert empty == [], "dashboard queries without data:\n" + "\n".join(empty)

    # Not just any data: the panels see what was sent.
    hits = {(r["metric"]["rule"], r["metric"]["mode"]) for r in prometheus.query(
        'sum by (rule, mode) (txgate_rule_hits_total{job="txgate"}) > 0')}
    assert {("E-SHADOW", "shadow"), ("E-DENY", "enforce"), ("E-OTP", "enforce"),
            ("E-REVIEW", "enforce")} <= hits
    stepups = {r["metric"]["outcome"]: float(r["value"][1]) for r in prometheus.query(
        'sum by (outcome) (txgate_stepup_total{job="txgate", method="otp"})')}
    # A wrong answer is refused with a fresh challenge: three issued for two asked.
    assert stepups["issued"] == 3 and stepups["passed"] == 1 and stepups["failed"] == 1
    assert prometheus.query('txgate_upstream_errors_total{route="broken", kind="unavailable"} == 1')
    assert prometheus.query('sum(txgate_state_errors_total{job="txgate"}) > 0')
    pairs = {(r["metric"]["champion"], r["metric"]["challenger"]): float(r["value"][1])
             for r in prometheus.query('sum by (champion, challenger) '
                                       '(txgate_challenger_decisions_total{route="payments"})')}
    # The reviewed payments would have been stepped up; the denied ones denied alike.
    assert pairs[("review", "step_up")] == 2 and pairs[("deny", "deny")] == 3
