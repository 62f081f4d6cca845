"""Credentials over their lifetime on real gateways, a real Redis and the real CLI: client keys
(add, list, expiry, revoke; the keyid in the decision log; the expiring-keys metric), a
partner key roll under continuous traffic on two gateways, master key rotation on two
gateways with an interrupted rekey, staged TOTP re-enrolment, and the audit trail."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from tests.fixtures.processes import ADMIN_TOKEN, ROOT, TXGATE, wait_until
from tests.fixtures.signing import SignedClient
from tests.gateway.test_stepup_e2e import RULES, TX, oathtool

OLD_KEY = base64.b64encode(b"o" * 32).decode()
NEW_KEY = base64.b64encode(b"n" * 32).decode()
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def fleet(start_gateway, upstream, redis_server, tmp_path):
    """``fleet(n, env)``: n gateways on one Redis sharing one decision log and config."""
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "r.yaml").write_text(RULES)
    config = {"state": {"backend": "redis", "url": redis_server.url},
              "rules": {"path": str(tmp_path / "rules"), "reload": "off"},
              "routes": [{"name": "payments", "match": {"path": "/pay"},
                          "upstream": upstream.url, "transaction": TX}]}

    def start(env: dict | None = None):
        return start_gateway(config, env=env)
    return start


def cli(gateway, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    """`txgate auth ...` with the gateway's own config (same store, same decision log)."""
    return subprocess.run([TXGATE, "auth", *args, "--config", str(gateway.config_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**gateway.env, **(env or {})})


def pay(client: SignedClient, gateway, amount: int = 20, user: str | None = None,
        headers: dict | None = None) -> requests.Response:
    """A payment; by default from a new user each time, so no step-up rule ever fires."""
    return client.request("POST", f"{gateway.url}/pay", timeout=10, headers=headers or {},
                          json={"user_id": user or f"u-{uuid.uuid4().hex[:12]}",
                                "amount": amount, "currency": "EUR",
                                "payee": "DE02100100109307118603"})


def logged(gateway) -> list[dict]:
    return [json.loads(line) for line in gateway.decision_log.read_text().splitlines()]


def audit_lines(gateway) -> list[dict]:
    return [r for r in logged(gateway) if r.get("type") == "audit"]


def wait_for_log(gateway, check, what: str) -> list[dict]:
    wait_until(lambda: check(logged(gateway)), what=what)
    return logged(gateway)


# -- 1. several keys per client -----------------------------------------------------------------

def test_client_keys_from_the_cli_to_the_decision_log_and_metrics(fleet):
    gw = fleet()
    added = cli(gw, "add-client", "shop", "--hmac")
    assert added.returncode == 0, added.stderr
    first = added.stdout.strip().splitlines()[-1]
    rolled = cli(gw, "add-key", "shop", "--hmac", "--expires", "10d")
    assert rolled.returncode == 0, rolled.stderr
    key_id = re.search(r'keyid "(shop/[0-9a-f]{8})"', rolled.stdout)[1]
    second = rolled.stdout.strip().splitlines()[-1]
    gw.secrets.update({first, second})

    listing = cli(gw, "list")
    assert listing.returncode == 0
    row = next(line for line in listing.stdout.splitlines() if key_id in line)
    assert "key" in row and "hmac" in row and "shop" in row
    assert len(re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", row)) == 2   # created, expires
    assert first not in listing.stdout and second not in listing.stdout

    for keyid, secret in (("shop", first), (key_id, second)):
        answer = pay(SignedClient("shop", secret, key_id=keyid), gw)
        assert answer.status_code == 200, answer.text
    records = wait_for_log(gw, lambda lines: sum("keyid" in r for r in lines) >= 2,
                           "two decisions")
    assert [(r["client_id"], r["keyid"]) for r in records if "keyid" in r] == \
        [("shop", "shop"), ("shop", key_id)]
    assert 'txgate_client_keys_expiring{client="shop"} 1.0' in gw.metrics()

    revoked = cli(gw, "revoke", "key", key_id)
    assert revoked.returncode == 0, revoked.stderr
    wait_until(lambda: pay(SignedClient("shop", second, key_id=key_id), gw).status_code == 401,
               what="the revoked key refused (within the 5 s key cache)")
    assert 'txgate_client_keys_expiring{client="shop"} 0.0' in gw.metrics()
    assert pay(SignedClient("shop", first), gw).status_code == 200
    missing = cli(gw, "revoke", "key", "shop/nope")
    assert missing.returncode == 1 and missing.stderr.startswith("txgate: no key")


def test_an_expired_key_is_refused_and_named_in_the_log(fleet):
    gw = fleet()
    gw.admin_post("/admin/clients", {"id": "shop", "hmac": True})
    body = gw.admin_post("/admin/clients/shop/keys", {"hmac": True, "expires_in_s": 1}).json()
    client = SignedClient("shop", body["secret"], key_id=body["key_id"])
    wait_until(lambda: pay(client, gw).status_code == 401, what="the key to expire")
    refused = pay(client, gw)
    assert refused.json()["error"] == "invalid_signature"
    assert f"key {body['key_id']} of client shop expired" in gw.stderr()
    assert 'txgate_auth_failures_total{reason="key_expired"}' in gw.metrics()


# -- 2. a partner key roll without a failed request ----------------------------------------

class Traffic:
    """Signed payments sent one after another, alternately to each gateway, with whichever
    key the partner currently uses; every answer is kept."""

    def __init__(self, gateways, client: SignedClient):
        self.gateways, self.client = gateways, client
        self.answers: list[tuple[str, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            gateway = self.gateways[n % len(self.gateways)]
            client = self.client      # read once: the switch happens between two requests
            answer = pay(client, gateway)
            self.answers.append((client.key_id, answer.status_code, answer.text))
            n += 1

    def __enter__(self):
        self._thread.start()
        return self

    def sent(self, at_least: int) -> None:
        target = len(self.answers) + at_least
        wait_until(lambda: len(self.answers) >= target, what=f"{at_least} more requests")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)


def test_a_partner_key_roll_under_traffic_fails_no_request(fleet):
    one, two = fleet(), fleet()
    first = one.admin_post("/admin/clients", {"id": "partner", "hmac": True}).json()["secret"]
    with Traffic([one, two], SignedClient("partner", first)) as traffic:
        traffic.sent(20)
        added = one.admin_post("/admin/clients/partner/keys", {"hmac": True}).json()
        two.secrets.add(added["secret"])
        traffic.sent(20)
        traffic.client = SignedClient("partner", added["secret"], key_id=added["key_id"])
        traffic.sent(20)
        revoked = requests.delete(f"{two.admin}/admin/credentials/key/partner", headers=AUTH,
                                  timeout=10)
        assert revoked.status_code == 200
        traffic.sent(40)
    statuses = {status for _, status, _ in traffic.answers}
    assert statuses == {200}, [a for a in traffic.answers if a[1] != 200][:3]
    assert {key for key, _, _ in traffic.answers} == {"partner", added["key_id"]}
    # The old key is refused by every gateway once their key caches expire (5 s).
    for gateway in (one, two):
        wait_until(lambda: pay(SignedClient("partner", first), gateway).status_code == 401,
                   what="the old key refused")
    assert pay(traffic.client, one).status_code == 200
