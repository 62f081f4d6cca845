"""Filtered counters (`where:`) end to end: a real gateway on a real Redis."""

from __future__ import annotations

from tests.fixtures.processes import wait_until
from tests.fixtures.signing import SignedClient

RULES = """
version: 1
counters:
  - {name: user_tx_1h, key: [user_id], window: 1h, aggregate: count}
  - name: user_large_1h
    key: [user_id]
    window: 1h
    aggregate: count
    where: amount >= 100 and route in ["payments", "transfers"]
rules:
  - id: T-LARGE
    description: a third large payment within an hour
    when: user_large_1h >= 3
    action: deny
"""


def test_a_filtered_counter_counts_only_the_transactions_its_where_selects(
        start_gateway, redis_server, upstream, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "velocity.yaml").write_text(RULES)
    tx = {"user_id": "json:$.user", "amount": "json:$.amount"}
    gw = start_gateway({
        "state": {"backend": "redis", "url": redis_server.url},
        "rules": {"path": str(rules), "reload": "off"},
        "routes": [{"name": name, "match": {"path": f"/{name}"}, "upstream": upstream.url,
                    "transaction": tx} for name in ("payments", "loans")],
    })
    client = SignedClient("app", gw.admin_post("/admin/clients", {"id": "app", "hmac": True})
                          .json()["secret"])

    def pay(route, amount):
        return client.request("POST", f"{gw.url}/{route}", json={"user": "u1", "amount": amount})

    assert [pay("payments", 99).status_code for _ in range(3)] == [200] * 3
    assert [pay("loans", 500).status_code for _ in range(3)] == [200] * 3
    assert [pay("payments", 100).status_code for _ in range(3)] == [200, 200, 403]
    wait_until(lambda: len(gw.decisions()) == 9, what="the nine decision records")
    seen = [(d["route"], d["features"]["user_large_1h"], d["features"]["user_tx_1h"])
            for d in gw.decisions()]
    assert seen == [("payments", 0, 1), ("payments", 0, 2), ("payments", 0, 3),
                    ("loans", 0, 4), ("loans", 0, 5), ("loans", 0, 6),
                    ("payments", 1, 7), ("payments", 2, 8), ("payments", 3, 9)]
    # One key per filter: a changed where would start the counter afresh.
    keys = redis_server.cli("KEYS", "txv:{user_id=u1}:user_large_1h:*")
    assert len(keys) == 1 and ":f" in keys[0]
