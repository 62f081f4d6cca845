"""The gateway and the upstream see the same transaction: each attack of the issue that found
they did not, against a real `txgate run`, a real upstream and (for outages) a real Redis.

The echo upstream is aiohttp; tests/hardening/test_parser_differential.py runs the same
question against WSGI and ASGI stacks as well.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from tests.fixtures.processes import wait_until
from tests.fixtures.signing import SignedClient

RULES = """
version: 1
counters:
  - {name: user_tx_1h, key: [user_id], window: 1h, aggregate: count}
rules:
  - id: T-BIG
    description: large amounts are refused
    when: amount > 1000
    action: deny
"""
TX = {"user_id": {"from": "json:$.user_id", "normalize": ["nfkc", "casefold", "strip", "ascii"]},
      "amount": "json:$.amount", "currency": {"from": "json:$.currency", "normalize": ["upper"]},
      "device_id": {"from": "header:X-Device-Id", "required": False}}
PAYMENT = {"user_id": "u1", "amount": 10, "currency": "EUR"}


@pytest.fixture(scope="module")
def gateway(upstream, tmp_path_factory):
    from tests.fixtures.processes import Gateway
    tmp = tmp_path_factory.mktemp("same-tx")
    (tmp / "rules").mkdir()
    (tmp / "rules" / "test.yaml").write_text(RULES)
    config = {
        "public_host": "api.example",
        "rules": {"path": str(tmp / "rules"), "reload": "off"},
        "limits": {"max_amount": 1_000_000},
        "routes": [
            {"name": "payments", "match": {"path": "/v1/payments", "methods": ["POST"]},
             "upstream": upstream.url, "transaction": TX},
            {"name": "hosted", "match": {"path": "/v1/hosted", "hosts": ["pay.example"]},
             "upstream": upstream.url},
            {"name": "passthrough", "match": {"path_prefix": "/"}, "upstream": upstream.url},
        ],
    }
    gw = Gateway(tmp, config)
    secret = gw.admin_post("/admin/clients", {"id": "app-1", "hmac": True}).json()["secret"]
    gw.client = SignedClient("app-1", secret)
    yield gw
    gw.stop()


def pay(gw, body: bytes, content_type="application/json"):
    headers = {"Content-Type": content_type} if content_type else {}
    return gw.client.request("POST", f"{gw.url}/v1/payments", data=body, headers=headers)


def raw_request(gw, lines: list[str], body: bytes = b"") -> bytes:
    """Send header lines exactly as given (duplicates and odd spellings included)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return sock.recv(65536)


def signed_lines(gw, method: str, path: str, body: bytes = b"", extra=()) -> list[str]:
    prepared = gw.client.prepare(method, f"{gw.url}{path}", data=body or None)
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{gw.port}"]
    lines += [f"{k}: {v}" for k, v in prepared.headers.items() if k.lower() != "host"]
    return lines + list(extra) + ["Connection: close"]


UTF7 = (b'{"user_id":"u","amount":1,"currency":"EUR","payee":{"iban":"DE89370400440532013000",'
        b'"country":"DE"},"memo":"+ACIALAAiAGEAbQBvAHUAbgB0ACIAOgA5ADkAOQA5ADkALAAiAHgAIgA6ACI-"}')


def test_a_utf7_body_is_refused_not_decided_as_one_amount_and_executed_as_another(gateway, upstream):
    upstream.clear()
    r = pay(gateway, UTF7, content_type="application/json; charset=utf-7")
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    r = pay(gateway, json.dumps(PAYMENT).encode(), content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415
    assert upstream.seen() == []
    assert 'txgate_bad_requests_total{error="unsupported_media_type",route="payments"} 2.0' \
        in gateway.metrics()


def test_two_content_encodings_are_refused(gateway, upstream):
    upstream.clear()
    body = json.dumps(PAYMENT).encode()
    lines = signed_lines(gateway, "POST", "/v1/payments", body,
                         ["Content-Type: application/json", "Content-Encoding: identity",
                          "Content-Encoding: gzip"])
    answer = raw_request(gateway, lines, body)
    assert answer.startswith(b"HTTP/1.1 400") and b"Content-Encoding" in answer
    assert upstream.seen() == []


@pytest.mark.parametrize("body", [
    b'{"user_id":"u1","amount":1,"amount":9999,"currency":"EUR"}',
    b'{"user_id":"u1","amount":1,"AMOUNT":9999,"currency":"EUR"}',
])
def test_duplicate_keys_are_refused(gateway, upstream, body):
    upstream.clear()
    r = pay(gateway, body)
    assert r.status_code == 400 and "appears twice" in r.json()["message"]
    assert upstream.seen() == []


@pytest.mark.parametrize("header", [
    "X-HTTP-Method-Override: DELETE", "X-Original-URL: /admin", "X-Rewrite-URL: /admin",
    "Txgate_Tier: device", "X_HTTP_Method_Override: DELETE", "X_Device_Id: d-of-someone-else",
    "X-Device-Id: d2",   # a second line of a header the route decides on
])
def test_headers_that_override_at_the_upstream_are_refused(gateway, upstream, header):
    upstream.clear()
    body = json.dumps(PAYMENT).encode()
    lines = signed_lines(gateway, "POST", "/v1/payments", body,
                         ["Content-Type: application/json", "X-Device-Id: d1", header])
    if header.startswith("X-Device-Id"):
        lines.remove("X-Device-Id: d1")
        lines.insert(2, "X-Device-Id: d1")
    answer = raw_request(gateway, lines, body)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert upstream.seen() == []


def test_identity_headers_are_dropped_and_forwarded_host_is_ours(gateway, upstream):
    upstream.clear()
    r = gateway.client.request("GET", f"{gateway.url}/accounts/7",
                               headers={"X-Real-IP": "10.0.0.1", "True-Client-IP": "10.0.0.2",
                                        "X-Forwarded-Host": "evil.example"})
    assert r.status_code == 200
    sent = {k.lower(): v for k, v in r.json()["headers"]}
    assert "x-real-ip" not in sent and "true-client-ip" not in sent
    assert sent["x-forwarded-host"] == "api.example"        # public_host, not the client's
    assert 'host="api.example"' in sent["forwarded"]


def test_the_signed_host_must_be_one_the_route_accepts(gateway, upstream):
    upstream.clear()
    # The client signs evil.example as @authority: a valid signature, a host the route refuses.
    prepared = gateway.client.prepare("GET", "http://evil.example/v1/hosted")
    evil = ["GET /v1/hosted HTTP/1.1", "Host: evil.example"] + [
        f"{k}: {v}" for k, v in prepared.headers.items() if k.lower() != "host"] + ["Connection: close"]
    # /v1/hosted only serves pay.example: evil.example falls through to the pass-through route,
    # which forwards with the configured public host, never evil.example.
    answer = raw_request(gateway, evil)
    assert answer.startswith(b"HTTP/1.1 200")
    sent = {k.lower(): v for k, v in upstream.seen()[-1]["headers"]}
    assert sent["x-forwarded-host"] == "api.example" and "evil.example" not in sent["forwarded"]
    prepared = gateway.client.prepare("GET", "http://pay.example:8443/v1/hosted")
    good = ["GET /v1/hosted HTTP/1.1", "Host: pay.example:8443"] + [
        f"{k}: {v}" for k, v in prepared.headers.items() if k.lower() != "host"] + ["Connection: close"]
    assert raw_request(gateway, good).startswith(b"HTTP/1.1 200")
    sent = {k.lower(): v for k, v in upstream.seen()[-1]["headers"]}
    assert sent["x-forwarded-host"] == "pay.example"


def test_amounts_near_2_53_are_a_400_not_a_store_failure(gateway, upstream):
    upstream.clear()
    for amount in (2 ** 53 - 1, 1_000_001):
        r = pay(gateway, json.dumps({**PAYMENT, "amount": amount}).encode())
        assert r.status_code == 400 and r.json()["message"].startswith("amount: above the largest")
    r = pay(gateway, json.dumps({**PAYMENT, "amount": 1000}).encode())
    assert r.status_code == 200


def test_a_client_that_disconnects_mid_body_is_client_closed(gateway):
    head = signed_lines(gateway, "POST", "/v1/payments", b"x" * 100,
                        ["Content-Type: application/json"])
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + b'{"user_id":')
        time.sleep(0.2)
    wait_until(lambda: 'txgate_bad_requests_total{error="client_closed",route="payments"} 1.0'
               in gateway.metrics(), what="client_closed counted")
    assert "internal_error" not in gateway.metrics().split("txgate_bad_requests_total")[1][:2000]
    assert "Traceback" not in gateway.stderr()


@pytest.mark.parametrize("sent", ["Carol", "carol ", "\uff23arol"])
def test_look_alike_user_ids_share_one_risk_view(gateway, sent):
    r = pay(gateway, json.dumps({**PAYMENT, "user_id": sent, "currency": "eur"}).encode())
    assert r.status_code == 200
    request_id = r.headers["Txgate-Request-Id"]

    def logged():
        for entry in gateway.decisions():
            if entry["request_id"] == request_id:
                return entry
        return None
    wait_until(lambda: logged() is not None, what="decision logged")
    entry = logged()
    assert entry["transaction"]["user_id"] == "carol" and entry["transaction"]["currency"] == "EUR"
    assert entry["normalized"]["user_id"] == sent and entry["normalized"]["currency"] == "eur"


@pytest.mark.parametrize("look_alike", ["c\u0430rol", "car\u200bol"])
def test_user_ids_with_invisible_or_foreign_look_alikes_are_refused(gateway, look_alike):
    r = pay(gateway, json.dumps({**PAYMENT, "user_id": look_alike}).encode())
    assert r.status_code == 400 and r.json()["message"] == "user_id: only ASCII characters are accepted"


# --- Replays across a store outage -----------------------------------------------------------

OUTAGE_RULES = "version: 1\nrules: []\n"


def _outage_config(tmp_path, upstream, redis_server) -> dict:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "none.yaml").write_text(OUTAGE_RULES)
    return {"state": {"backend": "redis", "url": redis_server.url, "timeout_ms": 200},
            "rules": {"path": str(rules), "reload": "off"},
            "routes": [{"name": "open", "match": {"path": "/open"}, "upstream": upstream.url,
                        "transaction": {"user_id": "header:X-User"},
                        "on_state_error": "fail_open"},
                       {"name": "pass", "match": {"path_prefix": "/"}, "upstream": upstream.url,
                        "on_state_error": "local"}]}


@pytest.mark.parametrize("path", ["/open", "/pass/x"])
def test_replays_are_refused_during_and_after_a_store_outage(path, start_gateway, redis_server,
                                                             upstream, tmp_path):
    first = start_gateway(_outage_config(tmp_path, upstream, redis_server))
    second = start_gateway(_outage_config(tmp_path, upstream, redis_server))
    secret = first.admin_post("/admin/clients", {"id": "app", "hmac": True}).json()["secret"]
    client = SignedClient("app", secret)

    def prepare():
        return client.prepare("POST", f"{first.url}{path}", headers={"X-User": "u"})

    def send(gw, prepared):
        # Both gateways stand behind one address: the signed Host is the same at either.
        prepared = prepared.copy()
        prepared.headers["Host"] = first.url.removeprefix("http://")
        prepared.url = prepared.url.replace(first.url, gw.url)
        return client.send(prepared)

    # The second gateway learns the client's key while the store is up.
    assert send(second, prepare()).status_code == 200
    before = prepare()
    assert send(first, before).status_code == 200
    # An outage that keeps the data: the store stops answering for 3 s.
    sleeper = threading.Thread(target=lambda: redis_server.cli("DEBUG", "SLEEP", "3"))
    sleeper.start()
    time.sleep(0.2)
    try:
        # Accepted before the outage: still a replay while the store is down.
        r = send(first, before)
        assert r.status_code == 401 and r.json()["error"] == "invalid_signature"
        during = prepare()
        assert send(first, during).status_code == 200          # fail_open / local serve
        r = send(first, during)
        assert r.status_code == 401 and r.json()["error"] == "invalid_signature"
    finally:
        sleeper.join()
    # Back: the first request on the store writes the outage's claims back first ...
    assert send(first, prepare()).status_code == 200
    # ... so another gateway refuses a replay of what was accepted during the outage.
    r = send(second, during)
    assert r.status_code == 401 and r.json()["error"] == "invalid_signature"
    assert 'txgate_auth_failures_total{reason="replay"} 2.0' in first.metrics()
    assert 'txgate_auth_failures_total{reason="replay"} 1.0' in second.metrics()


# --- One client cannot move the counters another client's users are judged by ------------

def test_another_clients_traffic_on_a_device_does_not_deny_this_clients_user(start_gateway,
                                                                              upstream):
    from gateway.demo.run import _TX
    gw = start_gateway({"rules": {"reload": "off"},   # the shipped pack
                        "routes": [{"name": "payments", "match": {"path": "/v1/payments"},
                                    "upstream": upstream.url, "transaction": _TX}]})
    clients = {}
    for name in ("client-a", "client-b"):
        secret = gw.admin_post("/admin/clients", {"id": name, "hmac": True}).json()["secret"]
        clients[name] = SignedClient(name, secret)

    def pay_from(client, user):
        doc = {"user_id": user, "amount": 20, "currency": "EUR",
               "payee": {"iban": "DE89370400440532013000", "country": "DE"}}
        r = clients[client].request("POST", f"{gw.url}/v1/payments", json=doc,
                                    headers={"X-Device-Id": "device-of-alice"})
        wait_until(lambda: any(d.get("request_id") == r.headers["Txgate-Request-Id"]
                               for d in gw.records()), what="decision logged")
        return next(d for d in gw.records() if d.get("request_id") == r.headers["Txgate-Request-Id"])

    # Client B names alice's device for five users of its own (ATO-005: 5 users, deny) ...
    assert [pay_from("client-b", f"b-user-{i}")["features"]["device_users_24h"]
            for i in range(5)] == [1, 2, 3, 4, 5]
    # ... and alice, through client A, is judged by client A's view of her device.
    entry = pay_from("client-a", "alice")
    assert entry["features"]["device_users_24h"] == 1
    assert "ATO-005" not in [hit["id"] for hit in entry["rules"]]
    assert entry["decision"] != "deny"
