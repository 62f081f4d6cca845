"""Live lists end to end: real gateways on a real Redis (one server and a 3-master cluster), the
admin API, the `txgate lists` CLI, the audit lines and the route's on_state_error policy."""

from __future__ import annotations

import subprocess

import pytest
import requests

from tests.fixtures.processes import ADMIN_TOKEN, TXGATE, wait_until
from tests.fixtures.signing import SignedClient

RULES = """
version: 1
lists:
  mule_payees: {store: redis}
rules:
  - id: T-MULE
    description: payment to a known mule account
    when: payee in lists.mule_payees
    action: deny
"""
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def _config(tmp_path, upstream, state: dict) -> dict:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "lists.yaml").write_text(RULES)
    tx = {"user_id": "json:$.user", "payee": "json:$.payee"}
    return {
        "state": state,
        "rules": {"path": str(rules), "reload": "off"},
        "routes": [{"name": policy.replace("_", "-"), "match": {"path": f"/{policy}"},
                    "upstream": upstream.url, "transaction": tx, "on_state_error": policy}
                   for policy in ("fail_closed", "fail_open", "local")],
    }


def _client(gw) -> SignedClient:
    answer = gw.admin_post("/admin/clients", {"id": "app", "hmac": True})
    if answer.status_code == 409:   # the second gateway shares the first's store
        return None
    return SignedClient("app", answer.json()["secret"])


def pay(gw, client, payee, route="fail_closed"):
    return client.request("POST", f"{gw.url}/{route}", json={"user": "u1", "payee": payee})


def admin(gw, method, name, body=None, headers=AUTH):
    return requests.request(method, f"{gw.admin}/admin/lists/{name}", json=body, headers=headers,
                            timeout=10)


def decided(gw, count: int) -> list[dict]:
    """The decision records once ``count`` are written (the log is written after the answer)."""
    wait_until(lambda: len(gw.decisions()) >= count, what=f"{count} decision records")
    return gw.decisions()


def audits(gw) -> list[dict]:
    return [r for r in gw.records() if r.get("type") == "audit" and r["kind"] == "list"]


@pytest.mark.parametrize("store", ["redis_server", "redis_cluster"])
def test_a_member_added_on_gateway_a_is_enforced_by_gateway_b_on_its_next_request(
        store, request, start_gateway, upstream, tmp_path):
    target = request.getfixturevalue(store)
    # Generous: a loaded 2-core machine; the first script load on a cluster node takes a while.
    # The test cluster has no replicas to wait for (wait_replicas defaults to 1 on a cluster).
    state = {"backend": "redis", "url": target.url, "cluster": store == "redis_cluster",
             "timeout_ms": 2000, "wait_replicas": 0}
    a = start_gateway(_config(tmp_path, upstream, state))
    b = start_gateway({**_config(tmp_path, upstream, state),
                       "decision_log": {"path": str(tmp_path / "b.jsonl")}})
    client = _client(a)
    assert pay(b, client, "LT601010012345678901").status_code == 200

    added = admin(a, "POST", "mule_payees", {"values": ["LT601010012345678901", "DE00 MULE"],
                                             "reason": "case 4711", "ttl": "30d"})
    assert added.status_code == 200
    assert [m["value"] for m in added.json()["added"]] == ["LT601010012345678901", "DE00 MULE"]
    # No reload, no restart: B's next request reads the member in its one state round trip.
    refused = pay(b, client, "LT601010012345678901")
    assert refused.status_code == 403 and refused.json()["error"] == "transaction_denied"
    assert pay(b, client, "DE00 MULE").status_code == 403
    assert pay(b, client, "FR7630006000011234567890189").status_code == 200
    assert [d["features"].get("payee_in_mule_payees") for d in decided(b, 4)] == [
        False, True, True, False]

    shown = admin(b, "GET", "mule_payees").json()
    assert [(m["value"], m["reason"], m["actor"]) for m in shown["members"]] == [
        ("DE00 MULE", "case 4711", "admin-token"), ("LT601010012345678901", "case 4711", "admin-token")]
    assert all(29 * 86400 < m["expires_at"] - m["added_at"] <= 30 * 86400 for m in shown["members"])

    removed = admin(b, "DELETE", "mule_payees", {"values": ["LT601010012345678901", "XX"],
                                                 "reason": "cleared"})
    assert removed.json() == {"list": "mule_payees", "removed": ["LT601010012345678901"]}
    assert pay(a, client, "LT601010012345678901").status_code == 200

    # One audit line per change, in the sinks of the gateway that made it.
    assert [(r["actor"], r["action"], r["id"], r["value"], r["reason"]) for r in audits(a)] == [
        ("admin-token", "add", "mule_payees", "LT601010012345678901", "case 4711"),
        ("admin-token", "add", "mule_payees", "DE00 MULE", "case 4711")]
    assert all(r["expires_at"] > r["ts"] for r in audits(a))
    assert [(r["action"], r["value"], r["reason"], r["expires_at"]) for r in audits(b)] == [
        ("remove", "LT601010012345678901", "cleared", None)]
    assert 'txgate_list_changes_total{action="add",list="mule_payees"} 2.0' in a.metrics()


def test_bad_list_requests_get_a_clear_error_and_are_counted(start_gateway, redis_server,
                                                             upstream, tmp_path):
    gw = start_gateway(_config(tmp_path, upstream, {"backend": "redis", "url": redis_server.url}))
    cases = [
        (("POST", "mule_payees", {"values": []}), 400, "invalid_request", "values: expected a non-empty list"),
        (("POST", "mule_payees", {"values": ["x"], "ttl": "soon"}), 400, "invalid_request", "ttl: window 'soon'"),
        (("POST", "mule_payees", {"values": ["x"], "reason": 7}), 400, "invalid_request", "reason: expected"),
        (("POST", "mule_payees", None), 400, "invalid_request", "body must be a JSON object"),
        (("DELETE", "mule_payees", {"values": "x"}), 400, "invalid_request", "values: expected"),
        (("POST", "mule_payee", {"values": ["x"]}), 404, "unknown_list", "no live list 'mule_payee'"),
        (("GET", "other", None), 404, "unknown_list", "no live list 'other'"),
    ]
    for (method, name, body), status, code, message in cases:
        answer = admin(gw, method, name, body)
        assert answer.status_code == status, (method, name, body, answer.text)
        assert answer.json()["error"] == code and answer.json()["message"].startswith(message)
    assert admin(gw, "POST", "mule_payees", {"values": ["x"]}, headers={}).status_code == 401
    assert redis_server.cli("KEYS", "txl:*") == []            # nothing was written
    metrics = gw.metrics()
    assert 'txgate_list_refused_total{error="invalid_request"} 5.0' in metrics
    assert 'txgate_list_refused_total{error="unknown_list"} 2.0' in metrics


def test_the_cli_changes_the_list_a_running_gateway_reads(start_gateway, redis_server, upstream,
                                                          tmp_path):
    gw = start_gateway(_config(tmp_path, upstream, {"backend": "redis", "url": redis_server.url}))
    client = _client(gw)

    def cli(*args):
        return subprocess.run([TXGATE, "lists", *args, "--config", str(gw.config_path)],
                              capture_output=True, text=True, env=gw.env, timeout=60)

    done = cli("add", "mule_payees", "LT601010012345678901", "--ttl", "7d", "--reason", "case 9")
    assert done.returncode == 0 and done.stdout == "added 1 to mule_payees\n", done.stderr
    assert pay(gw, client, "LT601010012345678901").status_code == 403
    shown = cli("show", "mule_payees")
    assert shown.returncode == 0 and shown.stdout.startswith("LT601010012345678901\texpires 20")
    assert "case 9" in shown.stdout and shown.stdout.endswith("1 members in mule_payees\n")
    bad = cli("add", "mule_payee", "X")
    assert bad.returncode == 1 and bad.stderr.startswith("txgate: no live list 'mule_payee'")
    assert cli("add", "mule_payees", "X", "--ttl", "forever").stderr.startswith("txgate: ttl: window")
    assert cli("remove", "mule_payees", "LT601010012345678901").stdout == \
        "removed 1 of 1 from mule_payees\n"
    assert pay(gw, client, "LT601010012345678901").status_code == 200
    actors = [(r["actor"].split(":")[0], r["action"], r["value"]) for r in audits(gw)]
    assert actors == [("cli", "add", "LT601010012345678901"), ("cli", "remove", "LT601010012345678901")]


def test_without_the_store_the_routes_policy_applies_to_live_lists(start_gateway, redis_server,
                                                                   upstream, tmp_path):
    gw = start_gateway(_config(tmp_path, upstream, {"backend": "redis", "url": redis_server.url,
                                                    "timeout_ms": 200}))
    client = _client(gw)
    assert admin(gw, "POST", "mule_payees", {"values": ["MULE"]}).status_code == 200
    assert pay(gw, client, "MULE", "local").status_code == 403
    redis_server.stop()
    assert pay(gw, client, "MULE", "fail_closed").status_code == 503
    # fail_open and local decide without the shared store: membership is unknown (absent), so
    # neither `in` nor `not in` a live list holds.
    assert pay(gw, client, "MULE", "fail_open").status_code == 200
    assert pay(gw, client, "MULE", "local").status_code == 200
    records = decided(gw, 4)[-2:]
    assert [(r["route"], r["degraded"]) for r in records] == [("fail-open", "fail_open"),
                                                              ("local", "local")]
    assert all("payee_in_mule_payees" not in r["features"] for r in records)
    answer = admin(gw, "POST", "mule_payees", {"values": ["OTHER"]})
    assert answer.status_code == 503 and answer.json()["error"] == "state_unavailable"
    redis_server.start()     # an empty store (the fixture keeps no data across a stop)
    # The gateway reconnects on its own; the first call may still meet the old connection.
    wait_until(lambda: admin(gw, "POST", "mule_payees", {"values": ["MULE"]}).status_code == 200,
               what="the store back")
    assert pay(gw, client, "MULE", "local").status_code == 403


def test_one_gateway_on_the_memory_backend_keeps_its_own_live_lists(start_gateway, upstream,
                                                                    tmp_path):
    gw = start_gateway(_config(tmp_path, upstream, {"backend": "memory"}))
    client = _client(gw)
    assert pay(gw, client, "MULE").status_code == 200
    assert admin(gw, "POST", "mule_payees", {"values": ["MULE"], "ttl": "1h"}).status_code == 200
    assert pay(gw, client, "MULE").status_code == 403
    assert [m["value"] for m in admin(gw, "GET", "mule_payees").json()["members"]] == ["MULE"]
    assert admin(gw, "DELETE", "mule_payees", {"values": ["MULE"]}).json()["removed"] == ["MULE"]
    assert pay(gw, client, "MULE").status_code == 200
    assert [(r["action"], r["value"]) for r in audits(gw)] == [("add", "MULE"), ("remove", "MULE")]
