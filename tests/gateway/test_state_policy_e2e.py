"""on_state_error and shared counters end to end: real txgate processes on real Redis processes
that the tests stop, slow down and restart."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.fixtures.signing import SignedClient

RULES = """
version: 1
counters:
  - {name: user_tx_1h, key: [user_id], window: 1h, aggregate: count}
rules:
  - id: T-VEL
    description: more than three transactions an hour
    when: user_tx_1h > 3
    action: deny
"""


def _config(tmp_path, upstream, state: dict) -> dict:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "velocity.yaml").write_text(RULES)
    tx = {"user_id": "header:X-User"}
    return {
        "state": state,
        "rules": {"path": str(rules), "reload": "off"},
        "routes": [
            {"name": policy.replace("_", "-"), "match": {"path": f"/{policy}"},
             "upstream": upstream.url, "transaction": tx, "on_state_error": policy}
            for policy in ("fail_closed", "fail_open", "local")
        ],
    }


def _client(gw) -> SignedClient:
    secret = gw.admin_post("/admin/clients", {"id": "app", "hmac": True})
    if secret.status_code == 409:   # a second gateway on the same store sees the first's client
        return gw.shared_client
    return SignedClient("app", secret.json()["secret"])


def post(gw, client, policy: str, user: str):
    return client.request("POST", f"{gw.url}/{policy}", headers={"X-User": user})


@pytest.fixture
def redis_gateway(start_gateway, redis_server, upstream, tmp_path):
    gw = start_gateway(_config(tmp_path, upstream, {"backend": "redis", "url": redis_server.url,
                                                    "timeout_ms": 200}))
    gw.client = _client(gw)
    return gw


def test_fail_closed_answers_503_and_forwards_nothing_then_recovers(redis_gateway, redis_server, upstream):
    gw = redis_gateway
    assert post(gw, gw.client, "fail_closed", "a").status_code == 200
    redis_server.stop()
    upstream.clear()
    for _ in range(3):
        r = post(gw, gw.client, "fail_closed", "a")
        assert r.status_code == 503 and r.json()["error"] == "state_unavailable"
    assert upstream.seen() == []
    assert 'txgate_state_errors_total{operation=' in gw.metrics()
    redis_server.start()
    assert post(gw, gw.client, "fail_closed", "a").status_code == 200   # no gateway restart


def test_readiness_stays_while_a_route_can_serve_and_names_the_degraded_ones(
        redis_gateway, redis_server, start_gateway, upstream, tmp_path):
    gw = redis_gateway
    strict = start_gateway({**_config(tmp_path, upstream, {"backend": "redis",
                                                           "url": redis_server.url,
                                                           "timeout_ms": 200}),
                            "readiness": {"state_down": "unready"}})
    closed_only = _config(tmp_path, upstream, {"backend": "redis", "url": redis_server.url,
                                                "timeout_ms": 200})
    closed_only["routes"] = closed_only["routes"][:1]
    closed = start_gateway(closed_only)
    redis_server.stop()
    ready = requests.get(f"{gw.admin}/readyz", timeout=5)
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True and body["state"].startswith("unavailable")
    assert body["degraded_routes"] == {"fail-open": "fail_open", "local": "local"}
    assert body["refusing_routes"] == ["fail-closed"]
    assert requests.get(f"{strict.admin}/readyz", timeout=5).status_code == 503
    assert requests.get(f"{closed.admin}/readyz", timeout=5).status_code == 503
    redis_server.start()
    back = requests.get(f"{gw.admin}/readyz", timeout=5).json()
    assert back["state"] == "ok" and "degraded_routes" not in back


def test_fail_open_forwards_and_marks_the_decision_log(redis_gateway, redis_server, upstream):
    gw = redis_gateway
    assert post(gw, gw.client, "fail_open", "b").status_code == 200
    redis_server.stop()
    upstream.clear()
    for _ in range(5):   # no counters while the store is down: nothing can be denied by them
        assert post(gw, gw.client, "fail_open", "b").status_code == 200
    assert len(upstream.seen()) == 5
    time.sleep(0.2)
    logged = gw.records()
    assert [e.get("degraded") for e in logged[-5:]] == ["fail_open"] * 5
    assert 'txgate_fail_open_total{policy="fail_open",route="fail-open"} 5.0' in gw.metrics()


def test_local_counts_per_process_until_the_store_is_back(redis_gateway, redis_server):
    gw = redis_gateway
    assert post(gw, gw.client, "local", "c").status_code == 200
    redis_server.stop()
    statuses = [post(gw, gw.client, "local", "c").status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 403, 403]   # local counters start from zero
    redis_server.start()
    # Back on the shared store, which the test runs without persistence: it counts from zero,
    # and the local counts of the outage are not carried over.
    statuses = [post(gw, gw.client, "local", "c").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 403]


def test_a_slow_store_is_handled_like_a_down_one(redis_gateway, redis_server, upstream):
    gw = redis_gateway
    assert post(gw, gw.client, "fail_closed", "d").status_code == 200
    sleeper = threading.Thread(target=lambda: redis_server.cli("DEBUG", "SLEEP", "3"))
    sleeper.start()
    time.sleep(0.1)
    upstream.clear()
    started = time.monotonic()
    r = post(gw, gw.client, "fail_closed", "d")
    answered_in = time.monotonic() - started
    sleeper.join()
    assert r.status_code == 503 and upstream.seen() == []
    assert answered_in < 2.5, "the gateway waited for the sleeping store instead of timing out"


@pytest.mark.parametrize("store", ["redis_server", "redis_cluster"])
def test_two_gateways_share_one_view(store, request, start_gateway, upstream, tmp_path):
    target = request.getfixturevalue(store)
    state = {"backend": "redis", "url": target.url, "cluster": store == "redis_cluster",
             "timeout_ms": 500, "wait_replicas": 0}   # the test cluster has no replicas
    first = start_gateway(_config(tmp_path, upstream, state))
    second = start_gateway(_config(tmp_path, upstream, state))
    client = _client(first)
    # The burst alternates between the two gateways: each alone would see only half of it.
    statuses = [post(gw, client, "fail_closed", "e").status_code
                for gw in (first, second) * 3]
    assert statuses == [200, 200, 200, 403, 403, 403]
