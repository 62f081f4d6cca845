"""Requests signed by stock RFC 9421 clients pass unchanged; every tampering fails."""

import asyncio
import datetime
import json
import re
import time

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from http_message_signatures import HTTPMessageSigner
from http_message_signatures.algorithms import ED25519, HMAC_SHA256
from http_message_signatures.resolvers import MappingKeyResolver
from multidict import CIMultiDict
from requests_http_signature import HTTPSignatureAuth

from auth.errors import AuthError
from auth.signatures import content_digest
from tests.auth.conftest import accepting, remember

run = asyncio.run
URL = "https://pay.example.com/v1/payments?trace=1"
BODY = json.dumps({"user_id": "alice", "amount": 20, "currency": "EUR"}).encode()


@pytest.fixture
def hmac_client(store):
    secret = run(store.add_hmac_client("shop-hmac"))
    remember(secret)
    return "shop-hmac", secret.encode()


@pytest.fixture
def ed_client(store):
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    run(store.add_public_key_client("shop-ed", pem))
    return "shop-ed", key


@pytest.fixture
def verifier(store, state, clock):
    return accepting(store, state, max_skew_s=300, clock=clock)


def sign(key_id, key, *, alg=HMAC_SHA256, method="POST", url=URL, body=BODY, nonce=None,
         created=None, covered=("@method", "@authority", "@target-uri"), label="sig1",
         include_alg=True):
    """Sign with the stock library on a requests.PreparedRequest, return what aiohttp sees."""
    request = requests.Request(method, url, data=body or None,
                               headers={"Content-Type": "application/json"}).prepare()
    signer = HTTPMessageSigner(signature_algorithm=alg, key_resolver=MappingKeyResolver(
        private_keys={key_id: key}, public_keys={}))
    signer.sign(request, key_id=key_id, nonce=nonce, created=created, label=label,
                covered_component_ids=covered, body=body if body else None,
                include_alg=include_alg)
    return request.method, request.url, CIMultiDict(request.headers), body


def verify(verifier, method, url, headers, body):
    return run(verifier.verify(method, url, headers, body))


def reason(verifier, *message) -> str:
    with pytest.raises(AuthError) as info:
        verify(verifier, *message)
    assert info.value.status == 401 and info.value.code == "invalid_signature"
    return info.value.reason


@pytest.mark.parametrize("nonce", [None, "n-0001"])
def test_hmac_signed_request_passes(verifier, hmac_client, nonce):
    message = sign(*hmac_client, nonce=nonce)
    assert "content-digest" in message[2]["Signature-Input"]
    assert verify(verifier, *message) == "shop-hmac"


@pytest.mark.parametrize("nonce", [None, "n-0002"])
def test_ed25519_signed_request_passes(verifier, ed_client, nonce):
    assert verify(verifier, *sign(*ed_client, alg=ED25519, nonce=nonce)) == "shop-ed"


def test_alg_absent_uses_the_registered_key_type(verifier, ed_client):
    assert verify(verifier, *sign(*ed_client, alg=ED25519, include_alg=False)) == "shop-ed"


def test_path_and_authority_form_and_get_without_body(verifier, hmac_client):
    message = sign(*hmac_client, method="GET", url="https://pay.example.com/v1/accounts/7",
                   body=b"", covered=("@method", "@authority", "@path"))
    assert verify(verifier, *message) == "shop-hmac"


def test_requests_http_signature_auth_works_unchanged(verifier, hmac_client, ed_client):
    for key_id, key, alg in (hmac_client + (HMAC_SHA256,), ed_client + (ED25519,)):
        for use_nonce in (False, True):
            auth = HTTPSignatureAuth(signature_algorithm=alg, key=key, key_id=key_id,
                                     use_nonce=use_nonce)
            request = auth(requests.Request("POST", URL, data=BODY).prepare())
            assert verify(verifier, request.method, request.url,
                          CIMultiDict(request.headers), BODY) == key_id


def test_tampered_method_fails(verifier, hmac_client):
    _, url, headers, body = sign(*hmac_client)
    assert reason(verifier, "PUT", url, headers, body) == "bad_signature"


@pytest.mark.parametrize("url", ["https://pay.example.com/v1/refunds?trace=1",
                                 "https://pay.example.com/v1/payments?trace=2",
                                 "https://evil.example.com/v1/payments?trace=1"])
def test_tampered_target_fails(verifier, hmac_client, url):
    method, _, headers, body = sign(*hmac_client)
    assert reason(verifier, method, url, headers, body) == "bad_signature"


def test_body_swapped_under_a_valid_signature_fails(verifier, hmac_client):
    method, url, headers, _ = sign(*hmac_client)
    assert reason(verifier, method, url, headers, BODY.replace(b"20", b"2000")) == "bad_digest"


def test_body_and_digest_swapped_fails(verifier, hmac_client):
    method, url, headers, _ = sign(*hmac_client)
    other = BODY.replace(b"20", b"2000")
    headers["Content-Digest"] = content_digest(other)
    assert reason(verifier, method, url, headers, other) == "bad_signature"


def test_sha512_digest_is_checked_too(verifier, hmac_client):
    method, url, headers, body = sign(*hmac_client)
    headers["Content-Digest"] = content_digest(body) + ", " + content_digest(b"x", "sha-512")
    assert reason(verifier, method, url, headers, body) == "bad_digest"


def _bump_created(text):
    return re.sub(r"created=(\d+)", lambda m: f"created={int(m.group(1)) - 1}", text)


@pytest.mark.parametrize("tamper, expected", [
    (lambda t: t.replace('keyid="shop-hmac"', 'keyid="shop-hmac";tag="x"'), "bad_signature"),
    (lambda t: t.replace('keyid="shop-hmac"', 'keyid="shop-hmac";nonce="extra"'),
     "bad_signature"),
    (_bump_created, "bad_signature"),
    (lambda t: t.replace('"@method" ', ""), "missing_component"),
    (lambda t: t.replace('"@target-uri" ', ""), "missing_component"),
    (lambda t: t.replace(';alg="hmac-sha256"', ""), "bad_signature"),
])
def test_tampered_parameters_fail(verifier, hmac_client, tamper, expected):
    method, url, headers, body = sign(*hmac_client)
    headers["Signature-Input"] = tamper(headers["Signature-Input"])
    assert reason(verifier, method, url, headers, body) == expected


def test_tampered_signature_bytes_fail(verifier, ed_client):
    method, url, headers, body = sign(*ed_client, alg=ED25519)
    sig = headers["Signature"]
    headers["Signature"] = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    assert reason(verifier, method, url, headers, body) in {"bad_signature", "malformed"}


def test_replayed_signature_is_refused(verifier, hmac_client):
    message = sign(*hmac_client)
    assert verify(verifier, *message) == "shop-hmac"
    assert reason(verifier, *message) == "replay"


def test_same_nonce_with_a_new_signature_is_refused(verifier, hmac_client, clock):
    assert verify(verifier, *sign(*hmac_client, nonce="n-42"))
    # A different body means a different signature, yet the nonce was used.
    assert reason(verifier, *sign(*hmac_client, nonce="n-42", body=BODY + b" ")) == "replay"
    # Nonces are per client and forgotten after the window.
    clock.advance(601)
    later = datetime.datetime.fromtimestamp(clock.now)
    assert verify(verifier, *sign(*hmac_client, nonce="n-42", created=later)) == "shop-hmac"


def test_forged_request_does_not_burn_the_nonce(verifier, hmac_client):
    method, url, headers, body = sign(*hmac_client, nonce="n-7")
    reason(verifier, "DELETE", url, headers, body)
    assert verify(verifier, method, url, headers, body) == "shop-hmac"


@pytest.mark.parametrize("offset, expected", [(-301, "expired"), (301, "future")])
def test_stale_and_future_created_are_refused(verifier, hmac_client, offset, expected):
    created = datetime.datetime.fromtimestamp(time.time() + offset)
    assert reason(verifier, *sign(*hmac_client, created=created)) == expected


def test_within_skew_is_accepted(verifier, hmac_client):
    created = datetime.datetime.fromtimestamp(time.time() - 250)
    assert verify(verifier, *sign(*hmac_client, created=created)) == "shop-hmac"


def test_revoked_key_is_refused(verifier, store, hmac_client):
    message = sign(*hmac_client)
    run(store.revoke("client", "shop-hmac"))
    assert reason(verifier, *message) == "unknown_key"


def test_unknown_key_is_refused(verifier):
    assert reason(verifier, *sign("nobody", b"k" * 32)) == "unknown_key"


def test_wrong_secret_is_refused(verifier, hmac_client):
    assert reason(verifier, *sign("shop-hmac", b"not-the-secret" * 3)) == "bad_signature"


def test_alg_must_match_the_key(verifier, ed_client, hmac_client):
    method, url, headers, body = sign(*hmac_client)
    headers["Signature-Input"] = headers["Signature-Input"].replace("hmac-sha256", "ed25519")
    assert reason(verifier, method, url, headers, body) == "alg_mismatch"


@pytest.mark.parametrize("covered", [("@authority", "@target-uri"),          # no method
                                     ("@method", "@path"),                    # no authority
                                     ("@method", "@authority", "@path")])     # query unsigned
def test_required_components(verifier, hmac_client, covered):
    assert reason(verifier, *sign(*hmac_client, covered=covered)) == "missing_component"


def test_body_requires_a_covered_digest(verifier, hmac_client):
    method, url, headers, body = sign(*hmac_client, body=b"")
    assert reason(verifier, method, url, headers, BODY) == "missing_component"


def test_missing_and_malformed_headers(verifier, hmac_client):
    method, url, headers, body = sign(*hmac_client)
    bare = CIMultiDict(headers)
    del bare["Signature"]
    assert reason(verifier, method, url, bare, body) == "missing_signature"
    bad = CIMultiDict(headers)
    bad["Signature-Input"] = "sig1=(((("
    assert reason(verifier, method, url, bad, body) == "malformed"


def test_label_of_the_clients_choosing_and_first_valid_label(verifier, hmac_client):
    method, url, headers, body = sign(*hmac_client, label="my-label")
    # A second, policy-violating signature in front does not hide the good one.
    headers["Signature-Input"] = 'junk=("@method");keyid="x";created=1, ' + \
        headers["Signature-Input"]
    headers["Signature"] = "junk=:AAAA:, " + headers["Signature"]
    assert verify(verifier, method, url, headers, body) == "shop-hmac"


def test_rfc9421_b26_ed25519_vector(state, store, clock):
    """RFC 9421 Appendix B.2.6 (test-key-ed25519) verifies against our signature base."""
    pem = (b"-----BEGIN PUBLIC KEY-----\n"
           b"MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n"
           b"-----END PUBLIC KEY-----\n")
    run(store.add_public_key_client("test-key-ed25519", pem))
    clock.now = 1618884473
    verifier = accepting(store, state, clock=clock)
    headers = CIMultiDict({
        "Date": "Tue, 20 Apr 2021 02:07:55 GMT",
        "Content-Type": "application/json",
        "Content-Length": "18",
        "Signature-Input": 'sig-b26=("date" "@method" "@path" "@authority" "content-type" '
                           '"content-length");created=1618884473;keyid="test-key-ed25519"',
        "Signature": "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu"
                     "4A0w6vuQv5lIp5WPpBKRCw==:",
    })
    # The RFC's example signs neither its body nor its query; our policy refuses both, so
    # present the same signature base without them: this checks the base and the crypto.
    assert run(verifier.verify("POST", "https://example.com/foo", headers, b"")) == \
        "test-key-ed25519"
    headers["Signature-Input"] = headers["Signature-Input"].replace("created=1618884473",
                                                                    "created=1618884474")
    with pytest.raises(AuthError):
        run(verifier.verify("POST", "https://example.com/foo", headers, b""))
