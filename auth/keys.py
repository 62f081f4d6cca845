"""The master key and the AES-GCM sealing of stored secrets.

Every secret txgate keeps (HMAC client secrets, TOTP seeds) is sealed under one 32-byte master
key before it reaches the state backend, so a dump of Redis reveals no usable credential. The
record's identity (kind and id) is the AES-GCM associated data: a sealed blob copied onto
another record does not open. The key comes from ``TXGATE_MASTER_KEY`` (32 random bytes in
standard base64) or from a key file (the same base64 text, or the 32 raw bytes).

Rotation: ``TXGATE_MASTER_KEY_PREVIOUS`` (same form) names the key being retired. New seals
always use the current key; a value opens under either. Each key has a ``key_id`` derived from
it (an HMAC of a fixed label: it identifies the key without revealing it), which the store
writes next to every sealed record so that ``txgate auth rekey`` knows what is left to move.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from auth.errors import MasterKeyError

ENV_VAR = "TXGATE_MASTER_KEY"
PREVIOUS_ENV_VAR = "TXGATE_MASTER_KEY_PREVIOUS"
KEY_BYTES = 32
_NONCE_BYTES = 12
# A version byte in front of every sealed value leaves room for a later format or key rotation.
_VERSION = b"\x01"


class SealError(Exception):
    """A sealed value did not open: wrong master key, or the stored record was altered."""


class MasterKey:
    """A loaded master key, with the key being retired (``previous``) during a rotation.
    Its repr and str never show either key."""

    __slots__ = ("_aead", "source", "key_id", "previous")

    def __init__(self, key: bytes, source: str = "memory", previous: "MasterKey | None" = None):
        if len(key) != KEY_BYTES:
            raise MasterKeyError(f"master key from {source} must be {KEY_BYTES} bytes, "
                                 f"got {len(key)}")
        self._aead = AESGCM(key)
        self.source = source
        self.key_id = hmac.new(key, b"txgate master key id", hashlib.sha256).hexdigest()[:16]
        if previous is not None and previous.key_id == self.key_id:
            previous = None             # the same key twice: nothing is being retired
        self.previous = previous

    def __repr__(self) -> str:
        return f"MasterKey(source={self.source!r}, key_id={self.key_id!r})"

    __str__ = __repr__

    @classmethod
    def ephemeral(cls) -> "MasterKey":
        """A random key that lives as long as the process (demo and tests only)."""
        return cls(secrets.token_bytes(KEY_BYTES), source="ephemeral")

    def seal(self, plaintext: bytes, associated: bytes) -> bytes:
        """Encrypt ``plaintext`` bound to ``associated`` (the record identity)."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext, associated)

    def open(self, sealed: bytes, associated: bytes, key_id: str | None = None) -> bytes:
        """Decrypt a value from ``seal`` under this key or the previous one (the one named by
        ``key_id`` first, when given); SealError if neither key or the record matches."""
        if len(sealed) < 1 + _NONCE_BYTES + 16 or sealed[:1] != _VERSION:
            raise SealError("sealed value is malformed")
        nonce, body = sealed[1:1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES:]
        keys = [self] if self.previous is None else [self, self.previous]
        if key_id is not None and key_id != self.key_id:
            keys.reverse()
        for key in keys:
            try:
                return key._aead.decrypt(nonce, body, associated)
            except InvalidTag:
                continue
        raise SealError("sealed value does not open under this master key")


def generate_master_key() -> str:
    """A new master key in the form ``TXGATE_MASTER_KEY`` expects."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def _decode(text: str, source: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        # The message names where the key came from, never any part of it.
        raise MasterKeyError(f"master key from {source} is not standard base64") from None
    if len(key) != KEY_BYTES:
        raise MasterKeyError(f"master key from {source} must decode to {KEY_BYTES} bytes, "
                             f"got {len(key)}")
    return key


def load_master_key(key_file: str | os.PathLike | None = None,
                    environ: Mapping[str, str] | None = None) -> MasterKey:
    """Load the key from ``TXGATE_MASTER_KEY`` (which wins) or ``key_file``, with
    ``TXGATE_MASTER_KEY_PREVIOUS`` as the key being retired when it is set.

    Raises MasterKeyError with a one-line message when neither is set or a key is malformed.
    """
    environ = os.environ if environ is None else environ
    key, source = _load_current(key_file, environ)
    previous = environ.get(PREVIOUS_ENV_VAR)
    if not previous:
        return MasterKey(key, source)
    return MasterKey(key, source,
                     previous=MasterKey(_decode(previous, PREVIOUS_ENV_VAR), PREVIOUS_ENV_VAR))


def _load_current(key_file, environ: Mapping[str, str]) -> tuple[bytes, str]:
    text = environ.get(ENV_VAR)
    if text:
        return _decode(text, ENV_VAR), ENV_VAR
    if key_file:
        path = Path(key_file)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise MasterKeyError(f"cannot read master key file {path}: {exc.strerror}") from None
        if len(raw) == KEY_BYTES:
            return raw, str(path)
        try:
            return _decode(raw.decode("ascii"), str(path)), str(path)
        except UnicodeDecodeError:
            raise MasterKeyError(f"master key file {path} is neither {KEY_BYTES} raw bytes "
                                 "nor base64 text") from None
    raise MasterKeyError(f"no master key: set {ENV_VAR} (32 random bytes, standard base64, "
                         "e.g. `openssl rand -base64 32`) or auth.master_key_file")
