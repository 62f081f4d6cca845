"""Test keys made with openssl, as a client or device owner would make them."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization

from tests.auth.conftest import openssl


def openssl_key(tmp_path, kind: str):
    """(private key file, public PEM bytes) for kind "ed25519" or "p256", made by openssl."""
    private = tmp_path / f"{kind}.pem"
    if kind == "ed25519":
        openssl("genpkey", "-algorithm", "ed25519", "-out", str(private))
    else:
        openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-out", str(private))
    public = openssl("pkey", "-in", str(private), "-pubout")
    return private, public


def load_private(path):
    return serialization.load_pem_private_key(path.read_bytes(), password=None)
