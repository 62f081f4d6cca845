"""The credential store: API clients, TOTP secrets and device keys on the state backend.

Records are JSON in three record collections (``hset``/``hget``), one per kind, so listing is
one ``hgetall`` and every lookup is one ``hget``. Secrets (HMAC keys, TOTP seeds) are sealed
with the master key, the record identity as associated data; public keys are stored as PEM.
Records are never deleted: revoking stamps ``revoked`` and the id stays taken (audit trail).
Each sealed record names the master key that sealed it (``key_id``, derived from the key), so
``rekey`` moves exactly what the retired key still seals.

A client signs with any of its active keys; the RFC 9421 ``keyid`` names the key. The key given
at registration has the client id as its keyid (stored in the client's own record); keys added
later (``add_key``) have their own records, may expire, and are retired one by one. Revoking
the client retires them all.

Client keys are looked up on every request, so parsed keys are cached in process for
``cache_ttl_s`` (default 5 s). Revoking through this store drops the entry at once; a revocation
made by another process (another worker, the CLI) takes effect here within ``cache_ttl_s``.
TOTP secrets and device keys are read fresh on every step-up, so their revocation is immediate.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import time
from dataclasses import dataclass

import pyotp
from cryptography.hazmat.primitives import serialization

from auth.errors import CredentialError, MasterKeyError
from auth.keys import MasterKey, SealError
from auth.signing_keys import ClientKey, DeviceKey, parse_public_key
from state.base import StateBackend, StateError

KINDS = ("client", "key", "totp", "device")
_CLIENTS = "{txgate:cred}:clients"
_KEYS = "{txgate:cred}:keys"
_TOTP = "{txgate:cred}:totp"
_DEVICES = "{txgate:cred}:devices"
_META = "{txgate:cred}:meta"
_KEY_CHECK = b"txgate-master-key-check-v1"
_COLLECTIONS = {"client": _CLIENTS, "key": _KEYS, "totp": _TOTP, "device": _DEVICES}

# Ids end up inside state keys and in the "user/device" form of device ids, so "/" and the
# hash-tag braces are excluded; everything else printable is allowed (user ids are often emails).
_ID = re.compile(r"[^\s/{}]{1,256}")
# A keyid only lives in state keys inside a hash tag, so it may hold "/" ("client/k1").
_KEY_ID = re.compile(r"[^\s{}]{1,256}")
MIN_HMAC_SECRET_BYTES = 32
MIN_TOTP_SECRET_BITS = 128      # RFC 4226 §4 R6


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

    kind: str            # client | key | totp | device
    id: str              # client id | keyid | user | "user/device"
    type: str            # hmac | ed25519 | ecdsa-p256 | totp
    created: float
    revoked: float | None
    user: str | None = None
    client: str | None = None      # a key's client
    expires: float | None = None   # a key's expiry
    pending: bool = False          # a TOTP re-enrolment awaits its confirming code

    @property
    def active(self) -> bool:
        return self.revoked is None


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


def _no_audit(action: str, kind: str, record_id: str) -> None:
    """The default audit sink: a store used only for reading changes nothing."""


class CredentialStore:
    """Credentials on a StateBackend, secrets sealed with ``master_key``.

    ``audit(action, kind, id)`` is called once per change (add, revoke, enroll, stage,
    confirm, rekey) after it is stored; it never receives a secret.
    """

    def __init__(self, state: StateBackend, master_key: MasterKey, cache_ttl_s: float = 5.0,
                 clock=time.time, audit=_no_audit):
        self._state = state
        self._key = master_key
        self._cache_ttl_s = cache_ttl_s
        self._clock = clock
        self._audit = audit
        # keyid -> (valid until, key); ("client", id) -> (valid until, active?) for TLS
        self._client_cache: dict = {}

    def __repr__(self) -> str:
        return f"CredentialStore(state={self._state.name!r})"

    @property
    def master_key_id(self) -> str:
        """The id (not the key) of the master key new secrets are sealed with."""
        return self._key.key_id

    # -- start-up ---------------------------------------------------------------------------

    async def check_master_key(self) -> None:
        """Fail at start-up, not at the first request, if the stored secrets were sealed under
        another key: a known value sealed on first use must open (under the current or the
        previous key). Raises MasterKeyError."""
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
        if raw is None:
            return None
        record = _Record(json.loads(raw))
        record.raw = raw
        return record

    async def _create(self, kind: str, record_id: str, record: dict) -> None:
        if await self._state.hget(_COLLECTIONS[kind], record_id) is not None:
            raise CredentialError(f"{kind} {record_id!r} already exists", 409, "already_exists")
        await self._save(kind, record_id, record)

    async def _save(self, kind: str, record_id: str, record: dict) -> None:
        """Store ``record``; a record read with ``_load`` is replaced only if nobody changed it
        since (two operators at once: the second is told to retry, nothing is undone)."""
        if not isinstance(record, _Record):
            await self._state.hset(_COLLECTIONS[kind], record_id, _dump(record))
        elif not await self._state.hreplace(_COLLECTIONS[kind], record_id, record.raw,
                                            _dump(record)):
            raise CredentialError(f"{kind} {record_id!r} changed while this change was made; "
                                  "run it again", 409, "conflict")

    def _sealed(self, kind: str, record_id: str, secret: bytes) -> dict:
        """The record fields of a sealed secret: the blob and the id of the key that sealed it."""
        blob = self._key.seal(secret, _associated(kind, record_id))
        return {"secret": base64.b64encode(blob).decode(), "key_id": self._key.key_id}

    def _open(self, kind: str, record_id: str, record: dict) -> bytes:
        try:
            return self._key.open(base64.b64decode(record["secret"]),
                                  _associated(kind, record_id), record.get("key_id"))
        except (SealError, binascii.Error, KeyError):
            raise MasterKeyError(f"cannot decrypt the stored secret of {kind} {record_id!r}: "
                                 "wrong master key or altered record") from None

    # -- API clients --------------------------------------------------------------------------

    async def add_hmac_client(self, client_id: str, secret: str | None = None) -> str:
        """Register an HMAC client; returns the secret (generated when None). The HMAC key is
        the secret string's UTF-8 bytes."""
        _check_id("client id", client_id)
        secret = _hmac_secret(secret)
        await self._check_free_key_id(client_id)
        await self._create("client", client_id, {
            "type": "hmac", "created": self._clock(), "revoked": None,
            **self._sealed("client", client_id, secret.encode()),
        })
        self._forget(client_id)
        self._audit("add", "client", client_id)
        return secret

    async def add_public_key_client(self, client_id: str, public_key_pem: bytes | str) -> None:
        """Register a client that signs with Ed25519."""
        _check_id("client id", client_id)
        key_type, _, pem = parse_public_key(public_key_pem, ("ed25519",))
        await self._check_free_key_id(client_id)
        await self._create("client", client_id, {
            "type": key_type, "created": self._clock(), "revoked": None, "public_key": pem,
        })
        self._forget(client_id)
        self._audit("add", "client", client_id)

    async def add_key(self, client_id: str, *, hmac_secret: bool = False,
                      public_key_pem: bytes | str | None = None, key_id: str | None = None,
                      expires_in_s: float | None = None) -> tuple[str, str | None]:
        """Give an active client one more key (HMAC, generated, or an Ed25519 public key);
        returns (keyid, HMAC secret or None). The keyid defaults to ``CLIENT/<short id>``."""
        if hmac_secret == (public_key_pem is not None):
            raise CredentialError("give exactly one of an HMAC secret or a public key")
        if expires_in_s is not None and not expires_in_s > 0:
            raise CredentialError("expiry must be a positive duration")
        client = await self._load("client", _check_id("client id", client_id))
        if client is None:
            raise CredentialError(f"no client {client_id!r}", 404, "not_found")
        if client["revoked"] is not None:
            raise CredentialError(f"client {client_id!r} is revoked", 409, "already_revoked")
        if key_id is None:
            key_id = f"{client_id}/{secrets.token_hex(4)}"
        elif not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
            raise CredentialError("key id must be 1-256 printable characters without spaces, "
                                  "'{' or '}'")
        await self._check_free_key_id(key_id)
        now = self._clock()
        record = {"client": client_id, "created": now, "revoked": None,
                  "expires": now + expires_in_s if expires_in_s is not None else None}
        secret = None
        if hmac_secret:
            secret = _hmac_secret(None)
            record.update(type="hmac", **self._sealed("key", key_id, secret.encode()))
        else:
            key_type, _, pem = parse_public_key(public_key_pem, ("ed25519",))
            record.update(type=key_type, public_key=pem)
        await self._create("key", key_id, record)
        self._forget(key_id)
        self._audit("add", "key", key_id)
        return key_id, secret

    async def _check_free_key_id(self, key_id: str) -> None:
        # One keyid space: a client's own id is its first key's keyid.
        for kind in ("client", "key"):
            if await self._state.hget(_COLLECTIONS[kind], key_id) is not None:
                raise CredentialError(f"key id {key_id!r} is taken (by a {kind})", 409,
                                      "already_exists")

    def _forget(self, *names) -> None:
        for name in names:
            self._client_cache.pop(name, None)
            self._client_cache.pop(("client", name), None)

    async def _cached(self, name, load):
        """``load()`` through the client cache, stale-if-error: while the store is down, what
        this process already knew keeps answering (the gateway decides whether to serve at
        all: on_state_error)."""
        now = self._clock()
        hit = self._client_cache.get(name)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            value = await load()
        except StateError:
            if hit is not None:
                return hit[1]
            raise
        # Unknown ids are cached too, so a flood of bogus keyids costs no store round trips;
        # the cache is bounded by dropping everything when it grows past a sane size.
        if len(self._client_cache) > 10_000:
            self._client_cache.clear()
        self._client_cache[name] = (now + self._cache_ttl_s, value)
        return value

    async def client_key(self, key_id: str) -> ClientKey | None:
        """The key named ``key_id`` when it and its client are active (an expired key is
        returned: the verifier refuses it by name), else None. Cached briefly."""
        return await self._cached(key_id, lambda: self._read_client_key(key_id))

    async def _read_client_key(self, key_id: str) -> ClientKey | None:
        if not _KEY_ID.fullmatch(key_id):
            return None
        # Keyids are unique across both collections; a client's first key is the common case,
        # so it costs one round trip as before keys were added.
        record = await self._load("client", key_id) if _ID.fullmatch(key_id) else None
        kind, client_id = "client", key_id
        if record is not None and record.get("key_revoked") is not None:
            return None
        if record is None:
            record = await self._load("key", key_id)
            kind, client_id = "key", record and record["client"]
        if record is None or record["revoked"] is not None:
            return None
        if record["type"] == "hmac":
            key = self._open(kind, key_id, record)
        else:
            key = serialization.load_pem_public_key(record["public_key"].encode())
        return ClientKey(client_id, record["type"], key, key_id, record.get("expires"))

    async def client_active(self, client_id: str) -> bool:
        """Whether ``client_id`` is registered and not revoked (cached like keys)."""
        async def load() -> bool:
            record = await self._load("client", client_id) if _ID.fullmatch(client_id) else None
            return record is not None and record["revoked"] is None
        return await self._cached(("client", client_id), load)

    async def expiring_keys(self, within_s: float) -> dict[str, int]:
        """Per active client, how many of its active keys expire within ``within_s`` (already
        expired ones included: they still await revocation)."""
        # Only the two client collections: this runs on every metrics scrape.
        counts = {client_id: 0 for client_id, raw in (await self._state.hgetall(_CLIENTS)).items()
                  if json.loads(raw)["revoked"] is None}
        horizon = self._clock() + within_s
        for raw in (await self._state.hgetall(_KEYS)).values():
            key = json.loads(raw)
            if key["revoked"] is None and key["client"] in counts and \
                    key["expires"] is not None and key["expires"] <= horizon:
                counts[key["client"]] += 1
        return counts

    # -- TOTP -------------------------------------------------------------------------------

    async def enroll_totp(self, user: str, secret: str | None = None,
                          replace: bool = False) -> str:
        """Create the user's TOTP secret; returns it in base32.

        With an active secret, ``replace`` stages the new one (``pending``) and the old one
        keeps working until ``confirm_totp`` sees a valid code from the new one: a user who
        never finishes re-enrolling is not locked out. Without ``replace``, CredentialError 409.
        """
        _check_id("user id", user)
        secret = _check_totp_secret(secret) if secret is not None else pyotp.random_base32(32)
        record = await self._load("totp", user)
        if record is not None and record["revoked"] is None:
            if not replace:
                raise CredentialError(f"totp {user!r} is already enrolled; replacing it "
                                      "invalidates the user's authenticator (use --force, or "
                                      "replace: true in the admin API, to stage a new secret)",
                                      409, "already_exists")
            record["pending"] = {"created": self._clock(),
                                 **self._sealed("totp-pending", user, secret.encode())}
            await self._save("totp", user, record)
            self._audit("stage", "totp", user)
            return secret
        await self._save("totp", user, {
            "type": "totp", "created": self._clock(), "revoked": None,
            **self._sealed("totp", user, secret.encode()),
        })
        self._audit("enroll", "totp", user)
        return secret

    async def confirm_totp(self, user: str, code: str, totp) -> None:
        """Make the user's staged TOTP secret the active one, given a valid code from it
        (``totp``: the deployment's auth.totp.Totp). CredentialError otherwise."""
        record = await self._load("totp", user) if _ID.fullmatch(user) else None
        if record is None or record["revoked"] is not None or "pending" not in record:
            raise CredentialError(f"no staged TOTP secret for {user!r}", 404, "not_found")
        pending = record["pending"]
        secret = self._open("totp-pending", user, pending).decode()
        if not isinstance(code, str) or totp.matching_step(secret, code, self._clock()) is None:
            raise CredentialError("the code does not match the staged secret", 400,
                                  "invalid_code")
        del record["pending"]
        record.update(created=self._clock(), **self._sealed("totp", user, secret.encode()))
        await self._save("totp", user, record)
        self._audit("confirm", "totp", user)

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
        self._audit("add", "device", f"{user}/{device_id}")
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
        """Every credential, active and revoked, sorted by kind and id. Never a secret.

        A client is listed as a client and, as a key, its first key (keyid: the client id)."""
        out = []
        for kind in KINDS:
            for record_id, raw in (await self._state.hgetall(_COLLECTIONS[kind])).items():
                record = json.loads(raw)
                user = record.get("user") or (record_id if kind == "totp" else None)
                out.append(Credential(kind, record_id, record["type"], record["created"],
                                      record["revoked"], user, record.get("client"),
                                      record.get("expires"), "pending" in record))
                if kind == "client":
                    out.append(Credential("key", record_id, record["type"], record["created"],
                                          record["revoked"] or record.get("key_revoked"),
                                          client=record_id))
        return sorted(out, key=lambda c: (KINDS.index(c.kind), c.id))

    async def revoke(self, kind: str, record_id: str) -> None:
        """Revoke one credential. Devices are named ``user/device``; a key by its keyid;
        revoking a client revokes its keys. CredentialError when the kind or id is unknown
        or already revoked."""
        kind = {"clients": "client", "keys": "key", "devices": "device"}.get(kind, kind)
        if kind not in KINDS:
            raise CredentialError(f"unknown credential kind {kind!r}; "
                                  f"expected {', '.join(KINDS)}", 400, "invalid_kind")
        if kind == "key":
            await self._revoke_key(record_id)
            return
        record = await self._load(kind, record_id)
        if record is None:
            raise CredentialError(f"no {kind} {record_id!r}", 404, "not_found")
        if record["revoked"] is not None:
            raise CredentialError(f"{kind} {record_id!r} is already revoked", 409,
                                  "already_revoked")
        record["revoked"] = self._clock()
        await self._save(kind, record_id, record)
        if kind == "client":
            self._forget(record_id)
            for key in await self.list():
                if key.kind == "key" and key.client == record_id and key.id != record_id \
                        and key.active:
                    await self._revoke_key(key.id)
        self._audit("revoke", kind, record_id)

    async def _revoke_key(self, key_id: str) -> None:
        record = await self._load("key", key_id)
        if record is not None:
            field = "revoked"
        else:
            record = await self._load("client", key_id) if _ID.fullmatch(key_id) else None
            field = "key_revoked"        # the client's first key; the client stays
        if record is None:
            raise CredentialError(f"no key {key_id!r}", 404, "not_found")
        if record["revoked"] is not None or record.get(field) is not None:
            raise CredentialError(f"key {key_id!r} is already revoked", 409, "already_revoked")
        record[field] = self._clock()
        await self._save("key" if field == "revoked" else "client", key_id, record)
        self._forget(key_id)
        self._audit("revoke", "key", key_id)

    # -- master key rotation ------------------------------------------------------------------

    async def rekey(self, progress=None) -> int:
        """Re-seal every stored secret still sealed under another key with the current master
        key; returns how many records moved. Idempotent: records already under the current
        key are skipped, so a run interrupted at any point is finished by running it again.
        Each record is replaced only if it did not change since it was read (a concurrent
        revocation is never undone); ``progress(kind, id)`` is called per record moved."""
        await self.check_master_key()       # neither key opens the store: nothing is touched
        moved = 0
        for kind in ("client", "key", "totp"):
            collection = _COLLECTIONS[kind]
            for record_id, raw in (await self._state.hgetall(collection)).items():
                while raw is not None:
                    record = json.loads(raw)
                    if not self._needs_rekey(record):
                        break
                    if "secret" in record:
                        record.update(self._sealed(kind, record_id,
                                                   self._open(kind, record_id, record)))
                    pending = record.get("pending")
                    if pending is not None and pending.get("key_id") != self._key.key_id:
                        pending.update(self._sealed("totp-pending", record_id, self._open(
                            "totp-pending", record_id, pending)))
                    if await self._state.hreplace(collection, record_id, raw, _dump(record)):
                        moved += 1
                        if progress is not None:
                            progress(kind, record_id)
                        break
                    raw = await self._state.hget(collection, record_id)   # changed: again
        # Last, so that a gateway given only the new key starts only once nothing needs the
        # old one (check_master_key opens this value).
        sealed = await self._state.hget(_META, "key_check")
        if sealed is not None:
            await self._state.hreplace(_META, "key_check", sealed, self._key.seal(
                _KEY_CHECK, b"txgate:meta:key_check"))
        self._client_cache.clear()
        self._audit("rekey", "master_key", self._key.key_id)
        return moved

    def _needs_rekey(self, record: dict) -> bool:
        current = self._key.key_id
        return ("secret" in record and record.get("key_id") != current) or \
            ("pending" in record and record["pending"].get("key_id") != current)


class _Record(dict):
    """A stored record as read, with its stored bytes (``raw``) for a compare-and-set write."""

    __slots__ = ("raw",)


def _dump(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def _hmac_secret(secret: str | None) -> str:
    if secret is None:
        return secrets.token_urlsafe(32)
    if len(secret.encode()) < MIN_HMAC_SECRET_BYTES:
        raise CredentialError(f"HMAC secret must be at least {MIN_HMAC_SECRET_BYTES} bytes")
    return secret
