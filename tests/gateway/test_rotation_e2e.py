"""Credentials over their lifetime on real gateways, a real Redis and the real CLI: client keys
(add, list, expiry, revoke; the keyid in the decision log; the expiring-keys metric), a
partner key roll under continuous traffic on two gateways, master key rotation on two
gateways with an interrupted rekey, staged TOTP re-enrolment, and the audit trail."""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import threading
import uuid

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
    # A generous store timeout: what is under test is the credentials, and gateways starting
    # next to the traffic on a loaded 2-core box can stall a 100 ms Redis call (a 503).
    config = {"state": {"backend": "redis", "url": redis_server.url, "timeout_ms": 2000},
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


def audit_actor() -> str:
    from auth.audit import cli_actor
    return cli_actor()


def logged(gateway) -> list[dict]:
    return gateway.records()


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
    assert [(r["action"], r["kind"], r["id"]) for r in audit_lines(gw)] == [
        ("add", "client", "shop"), ("add", "key", key_id), ("revoke", "key", key_id)]
    assert {r["actor"] for r in audit_lines(gw)} == {audit_actor()}


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
            try:
                answer = pay(client, gateway)
                self.answers.append((client.key_id, answer.status_code, answer.text))
            except requests.RequestException as exc:      # kept, to fail the test with it
                self.answers.append((client.key_id, 0, repr(exc)))
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


# -- 3. master key rotation --------------------------------------------------------------------

def step_up(client: SignedClient, gateway, code: str, amount: int = 150) -> requests.Response:
    """A payment by alice that the rules step up, answered with ``code``."""
    challenge = pay(client, gateway, amount, user="alice")
    assert challenge.status_code == 401, challenge.text
    return pay(client, gateway, amount, user="alice", headers={
        "Txgate-Challenge": challenge.json()["challenge"], "Txgate-OTP": code})


def keys(current: str, previous: str | None = None) -> dict:
    env = {"TXGATE_MASTER_KEY": current}
    if previous:
        env["TXGATE_MASTER_KEY_PREVIOUS"] = previous
    return env


def test_master_key_rotation_on_two_gateways_under_traffic(fleet, redis_server):
    one, two = fleet(keys(OLD_KEY)), fleet(keys(OLD_KEY))
    secret = one.admin_post("/admin/clients", {"id": "shop", "hmac": True}).json()["secret"]
    uri = one.admin_post("/admin/totp/alice").json()["otpauth_uri"]
    seed = re.search(r"secret=([A-Z2-7]+)", uri)[1]
    client = SignedClient("shop", secret)
    started = [one, two]

    def restart(old, env):
        """Take one gateway out of the rotation, start its replacement, put that one in."""
        traffic.gateways = [g for g in traffic.gateways if g is not old]
        traffic.sent(2)               # drained: no request is still on its way to it
        old.stop()
        new = fleet(env)
        new.secrets.update({secret, seed, OLD_KEY, NEW_KEY})
        started.append(new)
        traffic.gateways = traffic.gateways + [new]
        return new

    with Traffic([one, two], client) as traffic:
        traffic.sent(10)
        one = restart(one, keys(NEW_KEY, OLD_KEY))     # both keys: reads old records, seals new
        traffic.sent(10)
        two = restart(two, keys(NEW_KEY, OLD_KEY))
        traffic.sent(10)
        # A key added mid-roll is sealed under the new key; both gateways read it.
        added = one.admin_post("/admin/clients/shop/keys", {"hmac": True}).json()
        assert pay(SignedClient("shop", added["secret"], key_id=added["key_id"]),
                   two).status_code == 200

        rekey = cli(one, "rekey")
        assert rekey.returncode == 0, rekey.stderr
        # shop (its first key) and alice's seed; the key added mid-roll was sealed new already
        assert re.fullmatch(r"rekey done: 2 records moved to master key [0-9a-f]{16}\n",
                            rekey.stdout), rekey.stdout
        again = cli(one, "rekey")
        assert again.stdout.startswith("rekey done: 0 records moved"), again.stdout
        traffic.sent(10)

        one = restart(one, keys(NEW_KEY))               # the old key is gone everywhere
        traffic.sent(10)
        two = restart(two, keys(NEW_KEY))
        traffic.sent(10)
    assert {status for _, status, _ in traffic.answers} == {200}, \
        [a for a in traffic.answers if a[1] != 200][:3]

    # Everything reads under the new key alone: the client, the added key and alice's seed.
    assert pay(SignedClient("shop", added["secret"], key_id=added["key_id"]), two).status_code \
        == 200
    assert step_up(client, one, oathtool(seed)).status_code == 200
    # The old key alone no longer opens the store, and says so on one line.
    refused = cli(one, "list", env={"TXGATE_MASTER_KEY": OLD_KEY})
    assert refused.returncode == 1 and "not the key the stored credentials were sealed with" \
        in refused.stderr
    rekeys = [r for r in audit_lines(one) if r["action"] == "rekey"]
    assert len(rekeys) == 2 and rekeys[0]["kind"] == "master_key"
    assert rekeys[0]["id"] in rekey.stdout and rekeys[0]["actor"].startswith("cli:")
    log = one.decision_log.read_text()
    assert OLD_KEY not in log and NEW_KEY not in log


def test_a_rekey_killed_midway_loses_nothing_and_a_rerun_finishes_it(fleet, redis_server,
                                                                      tmp_path):
    """Thousands of records sealed under the old key; the rekey is killed after it reported
    moving a few, every record still opens (under one key or the other), and a second run moves
    exactly the rest."""
    import asyncio

    from auth.credentials import CredentialStore
    from auth.keys import load_master_key
    from state.redis import RedisBackend

    total = 3000

    async def populate() -> list[str]:
        state = RedisBackend(redis_server.url, timeout_ms=2000)
        await state.start()
        store = CredentialStore(state, load_master_key(environ=keys(OLD_KEY)))
        await store.check_master_key()
        secrets = [await store.add_hmac_client(f"c{i}") for i in range(total)]
        await state.close()
        return secrets

    secrets = asyncio.run(populate())
    gw = fleet(keys(NEW_KEY, OLD_KEY))
    gw.secrets.update({OLD_KEY, NEW_KEY})
    proc = subprocess.Popen([TXGATE, "auth", "rekey", "-v", "--config", str(gw.config_path)],
                            cwd=ROOT, env={**gw.env, **keys(NEW_KEY, OLD_KEY)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(20):
        assert proc.stdout.readline().startswith("moved client c")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL

    records = {name.decode(): json.loads(raw) for name, raw in
               redis_lib(redis_server).hgetall("{txgate:cred}:clients").items()}
    old_id, new_id = (load_master_key(environ=keys(k)).key_id for k in (OLD_KEY, NEW_KEY))
    by_key = {key_id: [name for name, r in records.items() if r["key_id"] == key_id]
              for key_id in (old_id, new_id)}
    moved = len(by_key[new_id])
    assert len(records) == total and moved >= 20 and moved + len(by_key[old_id]) == total
    assert by_key[old_id], "the rekey finished before it was killed"     # interrupted midway
    # Every record opens: the gateway (both keys) takes a request from a moved and an unmoved
    # client alike.
    for name in (by_key[new_id][0], by_key[old_id][0]):
        assert pay(SignedClient(name, secrets[int(name[1:])]), gw).status_code == 200

    rerun = cli(gw, "rekey")
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.startswith(f"rekey done: {total - moved} records moved"), rerun.stdout
    records = [json.loads(raw) for raw in
               redis_lib(redis_server).hgetall("{txgate:cred}:clients").values()]
    assert old_id not in {r["key_id"] for r in records} and len(records) == total
    new_only = fleet(keys(NEW_KEY))
    new_only.secrets.update({OLD_KEY, NEW_KEY})
    for i in (0, total // 2, total - 1):
        assert pay(SignedClient(f"c{i}", secrets[i]), new_only).status_code == 200


def redis_lib(redis_server):
    import redis
    return redis.Redis(port=redis_server.port)


# -- 4. TOTP re-enrolment that cannot lock a user out -----------------------------------------

def oathtool_at(secret: str, offset_s: int) -> str:
    return subprocess.run(["oathtool", "--totp", "-b", "-N", f"now + {offset_s} seconds", secret],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_a_staged_totp_secret_replaces_the_old_one_only_when_confirmed(fleet):
    gw = fleet()
    secret = gw.admin_post("/admin/clients", {"id": "shop", "hmac": True}).json()["secret"]
    client = SignedClient("shop", secret)
    enrolled = cli(gw, "enroll-totp", "alice")
    assert enrolled.returncode == 0, enrolled.stderr
    old = re.search(r"secret=([A-Z2-7]+)", enrolled.stdout)[1]
    refused = cli(gw, "enroll-totp", "alice")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "already enrolled" in refused.stderr and "--force" in refused.stderr
    staged = cli(gw, "enroll-totp", "alice", "--force")
    assert staged.returncode == 0 and "staged" in staged.stdout.splitlines()[0]
    new = re.search(r"secret=([A-Z2-7]+)", staged.stdout)[1]
    gw.secrets.update({old, new})
    assert "totp (staged)" in cli(gw, "list").stdout

    # Until confirmed, the old authenticator keeps working and the new one does not.
    assert step_up(client, gw, oathtool(new)).status_code == 401
    assert step_up(client, gw, oathtool(old)).status_code == 200
    wrong = cli(gw, "confirm-totp", "alice", oathtool(old))
    assert wrong.returncode == 1 and wrong.stderr == \
        "txgate: the code does not match the staged secret\n"
    confirmed = cli(gw, "confirm-totp", "alice", oathtool(new))
    assert confirmed.returncode == 0, confirmed.stderr
    # Now the old one is refused and the new one passes (next time step: the current one
    # was used by the old secret's answer above).
    assert step_up(client, gw, oathtool_at(old, 30)).status_code == 401
    assert step_up(client, gw, oathtool_at(new, 30)).status_code == 200
    assert "totp (staged)" not in cli(gw, "list").stdout

    # 5. the audit trail: one line per change, by whom, never a secret
    trail = [(r["actor"].split(":")[0], r["action"], r["kind"], r["id"])
             for r in audit_lines(gw)]
    assert trail == [("admin-token", "add", "client", "shop"), ("cli", "enroll", "totp", "alice"),
                     ("cli", "stage", "totp", "alice"), ("cli", "confirm", "totp", "alice")]
    assert all(set(r) == {"ts", "type", "actor", "action", "kind", "id"}
               for r in audit_lines(gw))
    text = gw.decision_log.read_text()
    assert not any(s in text for s in (secret, old, new))
