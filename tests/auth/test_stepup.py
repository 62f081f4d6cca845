"""Step-up: challenges, TOTP answers, device signatures, lockout."""

import asyncio
import base64
import subprocess

import pytest

from auth.devices import signing_payload
from auth.errors import AuthError
from auth.challenges import request_hash
from auth.stepup import StepUp
from tests.auth.conftest import need_tool, openssl, remember
from tests.auth.keyutil import openssl_key

run = asyncio.run
BODY = b'{"user_id": "alice", "amount": 250.5, "currency": "EUR", "payee": "DE89370400440532013000"}'
TX = {"user_id": "alice", "amount": 250.5, "currency": "EUR", "payee": "DE89370400440532013000"}
RH = request_hash("POST", "/v1/payments", BODY)
SECRET = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"


@pytest.fixture
def outcomes():
    return []


@pytest.fixture
def stepup(store, state, clock, outcomes):
    remember(SECRET)
    run(store.enroll_totp("alice", SECRET))
    return StepUp(store, state, max_failures=5, lockout_s=900, challenge_ttl_s=300,
                  on_outcome=lambda method, outcome: outcomes.append((method, outcome)),
                  clock=clock)


def check(stepup, required="otp", proven="client", user="alice", rh=RH, tx=TX, headers=None):
    return run(stepup.check(required, proven, user, rh, tx, headers or {}))


def refused(stepup, **kwargs) -> AuthError:
    with pytest.raises(AuthError) as info:
        check(stepup, **kwargs)
    return info.value


def challenge(stepup, **kwargs) -> dict:
    error = refused(stepup, **kwargs)
    assert error.status == 401 and error.code == "insufficient_user_authentication"
    return error.body


def code(stepup, clock, offset=0) -> str:
    return stepup.totp.code(SECRET, stepup.totp.step(clock.now) + offset)


def otp_answer(ch, value):
    return {"Txgate-Challenge": ch["challenge"], "Txgate-OTP": value}


# -- tiers and challenges -----------------------------------------------------------------

def test_sufficient_tier_passes_without_a_challenge(stepup, outcomes):
    assert check(stepup, required="client") == "client"
    assert check(stepup, required="otp", proven="device") == "device"
    assert outcomes == []


def test_challenge_is_issued_as_the_contract_says(stepup, outcomes):
    error = refused(stepup)
    assert error.status == 401 and error.code == "insufficient_user_authentication"
    ch = error.body
    assert ch["acr_values"] == "otp" and ch["challenge"].startswith("ch_")
    assert ch["expires_in"] == 300 and "signing_payload" not in ch
    assert error.headers["WWW-Authenticate"] == (
        'Txgate-Step-Up error="insufficient_user_authentication", acr_values="otp", '
        f'challenge="{ch["challenge"]}"')
    assert outcomes == [("otp", "issued")]


def test_no_enrolment_is_403_and_names_what_to_enrol(stepup, store):
    error = refused(stepup, user="nobody")
    assert (error.status, error.code) == (403, "enrollment_required")
    assert error.body == {"acr_values": "otp", "missing": "totp"}
    error = refused(stepup, required="device")     # alice has a TOTP secret but no device
    assert error.status == 403
    assert error.body == {"acr_values": "device", "missing": "device"}
    error = refused(stepup, user=None)
    assert error.status == 403 and error.body["missing"] == "user_id"


# -- TOTP -----------------------------------------------------------------------------------

def test_otp_answer_passes_and_success_resets_failures(stepup, clock, outcomes):
    right = code(stepup, clock)
    wrong = [f"{n:06d}" for n in range(10) if f"{n:06d}" != right]
    for attempt in range(4):
        assert refused(stepup, headers=otp_answer(challenge(stepup), wrong[attempt])).status \
            == 401
    assert check(stepup, headers=otp_answer(challenge(stepup), right)) == "otp"
    # the count restarted: four more failures still do not lock (five in a row would)
    for attempt in range(4):
        assert refused(stepup, headers=otp_answer(challenge(stepup), wrong[attempt])).status \
            == 401
    assert ("otp", "passed") in outcomes and ("otp", "failed") in outcomes
    assert ("otp", "locked") not in outcomes


def test_oathtool_code_is_accepted(stepup, clock):
    now = int(clock.now)
    value = subprocess.run([need_tool("oathtool", "oathtool"), "--totp", "-b", f"--now=@{now}",
                            SECRET], capture_output=True, text=True, check=True).stdout.strip()
    remember(value)
    assert check(stepup, headers=otp_answer(challenge(stepup), value)) == "otp"


def test_otp_replay_within_its_window_is_refused_as_reused(stepup, clock, outcomes):
    clock.now = 30 * (int(clock.now) // 30) + 3    # 3 s into a time step
    value = code(stepup, clock)
    assert check(stepup, headers=otp_answer(challenge(stepup), value)) == "otp"
    clock.advance(5)
    error = refused(stepup, headers=otp_answer(challenge(stepup), value))
    # The same 401 with a new challenge, but saying why and when the next code comes.
    assert (error.status, error.code, error.reason) == (401, "otp_reused", "otp_reused")
    assert error.headers["Retry-After"] == "22" and error.body["retry_after"] == 22
    assert error.body["challenge"].startswith("ch_")
    assert 'error="otp_reused"' in error.headers["WWW-Authenticate"]
    assert outcomes[-2:] == [("otp", "reused"), ("otp", "issued")]
    # an older step within the window is refused too once a newer one was accepted
    error = refused(stepup, headers=otp_answer(challenge(stepup), code(stepup, clock, -1)))
    assert error.code == "otp_reused"
    # a wrong code is still just wrong
    wrong = next(f"{n:06d}" for n in range(3) if f"{n:06d}" not in
                 {code(stepup, clock, k) for k in (-1, 0, 1)})
    error = refused(stepup, headers=otp_answer(challenge(stepup), wrong))
    assert (error.code, error.reason) == ("insufficient_user_authentication", "step_up_failed")
    assert "Retry-After" not in error.headers
    # the next time step is fine
    clock.advance(30)
    assert check(stepup, headers=otp_answer(challenge(stepup), code(stepup, clock))) == "otp"


def test_brute_force_locks_and_the_lock_expires(stepup, clock, outcomes):
    right = code(stepup, clock)
    wrong = [f"{n:06d}" for n in range(10) if f"{n:06d}" != right]
    for attempt in range(4):
        error = refused(stepup, headers=otp_answer(challenge(stepup), wrong[attempt]))
        assert error.status == 401 and "challenge" in error.body   # a new challenge
    error = refused(stepup, headers=otp_answer(challenge(stepup), wrong[4]))
    assert (error.status, error.code) == (423, "user_locked")
    assert int(error.headers["Retry-After"]) == 900
    assert outcomes[-1] == ("otp", "locked")
    # locked: even the right code is refused, and no challenge is issued
    clock.advance(899)
    error = refused(stepup, headers=otp_answer({"challenge": "ch_" + "x" * 24}, right))
    assert error.status == 423
    assert refused(stepup).status == 423
    # the lock expires and the count starts over
    clock.advance(2)
    assert check(stepup, headers=otp_answer(challenge(stepup), code(stepup, clock))) == "otp"
    for attempt in range(4):
        assert refused(stepup, headers=otp_answer(challenge(stepup), wrong[attempt])).status == 401


def test_failure_does_not_say_what_was_wrong(stepup, clock):
    right = code(stepup, clock)
    answers = {
        "wrong code": otp_answer(challenge(stepup), "000001" if right != "000001" else "000002"),
        "other transaction": otp_answer(challenge(stepup, rh=request_hash("POST", "/x", b"")),
                                        right),
    }
    errors = [refused(stepup, headers=h) for h in answers.values()]
    shapes = {(e.status, e.code, tuple(sorted(e.body)), tuple(sorted(e.headers)))
              for e in errors}
    assert len(shapes) == 1
    for error in errors:
        assert right not in str(error.__dict__) and SECRET not in str(error.__dict__)


def test_challenge_reuse_is_refused(stepup, clock, outcomes):
    ch = challenge(stepup)
    assert check(stepup, headers=otp_answer(ch, code(stepup, clock))) == "otp"
    clock.advance(30)
    error = refused(stepup, headers=otp_answer(ch, code(stepup, clock)))
    assert error.status == 401 and error.reason == "challenge_expired"
    assert outcomes[-2:] == [("otp", "expired"), ("otp", "issued")]


def test_expired_challenge_is_refused(stepup, clock):
    ch = challenge(stepup)
    clock.advance(301)
    error = refused(stepup, headers=otp_answer(ch, code(stepup, clock)))
    assert error.reason == "challenge_expired"


def test_challenge_answered_for_another_transaction_is_refused(stepup, clock):
    ch = challenge(stepup)
    other = request_hash("POST", "/v1/payments", BODY.replace(b"250.5", b"9250.5"))
    error = refused(stepup, rh=other, headers=otp_answer(ch, code(stepup, clock)))
    assert error.reason == "step_up_failed"


def test_challenge_answered_for_another_user_is_refused(stepup, store, clock):
    run(store.enroll_totp("mallory", SECRET))
    ch = challenge(stepup)                  # alice's challenge
    error = refused(stepup, user="mallory", headers=otp_answer(ch, code(stepup, clock)))
    assert error.status == 401 and error.reason == "challenge_expired"
    # The attempt looked under mallory's keys, so alice's challenge is still hers to answer.
    assert check(stepup, headers=otp_answer(ch, code(stepup, clock))) == "otp"


def test_otp_does_not_answer_a_device_requirement(stepup, store, clock, tmp_path):
    _, public = openssl_key(tmp_path, "ed25519")
    run(store.add_device("alice", public, "phone"))
    ch = challenge(stepup, required="device")
    assert ch["acr_values"] == "device"
    error = refused(stepup, required="device", headers=otp_answer(ch, code(stepup, clock)))
    assert error.reason == "step_up_failed"


# -- devices --------------------------------------------------------------------------------

def _sign_with_openssl(private, kind: str, payload: bytes, tmp_path) -> str:
    data = tmp_path / "payload.txt"
    data.write_bytes(payload)
    if kind == "ed25519":
        signature = openssl("pkeyutl", "-sign", "-rawin", "-inkey", str(private),
                            "-in", str(data))
    else:
        signature = openssl("dgst", "-sha256", "-sign", str(private), str(data))
    return base64.b64encode(signature).decode()


def device_answer(ch, signature, device="phone"):
    return {"Txgate-Challenge": ch["challenge"], "Txgate-Device-Signature": signature,
            "Txgate-Device-Id": device}


@pytest.fixture(params=["ed25519", "p256"])
def device(request, store, tmp_path):
    private, public = openssl_key(tmp_path, request.param)
    run(store.add_device("alice", public, "phone"))
    return private, request.param


def test_device_signature_by_openssl_passes(stepup, device, tmp_path, outcomes):
    ch = challenge(stepup, required="device")
    payload = base64.b64decode(ch["signing_payload"])
    assert payload.decode().split("\n") == [
        "txgate-device-v1", ch["challenge"], "alice", "250.5", "EUR",
        "DE89370400440532013000", RH.hex()]
    signature = _sign_with_openssl(*device, payload, tmp_path)
    assert check(stepup, required="device", headers=device_answer(ch, signature)) == "device"
    assert outcomes == [("device", "issued"), ("device", "passed")]


def test_ecdsa_raw_r_s_signature_passes(stepup, store, tmp_path):
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    private, _ = openssl_key(tmp_path, "p256")
    run(store.add_device("alice", openssl("pkey", "-in", str(private), "-pubout"), "web"))
    ch = challenge(stepup, required="device")
    der = base64.b64decode(_sign_with_openssl(private, "p256",
                                              base64.b64decode(ch["signing_payload"]), tmp_path))
    r, s = decode_dss_signature(der)
    raw = base64.urlsafe_b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode()
    assert check(stepup, required="device", headers=device_answer(ch, raw, "web")) == "device"


@pytest.mark.parametrize("field, value", [("amount", 2500.5), ("payee", "GB33BUKB20201555555555"),
                                          ("currency", "USD")])
def test_changed_transaction_after_the_challenge_fails(stepup, device, tmp_path, field, value):
    ch = challenge(stepup, required="device")
    signature = _sign_with_openssl(*device, base64.b64decode(ch["signing_payload"]), tmp_path)
    changed_tx = dict(TX, **{field: value})
    changed_body = BODY.replace(str(TX[field]).encode(), str(value).encode())
    error = refused(stepup, required="device", tx=changed_tx,
                    rh=request_hash("POST", "/v1/payments", changed_body),
                    headers=device_answer(ch, signature))
    assert (error.status, error.reason) == (401, "step_up_failed")


def test_changed_transaction_fields_alone_break_the_signature(stepup, device, tmp_path):
    # Same request hash but different extracted fields: the payload no longer matches.
    ch = challenge(stepup, required="device")
    signature = _sign_with_openssl(*device, base64.b64decode(ch["signing_payload"]), tmp_path)
    error = refused(stepup, required="device", tx=dict(TX, amount=1.0),
                    headers=device_answer(ch, signature))
    assert error.reason == "step_up_failed"


def test_signature_for_one_challenge_does_not_answer_another(stepup, device, tmp_path):
    first = challenge(stepup, required="device")
    signature = _sign_with_openssl(*device, base64.b64decode(first["signing_payload"]), tmp_path)
    second = challenge(stepup, required="device")
    error = refused(stepup, required="device", headers=device_answer(second, signature))
    assert error.reason == "step_up_failed"


def test_device_challenge_reuse_is_refused(stepup, device, tmp_path):
    ch = challenge(stepup, required="device")
    signature = _sign_with_openssl(*device, base64.b64decode(ch["signing_payload"]), tmp_path)
    assert check(stepup, required="device", headers=device_answer(ch, signature)) == "device"
    error = refused(stepup, required="device", headers=device_answer(ch, signature))
    assert error.reason == "challenge_expired"


def test_revoked_or_unknown_device_fails(stepup, store, device, tmp_path):
    ch = challenge(stepup, required="device")
    signature = _sign_with_openssl(*device, base64.b64decode(ch["signing_payload"]), tmp_path)
    error = refused(stepup, required="device", headers=device_answer(ch, signature, "tablet"))
    assert error.reason == "step_up_failed"
    ch = challenge(stepup, required="device")
    signature = _sign_with_openssl(*device, base64.b64decode(ch["signing_payload"]), tmp_path)
    run(store.revoke("device", "alice/phone"))
    error = refused(stepup, required="device", headers=device_answer(ch, signature))
    assert error.status == 403        # no active device left: nothing to challenge with


def test_device_answers_an_otp_requirement(stepup, device, tmp_path):
    ch = challenge(stepup, required="otp")
    payload = signing_payload(ch["challenge"], "alice", TX["amount"], TX["currency"],
                              TX["payee"], RH)
    signature = _sign_with_openssl(*device, payload, tmp_path)
    assert check(stepup, required="otp", headers=device_answer(ch, signature)) == "device"


def test_request_hash_framing_is_unambiguous():
    assert request_hash("POST", "/a", b"b") != request_hash("POST", "/ab", b"")
    assert request_hash("POST", "/a", b"") != request_hash("POS", "T/a", b"")
    assert len(request_hash("GET", "/", b"")) == 32
