"""The gateway spine end to end: a real `txgate run`, a real upstream, a real HTTP client."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import platform
import re
import socket
import threading
import time

import pytest
import requests

from tests.fixtures.ports import free_port
from tests.fixtures.processes import wait_until
from tests.fixtures.signing import SignedClient

RULES = """
version: 1
rules:
  - id: T-DENY
    description: amounts above ten thousand are refused
    when: amount > 10000
    action: deny
  - id: T-REVIEW
    description: round thousands get a second look
    when: amount == 1000
    action: review
"""
TX = {"user_id": "json:$.user_id", "amount": "json:$.amount", "currency": "json:$.currency"}


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    from tests.fixtures.processes import Gateway
    tmp = tmp_path_factory.mktemp("spine")
    (tmp / "rules").mkdir()
    (tmp / "rules" / "test.yaml").write_text(RULES)
    dead = f"http://127.0.0.1:{free_port()}"
    config = {
        "rules": {"path": str(tmp / "rules"), "reload": "off"},
        "limits": {"max_body_bytes": 4096, "upstream_timeout_s": 1, "shutdown_grace_s": 10},
        "routes": [
            {"name": "payments", "match": {"path": "/v1/payments", "methods": ["POST"]},
             "upstream": upstream.url, "transaction": TX},
            {"name": "dead", "match": {"path_prefix": "/dead/"}, "upstream": dead},
            {"name": "passthrough", "match": {"path_prefix": "/"}, "upstream": upstream.url},
        ],
    }
    gw = Gateway(tmp, config)
    secret = gw.admin_post("/admin/clients", {"id": "app-1", "hmac": True}).json()["secret"]
    gw.client = SignedClient("app-1", secret)
    yield gw
    gw.stop()


def test_get_round_trip_preserves_status_body_and_end_to_end_headers(gateway, upstream):
    upstream.clear()
    r = gateway.client.request("GET", f"{gateway.url}/accounts/7?x=1", headers={"X-Custom": "kept"})
    assert r.status_code == 200
    echoed = r.json()
    assert echoed["method"] == "GET" and echoed["path"] == "/accounts/7?x=1"
    sent = {k.lower(): v for k, v in echoed["headers"]}
    assert sent["x-custom"] == "kept"
    assert sent["txgate-tier"] == "client" and len(sent["txgate-request-id"]) == 32
    assert sent["x-forwarded-for"] == "127.0.0.1" and sent["forwarded"].startswith("for=127.0.0.1;proto=http")
    # Hop-by-hop headers of the upstream answer never reach the client.
    assert r.headers["X-Upstream"] == "echo"
    assert "X-Hop" not in r.headers and "Keep-Alive" not in r.headers
    assert r.headers["Txgate-Request-Id"] == sent["txgate-request-id"]


def test_upstream_status_and_body_pass_unchanged(gateway):
    r = gateway.client.request("POST", f"{gateway.url}/status/418")
    assert r.status_code == 418 and r.json() == {"status": 418}


def test_post_round_trip_carries_the_decision_and_strips_spoofed_headers(gateway, upstream):
    upstream.clear()
    doc = {"user_id": "u1", "amount": 1000, "currency": "EUR"}
    r = gateway.client.request("POST", f"{gateway.url}/v1/payments", json=doc,
                               headers={"Txgate-Tier": "device", "Txgate-Decision": "allow",
                                        "txgate-risk-score": "0", "Connection": "X-Secret-Hop",
                                        "X-Secret-Hop": "drop-me"})
    assert r.status_code == 200, r.text
    seen = upstream.seen()
    assert len(seen) == 1 and json.loads(base64.b64decode(seen[0]["body"])) == doc
    sent = [(k.lower(), v) for k, v in seen[0]["headers"]]
    txgate = [(k, v) for k, v in sent if k.startswith("txgate-")]
    assert sorted(k for k, _ in txgate) == ["txgate-decision", "txgate-request-id",
                                            "txgate-risk-score", "txgate-tier"]
    assert dict(txgate)["txgate-decision"] == "review"
    assert dict(txgate)["txgate-tier"] == "client"
    assert "x-secret-hop" not in dict(sent)


def error_of(r: requests.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert body["error"] == code and len(body["request_id"]) == 32
    return body


def test_no_route_is_404_and_never_forwarded(tmp_path, start_gateway, upstream):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "x.yaml").write_text("version: 1\nrules: []\n")
    gw = start_gateway({"rules": {"path": str(tmp_path / "r"), "reload": "off"}, "routes": [
        {"name": "only", "match": {"path": "/only", "methods": ["GET"]}, "upstream": upstream.url}]})
    upstream.clear()
    error_of(requests.get(f"{gw.url}/elsewhere", timeout=5), 404, "no_route")
    error_of(requests.post(f"{gw.url}/only", timeout=5), 404, "no_route")
    assert upstream.seen() == []


def test_invalid_transaction_is_400_naming_the_field(gateway, upstream):
    upstream.clear()
    r = gateway.client.request("POST", f"{gateway.url}/v1/payments",
                               json={"user_id": "u1", "amount": "12", "currency": "EUR"})
    assert error_of(r, 400, "invalid_request")["message"].startswith("amount: ")
    r = gateway.client.request("POST", f"{gateway.url}/v1/payments", data=b"{oops",
                               headers={"Content-Type": "application/json"})
    assert error_of(r, 400, "invalid_request")["message"].startswith("body: ")
    assert upstream.seen() == []


def test_unsigned_request_is_401_and_never_forwarded(gateway, upstream):
    upstream.clear()
    error_of(requests.get(f"{gateway.url}/accounts/1", timeout=5), 401, "invalid_signature")
    assert upstream.seen() == []


def test_denied_transaction_is_403_without_rule_names(gateway, upstream):
    upstream.clear()
    r = gateway.client.request("POST", f"{gateway.url}/v1/payments",
                               json={"user_id": "u1", "amount": 20000, "currency": "EUR"})
    body = error_of(r, 403, "transaction_denied")
    assert "T-DENY" not in r.text and set(body) == {"error", "request_id"}
    assert upstream.seen() == []


def test_body_too_large_is_413_by_length_and_by_chunks(gateway, upstream):
    upstream.clear()
    big = {"user_id": "u1", "amount": 1, "currency": "EUR", "pad": "x" * 5000}
    error_of(gateway.client.request("POST", f"{gateway.url}/v1/payments", json=big), 413, "body_too_large")

    def chunks():
        for _ in range(10):
            yield b"x" * 1000
    r = requests.post(f"{gateway.url}/v1/payments", data=chunks(), timeout=5)
    error_of(r, 413, "body_too_large")
    assert upstream.seen() == []


def test_upstream_refused_reset_and_timeout(gateway):
    error_of(gateway.client.request("GET", f"{gateway.url}/dead/x"), 502, "upstream_unavailable")
    error_of(gateway.client.request("GET", f"{gateway.url}/reset"), 502, "upstream_unavailable")
    error_of(gateway.client.request("GET", f"{gateway.url}/slow?s=3"), 504, "upstream_timeout")


def test_a_failed_post_is_never_retried(gateway, upstream):
    upstream.clear()
    error_of(gateway.client.request("POST", f"{gateway.url}/reset", json={"pay": 1}), 502,
             "upstream_unavailable")
    assert len(upstream.seen()) == 1   # sent once: a reset payment is not submitted again


def _peak_rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def test_a_50_mb_response_streams_with_bounded_memory(gateway):
    before = _peak_rss_kb(gateway.proc.pid)
    r = gateway.client.request("GET", f"{gateway.url}/big?mb=50", stream=True)
    assert r.status_code == 200 and r.headers["Content-Length"] == str(50 * 1024 * 1024)
    received = sum(len(chunk) for chunk in r.iter_content(1 << 20))
    assert received == 50 * 1024 * 1024
    # Holding the body would add 50 MB; streaming adds at most a few buffers.
    assert _peak_rss_kb(gateway.proc.pid) - before < 20_000


def test_metrics_and_health_endpoints(gateway):
    assert requests.get(f"{gateway.admin}/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{gateway.admin}/readyz", timeout=5).json()
    assert ready["ready"] is True and ready["rules"]
    text = gateway.metrics()
    assert 'txgate_requests_total{decision="allow",route="passthrough"}' in text
    assert "txgate_rules_info{" in text
    build = re.search(r'^txgate_build_info\{python="([^"]+)",rules_version="([^"]+)",'
                      r'version="([^"]+)"\} 1\.0$', text, re.M)
    assert build and build.group(2) == ready["rules"]
    assert build.group(1) == platform.python_version()
    assert build.group(3) == importlib.metadata.version("txgate")
    assert "process_resident_memory_bytes " in text and "python_info{" in text


def test_sigterm_lets_in_flight_requests_finish_and_flushes_the_log(start_gateway, upstream, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "x.yaml").write_text("version: 1\nrules: []\n")
    gw = start_gateway({"rules": {"path": str(tmp_path / "r"), "reload": "off"},
                        "limits": {"upstream_timeout_s": 10, "shutdown_grace_s": 10},
                        "routes": [{"name": "slow", "match": {"path": "/slow"}, "upstream": upstream.url,
                                    "transaction": {"user_id": "header:X-User"}}]})
    secret = gw.admin_post("/admin/clients", {"id": "app-2", "hmac": True}).json()["secret"]
    client = SignedClient("app-2", secret)
    upstream.clear()
    prepared = [client.prepare("POST", f"{gw.url}/slow?s=2", headers={"X-User": f"u{i}"}) for i in range(5)]
    results: list = [None] * 5

    def call(i):
        results[i] = requests.Session().send(prepared[i], timeout=20).status_code

    threads = [threading.Thread(target=call, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    wait_until(lambda: _slow_in_flight(upstream) >= 5, what="5 requests in flight")
    gw.terminate()
    time.sleep(0.3)
    with pytest.raises(OSError):   # the listener is closed at once
        socket.create_connection(("127.0.0.1", gw.port), timeout=1).close()
    for t in threads:
        t.join(30)
    assert results == [200] * 5
    assert gw.proc.wait(30) == 0
    logged = gw.decisions()
    assert sorted(e["user_id"] for e in logged) == [f"u{i}" for i in range(5)]


def _slow_in_flight(upstream) -> int:
    return sum(1 for e in upstream.seen() if e["path"].startswith("/slow?s=2"))


@pytest.mark.parametrize("path", ["/v1/accounts/../v1/payments", "/v1/accounts/%2e%2e/payments",
                                  "/dead/..%2fv1/payments", "/accounts//x", "/a/./b",
                                  "/v1/payments#x", "/v1/payments?a=1#/../accounts"])
def test_ambiguous_paths_are_refused_before_routing(gateway, upstream, path):
    import http.client
    upstream.clear()
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=5)
    connection.request("POST", path, body=b'{"amount": 1000000000}',
                       headers={"Content-Type": "application/json"})
    answer = connection.getresponse()
    body = json.loads(answer.read())
    connection.close()
    assert answer.status == 400 and body["error"] == "invalid_request"
    assert upstream.seen() == []


def test_forwarded_host_and_proto_are_the_gateways_not_the_clients(gateway, upstream):
    upstream.clear()
    gateway.client.request("GET", f"{gateway.url}/x", headers={"X-Forwarded-Host": "evil.example",
                                                               "X-Forwarded-Proto": "https"})
    sent = {k.lower(): v for k, v in upstream.seen()[0]["headers"]}
    # No public_host configured and no match.hosts: the client's Host says nothing trusted.
    assert "x-forwarded-host" not in sent and "host=" not in sent["forwarded"]
    assert sent["x-forwarded-proto"] == "http"


def test_admin_errors_are_json_even_from_the_router(gateway):
    from tests.fixtures.processes import ADMIN_TOKEN
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for method, path in (("DELETE", "/admin/credentials/client/a%0Ab"), ("GET", "/admin/nothing"),
                         ("PUT", "/admin/rules/reload")):
        r = requests.request(method, f"{gateway.admin}{path}", headers=bearer, timeout=5)
        assert r.status_code in (404, 405) and r.headers["Content-Type"].startswith("application/json")
        assert r.json()["error"] in ("not_found", "method_not_allowed")
