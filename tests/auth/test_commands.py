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
