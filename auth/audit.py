"""The audit trail of credential changes: one decision-log line per change.

Each line is ``{"ts", "type": "audit", "actor", "action", "kind", "id"}``: when, who (the CLI
user as ``cli:<login>``, or the admin API's token), what was done (add, revoke, enroll, stage,
confirm, rekey), to which kind of credential (client, key, totp, device, master_key) and which
one (its id; for a rekey the new master key's id). Never a secret: the store calls it with ids
only. ``txgate rules replay`` skips these lines.
"""

from __future__ import annotations

import getpass
import os
import time
from typing import Callable

# The admin API has one bearer token (TXGATE_ADMIN_TOKEN): its changes carry this label.
ADMIN_ACTOR = "admin-token"


def cli_actor() -> str:
    """``cli:<login>`` (the sudo caller when run under sudo: the person, not root)."""
    try:
        login = os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):        # no passwd entry and no LOGNAME/USER (a bare container)
        login = f"uid:{os.getuid()}"
    return f"cli:{login}"


def audit_trail(write: Callable[[dict], None], actor: str,
                clock: Callable[[], float] = time.time) -> Callable[[str, str, str], None]:
    """The store's ``audit(action, kind, id)`` writing one record per change with ``write``."""
    def audit(action: str, kind: str, record_id: str) -> None:
        write({"ts": clock(), "type": "audit", "actor": actor, "action": action,
               "kind": kind, "id": record_id})
    return audit
