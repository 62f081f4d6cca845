"""Hot reload of rule files through a real gateway: admin API, file watch, SIGHUP, workers,
and reloads under concurrent traffic (no request decided by a half-loaded set)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import pytest
import requests

from tests.fixtures.processes import wait_until
from tests.fixtures.signing import SignedClient

V1 = """
version: 1
rules:
  - {id: V1-DENY, description: v1 limit, when: amount > 100, action: deny}
  - {id: V1-SEEN, description: v1 marks everything, when: amount >= 0, score: 1}
"""
V2 = """
version: 1
rules:
  - {id: V2-DENY, description: v2 limit, when: amount > 50, action: deny}
  - {id: V2-SEEN, description: v2 marks everything, when: amount >= 0, score: 2}
"""
BROKEN = "version: 1\nrules:\n  - {id: B-1, description: broken, when: 'amount >', action: deny}\n"


def _config(tmp_path, upstream, reload: str, state=None) -> dict:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "main.yaml").write_text(V1)
    config = {"rules": {"path": str(rules), "reload": reload},
              "routes": [{"name": "pay", "match": {"path": "/pay"}, "upstream": upstream.url,
                          "transaction": {"user_id": "json:$.user_id", "amount": "json:$.amount"}}]}
    if state:
        config["state"] = state
    return config


def _start(start_gateway, tmp_path, upstream, reload="off", **kwargs):
    gw = start_gateway(_config(tmp_path, upstream, reload, kwargs.pop("state", None)), **kwargs)
    gw.rules_dir = tmp_path / "rules"
    r = gw.admin_post("/admin/clients", {"id": "app", "hmac": True})
    gw.client = SignedClient("app", r.json()["secret"])
    return gw


def version(gw) -> str:
    return requests.get(f"{gw.admin}/readyz", timeout=5).json()["rules"]


def pay(gw, amount, client=None):
    return (client or gw.client).request("POST", f"{gw.url}/pay", json={"user_id": "u", "amount": amount})


def test_admin_reload_swaps_good_rules_and_keeps_the_old_on_error(start_gateway, tmp_path, upstream):
    gw = _start(start_gateway, tmp_path, upstream)
    first = version(gw)
    assert pay(gw, 80).status_code == 200
    (gw.rules_dir / "main.yaml").write_text(V2)
    r = gw.admin_post("/admin/rules/reload")
    assert r.status_code == 200 and r.json()["version"] != first
    assert pay(gw, 80).status_code == 403            # v2 decides now
    good = version(gw)

    (gw.rules_dir / "main.yaml").write_text(BROKEN)
    r = gw.admin_post("/admin/rules/reload")
    assert r.status_code == 422
    assert r.json()["version"] == good
    assert any(re.match(r".*main\.yaml:3: ", e) for e in r.json()["errors"])
    assert version(gw) == good and pay(gw, 80).status_code == 403   # still v2
    ready = requests.get(f"{gw.admin}/readyz", timeout=5).json()
    assert ready["ready"] is True and "main.yaml:3" in ready["rules_reload_error"]
    metrics = gw.metrics()
    assert 'txgate_rules_reloads_total{outcome="failure"} 1.0' in metrics
    assert f'txgate_rules_info{{rules="2",version="{good}"}} 1.0' in metrics
    assert f'version="{first}"' not in metrics


def test_admin_reload_needs_the_bearer_token(start_gateway, tmp_path, upstream):
    gw = _start(start_gateway, tmp_path, upstream)
    r = requests.post(f"{gw.admin}/admin/rules/reload", timeout=5)
    assert r.status_code == 401
    r = requests.post(f"{gw.admin}/admin/rules/reload", timeout=5, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


def test_watch_reloads_after_the_files_settle(start_gateway, tmp_path, upstream):
    gw = _start(start_gateway, tmp_path, upstream, reload="watch")
    first = version(gw)
    (gw.rules_dir / "main.yaml").write_text(V2)
    wait_until(lambda: version(gw) != first, timeout=10, what="watch reload")
    assert pay(gw, 80).status_code == 403
    (gw.rules_dir / "extra.yaml").write_text(BROKEN)   # a broken new file is not applied
    time.sleep(3)
    assert pay(gw, 80).status_code == 403
    assert 'txgate_rules_reloads_total{outcome="failure"} 1.0' in gw.metrics()


def test_sighup_reloads_with_reload_signal(start_gateway, tmp_path, upstream):
    gw = _start(start_gateway, tmp_path, upstream, reload="signal")
    first = version(gw)
    (gw.rules_dir / "main.yaml").write_text(V2)
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: version(gw) != first, timeout=10, what="SIGHUP reload")
    assert gw.proc.poll() is None


def test_sighup_reloads_with_reload_watch_too(start_gateway, tmp_path, upstream):
    gw = _start(start_gateway, tmp_path, upstream, reload="watch")
    first = version(gw)
    main = gw.rules_dir / "main.yaml"
    # A change the file watch cannot see (same size, same mtime): only SIGHUP can apply it.
    stat = main.stat()
    main.write_text(V1.replace("amount > 100", "amount > 900"))
    os.utime(main, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert main.stat().st_size == stat.st_size
    assert pay(gw, 500).status_code == 403
    gw.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: version(gw) != first, timeout=10, what="SIGHUP reload under watch")
    assert pay(gw, 500).status_code == 200


def test_no_request_sees_half_a_rule_set(start_gateway, tmp_path, upstream):
    gw = _start(start_gateway, tmp_path, upstream)
    stop = threading.Event()
    errors: list = []

    def traffic():
        client = SignedClient("app", gw.client._signer.key_resolver.key.decode())
        while not stop.is_set():
            status = pay(gw, 80, client).status_code
            if status not in (200, 403):
                errors.append(status)

    workers = [threading.Thread(target=traffic) for _ in range(3)]
    for w in workers:
        w.start()
    versions = set()
    for i in range(10):
        (gw.rules_dir / "main.yaml").write_text(V2 if i % 2 == 0 else V1)
        r = gw.admin_post("/admin/rules/reload")
        assert r.status_code == 200
        versions.add(r.json()["version"])
        time.sleep(0.15)
    stop.set()
    for w in workers:
        w.join()
    assert errors == [] and len(versions) == 2
    time.sleep(0.3)
    entries = gw.decisions()
    assert len(entries) > 20
    by_version: dict[str, set] = {}
    for e in entries:
        ids = {hit["id"][:2] for hit in e["rules"]}
        assert len(ids) == 1, f"one request saw rules of two sets: {e['rules']}"
        expected = {"V1": ("allow", 1), "V2": ("deny", 2)}[ids.pop()]
        assert (e["action"], e["score"]) == expected
        by_version.setdefault(e["rules_version"], set()).add(e["action"])
    assert set(by_version) <= versions and all(len(a) == 1 for a in by_version.values())


def test_every_worker_reloads(start_gateway, tmp_path, upstream, redis_server):
    gw = _start(start_gateway, tmp_path, upstream, workers=2,
                state={"backend": "redis", "url": redis_server.url})

    def live_rules_info() -> list[str]:
        return [l for l in gw.metrics().splitlines()
                if l.startswith("txgate_rules_info{") and l.endswith(" 1.0")]
    wait_until(lambda: len(live_rules_info()) == 2, timeout=20, what="both workers serving")
    (gw.rules_dir / "main.yaml").write_text(V2)
    new = gw.admin_post("/admin/rules/reload").json()["version"]

    def both_workers_on_new():
        live = live_rules_info()
        return len(live) == 2 and all(f'version="{new}"' in l for l in live)
    wait_until(both_workers_on_new, timeout=20, what="both workers on the new rules")
    assert gw.proc.poll() is None
    # Fresh connections spread over both workers: every one decides with v2.
    statuses = {requests.Session().send(gw.client.prepare("POST", f"{gw.url}/pay",
                                                          json={"user_id": "u", "amount": 80}),
                                        timeout=10).status_code for _ in range(20)}
    assert statuses == {403}
