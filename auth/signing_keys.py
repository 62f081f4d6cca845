"""The keys that check signatures: a client's HMAC secret or public key, a user's device key,
each parsed once; and the parsing of the PEM public keys operators register."""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256

from auth.errors import CredentialError

_SHA256 = SHA256()


class ClientKey:
    """A client's verification key, parsed once. ``verify`` is constant-time for HMAC."""

    __slots__ = ("client_id", "key_id", "type", "expires", "_key")

    def __init__(self, client_id: str, key_type: str, key, key_id: str | None = None,
                 expires: float | None = None):
        self.client_id = client_id
        self.key_id = key_id or client_id
        self.type = key_type           # "hmac" | "ed25519"
        self.expires = expires         # epoch seconds, or None
        self._key = key                # bytes for hmac, Ed25519PublicKey otherwise

    def __repr__(self) -> str:
        return (f"ClientKey(client_id={self.client_id!r}, key_id={self.key_id!r}, "
                f"type={self.type!r})")

    def verify(self, message: bytes, signature: bytes) -> bool:
        if self.type == "hmac":
            expected = hmac.new(self._key, message, hashlib.sha256).digest()
            return hmac.compare_digest(expected, signature)
        try:
            self._key.verify(signature, message)
            return True
        except InvalidSignature:
            return False


class DeviceKey:
    """A user's registered device key (Ed25519 or ECDSA P-256)."""

    __slots__ = ("user", "device_id", "type", "_key")

    def __init__(self, user: str, device_id: str, key_type: str, key):
        self.user, self.device_id, self.type, self._key = user, device_id, key_type, key

    def __repr__(self) -> str:
        return f"DeviceKey(user={self.user!r}, device_id={self.device_id!r}, type={self.type!r})"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Ed25519: raw 64 bytes. ECDSA P-256 over SHA-256: DER (what openssl writes) or r||s."""
        if self.type == "ed25519":
            try:
                self._key.verify(signature, message)
                return True
            except InvalidSignature:
                return False
        # A DER signature starts with 0x30; 64 bytes may also be raw r||s (WebCrypto, JOSE),
        # so a 64-byte value that does not verify as DER is tried as raw.
        candidates = [signature]
        if len(signature) == 64:
            candidates.append(_raw_to_der(signature))
        for candidate in candidates:
            try:
                self._key.verify(candidate, message, ec.ECDSA(_SHA256))
                return True
            except (InvalidSignature, ValueError):
                continue
        return False


def _raw_to_der(signature: bytes) -> bytes:
    return encode_dss_signature(int.from_bytes(signature[:32], "big"),
                                int.from_bytes(signature[32:], "big"))


def parse_public_key(pem: bytes | str, allowed: tuple[str, ...]) -> tuple[str, object, str]:
    """Parse a PEM public key; returns (type, key object, normalised PEM). Raises CredentialError."""
    data = pem.encode() if isinstance(pem, str) else bytes(pem)
    if b"PRIVATE KEY" in data:
        # Never echo the input: it is someone's private key.
        raise CredentialError("a private key was given; register the public key "
                              "(openssl pkey -in key.pem -pubout)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise CredentialError("public key is not a PEM SubjectPublicKeyInfo "
                              "(-----BEGIN PUBLIC KEY-----)") from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        key_type = "ed25519"
    elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        key_type = "ecdsa-p256"
    else:
        key_type = "other"
    if key_type not in allowed:
        raise CredentialError(f"unsupported key type; expected {' or '.join(allowed)}")
    normalised = key.public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return key_type, key, normalised.decode("ascii")
