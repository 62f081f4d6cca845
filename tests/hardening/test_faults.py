"""Faults under load, loopback only: Redis stopped and restarted or put to sleep during steady
traffic (checked against an exact model of what was answered), upstream resets, slowness and
garbage, slow clients, and rule reloads every second. Every phase is bounded in time."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid

import pytest
import redis
import requests

from tests.fixtures.processes import ADMIN_TOKEN, wait_until
from tests.fixtures.signing import SignedClient
from tests.hardening.conftest import RULES, pay_route

USERS = [f"fault-{i}" for i in range(4)]
# Figures for docs/reliability.md, printed at the end of the module.
FIGURES: dict[str, dict] = {}


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    for name, figures in FIGURES.items():
        print(f"\n{name}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))


def _rules(tmp_path, text=RULES):
    path = tmp_path / "rules"
    path.mkdir(exist_ok=True)
    (path / "main.yaml").write_text(text)
    return path


def _client(gw) -> SignedClient:
    secret = gw.admin_post("/admin/clients", {"id": "app", "hmac": True}).json()["secret"]
    return SignedClient("app", secret)


def _probe(gw, client, user) -> dict:
    r = client.request("POST", f"{gw.url}/pay", json={"user_id": user, "amount": 1,
                                                      "currency": "EUR", "ref": "probe"})
    assert r.status_code == 200, r.text
    return gw.features_of(r.headers["Txgate-Request-Id"])


def _traffic(gw, secret_client, stop: threading.Event, answers: list, worker: int):
    client = SignedClient("app", secret_client)
    i = 0
    while not stop.is_set():
        user = USERS[(worker + i) % len(USERS)]
        ref = uuid.uuid4().hex
        amount = worker * 10_000 + i + 1   # unique per request, below H-BIG's deny
        try:
            r = client.request("POST", f"{gw.url}/pay", timeout=10, json={
                "user_id": user, "amount": amount, "currency": "EUR", "ref": ref})
            answers.append((user, amount, ref, r.status_code))
        except requests.RequestException as exc:   # would be a finding: recorded, asserted
            answers.append((user, amount, ref, repr(exc)))
        i += 1


@pytest.mark.parametrize("fault", ["restart", "sleep"])
def test_redis_fault_during_traffic_loses_doubles_and_leaks_nothing(
        fault, start_gateway, redis_server, upstream, tmp_path):
    gw = start_gateway({"state": {"backend": "redis", "url": redis_server.url, "timeout_ms": 200},
                        "rules": {"path": str(_rules(tmp_path)), "reload": "off"},
                        "routes": [pay_route(upstream.url, on_state_error="fail_closed")]})
    secret = gw.admin_post("/admin/clients", {"id": "app", "hmac": True}).json()["secret"]
    client = SignedClient("app", secret)
    before = {u: _probe(gw, client, u) for u in USERS}
    upstream.clear()
    stop, answers = threading.Event(), []
    workers = [threading.Thread(target=_traffic, args=(gw, secret, stop, answers, w))
               for w in range(4)]
    for w in workers:
        w.start()
    time.sleep(0.7)
    if fault == "restart":
        # SHUTDOWN SAVE persists exactly what was applied, then exits; the restarted server
        # loads it (the fixture runs without automatic snapshots, not without loading one).
        try:
            redis_server.cli("SHUTDOWN", "SAVE")
        except redis.ConnectionError:
            pass
        wait_until(lambda: not redis_server.running, what="redis to exit")
        redis_server.stop()
        time.sleep(1.0)
        redis_server.start()
    else:
        redis_server.cli("DEBUG", "SLEEP", "1")
    time.sleep(1.0)
    stop.set()
    for w in workers:
        w.join(30)

    errors = [a for a in answers if not isinstance(a[3], int)]
    assert not errors, errors[:3]
    statuses = {a[3] for a in answers}
    assert statuses <= {200, 503}, statuses
    ok = [a for a in answers if a[3] == 200]
    refused = [a for a in answers if a[3] == 503]
    assert refused, "the fault was not seen by any request"
    assert ok, "no request succeeded"
    wait_until(lambda: len([e for e in upstream.seen() if e["path"] == "/pay"]) >= len(ok),
               timeout=10, what="the upstream to have seen every 200")
    forwarded = [json.loads(__import__("base64").b64decode(e["body"]))["ref"]
                 for e in upstream.seen() if e["path"] == "/pay"]
    assert sorted(forwarded) == sorted(a[2] for a in ok), "forwards differ from the 200s"
    after = {u: _probe(gw, client, u) for u in USERS}
    late = stale = 0
    for user in USERS:
        mine = [a for a in ok if a[0] == user]
        # The on-allow sum moves by the answered-200 amounts (+1: the first probe's amount):
        # none lost, none doubled. A provisional on-allow amount of a request refused with
        # 503 after its observe succeeded stays when the store is gone before it could be
        # taken back (an open finding, docs/reliability.md): any excess must be made of that
        # user's refused amounts, never of a 200's.
        excess = (after[user]["user_amount_1h"] - before[user]["user_amount_1h"]
                  - (sum(a[1] for a in mine) + 1))
        refused_amounts = [a[1] for a in refused if a[0] == user]
        assert excess == 0 or excess in refused_amounts or 0 < excess <= sum(refused_amounts), \
            (user, excess)
        stale += excess > 0
        # The attempt count moves by the 200s (+1: the second probe itself). A store that is
        # slow (asleep, or busy just before its shutdown on a loaded machine) may run the
        # script of a request that had already timed out (answered 503): the gateway cannot
        # take back a write whose answer it never saw. That known limit (docs/reliability.md)
        # is bounded here by the 503s of that user, and counted; nothing is ever lost.
        drift = (after[user]["user_tx_1h"] - before[user]["user_tx_1h"]) - (len(mine) + 1)
        assert 0 <= drift <= len([a for a in refused if a[0] == user]), (user, drift)
        late += drift
    FIGURES[f"redis {fault}"] = {"requests": len(answers), "answered 200": len(ok),
                                 "answered 503": len(refused), "counters checked": 2 * len(USERS),
                                 "lost": 0, "doubled": 0, "wrongly forwarded": 0,
                                 "attempt counts applied after a 503 timeout": late,
                                 "users with a refused on-allow amount left": stale}


class _GarbageServer:
    """Accepts connections and answers bytes that are not HTTP."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\x00\xff garbage \r\n\r\n")
                except OSError:
                    pass

    def close(self):
        self.sock.close()


def test_upstream_resets_slowness_and_garbage_are_502_or_504(start_gateway, upstream, tmp_path):
    garbage = _GarbageServer()
    try:
        gw = start_gateway({
            "rules": {"path": str(_rules(tmp_path)), "reload": "off"},
            "limits": {"upstream_timeout_s": 0.5},
            "routes": [pay_route(upstream.url),
                       {"name": "garbage", "match": {"path": "/garbage"}, "upstream": garbage.url},
                       {"name": "up", "match": {"path_prefix": "/"}, "upstream": upstream.url}]})
        client = _client(gw)
        outcomes = []
        for _ in range(5):
            outcomes.append(("reset", client.request("POST", f"{gw.url}/reset").status_code))
            outcomes.append(("slow", client.request("GET", f"{gw.url}/slow?s=2").status_code))
            outcomes.append(("garbage", client.request("GET", f"{gw.url}/garbage").status_code))
            outcomes.append(("ok", client.request("GET", f"{gw.url}/echo").status_code))
        expected = {"reset": 502, "slow": 504, "garbage": 502, "ok": 200}
        assert all(status == expected[kind] for kind, status in outcomes), outcomes
        assert gw.proc.poll() is None
        FIGURES["upstream faults"] = {"requests": len(outcomes), "resets": 5, "timeouts": 5,
                                      "garbage answers": 5}
    finally:
        garbage.close()


def test_slow_clients_are_cut_off_and_never_exhaust_the_gateway(start_gateway, upstream, tmp_path):
    gw = start_gateway({"rules": {"path": str(_rules(tmp_path)), "reload": "off"},
                        "limits": {"client_timeout_s": 1},
                        "routes": [pay_route(upstream.url)]})
    client = _client(gw)
    upstream.clear()
    # Slowloris: many connections that send headers a byte at a time and never finish.
    loris = []
    for _ in range(200):
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        s.sendall(b"POST /pay HTTP/1.1\r\nHost: x\r\n")
        loris.append(s)
    # A body that stops half way: 408 once client_timeout_s has passed.
    slow_body = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    slow_body.sendall(b"POST /pay HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"{" * 10)
    # Meanwhile, ordinary requests are served.
    for _ in range(5):
        r = client.request("POST", f"{gw.url}/pay", json={"user_id": "u", "amount": 1,
                                                           "currency": "EUR"}, timeout=5)
        assert r.status_code == 200
    started = time.monotonic()
    answer = slow_body.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert b"client_timeout" in answer
    cut = 0
    for s in loris:
        try:
            s.sendall(b"X")
            # A generous bound: the property is "closed", not how fast.
            s.settimeout(10)
            if s.recv(1) == b"":
                cut += 1
        except OSError:
            cut += 1
        finally:
            s.close()
    assert cut == len(loris)
    assert time.monotonic() - started < 30
    assert len(upstream.seen()) == 5          # the slow ones reached nothing
    assert client.request("POST", f"{gw.url}/pay", json={"user_id": "u", "amount": 1,
                                                         "currency": "EUR"}).status_code == 200
    FIGURES["slow clients"] = {"slowloris connections": len(loris), "cut off": cut,
                               "stalled bodies answered 408": 1}


ALT_RULES = RULES.replace("H-SCORE", "H-SCORE2")


def test_rule_reloads_every_second_under_load_never_fail_a_request(start_gateway, upstream,
                                                                    tmp_path):
    rules = _rules(tmp_path)
    gw = start_gateway({"rules": {"path": str(rules), "reload": "off"},
                        "routes": [pay_route(upstream.url)]})
    secret = gw.admin_post("/admin/clients", {"id": "app", "hmac": True}).json()["secret"]
    stop, answers = threading.Event(), []
    workers = [threading.Thread(target=_traffic, args=(gw, secret, stop, answers, w))
               for w in range(3)]
    for w in workers:
        w.start()
    reloads = []
    for i in range(4):
        (rules / "main.yaml").write_text(ALT_RULES if i % 2 == 0 else RULES)
        reloads.append(requests.post(f"{gw.admin}/admin/rules/reload", timeout=10,
                                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}))
        time.sleep(1)
    stop.set()
    for w in workers:
        w.join(30)
    assert [r.status_code for r in reloads] == [200] * 4
    assert len({r.json()["version"] for r in reloads}) == 2
    assert answers and {a[3] for a in answers} == {200}
    FIGURES["rule reloads"] = {"reloads": len(reloads), "requests": len(answers), "failed": 0}
