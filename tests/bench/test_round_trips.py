"""Exactly one state round trip per request, counted on a real redis-server (MONITOR) behind
a real txgate process: the signature's claims, every counter, the provisional ``on: allow``
updates and the live-list lookups travel in one EVALSHA. Counting commands, never timing them.

MONITOR rather than INFO commandstats: since Redis 7 commandstats also counts the commands a
script runs, while MONITOR tells a client's commands (round trips) from the script's own.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import redis

from tests.fixtures.processes import wait_until
from tests.fixtures.signing import SignedClient

RULES = """
version: 1
lists:
  mule_payees: {store: redis}
counters:
  - {name: user_tx_1h,      key: [user_id], window: 1h,  aggregate: count}
  - {name: user_amount_24h, key: [user_id], window: 24h, aggregate: sum, field: amount, on: allow}
  - {name: user_tx_30d,     key: [user_id], window: 30d, aggregate: count, on: allow}
  - {name: user_payees_24h, key: [user_id], window: 24h, aggregate: distinct, field: payee}
  - {name: user_payee,      key: [user_id, payee], aggregate: first_seen}
  - {name: payee_users_24h, key: [payee],   window: 24h, aggregate: distinct, field: user_id}
  - {name: user_lowvalue,   key: [user_id], reset_on: strong_auth, aggregate: sum, field: amount, on: allow}
rules:
  - id: T-VEL
    description: more than two payments an hour
    when: user_tx_1h > 2
    action: deny
  - id: T-AMT
    description: large amount
    when: amount + user_amount_24h > 5000
    score: 10
  - id: T-MULE
    description: a payee on the live mule list
    when: payee in lists.mule_payees
    score: 20
"""
TX = {"user_id": "json:$.user_id", "amount": "json:$.amount", "currency": "json:$.currency",
      "payee": "json:$.payee"}
MARK = "txgate-round-trip-test-end"
# Connection set-up (this test's own marker connection, or a pool growing), not round trips.
HANDSHAKE = {"hello", "client", "auth", "select"}


def client_commands(redis_server, send) -> dict[str, int]:
    """The commands clients sent (not those scripts ran) while ``send()`` ran."""
    seen: Counter = Counter()
    conn = redis.Redis.from_url(redis_server.url)
    ready = threading.Event()

    def watch():
        with conn.monitor() as monitor:
            ready.set()
            for event in monitor.listen():
                if event["command"] == f"ECHO {MARK}":
                    return
                name = event["command"].split()[0].lower()
                if event.get("client_type") != "lua" and name not in HANDSHAKE:
                    seen[name] += 1

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ready.wait(5)
    time.sleep(0.1)   # MONITOR is registered once the server answered it
    send()
    redis.Redis.from_url(redis_server.url).echo(MARK)
    watcher.join(10)
    conn.close()
    return dict(seen)


@pytest.fixture
def gw(start_gateway, redis_server, upstream, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "pack.yaml").write_text(RULES)
    gateway = start_gateway(config := {
        "state": {"backend": "redis", "url": redis_server.url},
        "rules": {"path": str(rules), "reload": "off"},
        "routes": [
            {"name": "payments", "match": {"path": "/pay", "methods": ["POST"]},
             "upstream": upstream.url, "transaction": TX},
            {"name": "accounts", "match": {"path_prefix": "/accounts/", "methods": ["GET"]},
             "upstream": upstream.url},
        ],
    })
    secret = gateway.admin_post("/admin/clients", {"id": "bench", "hmac": True}).json()["secret"]
    gateway.client = SignedClient("bench", secret)
    gateway.twin = lambda: start_gateway(config)
    return gateway


def send_to(gw, other, prepared):
    """Send a request signed for ``gw`` to ``other``: both stand behind one address."""
    prepared = prepared.copy()
    prepared.headers["Host"] = gw.url.removeprefix("http://")
    prepared.url = prepared.url.replace(gw.url, other.url)
    return gw.client.send(prepared)


def pay(gw, user: str, amount: float = 12.5):
    return gw.client.request("POST", f"{gw.url}/pay", json={
        "user_id": user, "amount": amount, "currency": "EUR", "payee": f"DE02{user}"})


def measured(redis_server, send) -> dict[str, int]:
    """The commands ``send()`` caused; the client-key cache (5 s) is warm when it starts."""
    return client_commands(redis_server, send)


def test_an_allowed_payment_is_one_evalsha(gw, redis_server):
    assert pay(gw, "warm").status_code == 200          # fills the client-key cache
    statuses = []
    seen = measured(redis_server, lambda: statuses.extend(
        pay(gw, f"u{i}").status_code for i in range(10)))
    assert statuses == [200] * 10
    assert seen == {"evalsha": 10}


def test_a_replay_is_refused_in_the_same_single_trip(gw, redis_server):
    prepared = gw.client.prepare("POST", f"{gw.url}/pay", json={
        "user_id": "r", "amount": 1, "currency": "EUR", "payee": "DE02r"})
    assert gw.client.send(prepared).status_code == 200
    replay = {}
    seen = measured(redis_server, lambda: replay.setdefault("r", gw.client.send(prepared)))
    assert replay["r"].status_code == 401 and replay["r"].json()["error"] == "invalid_signature"
    # The gateway that accepted it keeps its claims too (gateway.replay): no store call at all.
    assert seen == {}
    # Another gateway of the fleet refuses it in its one trip.
    other = gw.twin()
    warm = gw.client.prepare("POST", f"{gw.url}/pay", json={
        "user_id": "w", "amount": 1, "currency": "EUR", "payee": "DE02w"})
    assert send_to(gw, other, warm).status_code == 200    # fills its client-key cache
    seen = measured(redis_server, lambda: replay.setdefault("o", send_to(gw, other, prepared)))
    assert replay["o"].status_code == 401
    assert seen == {"evalsha": 1}
    # The refused replay counted nothing: the next payment of that user is its second.
    assert pay(gw, "r").status_code == 200
    assert pay(gw, "r").status_code == 403


def test_pass_through_is_one_call_and_a_denial_withdraws_in_a_second(gw, redis_server):
    assert pay(gw, "warm").status_code == 200
    seen = measured(redis_server, lambda: gw.client.request("GET", f"{gw.url}/accounts/1"))
    assert seen == {"evalsha": 1}
    pay(gw, "d"), pay(gw, "d")
    denied = {}
    seen = measured(redis_server, lambda: denied.setdefault("d", pay(gw, "d")))
    assert denied["d"].status_code == 403
    # A request that is not forwarded takes back its provisional on-allow counts: one more
    # call, on the refusal path only.
    assert seen == {"evalsha": 2}


def test_the_shipped_pack_forwards_a_payment_in_one_evalsha(start_gateway, redis_server,
                                                           upstream, tmp_path):
    """The default pack's on: allow first_seen counters (payee, device, payee+amount) ride on
    the one round trip as provisional marks: no second call after forwarding."""
    from bench import history, signed
    from rules import DEFAULT_PACK

    fields = {"user_id": {"from": "json:$.user_id", "normalize": ["nfkc", "casefold"]},
              "amount": "json:$.amount", "currency": "json:$.currency",
              "payee": "json:$.payee.iban", "country": "json:$.payee.country",
              "device_id": {"from": "header:X-Device-Id", "required": False},
              "channel": {"from": "header:X-Channel", "required": False}}
    gateway = start_gateway({
        "state": {"backend": "redis", "url": redis_server.url},
        "rules": {"path": str(DEFAULT_PACK), "reload": "off"},
        "routes": [{"name": "payments", "match": {"path": "/pay", "methods": ["POST"]},
                    "upstream": upstream.url, "transaction": fields}],
    })
    secret = gateway.admin_post("/admin/clients", {"id": "bench", "hmac": True}).json()["secret"]
    client = SignedClient("bench", secret)
    # Established customers: their device and usual payee first seen 40 days ago.
    history.seed(redis_server.url, DEFAULT_PACK, "rt", 11)

    def pay_usual(index: int):
        who = signed.customer("rt", index)
        return client.request("POST", f"{gateway.url}/pay", headers={
            "X-Device-Id": who["device_id"], "X-Channel": "app"}, json={
            "user_id": who["user_id"], "amount": 12.5, "currency": "EUR",
            "payee": {"iban": who["payee"], "country": "DE"}})

    first = pay_usual(10)
    assert first.status_code == 200, gateway.stderr()[-3000:]          # fills the client-key cache
    statuses = []
    seen = measured(redis_server, lambda: statuses.extend(
        pay_usual(i).status_code for i in range(10)))
    assert statuses == [200] * 10
    assert seen == {"evalsha": 10}


def test_live_list_membership_rides_the_same_single_trip(gw, redis_server):
    added = gw.admin_post("/admin/lists/mule_payees", {"values": ["DE02m1", "DE02m3"]})
    assert added.status_code == 200
    assert pay(gw, "warm").status_code == 200
    statuses = []
    seen = measured(redis_server, lambda: statuses.extend(
        pay(gw, f"m{i}").status_code for i in range(5)))
    assert statuses == [200] * 5
    assert seen == {"evalsha": 5}
    wait_until(lambda: len(gw.decisions()) >= 6, what="the decision records")
    scored = [(d["user_id"], d["features"]["payee_in_mule_payees"], d["score"])
              for d in gw.decisions()[-5:]]
    assert scored == [("m0", False, 0), ("m1", True, 20), ("m2", False, 0), ("m3", True, 20),
                      ("m4", False, 0)]


CHALLENGER = """
version: 1
lists:
  risky_payees: {store: redis}
counters:
  - {name: user_tx_1h,      key: [user_id], window: 1h,  aggregate: count}
  - {name: user_tx_10m,     key: [user_id], window: 10m, aggregate: count}
  - {name: payee_tx_1h,     key: [payee],   window: 1h,  aggregate: count, where: amount >= 10}
  - {name: user_amount_24h, key: [user_id], window: 24h, aggregate: sum, field: amount}
rules:
  - {id: X-BURST, description: a burst, when: user_tx_10m > 1 or payee_tx_1h > 3, action: deny}
  - {id: X-RISKY, description: a risky payee, when: payee in lists.risky_payees, action: review}
  - {id: X-AMT, description: attempted volume, when: user_amount_24h > 100, score: 10}
"""


def test_a_challengers_own_counters_and_lists_ride_the_same_single_trip(
        start_gateway, redis_server, upstream, tmp_path):
    for name, text in (("champion", RULES), ("challenger", CHALLENGER)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "pack.yaml").write_text(text)
    gw = start_gateway({
        "state": {"backend": "redis", "url": redis_server.url},
        "rules": {"path": str(tmp_path / "champion"), "challenger": str(tmp_path / "challenger"),
                  "reload": "off"},
        "routes": [{"name": "payments", "match": {"path": "/pay", "methods": ["POST"]},
                    "upstream": upstream.url, "transaction": TX}],
    })
    secret = gw.admin_post("/admin/clients", {"id": "bench", "hmac": True}).json()["secret"]
    gw.client = SignedClient("bench", secret)
    assert gw.admin_post("/admin/lists/risky_payees", {"values": ["DE02c1"]}).status_code == 200
    assert pay(gw, "warm").status_code == 200
    statuses = []
    seen = measured(redis_server, lambda: statuses.extend(
        pay(gw, f"c{i % 2}", amount=60).status_code for i in range(4)))
    assert statuses == [200] * 4
    assert seen == {"evalsha": 4}
    wait_until(lambda: len(gw.decisions()) >= 5, what="the decision records")
    records = [r["challenger"] for r in gw.decisions()[-4:]]
    # Its own counters (10-minute burst, attempted volume) and list read in that one trip.
    assert [(r["decision"], sorted(h["id"] for h in r["rules"])) for r in records] == [
        ("allow", []), ("review", ["X-RISKY"]), ("deny", ["X-AMT", "X-BURST"]),
        ("deny", ["X-AMT", "X-BURST", "X-RISKY"])]
