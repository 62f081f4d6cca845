"""`rules replay --recompute` on a log a real gateway wrote over a real Redis: the same rules
give the same decisions and counter values, and a new counter is backtested."""

from __future__ import annotations

import json
import subprocess
from urllib.parse import parse_qs, urlsplit

from tests.fixtures.processes import TXGATE
from tests.fixtures.signing import SignedClient
from tests.gateway.test_stepup_e2e import TX, oathtool

COUNTERS = """
version: 1
counters:
  - {name: user_tx_1h, key: [user_id], window: 1h, aggregate: count}
  - {name: user_payees_1h, key: [user_id], window: 1h, aggregate: distinct, field: payee}
  - {name: user_allowed_1h, key: [user_id], window: 1h, aggregate: sum, field: amount, on: allow}
  - {name: user_payees_ok_1h, key: [user_id], window: 1h, aggregate: distinct, field: payee, on: allow}
  - {name: user_lowvalue_sum, key: [user_id], reset_on: strong_auth, aggregate: sum, field: amount, on: allow}
"""
RULES = COUNTERS + """
rules:
  - {id: R-VEL, description: burst, when: user_tx_1h > 5, action: deny}
  - {id: R-OTP, description: low-value exemption used up, when: amount + user_lowvalue_sum > 100, action: require_otp}
  - {id: R-SUM, description: much allowed, when: user_allowed_1h > 100, score: 60}
  - {id: R-PAYEES, description: many payees, when: user_payees_1h >= 3 and user_payees_ok_1h < 3, score: 10}
"""
NEW_COUNTER = """
version: 1
counters:
  - {name: user_tx_10m, key: [user_id], window: 10m, aggregate: count}
rules:
  - {id: R-NEW, description: a tighter burst, when: user_tx_10m > 3, action: deny}
"""


def test_recompute_gives_the_gateway_s_decisions_and_backtests_a_new_counter(
        start_gateway, upstream, redis_server, tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(RULES)
    gw = start_gateway({
        "state": {"backend": "redis", "url": redis_server.url},
        "rules": {"path": str(tmp_path / "rules"), "reload": "off"},
        "routes": [{"name": "payments", "match": {"path": "/pay"}, "upstream": upstream.url,
                    "transaction": TX}]})
    client = SignedClient("app", gw.admin_post("/admin/clients", {"id": "app", "hmac": True}).json()["secret"])
    secrets = {u: parse_qs(urlsplit(gw.admin_post(f"/admin/totp/{u}").json()["otpauth_uri"]).query)["secret"][0]
               for u in ("alice", "bob")}

    def pay(user, amount, payee="P1", headers=None):
        return client.request("POST", f"{gw.url}/pay", headers=headers or {},
                              json={"user_id": user, "amount": amount, "currency": "EUR", "payee": payee})

    assert [pay("alice", 20, f"P{i}").status_code for i in range(3)] == [200] * 3
    first = pay("alice", 50)                       # 60 + 50 > 100: step-up, passed
    assert first.status_code == 401
    assert pay("alice", 50, headers={"Txgate-Challenge": first.json()["challenge"],
                                     "Txgate-OTP": oathtool(secrets["alice"])}).status_code == 200
    assert pay("alice", 30).status_code == 200    # the low-value sum restarted
    assert pay("bob", 150).status_code == 401     # never answered
    burst = [pay("carol", 10, f"Q{i % 2}").status_code for i in range(7)]
    assert burst == [200] * 5 + [403] * 2          # user_tx_1h 6 and 7 > 5
    gw.stop()
    logged = gw.decisions()
    assert len(logged) == 14 and any(e["features"].get("user_allowed_1h", 0) > 100 for e in logged)

    def replay(rules, *args):
        result = subprocess.run([TXGATE, "rules", "replay", "--log", str(gw.decision_log),
                                 "--rules", str(rules), "--json", *args],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    same = replay(tmp_path / "rules", "--recompute")
    assert same["transactions"] == 13 and same["changed"] == []
    # Every counter value recomputed equals the one the gateway logged: only the warm-up note.
    assert [w.split(":")[0] for w in same["warnings"]] == ["warm-up"]
    assert {r["id"]: (r["logged"]["hits"], r["candidate"]["hits"]) for r in same["rules"]} == {
        "R-VEL": (2, 2), "R-OTP": (2, 2), "R-SUM": (1, 1), "R-PAYEES": (1, 1)}

    (tmp_path / "candidate").mkdir()
    (tmp_path / "candidate" / "r.yaml").write_text(RULES)
    (tmp_path / "candidate" / "new.yaml").write_text(NEW_COUNTER)
    blind = replay(tmp_path / "candidate")
    assert blind["changed"] == []
    assert any(w.startswith("rule R-NEW reads user_tx_10m, which no replayed record carries")
               and w.endswith("need --recompute") for w in blind["warnings"])
    seen = replay(tmp_path / "candidate", "--recompute", "--changes")
    # Every 4th and 5th attempt (user_tx_10m 4 and 5) is now denied: alice's step-up (50)
    # and her 30 (a review by R-SUM), carol's 4th and 5th; carol's 6th and 7th were already.
    assert seen["changed"] == [{"from": "allow", "to": "deny", "count": 2},
                               {"from": "require_otp", "to": "deny", "count": 1},
                               {"from": "review", "to": "deny", "count": 1}]
    assert sorted((c["user_id"], c["amount"]) for c in seen["changes"]) == [
        ("alice", 30.0), ("alice", 50.0), ("carol", 10.0), ("carol", 10.0)]
    assert not any("R-NEW reads" in w for w in seen["warnings"])
