import asyncio
import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from auth.credentials import CredentialStore
from auth.errors import CredentialError
from tests.auth.conftest import remember

run = asyncio.run


def _pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _raw_values(state) -> bytes:
    """Everything the backend holds, as one blob, as a Redis dump would show it."""
    blob = b""
    for key, value in state._values.items():
        blob += key.encode()
        if isinstance(value, dict):
            blob += b"".join(f.encode() + v for f, v in value.items())
        else:
            blob += value if isinstance(value, bytes) else str(value).encode()
    return blob


def test_secrets_are_encrypted_at_rest(store, state):
    hmac_secret = run(store.add_hmac_client("c1"))
    totp_secret = run(store.enroll_totp("alice"))
    remember(hmac_secret, totp_secret)
    raw = _raw_values(state)
    for secret in (hmac_secret, totp_secret):
        assert secret.encode() not in raw
        assert base64.b64encode(secret.encode()) not in raw
        assert base64.b32decode(totp_secret.encode()) not in raw
    assert b"txgate-master" not in raw      # the key-check plaintext is sealed too
    # and they still open with the right key
    assert run(store.totp_secret("alice")) == totp_secret
    assert run(store.client_key("c1")).type == "hmac"


def test_given_secrets_are_kept(store):
    secret = "x" * 40
    assert run(store.add_hmac_client("demo", secret)) == secret
    assert run(store.enroll_totp("bob", "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ")) == \
        "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"


def test_enroll_totp_stages_over_an_active_secret_only_when_asked(store):
    first = run(store.enroll_totp("carol"))
    remember(first)
    with pytest.raises(CredentialError, match="already enrolled") as info:
        run(store.enroll_totp("carol"))
    assert info.value.status == 409
    assert run(store.totp_secret("carol")) == first          # untouched
    second = run(store.enroll_totp("carol", replace=True))
    remember(second)
    # Staged, not replaced: the old secret works until a code of the new one confirms it
    # (tests/auth/test_rotation.py drives the confirmation).
    assert second != first and run(store.totp_secret("carol")) == first
    run(store.revoke("totp", "carol"))                        # a revoked one needs no force
    remember(run(store.enroll_totp("carol")))


@pytest.mark.parametrize("call, message", [
    (lambda s: s.add_hmac_client("c", "short"), "at least 32 bytes"),
    (lambda s: s.enroll_totp("u", "JBSWY3DPEHPK3PXP"), "at least 128 bits"),
    (lambda s: s.enroll_totp("u", "not base32 !!"), "not base32"),
    (lambda s: s.add_hmac_client("bad id"), "client id must be"),
    (lambda s: s.add_device("a/b", _pem(ed25519.Ed25519PrivateKey.generate())), "user id"),
])
def test_operator_mistakes_are_clear(store, call, message):
    with pytest.raises(CredentialError, match=message):
        run(call(store))


def test_duplicate_client_is_409(store):
    run(store.add_hmac_client("c1"))
    with pytest.raises(CredentialError) as info:
        run(store.add_public_key_client("c1", _pem(ed25519.Ed25519PrivateKey.generate())))
    assert info.value.status == 409


def test_key_types(store):
    run(store.add_public_key_client("ed", _pem(ed25519.Ed25519PrivateKey.generate())))
    with pytest.raises(CredentialError, match="unsupported key type"):
        run(store.add_public_key_client("ec", _pem(ec.generate_private_key(ec.SECP256R1()))))
    assert run(store.add_device("u", _pem(ec.generate_private_key(ec.SECP256R1())), "phone")) \
        == "phone"
    with pytest.raises(CredentialError, match="unsupported key type"):
        run(store.add_device("u", _pem(ec.generate_private_key(ec.SECP384R1()))))
    with pytest.raises(CredentialError, match="unsupported key type"):
        run(store.add_device("u", _pem(rsa.generate_private_key(65537, 2048))))
    with pytest.raises(CredentialError, match="not a PEM"):
        run(store.add_device("u", b"garbage"))


def test_private_key_is_refused_and_never_echoed(store):
    private = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    with pytest.raises(CredentialError, match="a private key was given") as info:
        run(store.add_device("u", private))
    assert private.decode().splitlines()[1] not in str(info.value)


def test_generated_device_id(store):
    device_id = run(store.add_device("u", _pem(ed25519.Ed25519PrivateKey.generate())))
    assert device_id.startswith("dev_")
    assert run(store.device_key("u", device_id)) is not None
    assert run(store.device_key("other", device_id)) is None


def test_list_and_revoke(store):
    run(store.add_hmac_client("c1"))
    run(store.enroll_totp("alice"))
    run(store.add_device("alice", _pem(ed25519.Ed25519PrivateKey.generate()), "phone"))
    listed = {(c.kind, c.id): c for c in run(store.list())}
    # A client is listed with its first key (keyid: the client id).
    assert set(listed) == {("client", "c1"), ("key", "c1"), ("totp", "alice"),
                           ("device", "alice/phone")}
    assert listed[("key", "c1")].client == "c1"
    assert all(c.active for c in listed.values())
    assert listed[("device", "alice/phone")].user == "alice"

    run(store.revoke("client", "c1"))
    run(store.revoke("totp", "alice"))
    run(store.revoke("devices", "alice/phone"))
    assert run(store.client_key("c1")) is None
    assert run(store.totp_secret("alice")) is None
    assert not run(store.has_totp("alice"))
    assert not run(store.has_device("alice"))
    assert not any(c.active for c in run(store.list()))
    with pytest.raises(CredentialError) as info:
        run(store.revoke("client", "c1"))
    assert info.value.status == 409
    with pytest.raises(CredentialError) as info:
        run(store.revoke("client", "nobody"))
    assert info.value.status == 404
    with pytest.raises(CredentialError) as info:
        run(store.revoke("widget", "x"))
    assert info.value.status == 400


def test_revocation_elsewhere_is_seen_within_the_cache_ttl(state, master_key, clock):
    # Two processes sharing one store: revocation by one reaches the other's cache in time.
    gateway = CredentialStore(state, master_key, cache_ttl_s=5, clock=clock)
    cli = CredentialStore(state, master_key, clock=clock)
    run(cli.add_hmac_client("c1"))
    assert run(gateway.client_key("c1")) is not None
    run(cli.revoke("client", "c1"))
    clock.advance(5.1)
    assert run(gateway.client_key("c1")) is None


def test_reprs_hold_no_secret(store):
    secret = run(store.add_hmac_client("c1"))
    remember(secret)
    key = run(store.client_key("c1"))
    assert secret not in repr(key) and secret not in repr(store)
    record = json.loads(store._state._values["{txgate:cred}:clients"]["c1"])
    # key_id names the master key that sealed the secret (derived from it, never the key).
    assert set(record) == {"type", "created", "revoked", "secret", "key_id"}
    assert record["key_id"] == store.master_key_id
