"""The gateway's own log, parsed as an operator's log shipper would: JSON lines off a terminal,
one record per event (state store down and back, refused signatures, reloads)."""

from __future__ import annotations

import json
import signal

from tests.fixtures.processes import wait_until
from tests.fixtures.signing import SignedClient

RULES = """
version: 1
rules:
  - id: T-BIG
    description: large amounts are refused
    when: amount > 1000
    action: deny
"""


def records(gw) -> list[dict]:
    lines = gw.stderr().splitlines()
    parsed = [json.loads(line) for line in lines]   # every line is one JSON record
    for record in parsed:
        assert {"time", "level", "logger", "pid", "message"} <= set(record), record
        assert record["time"].endswith("Z") and isinstance(record["pid"], int)
    return parsed


def events(gw, name: str) -> list[dict]:
    return [r for r in records(gw) if r.get("event") == name]


def test_an_e2e_run_logs_one_json_record_per_event(start_gateway, redis_server, upstream,
                                                   tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "r.yaml").write_text(RULES)
    gw = start_gateway({
        "state": {"backend": "redis", "url": redis_server.url, "timeout_ms": 200},
        "rules": {"path": str(rules), "reload": "signal"},
        "routes": [{"name": "pay", "match": {"path": "/pay"}, "upstream": upstream.url,
                    "transaction": {"user_id": "json:$.user_id", "amount": "json:$.amount"},
                    "on_state_error": "fail_open"}]})
    secret = gw.admin_post("/admin/clients", {"id": "app", "hmac": True}).json()["secret"]
    client = SignedClient("app", secret)
    pay = {"user_id": "alice", "amount": 10}
    assert client.request("POST", f"{gw.url}/pay", json=pay).status_code == 200

    # Refused signatures: the reason, the claimed client id and the request id, nothing more.
    forged = SignedClient("app", "not-the-secret-" * 3).request("POST", f"{gw.url}/pay", json=pay)
    ghost = SignedClient("ghost", secret).request("POST", f"{gw.url}/pay", json=pay)
    assert forged.status_code == ghost.status_code == 401
    wait_until(lambda: len(events(gw, "signature_refused")) == 2, what="two refusal lines")
    refused = {r["request_id"]: r for r in events(gw, "signature_refused")}
    assert refused[forged.headers["Txgate-Request-Id"]]["reason"] == "bad_signature"
    assert refused[forged.headers["Txgate-Request-Id"]]["client_id"] == "app"
    assert refused[ghost.headers["Txgate-Request-Id"]]["reason"] == "unknown_key"
    assert refused[ghost.headers["Txgate-Request-Id"]]["client_id"] == "ghost"
    assert all(r["level"] == "INFO" and r["logger"] == "txgate.record" for r in refused.values())

    # A store outage is two lines however many requests fail during it.
    redis_server.stop()
    for _ in range(4):
        assert client.request("POST", f"{gw.url}/pay", json=pay).status_code == 200  # fail_open
    redis_server.start()
    wait_until(lambda: client.request("POST", f"{gw.url}/pay", json=pay).status_code == 200
               and events(gw, "state_store_up"), what="the store's recovery line")
    down, up = events(gw, "state_store_down"), events(gw, "state_store_up")
    assert len(down) == len(up) == 1
    assert down[0]["level"] == "ERROR" and down[0]["store"] == "redis"
    assert up[0]["failed_calls"] >= 4 and up[0]["level"] == "WARNING"

    # Reloads: a success and a refused one, each one record; the errors ride in its message.
    (rules / "r.yaml").write_text(RULES.replace("1000", "2000"))
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(events(gw, "rules_reload")) == 2, what="the reload line")
    (rules / "bad.yaml").write_text("version: 1\nrules:\n  - id: X\n    when: amount >\n")
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: len(events(gw, "rules_reload")) == 3, what="the failed reload line")
    reloads = events(gw, "rules_reload")
    assert [r["outcome"] for r in reloads] == ["success", "success", "failure"]
    assert f"{rules / 'bad.yaml'}:" in reloads[-1]["message"]
    assert reloads[-1]["version"] == reloads[1]["version"] != reloads[0]["version"]

    assert gw.stop() == 0
    assert {r["pid"] for r in records(gw)} == {gw.proc.pid}
    assert records(gw)[-1]["message"] == "txgate stopped"
