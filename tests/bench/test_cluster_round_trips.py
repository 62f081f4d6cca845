"""On a 3-master cluster a payment costs one round: the claims' script and one script per
entity slot, sent to every node at once. Counted per node with MONITOR on a real cluster
behind a real txgate process (commands counted, never timed).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import redis

from tests.bench.test_round_trips import HANDSHAKE, MARK, RULES, TX, pay, send_to
from tests.fixtures.signing import SignedClient

# A payment of RULES touches four slots: the client's claims, the user, the payee and the live
# list (its membership read rides the same round).
SLOTS_PER_PAYMENT = 4


def node_commands(cluster, send) -> list[dict[str, int]]:
    """Per master, the commands clients sent (not those scripts ran) while ``send()`` ran."""
    seen = [Counter() for _ in cluster.nodes]
    ready = [threading.Event() for _ in cluster.nodes]

    def watch(node, counts, started):
        conn = redis.Redis(port=node.port)
        with conn.monitor() as monitor:
            started.set()
            for event in monitor.listen():
                if event["command"] == f"ECHO {MARK}":
                    break
                name = event["command"].split()[0].lower()
                if event.get("client_type") != "lua" and name not in HANDSHAKE:
                    counts[name] += 1
        conn.close()

    watchers = [threading.Thread(target=watch, args=args, daemon=True)
                for args in zip(cluster.nodes, seen, ready)]
    for watcher in watchers:
        watcher.start()
    for started in ready:
        started.wait(5)
    time.sleep(0.1)   # MONITOR is registered once the server answered it
    send()
    for node, watcher in zip(cluster.nodes, watchers):
        redis.Redis(port=node.port).echo(MARK)
        watcher.join(10)
    return [dict(counts) for counts in seen]


@pytest.fixture
def gw(start_gateway, redis_cluster, upstream, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "pack.yaml").write_text(RULES)
    gateway = start_gateway(config := {
        "state": {"backend": "redis", "url": redis_cluster.url, "cluster": True,
                  "wait_replicas": 0},   # the test cluster has no replicas
        "rules": {"path": str(rules), "reload": "off"},
        "routes": [{"name": "payments", "match": {"path": "/pay", "methods": ["POST"]},
                    "upstream": upstream.url, "transaction": TX}],
    })
    secret = gateway.admin_post("/admin/clients", {"id": "bench", "hmac": True}).json()["secret"]
    gateway.client = SignedClient("bench", secret)
    gateway.twin = lambda: start_gateway(config)
    return gateway


def test_a_payment_is_one_script_per_slot_and_nothing_else(gw, redis_cluster):
    # Fills the client-key cache, and every master's script cache (a first call is an EVAL).
    assert [pay(gw, f"warm{i}").status_code for i in range(6)] == [200] * 6
    statuses = []
    per_node = node_commands(redis_cluster, lambda: statuses.extend(
        pay(gw, f"u{i}").status_code for i in range(10)))
    assert statuses == [200] * 10
    assert all(set(commands) <= {"evalsha"} for commands in per_node)
    assert sum(commands.get("evalsha", 0) for commands in per_node) == 10 * SLOTS_PER_PAYMENT
    # The ten users and payees spread over the masters: every node took part.
    assert all(commands for commands in per_node)


def test_a_replay_on_another_gateway_takes_its_counts_back(gw, redis_cluster):
    prepared = gw.client.prepare("POST", f"{gw.url}/pay", json={
        "user_id": "r", "amount": 1, "currency": "EUR", "payee": "DE02r"})
    assert gw.client.send(prepared).status_code == 200
    other = gw.twin()
    warm = gw.client.prepare("POST", f"{gw.url}/pay", json={
        "user_id": "w", "amount": 1, "currency": "EUR", "payee": "DE02w"})
    assert send_to(gw, other, warm).status_code == 200    # fills its client-key cache
    for i in range(6):                                     # and every master's script cache
        assert pay(gw, f"warm{i}").status_code == 200
    replay = {}
    per_node = node_commands(redis_cluster, lambda: replay.setdefault(
        "o", send_to(gw, other, prepared)))
    assert replay["o"].status_code == 401 and replay["o"].json()["error"] == "invalid_signature"
    # One round of four scripts; the claim was taken, so a second round takes back what the
    # user's and the payee's scripts counted (the list's only read).
    assert sum(commands.get("evalsha", 0) for commands in per_node) == SLOTS_PER_PAYMENT + 2
    # Taken back exactly: the next payment of that user is its second, then the third is denied.
    assert pay(gw, "r").status_code == 200
    assert pay(gw, "r").status_code == 403
