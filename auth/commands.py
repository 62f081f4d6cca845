"""`txgate auth ...` as library functions; the CLI parses arguments and calls these.

Each is a coroutine (the store is async) returning the exit code 0; an operator mistake raises
``CredentialError`` (or ``MasterKeyError``) whose message the CLI prints as its one error line.
Output goes to ``out``. ``add_client --hmac`` prints the generated secret alone on the last
line, so scripts can take it with ``tail -n1``; so does ``add_key --hmac``.
"""

from __future__ import annotations

import datetime
import re
import sys
from typing import TextIO

import segno
from rich.console import Console
from rich.table import Table

from auth.credentials import CredentialStore
from auth.errors import CredentialError
from auth.totp import Totp


async def add_client(store: CredentialStore, client_id: str, hmac: bool,
                     public_key_pem: bytes | None, out: TextIO) -> int:
    """Register an API client with a generated HMAC secret or an Ed25519 public key."""
    if hmac == (public_key_pem is not None):
        raise CredentialError("give exactly one of --hmac or --public-key")
    if hmac:
        secret = await store.add_hmac_client(client_id)
        out.write(f"client {client_id} registered (hmac-sha256); its secret is shown once, "
                  "on the next line; the HMAC key is its UTF-8 bytes\n")
        out.write(secret + "\n")
        return 0
    await store.add_public_key_client(client_id, public_key_pem)
    out.write(f"client {client_id} registered (ed25519)\n")
    return 0


_DURATION = re.compile(r"([1-9][0-9]{0,5})([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """``90d``, ``12h``, ``30m`` or ``45s`` in seconds; CredentialError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise CredentialError(f"--expires {text!r}: expected a number and a unit (s, m, h, d), "
                              "e.g. 90d")
    return int(match[1]) * _UNIT_S[match[2]]


async def add_key(store: CredentialStore, client_id: str, hmac: bool,
                  public_key_pem: bytes | None, key_id: str | None, expires: str | None,
                  out: TextIO) -> int:
    """Give a client one more key (for a roll: add, switch the client over, revoke the old)."""
    expires_in_s = parse_duration(expires) if expires is not None else None
    key_id, secret = await store.add_key(client_id, hmac_secret=hmac,
                                         public_key_pem=public_key_pem, key_id=key_id,
                                         expires_in_s=expires_in_s)
    kind = "hmac-sha256" if hmac else "ed25519"
    if secret is None:
        out.write(f"key {key_id} added to client {client_id} ({kind}); sign with keyid "
                  f"\"{key_id}\"\n")
        return 0
    out.write(f"key {key_id} added to client {client_id} ({kind}); sign with keyid "
              f"\"{key_id}\"; its secret is shown once, on the next line\n")
    out.write(secret + "\n")
    return 0


async def enroll_totp(store: CredentialStore, user: str, issuer: str = "txgate",
                      out: TextIO | None = None, totp: Totp | None = None,
                      secret: str | None = None, replace: bool = False) -> int:
    """Create the user's TOTP secret (with ``replace``, stage a new one over the enrolled one);
    print the otpauth:// URI and a terminal QR code."""
    totp, out = totp or Totp(), out or sys.stdout
    staged = replace and await store.has_totp(user)
    secret = await store.enroll_totp(user, secret, replace=replace)
    uri = totp.provisioning_uri(secret, user, issuer)
    if staged:
        out.write(f"TOTP secret staged for {user}; the current one keeps working until "
                  f"`txgate auth confirm-totp {user} CODE` with a code from this one\n")
    else:
        out.write(f"TOTP enrolled for {user}; scan the code or enter the URI in an "
                  "authenticator\n")
    out.write(uri + "\n")
    segno.make(uri, error="m").terminal(out=out, compact=True)
    return 0


async def confirm_totp(store: CredentialStore, user: str, code: str, out: TextIO,
                       totp: Totp | None = None) -> int:
    """Replace the user's TOTP secret by the staged one, given a code from the staged one."""
    await store.confirm_totp(user, code, totp or Totp())
    out.write(f"TOTP re-enrolment confirmed for {user}; the previous secret no longer works\n")
    return 0


async def add_device(store: CredentialStore, user: str, public_key_pem: bytes,
                     name: str | None, out: TextIO) -> int:
    """Register a device key (Ed25519 or ECDSA P-256); prints the device id."""
    device_id = await store.add_device(user, public_key_pem, name)
    out.write(f"device {device_id} registered for {user}\n")
    return 0


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%SZ")


async def list_credentials(store: CredentialStore, out: TextIO) -> int:
    """A table of every credential (active and revoked); never a secret."""
    table = Table(title="txgate credentials")
    for column in ("kind", "id", "type", "client", "user", "created", "expires", "revoked"):
        table.add_column(column)
    for c in await store.list():
        kind = "totp (staged)" if c.pending else c.kind
        table.add_row(kind, c.id, c.type, c.client or "", c.user or "", _when(c.created),
                      _when(c.expires), _when(c.revoked))
    Console(file=out, width=120, highlight=False).print(table)
    return 0


async def revoke(store: CredentialStore, kind: str, record_id: str, out: TextIO) -> int:
    """Revoke a credential; devices are named USER/DEVICE, keys by keyid; revoking a client
    revokes every key it has."""
    await store.revoke(kind, record_id)
    out.write(f"{kind} {record_id} revoked\n")
    return 0


async def rekey(store: CredentialStore, out: TextIO, verbose: bool = False) -> int:
    """Re-seal every secret still sealed under the previous master key with the current one."""
    def progress(kind: str, record_id: str) -> None:
        out.write(f"moved {kind} {record_id}\n")
        out.flush()      # a watcher (or a test) sees each record as it is moved
    moved = await store.rekey(progress if verbose else None)
    out.write(f"rekey done: {moved} records moved to master key {store.master_key_id}\n")
    return 0
