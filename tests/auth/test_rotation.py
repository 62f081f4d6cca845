"""Credentials over their lifetime in the store: several keys per client (keyids, expiry,
revocation one by one or all), master key rotation (previous key, rekey), staged TOTP
re-enrolment and the audit calls. The same features on real gateways: tests/gateway/
test_rotation_e2e.py."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from auth.credentials import CredentialStore
from auth.errors import CredentialError, MasterKeyError
from auth.keys import MasterKey, load_master_key
from auth.totp import Totp
from tests.auth.conftest import accepting, remember
from tests.auth.test_signatures import reason, sign, verify

run = asyncio.run
ED25519_PEM = ed25519.Ed25519PrivateKey.generate


def _pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def audited(state, master_key, clock):
    calls = []
    store = CredentialStore(state, master_key, clock=clock,
                            audit=lambda *call: calls.append(call))
    return store, calls


# -- several keys per client ------------------------------------------------------------------

def test_a_client_signs_with_any_of_its_keys_under_their_own_keyids(store, state, clock):
    verifier = accepting(store, state, clock=clock)
    first = run(store.add_hmac_client("shop"))
    key_id, second = run(store.add_key("shop", hmac_secret=True))
    remember(first, second)
    assert re.fullmatch(r"shop/[0-9a-f]{8}", key_id)
    ed = ED25519_PEM()
    ed_id, none = run(store.add_key("shop", public_key_pem=_pem(ed), key_id="shop-ed-2026"))
    assert (ed_id, none) == ("shop-ed-2026", None)

    for keyid, key in (("shop", first.encode()), (key_id, second.encode())):
        checked = run(verifier.verifier.check(*sign(keyid, key)))
        assert (checked.client_id, checked.key_id) == ("shop", keyid)
    from http_message_signatures.algorithms import ED25519
    assert run(verifier.verifier.check(*sign(ed_id, ed, alg=ED25519))).client_id == "shop"
    # a key signs under its own keyid only
    assert reason(verifier, *sign("shop", second.encode())) == "bad_signature"


def test_keys_are_listed_without_secrets_and_revoked_one_by_one_or_all(store, clock):
    secret = run(store.add_hmac_client("shop"))
    key_id, second = run(store.add_key("shop", hmac_secret=True, expires_in_s=90 * 86400))
    remember(secret, second)
    keys = {c.id: c for c in run(store.list()) if c.kind == "key"}
    assert set(keys) == {"shop", key_id}
    assert keys[key_id].client == "shop" and keys[key_id].type == "hmac"
    assert keys[key_id].expires == clock.now + 90 * 86400 and keys["shop"].expires is None
    assert all(secret not in repr(c) and second not in repr(c) for c in keys.values())

    run(store.revoke("key", "shop"))           # the first key only: the client stays
    assert run(store.client_key("shop")) is None
    assert run(store.client_key(key_id)) is not None
    assert run(store.client_active("shop"))
    with pytest.raises(CredentialError) as info:
        run(store.revoke("key", "shop"))
    assert info.value.status == 409

    third, _ = run(store.add_key("shop", hmac_secret=True))
    run(store.revoke("client", "shop"))        # every key goes with the client
    assert run(store.client_key(key_id)) is None and run(store.client_key(third)) is None
    assert not run(store.client_active("shop"))
    assert not any(c.active for c in run(store.list()) if c.kind in ("client", "key"))
    with pytest.raises(CredentialError) as info:
        run(store.add_key("shop", hmac_secret=True))
    assert (info.value.status, info.value.code) == (409, "already_revoked")


@pytest.mark.parametrize("call, status, message", [
    (lambda s: s.add_key("nobody", hmac_secret=True), 404, "no client"),
    (lambda s: s.add_key("shop", hmac_secret=True, key_id="shop"), 409, "taken"),
    (lambda s: s.add_key("shop", hmac_secret=True, key_id="has space"), 400, "key id must"),
    (lambda s: s.add_key("shop", hmac_secret=True, expires_in_s=0), 400, "positive"),
    (lambda s: s.add_key("shop"), 400, "exactly one"),
    (lambda s: s.add_key("shop", hmac_secret=True, public_key_pem=b"x"), 400, "exactly one"),
    (lambda s: s.add_hmac_client("shop-k"), 409, "taken"),     # a client id is a keyid too
    (lambda s: s.revoke("key", "nope"), 404, "no key"),
])
def test_key_mistakes_are_refused_and_change_nothing(store, state, call, status, message):
    run(store.add_hmac_client("shop"))
    run(store.add_key("shop", hmac_secret=True, key_id="shop-k"))
    before = {k: dict(v) for k, v in state._values.items() if isinstance(v, dict)}
    with pytest.raises(CredentialError, match=message) as info:
        run(call(store))
    assert info.value.status == status
    assert {k: dict(v) for k, v in state._values.items() if isinstance(v, dict)} == before


def test_an_expired_key_is_refused_by_name_in_the_log(store, state, clock, caplog):
    verifier = accepting(store, state, clock=clock)
    run(store.add_hmac_client("shop"))
    key_id, secret = run(store.add_key("shop", hmac_secret=True, expires_in_s=3600))
    remember(secret)
    verify(verifier, *sign(key_id, secret.encode(), nonce="before"))
    clock.advance(3600)
    with caplog.at_level(logging.WARNING, "txgate.signatures"):
        created = datetime.datetime.fromtimestamp(clock.now)
        assert reason(verifier, *sign(key_id, secret.encode(), created=created)) == "key_expired"
    assert [r.getMessage() for r in caplog.records if r.name == "txgate.signatures"] == [
        f"signature refused: key {key_id} of client shop expired"]


def test_expiring_keys_per_active_client(store, clock):
    run(store.add_hmac_client("shop"))
    run(store.add_hmac_client("quiet"))
    run(store.add_hmac_client("gone"))
    run(store.add_key("shop", hmac_secret=True, expires_in_s=3 * 86400))
    run(store.add_key("shop", hmac_secret=True, expires_in_s=60 * 86400))
    soon, _ = run(store.add_key("shop", hmac_secret=True, expires_in_s=86400))
    run(store.add_key("gone", hmac_secret=True, expires_in_s=86400))
    run(store.revoke("client", "gone"))
    assert run(store.expiring_keys(14 * 86400)) == {"shop": 2, "quiet": 0}
    clock.advance(2 * 86400)           # expired and not revoked: still counted, still to act on
    assert run(store.expiring_keys(14 * 86400)) == {"shop": 2, "quiet": 0}
    run(store.revoke("key", soon))
    assert run(store.expiring_keys(14 * 86400)) == {"shop": 1, "quiet": 0}


# -- master key rotation ------------------------------------------------------------------

def _key(byte: bytes) -> str:
    return base64.b64encode(byte * 32).decode()


def test_the_key_id_identifies_a_key_without_revealing_it():
    old = load_master_key(environ={"TXGATE_MASTER_KEY": _key(b"o")})
    again = load_master_key(environ={"TXGATE_MASTER_KEY": _key(b"o")})
    new = load_master_key(environ={"TXGATE_MASTER_KEY": _key(b"n"),
                                   "TXGATE_MASTER_KEY_PREVIOUS": _key(b"o")})
    assert old.key_id == again.key_id != new.key_id
    assert new.previous.key_id == old.key_id and old.previous is None
    assert _key(b"o") not in repr(new) and old.key_id not in _key(b"o")
    with pytest.raises(MasterKeyError, match="TXGATE_MASTER_KEY_PREVIOUS"):
        load_master_key(environ={"TXGATE_MASTER_KEY": _key(b"n"),
                                 "TXGATE_MASTER_KEY_PREVIOUS": "short"})


def test_rekey_moves_every_secret_once_and_the_old_key_can_go(state, clock):
    old = MasterKey(b"o" * 32)
    before = CredentialStore(state, old, clock=clock)
    run(before.check_master_key())
    secret = run(before.add_hmac_client("shop"))
    key_id, second = run(before.add_key("shop", hmac_secret=True))
    seed = run(before.enroll_totp("alice"))
    staged = run(before.enroll_totp("alice", replace=True))
    run(before.add_device("alice", _pem(ED25519_PEM()), "phone"))   # a public key: not sealed
    run(before.add_public_key_client("shop-ed", _pem(ED25519_PEM())))
    remember(secret, second, seed, staged)

    # Without the old key, nothing opens and the start-up check says so.
    with pytest.raises(MasterKeyError):
        run(CredentialStore(state, MasterKey(b"n" * 32), clock=clock).check_master_key())

    rolling = CredentialStore(state, MasterKey(b"n" * 32, previous=old), clock=clock)
    run(rolling.check_master_key())
    assert run(rolling.totp_secret("alice")) == seed          # opens under the previous key
    assert run(rolling.rekey()) == 3                          # shop, its key, alice (+ staged)
    assert run(rolling.rekey()) == 0                          # idempotent

    after = CredentialStore(state, MasterKey(b"n" * 32), clock=clock)
    run(after.check_master_key())
    assert run(after.client_key("shop")).verify(b"m", __import__("hmac").new(
        secret.encode(), b"m", "sha256").digest())
    assert run(after.client_key(key_id)) is not None
    assert run(after.totp_secret("alice")) == seed
    records = [json.loads(v) for c in ("clients", "keys", "totp")
               for v in state._values[f"{{txgate:cred}}:{c}"].values()]
    assert {r["key_id"] for r in records if "secret" in r} == {after.master_key_id}
    assert run(after.confirm_totp("alice", Totp().code(staged, Totp().step(clock.now)),
                                  Totp())) is None


def test_rekey_never_undoes_a_change_made_while_it_runs(state, clock):
    old = MasterKey(b"o" * 32)
    run(CredentialStore(state, old, clock=clock).add_hmac_client("shop"))
    rolling = CredentialStore(state, MasterKey(b"n" * 32, previous=old), clock=clock)
    real_hreplace = state.hreplace

    async def revoke_first(key, field, expected, value):
        if field == "shop":        # an operator revokes the client between read and write
            state.hreplace = real_hreplace
            await CredentialStore(state, old, clock=clock).revoke("client", "shop")
        return await real_hreplace(key, field, expected, value)

    state.hreplace = revoke_first
    assert run(rolling.rekey()) == 1
    assert run(rolling.client_key("shop")) is None             # still revoked, and moved
    record = json.loads(state._values["{txgate:cred}:clients"]["shop"])
    assert record["revoked"] is not None and record["key_id"] == rolling.master_key_id


# -- staged TOTP re-enrolment ---------------------------------------------------------------

def test_a_staged_totp_secret_replaces_the_old_one_only_once_confirmed(store, clock):
    totp = Totp()
    old = run(store.enroll_totp("alice"))
    with pytest.raises(CredentialError) as info:
        run(store.enroll_totp("alice"))                      # no --force: refused
    assert info.value.status == 409
    new = run(store.enroll_totp("alice", replace=True))
    remember(old, new)
    assert run(store.totp_secret("alice")) == old           # the old one keeps working
    assert [c.pending for c in run(store.list()) if c.kind == "totp"] == [True]
    step = totp.step(clock.now)
    for wrong in (totp.code(old, step), "12345", None):
        with pytest.raises(CredentialError) as info:
            run(store.confirm_totp("alice", wrong, totp))
        assert info.value.status == 400
    assert run(store.totp_secret("alice")) == old
    # staging again replaces the staged one (the user scanned the wrong code)
    newer = run(store.enroll_totp("alice", replace=True))
    remember(newer)
    with pytest.raises(CredentialError):
        run(store.confirm_totp("alice", totp.code(new, step), totp))
    run(store.confirm_totp("alice", totp.code(newer, step), totp))
    assert run(store.totp_secret("alice")) == newer
    assert [c.pending for c in run(store.list()) if c.kind == "totp"] == [False]
    with pytest.raises(CredentialError) as info:
        run(store.confirm_totp("alice", totp.code(newer, step), totp))
    assert info.value.status == 404


# -- audit -------------------------------------------------------------------------------

def test_every_change_is_audited_by_id_and_reads_are_not(audited, clock):
    store, calls = audited
    secret = run(store.add_hmac_client("shop"))
    key_id, second = run(store.add_key("shop", hmac_secret=True))
    seed = run(store.enroll_totp("alice"))
    staged = run(store.enroll_totp("alice", replace=True))
    remember(secret, second, seed, staged)
    run(store.confirm_totp("alice", Totp().code(staged, Totp().step(clock.now)), Totp()))
    device = run(store.add_device("alice", _pem(ED25519_PEM())))
    run(store.client_key(key_id))
    run(store.list())
    run(store.revoke("key", key_id))
    run(store.revoke("client", "shop"))
    run(store.rekey())
    assert calls == [("add", "client", "shop"), ("add", "key", key_id),
                     ("enroll", "totp", "alice"), ("stage", "totp", "alice"),
                     ("confirm", "totp", "alice"), ("add", "device", f"alice/{device}"),
                     ("revoke", "key", key_id), ("revoke", "client", "shop"),
                     ("rekey", "master_key", store.master_key_id)]
    text = repr(calls)
    assert not any(s in text for s in (secret, second, seed, staged))


def test_a_change_to_a_record_changed_meanwhile_is_refused_not_lost(store, state, clock):
    totp = Totp()
    run(store.enroll_totp("alice"))
    staged = run(store.enroll_totp("alice", replace=True))
    remember(staged)
    real_hreplace = state.hreplace

    async def revoke_first(key, field, expected, value):
        state.hreplace = real_hreplace           # an operator revokes alice meanwhile
        await store.revoke("totp", "alice")
        return await real_hreplace(key, field, expected, value)

    state.hreplace = revoke_first
    with pytest.raises(CredentialError) as info:
        run(store.confirm_totp("alice", totp.code(staged, totp.step(clock.now)), totp))
    assert (info.value.status, info.value.code) == (409, "conflict")
    assert not run(store.has_totp("alice"))     # the revocation stands
