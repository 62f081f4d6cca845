"""The `txgate auth` library functions the CLI calls."""

import asyncio
import io

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from auth import commands
from auth.errors import CredentialError
from tests.auth.conftest import remember

run = asyncio.run


def _pem() -> bytes:
    return ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_add_client_hmac_prints_the_secret_alone_on_the_last_line(store):
    out = io.StringIO()
    assert run(commands.add_client(store, "shop", True, None, out)) == 0
    secret = out.getvalue().rstrip("\n").splitlines()[-1]
    remember(secret)
    assert " " not in secret and len(secret) >= 32
    # the printed string's UTF-8 bytes are the HMAC key the store verifies with
    key = run(store.client_key("shop"))
    assert key.type == "hmac" and key._key == secret.encode()


def test_add_client_public_key_and_bad_arguments(store):
    out = io.StringIO()
    assert run(commands.add_client(store, "shop-ed", False, _pem(), out)) == 0
    with pytest.raises(CredentialError, match="exactly one"):
        run(commands.add_client(store, "x", True, _pem(), out))


def test_enroll_totp_prints_uri_and_qr(store):
    out = io.StringIO()
    assert run(commands.enroll_totp(store, "alice", out=out)) == 0
    text = out.getvalue()
    uri = next(line for line in text.splitlines() if line.startswith("otpauth://"))
    remember(uri.split("secret=")[1].split("&")[0])
    assert "issuer=txgate" in uri
    assert "█" in text or "▀" in text            # a terminal QR code


def test_add_device_list_and_revoke(store):
    out = io.StringIO()
    run(commands.add_device(store, "alice", _pem(), None, out))
    device_id = out.getvalue().split()[1]
    assert device_id.startswith("dev_")
    run(commands.add_client(store, "shop", True, None, io.StringIO()))
    listing = io.StringIO()
    assert run(commands.list_credentials(store, listing)) == 0
    assert f"alice/{device_id}" in listing.getvalue() and "shop" in listing.getvalue()
    assert run(commands.revoke(store, "device", f"alice/{device_id}", io.StringIO())) == 0
    with pytest.raises(CredentialError, match="already revoked"):
        run(commands.revoke(store, "device", f"alice/{device_id}", io.StringIO()))


@pytest.mark.parametrize("text, seconds", [("90d", 90 * 86400), ("12h", 43200), ("30m", 1800),
                                           ("45s", 45)])
def test_expiry_durations(text, seconds):
    assert commands.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0d", "90", "d", "1.5d", "-3d", "90 days", "9999999d"])
def test_bad_expiry_durations_are_one_clear_error(text):
    with pytest.raises(CredentialError, match="expected a number and a unit"):
        commands.parse_duration(text)


def test_add_key_prints_the_keyid_and_the_secret_alone_on_the_last_line(store):
    run(commands.add_client(store, "shop", True, None, io.StringIO()))
    out = io.StringIO()
    assert run(commands.add_key(store, "shop", True, None, "shop-2026", "90d", out)) == 0
    first, secret = out.getvalue().rstrip("\n").splitlines()
    remember(secret)
    assert 'keyid "shop-2026"' in first and secret not in first
    assert run(store.client_key("shop-2026"))._key == secret.encode()
    out = io.StringIO()
    run(commands.add_key(store, "shop", False, _pem(), None, None, out))
    assert out.getvalue().count("\n") == 1 and 'keyid "shop/' in out.getvalue()
