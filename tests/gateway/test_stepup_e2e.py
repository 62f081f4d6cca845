"""Step-up through a real gateway: TOTP (codes from Debian's oathtool), device signatures,
lockout, and the counters around it (no double counting, reset on strong authentication)."""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.fixtures.signing import SignedClient

RULES = """
version: 1
counters:
  - {name: user_tx_1h, key: [user_id], window: 1h, aggregate: count}
  - {name: user_lowvalue_sum, key: [user_id], reset_on: strong_auth, aggregate: sum, field: amount, on: allow}
rules:
  - id: T-OTP
    description: more than 100 since the last strong authentication
    when: amount + user_lowvalue_sum > 100
    action: require_otp
  - id: T-DEVICE
    description: large amounts need the device
    when: amount >= 1000
    action: require_device
"""
TX = {"user_id": "json:$.user_id", "amount": "json:$.amount", "currency": "json:$.currency",
      "payee": "json:$.payee"}


def oathtool(secret: str) -> str:
    tool = shutil.which("oathtool")
    assert tool, "oathtool is installed by `make test` (Debian package oathtool)"
    return subprocess.run([tool, "--totp", "-b", secret], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def gw(start_gateway, upstream, tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(RULES)
    gateway = start_gateway({
        "rules": {"path": str(tmp_path / "rules"), "reload": "off"},
        "auth": {"totp": {"max_failures": 3, "lockout_s": 2}},
        "routes": [{"name": "payments", "match": {"path": "/pay"}, "upstream": upstream.url,
                    "transaction": TX}]})
    gateway.client = SignedClient("app", gateway.admin_post("/admin/clients", {"id": "app", "hmac": True}).json()["secret"])
    uri = gateway.admin_post("/admin/totp/alice").json()["otpauth_uri"]
    gateway.totp_secret = parse_qs(urlsplit(uri).query)["secret"][0]
    key = Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert gateway.admin_post("/admin/devices/alice", {"public_key": pem, "name": "phone"}).status_code == 201
    gateway.device_key = key
    return gateway


def pay(gw, amount, headers=None, payee="DE02100100109307118603"):
    return gw.client.request("POST", f"{gw.url}/pay", headers=headers or {},
                             json={"user_id": "alice", "amount": amount, "currency": "EUR", "payee": payee})


def logged(gw) -> list[dict]:
    time.sleep(0.2)
    return gw.decisions()


def test_otp_step_up_with_an_oathtool_code(gw, upstream):
    upstream.clear()
    first = pay(gw, 150)
    assert first.status_code == 401
    body = first.json()
    assert body["error"] == "insufficient_user_authentication" and body["acr_values"] == "otp"
    assert body["expires_in"] == 300 and "signing_payload" not in body
    assert first.headers["WWW-Authenticate"] == (
        f'Txgate-Step-Up error="insufficient_user_authentication", acr_values="otp", '
        f'challenge="{body["challenge"]}"')
    assert upstream.seen() == []
    repeat = pay(gw, 150, {"Txgate-Challenge": body["challenge"], "Txgate-OTP": oathtool(gw.totp_secret)})
    assert repeat.status_code == 200, repeat.text
    sent = {k.lower(): v for k, v in upstream.seen()[0]["headers"]}
    assert sent["txgate-tier"] == "otp" and "txgate-otp" not in sent and "txgate-challenge" not in sent
    assert sent["txgate-decision"] == "allow"   # the step-up was passed: not "require_otp"
    entries = logged(gw)
    # The repeat is the same transaction: the attempt counter saw it once.
    assert [e["features"]["user_tx_1h"] for e in entries] == [1, 1]
    assert [e["tier"] for e in entries] == ["client", "otp"]
    assert [e["decision"] for e in entries] == ["step_up", "allow"]
    assert gw.totp_secret not in gw.decision_log.read_text()


def test_the_same_code_is_not_accepted_twice(gw):
    code = oathtool(gw.totp_secret)
    challenge = pay(gw, 150).json()["challenge"]
    assert pay(gw, 150, {"Txgate-Challenge": challenge, "Txgate-OTP": code}).status_code == 200
    challenge = pay(gw, 160).json()["challenge"]
    replay = pay(gw, 160, {"Txgate-Challenge": challenge, "Txgate-OTP": code})
    # Refused, saying why and when the next code comes, with a new challenge to answer then.
    body = replay.json()
    assert replay.status_code == 401 and body["error"] == "otp_reused"
    assert 1 <= int(replay.headers["Retry-After"]) <= 30 and body["challenge"] != challenge
    assert logged(gw)[-1]["decision"] == "step_up"


def test_strong_authentication_resets_the_low_value_sum(gw):
    assert [pay(gw, 30).status_code for _ in range(3)] == [200, 200, 200]
    challenge = pay(gw, 30).json()["challenge"]   # 90 + 30 > 100
    assert pay(gw, 30, {"Txgate-Challenge": challenge, "Txgate-OTP": oathtool(gw.totp_secret)}).status_code == 200
    # The sum restarted at the strong authentication: 30 more is again within the exemption.
    after = pay(gw, 30)
    assert after.status_code == 200
    assert logged(gw)[-1]["features"]["user_lowvalue_sum"] == 0


def test_device_signature_over_the_exact_transaction(gw, upstream):
    first = pay(gw, 1500)
    body = first.json()
    assert first.status_code == 401 and body["acr_values"] == "device"
    payload = base64.b64decode(body["signing_payload"]).decode()
    lines = payload.split("\n")
    assert lines[:6] == ["txgate-device-v1", body["challenge"], "alice", "1500", "EUR", "DE02100100109307118603"]
    signature = base64.b64encode(gw.device_key.sign(payload.encode())).decode()
    answer = {"Txgate-Challenge": body["challenge"], "Txgate-Device-Id": "phone",
              "Txgate-Device-Signature": signature}
    # The same answer for another payee fails: the signature covers the exact transaction.
    other = pay(gw, 1500, answer, payee="GB33BUKB20201555555555")
    assert other.status_code == 401
    upstream.clear()
    second = pay(gw, 1500)
    body = second.json()
    signature = gw.device_key.sign(base64.b64decode(body["signing_payload"]))
    ok = pay(gw, 1500, {"Txgate-Challenge": body["challenge"], "Txgate-Device-Id": "phone",
                        "Txgate-Device-Signature": base64.b64encode(signature).decode()})
    assert ok.status_code == 200, ok.text
    assert {k.lower(): v for k, v in upstream.seen()[0]["headers"]}["txgate-tier"] == "device"


def test_wrong_codes_lock_the_user_then_the_lock_expires(gw):
    challenge = pay(gw, 150).json()["challenge"]
    statuses = []
    for _ in range(3):
        r = pay(gw, 150, {"Txgate-Challenge": challenge, "Txgate-OTP": "000000"})
        statuses.append(r.status_code)
        challenge = r.json().get("challenge", challenge)
    assert statuses == [401, 401, 423]
    locked = pay(gw, 150)
    assert locked.status_code == 423 and locked.json()["error"] == "user_locked"
    assert int(locked.headers["Retry-After"]) >= 1
    time.sleep(2.1)
    assert pay(gw, 150).status_code == 401   # a fresh challenge again
    metrics = gw.metrics()
    assert 'txgate_stepup_total{method="otp",outcome="locked"}' in metrics


def test_a_made_up_challenge_is_verified_and_refused(gw, upstream):
    upstream.clear()
    r = pay(gw, 5, {"Txgate-Challenge": "ch_" + "A" * 24, "Txgate-OTP": "123456"})
    assert r.status_code == 401 and upstream.seen() == []


def test_a_used_or_foreign_challenge_never_makes_a_transaction_count_as_a_repeat(gw):
    challenge = pay(gw, 150).json()["challenge"]
    code = oathtool(gw.totp_secret)
    assert pay(gw, 150, {"Txgate-Challenge": challenge, "Txgate-OTP": code}).status_code == 200
    # The same challenge again, for the same and for another transaction: both are new
    # transactions for the counters (and refused, since the challenge is used up).
    assert pay(gw, 150, {"Txgate-Challenge": challenge, "Txgate-OTP": code}).status_code == 401
    assert pay(gw, 160, {"Txgate-Challenge": challenge, "Txgate-OTP": code}).status_code == 401
    made_up = "ch_" + "B" * 24
    assert pay(gw, 170, {"Txgate-Challenge": made_up, "Txgate-OTP": code}).status_code == 401
    assert [e["features"]["user_tx_1h"] for e in logged(gw)] == [1, 1, 2, 3, 4]


def test_a_denied_transaction_is_refused_before_any_challenge(gw, upstream):
    # 25000 needs the device (T-DEVICE) and is denied (T-DENY): no challenge is worth issuing.
    (gw.config_path.parent / "rules" / "deny.yaml").write_text(
        "version: 1\nrules:\n  - {id: T-DENY, description: huge, when: amount >= 20000, action: deny}\n")
    assert gw.admin_post("/admin/rules/reload").status_code == 200
    r = pay(gw, 25000)
    assert r.status_code == 403 and "WWW-Authenticate" not in r.headers
    assert 'txgate_stepup_total{method="device",outcome="issued"} 0.0' in gw.metrics()
