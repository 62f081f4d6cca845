"""`txgate auth ...` as library functions; the CLI parses arguments and calls these.

Each is a coroutine (the store is async) returning the exit code 0; an operator mistake raises
``CredentialError`` (or ``MasterKeyError``) whose message the CLI prints as its one error line.
Output goes to ``out``. ``add_client --hmac`` prints the generated secret alone on the last
line, so scripts can take it with ``tail -n1``.
"""

from __future__ import annotations

import datetime
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


async def enroll_totp(store: CredentialStore, user: str, issuer: str = "txgate",
                      out: TextIO | None = None, totp: Totp | None = None,
                      secret: str | None = None, replace: bool = False) -> int:
    """Create (with ``replace``, replace) the user's TOTP secret; print the otpauth:// URI and
    a terminal QR code."""
    totp, out = totp or Totp(), out or sys.stdout
    secret = await store.enroll_totp(user, secret, replace=replace)
    uri = totp.provisioning_uri(secret, user, issuer)
    out.write(f"TOTP enrolled for {user}; scan the code or enter the URI in an authenticator\n")
    out.write(uri + "\n")
    segno.make(uri, error="m").terminal(out=out, compact=True)
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
    for column in ("kind", "id", "type", "user", "created", "revoked"):
        table.add_column(column)
    for c in await store.list():
        table.add_row(c.kind, c.id, c.type, c.user or "", _when(c.created), _when(c.revoked))
    Console(file=out, width=120, highlight=False).print(table)
    return 0


async def revoke(store: CredentialStore, kind: str, record_id: str, out: TextIO) -> int:
    """Revoke a credential; devices are named USER/DEVICE."""
    await store.revoke(kind, record_id)
    out.write(f"{kind} {record_id} revoked\n")
    return 0
