"""Champion / challenger end to end: a real gateway on a real Redis decides every transaction
with both rule sets, enforces the champion only, logs and counts the pairs, keeps the
challenger's own counters apart from the champion's, and reloads either set on its own."""

from __future__ import annotations

import pytest
import requests

from tests.fixtures.processes import ADMIN_TOKEN, wait_until
from tests.fixtures.signing import SignedClient

CHAMPION = """
version: 1
counters:
  - {name: user_tx_1h, key: [user_id], window: 1h, aggregate: count}
  - {name: user_amount_1h, key: [user_id], window: 1h, aggregate: sum, field: amount, on: allow}
rules:
  - {id: C-DENY, description: a burst, when: user_tx_1h > 5, action: deny}
"""
# Shares user_tx_1h (the same definition: one counter); user_amount_1h counts attempts here,
# not forwarded payments: a different counter under the same name, kept apart from the
# champion's; user_large_1h exists only here.
CHALLENGER = """
version: 1
counters:
  - {name: user_tx_1h, key: [user_id], window: 1h, aggregate: count}
  - {name: user_amount_1h, key: [user_id], window: 1h, aggregate: sum, field: amount}
  - {name: user_large_1h, key: [user_id], window: 1h, aggregate: count, where: amount >= 100}
rules:
  - {id: X-REVIEW, description: a second payment, when: user_tx_1h > 1, action: review}
  - {id: X-OTP, description: 300 attempted in an hour, when: user_amount_1h > 300, action: require_otp}
  - {id: X-DENY, description: two large payments, when: user_large_1h >= 2, action: deny}
"""
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def setup(start_gateway, redis_server, upstream, tmp_path):
    for name, text in (("champion", CHAMPION), ("challenger", CHALLENGER)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "rules.yaml").write_text(text)

    def start(**rules):
        gw = start_gateway({
            "state": {"backend": "redis", "url": redis_server.url, "timeout_ms": 1000},
            "rules": {"path": str(tmp_path / "champion"),
                      "challenger": str(tmp_path / "challenger"), "reload": "off", **rules},
            "routes": [{"name": "payments", "match": {"path": "/pay"}, "upstream": upstream.url,
                        "transaction": {"user_id": "json:$.user", "amount": "json:$.amount"}}],
        })
        secret = gw.admin_post("/admin/clients", {"id": "app", "hmac": True}).json()["secret"]
        gw.client = SignedClient("app", secret)
        return gw
    return start


def pay(gw, amount, user="u1"):
    return gw.client.request("POST", f"{gw.url}/pay", json={"user": user, "amount": amount})


def decided(gw, count):
    wait_until(lambda: len(gw.decisions()) >= count, what=f"{count} decision records")
    return gw.decisions()


def test_every_transaction_is_decided_by_both_and_only_the_champion_is_enforced(
        setup, redis_server, tmp_path):
    gw = setup()
    statuses = [pay(gw, amount).status_code for amount in (50, 150, 200, 20)]
    assert statuses == [200] * 4          # the challenger would have refused two of them
    records = decided(gw, 4)
    version = records[0]["challenger"]["version"]
    assert len(version) == 12 and version != records[0]["rules_version"]
    seen = [(r["decision"], r["challenger"]["decision"], r["challenger"]["action"],
             [h["id"] for h in r["challenger"]["rules"]]) for r in records]
    assert seen == [
        ("allow", "allow", "allow", []),
        ("allow", "review", "review", ["X-REVIEW"]),
        # 400 attempted (challenger's own sum) and a second large payment.
        ("allow", "deny", "deny", ["X-REVIEW", "X-OTP", "X-DENY"]),
        ("allow", "deny", "deny", ["X-REVIEW", "X-OTP", "X-DENY"]),
    ]
    # The champion sees its own counters only; the challenger's are not in its features.
    assert [r["features"]["user_amount_1h"] for r in records] == [0, 50, 200, 400]
    assert all("user_large_1h" not in r["features"] for r in records)
    # The champion's sum holds exactly the forwarded payments; the challenger's same-named
    # counter (attempts) has a key of its own.
    keys = sorted(redis_server.cli("KEYS", "txv:{user_id=u1}:user_amount_1h:*"))
    assert len(keys) == 2 and [":c" in k for k in keys].count(True) == 1
    metrics = gw.metrics()
    for champion, challenger, count in (("allow", "allow", 1), ("allow", "review", 1),
                                        ("allow", "deny", 2)):
        assert (f'txgate_challenger_decisions_total{{challenger="{challenger}",'
                f'champion="{champion}",route="payments"}} {count}.0') in metrics


def test_a_challenger_that_fails_to_load_is_reported_and_leaves_the_champion_deciding(
        setup, tmp_path):
    (tmp_path / "challenger" / "rules.yaml").write_text("rules: [{id: X-1, when: amount >, action: deny}]")
    gw = setup()                          # starts anyway: the champion decides alone
    assert pay(gw, 50).status_code == 200
    assert "challenger" not in decided(gw, 1)[0]
    ready = requests.get(f"{gw.admin}/readyz", timeout=5).json()
    assert ready["ready"] is True and ready["challenger"] is None
    assert "bad when" in ready["challenger_reload_error"]
    assert 'txgate_challenger_reloads_total{outcome="failure"} 1.0' in gw.metrics()
    assert '"set": "challenger"' in gw.stderr() or '"set":"challenger"' in gw.stderr()

    # Fixed and reloaded: it decides from the next request on.
    (tmp_path / "challenger" / "rules.yaml").write_text(CHALLENGER)
    answer = requests.post(f"{gw.admin}/admin/rules/reload", headers=AUTH, timeout=10).json()
    assert answer["challenger"] and "challenger_errors" not in answer
    assert pay(gw, 50).status_code == 200
    assert decided(gw, 2)[1]["challenger"]["version"] == answer["challenger"]

    # Broken again: the running challenger stays, the champion is untouched.
    (tmp_path / "challenger" / "rules.yaml").write_text("counters: 7")
    answer = requests.post(f"{gw.admin}/admin/rules/reload", headers=AUTH, timeout=10).json()
    assert answer["challenger_errors"] and answer["version"] == decided(gw, 2)[0]["rules_version"]
    assert pay(gw, 50).status_code == 200
    assert decided(gw, 3)[2]["challenger"]["version"] == decided(gw, 2)[1]["challenger"]["version"]


def test_both_sets_hot_reload_on_file_change(setup, tmp_path):
    gw = setup(reload="watch")
    assert pay(gw, 50).status_code == 200
    first = decided(gw, 1)[0]
    (tmp_path / "challenger" / "rules.yaml").write_text(
        CHALLENGER.replace("user_tx_1h > 1, action: review", "user_tx_1h >= 1, action: review"))

    probes = iter(range(1000))

    def challenger_changed():
        pay(gw, 10, user=f"probe{next(probes)}")
        record = gw.decisions()[-1]
        return record.get("challenger", {}).get("version") not in (None, first["challenger"]["version"])
    wait_until(challenger_changed, timeout=20, what="the challenger's reload")
    record = gw.decisions()[-1]
    assert record["rules_version"] == first["rules_version"]      # the champion did not move
    assert record["challenger"]["decision"] == "review" and record["decision"] == "allow"
