"""The credential store: API clients, TOTP secrets and device keys on the state backend.

Records are JSON in three record collections (``hset``/``hget``), one per kind, so listing is
one ``hgetall`` and every lookup is one ``hget``. Secrets (HMAC keys, TOTP seeds) are sealed
with the master key, the record identity as associated data; public keys are stored as PEM.
Records are never deleted: revoking stamps ``revoked`` and the id stays taken (audit trail).

Client keys are looked up on every request, so parsed keys are cached in process for
``cache_ttl_s`` (default 5 s). Revoking through this store drops the entry at once; a revocation
made by another process (another worker, the CLI) takes effect here within ``cache_ttl_s``.
TOTP secrets and device keys are read fresh on every step-up, so their revocation is immediate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass

import pyotp
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256

from auth.errors import CredentialError, MasterKeyError
from auth.keys import MasterKey, SealError
from state.base import StateBackend, StateError

KINDS = ("client", "totp", "device")
_CLIENTS = "{txgate:cred}:clients"
_TOTP = "{txgate:cred}:totp"
_DEVICES = "{txgate:cred}:devices"
_META = "{txgate:cred}:meta"
_KEY_CHECK = b"txgate-master-key-check-v1"
_COLLECTIONS = {"client": _CLIENTS, "totp": _TOTP, "device": _DEVICES}

# Ids end up inside state keys and in the "user/device" form of device ids, so "/" and the
# hash-tag braces are excluded; everything else printable is allowed (user ids are often emails).
_ID = re.compile(r"[^\s/{}]{1,256}")
MIN_HMAC_SECRET_BYTES = 32
MIN_TOTP_SECRET_BITS = 128      # RFC 4226 §4 R6
_SHA256 = SHA256()


def _user_devices_key(user: str) -> str:
    return f"{{u:{user}}}:cred:devices"


def _check_id(what: str, value: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise CredentialError(f"{what} must be 1-256 printable characters without spaces, "
                              "'/', '{' or '}'")
    return value


def _associated(kind: str, record_id: str) -> bytes:
    return f"txgate:{kind}:{record_id}".encode()


@dataclass(frozen=True, slots=True)
class Credential:
    """One stored credential as listed: never a secret."""

    kind: str            # client | totp | device
    id: str              # client id | user | "user/device"
    type: str            # hmac | ed25519 | ecdsa-p256 | totp
    created: float
    revoked: float | None
    user: str | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None


class ClientKey:
    """A client's verification key, parsed once. ``verify`` is constant-time for HMAC."""

    __slots__ = ("client_id", "type", "_key")

    def __init__(self, client_id: str, key_type: str, key):
        self.client_id = client_id
        self.type = key_type           # "hmac" | "ed25519"
        self._key = key                # bytes for hmac, Ed25519PublicKey otherwise

    def __repr__(self) -> str:
        return f"ClientKey(client_id={self.client_id!r}, type={self.type!r})"

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


def _check_totp_secret(secret: str) -> str:
    secret = secret.strip().replace(" ", "").upper()
    try:
        raw = base64.b32decode(secret + "=" * (-len(secret) % 8))
    except (binascii.Error, ValueError):
        raise CredentialError("TOTP secret is not base32") from None
    if len(raw) * 8 < MIN_TOTP_SECRET_BITS:
        raise CredentialError(f"TOTP secret must carry at least {MIN_TOTP_SECRET_BITS} bits "
                              f"({-(-MIN_TOTP_SECRET_BITS // 5)} base32 characters)")
    return secret


class CredentialStore:
    """Credentials on a StateBackend, secrets sealed with ``master_key``."""

    def __init__(self, state: StateBackend, master_key: MasterKey, cache_ttl_s: float = 5.0,
                 clock=time.time):
        self._state = state
        self._key = master_key
        self._cache_ttl_s = cache_ttl_s
        self._clock = clock
        self._client_cache: dict[str, tuple[float, ClientKey | None]] = {}

    def __repr__(self) -> str:
        return f"CredentialStore(state={self._state.name!r})"

    # -- start-up ---------------------------------------------------------------------------

    async def check_master_key(self) -> None:
        """Fail at start-up, not at the first request, if the stored secrets were sealed under
        another key: a known value sealed on first use must open. Raises MasterKeyError."""
        sealed = await self._state.hget(_META, "key_check")
        if sealed is None:
            await self._state.hset(_META, "key_check",
                                   self._key.seal(_KEY_CHECK, b"txgate:meta:key_check"))
            return
        try:
            ok = self._key.open(sealed, b"txgate:meta:key_check") == _KEY_CHECK
        except SealError:
            ok = False
        if not ok:
            raise MasterKeyError(f"the master key from {self._key.source} is not the key the "
                                 "stored credentials were sealed with")

    # -- records ----------------------------------------------------------------------------

    async def _load(self, kind: str, record_id: str) -> dict | None:
        raw = await self._state.hget(_COLLECTIONS[kind], record_id)
        return json.loads(raw) if raw is not None else None

    async def _create(self, kind: str, record_id: str, record: dict) -> None:
        if await self._state.hget(_COLLECTIONS[kind], record_id) is not None:
            raise CredentialError(f"{kind} {record_id!r} already exists", 409, "already_exists")
        await self._save(kind, record_id, record)

    async def _save(self, kind: str, record_id: str, record: dict) -> None:
        await self._state.hset(_COLLECTIONS[kind], record_id,
                               json.dumps(record, separators=(",", ":")).encode())

    def _seal(self, kind: str, record_id: str, secret: bytes) -> str:
        return base64.b64encode(self._key.seal(secret, _associated(kind, record_id))).decode()

    def _open(self, kind: str, record_id: str, record: dict) -> bytes:
        try:
            return self._key.open(base64.b64decode(record["secret"]),
                                  _associated(kind, record_id))
        except (SealError, binascii.Error, KeyError):
            raise MasterKeyError(f"cannot decrypt the stored secret of {kind} {record_id!r}: "
                                 "wrong master key or altered record") from None

    # -- API clients --------------------------------------------------------------------------

    async def add_hmac_client(self, client_id: str, secret: str | None = None) -> str:
        """Register an HMAC client; returns the secret (generated when None). The HMAC key is
        the secret string's UTF-8 bytes."""
        _check_id("client id", client_id)
        if secret is None:
            secret = secrets.token_urlsafe(32)
        elif len(secret.encode()) < MIN_HMAC_SECRET_BYTES:
            raise CredentialError(f"HMAC secret must be at least {MIN_HMAC_SECRET_BYTES} bytes")
        await self._create("client", client_id, {
            "type": "hmac", "created": self._clock(), "revoked": None,
            "secret": self._seal("client", client_id, secret.encode()),
        })
        self._client_cache.pop(client_id, None)
        return secret

    async def add_public_key_client(self, client_id: str, public_key_pem: bytes | str) -> None:
        """Register a client that signs with Ed25519."""
        _check_id("client id", client_id)
        key_type, _, pem = parse_public_key(public_key_pem, ("ed25519",))
        await self._create("client", client_id, {
            "type": key_type, "created": self._clock(), "revoked": None, "public_key": pem,
        })
        self._client_cache.pop(client_id, None)

    async def client_key(self, client_id: str) -> ClientKey | None:
        """The active key of ``client_id``, or None when unknown or revoked (cached briefly)."""
        now = self._clock()
        hit = self._client_cache.get(client_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        key = None
        try:
            record = await self._load("client", client_id) if _ID.fullmatch(client_id) else None
        except StateError:
            # Stale-if-error: while the store is down, a key this process already knew keeps
            # working (the gateway decides whether to serve at all: on_state_error).
            if hit is not None:
                return hit[1]
            raise
        if record is not None and record["revoked"] is None:
            if record["type"] == "hmac":
                key = ClientKey(client_id, "hmac", self._open("client", client_id, record))
            else:
                key = ClientKey(client_id, record["type"], serialization.load_pem_public_key(
                    record["public_key"].encode()))
        # Unknown ids are cached too, so a flood of bogus keyids costs no store round trips;
        # the cache is bounded by dropping everything when it grows past a sane size.
        if len(self._client_cache) > 10_000:
            self._client_cache.clear()
        self._client_cache[client_id] = (now + self._cache_ttl_s, key)
        return key

    # -- TOTP -------------------------------------------------------------------------------

    async def enroll_totp(self, user: str, secret: str | None = None,
                          replace: bool = False) -> str:
        """Create the user's TOTP secret; returns it in base32. An active secret is replaced
        only with ``replace`` (CredentialError 409 otherwise): a second enrolment by mistake
        would silently lock the user's authenticator out."""
        _check_id("user id", user)
        secret = _check_totp_secret(secret) if secret is not None else pyotp.random_base32(32)
        if not replace and await self.has_totp(user):
            raise CredentialError(f"totp {user!r} is already enrolled; replacing it invalidates "
                                  "the user's authenticator (use --force, or replace: true in "
                                  "the admin API)", 409, "already_exists")
        await self._save("totp", user, {
            "type": "totp", "created": self._clock(), "revoked": None,
            "secret": self._seal("totp", user, secret.encode()),
        })
        return secret

    async def totp_secret(self, user: str) -> str | None:
        """The user's active TOTP secret (base32), or None."""
        if not _ID.fullmatch(user):
            return None
        record = await self._load("totp", user)
        if record is None or record["revoked"] is not None:
            return None
        return self._open("totp", user, record).decode()

    async def has_totp(self, user: str) -> bool:
        if not _ID.fullmatch(user):
            return False
        record = await self._load("totp", user)
        return record is not None and record["revoked"] is None

    # -- devices ------------------------------------------------------------------------------

    async def add_device(self, user: str, public_key_pem: bytes | str,
                         name: str | None = None) -> str:
        """Register a device key for ``user``; returns the device id (``name`` or generated)."""
        _check_id("user id", user)
        device_id = _check_id("device name", name) if name else "dev_" + secrets.token_hex(6)
        key_type, _, pem = parse_public_key(public_key_pem, ("ed25519", "ecdsa-p256"))
        await self._create("device", f"{user}/{device_id}", {
            "type": key_type, "created": self._clock(), "revoked": None,
            "user": user, "device": device_id, "public_key": pem,
        })
        await self._state.hset(_user_devices_key(user), device_id, b"1")
        return device_id

    async def device_key(self, user: str, device_id: str) -> DeviceKey | None:
        """The user's active device key ``device_id``, or None."""
        if not (_ID.fullmatch(user) and _ID.fullmatch(device_id)):
            return None
        record = await self._load("device", f"{user}/{device_id}")
        if record is None or record["revoked"] is not None:
            return None
        key = serialization.load_pem_public_key(record["public_key"].encode())
        return DeviceKey(user, device_id, record["type"], key)

    async def has_device(self, user: str) -> bool:
        if not _ID.fullmatch(user):
            return False
        for device_id in await self._state.hgetall(_user_devices_key(user)):
            if await self.device_key(user, device_id) is not None:
                return True
        return False

    # -- listing and revocation -------------------------------------------------------------

    async def list(self) -> list[Credential]:
        """Every credential, active and revoked, sorted by kind and id. Never a secret."""
        out = []
        for kind in KINDS:
            for record_id, raw in (await self._state.hgetall(_COLLECTIONS[kind])).items():
                record = json.loads(raw)
                user = record.get("user") or (record_id if kind == "totp" else None)
                out.append(Credential(kind, record_id, record["type"], record["created"],
                                      record["revoked"], user))
        return sorted(out, key=lambda c: (KINDS.index(c.kind), c.id))

    async def revoke(self, kind: str, record_id: str) -> None:
        """Revoke one credential. Devices are named ``user/device``. CredentialError when the
        kind or id is unknown or already revoked."""
        kind = {"clients": "client", "devices": "device"}.get(kind, kind)
        if kind not in KINDS:
            raise CredentialError(f"unknown credential kind {kind!r}; "
                                  f"expected {', '.join(KINDS)}", 400, "invalid_kind")
        record = await self._load(kind, record_id)
        if record is None:
            raise CredentialError(f"no {kind} {record_id!r}", 404, "not_found")
        if record["revoked"] is not None:
            raise CredentialError(f"{kind} {record_id!r} is already revoked", 409,
                                  "already_revoked")
        record["revoked"] = self._clock()
        await self._save(kind, record_id, record)
        if kind == "client":
            self._client_cache.pop(record_id, None)
