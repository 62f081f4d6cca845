"""Unguessable identifiers for requests and transactions, without a system call each.

``uuid.uuid4()`` and ``secrets.token_urlsafe()`` each read the kernel's random source on every
call (a ``getrandom`` syscall and a few µs of Python); the gateway needs two per request. Here
they are cut from one read of ``os.urandom`` per 4 KiB: the same kernel CSPRNG output, read in
bulk, so the ids stay as unpredictable as before.
"""

from __future__ import annotations

import base64
import os

_POOL_BYTES = 4096
_pool = b""
_at = 0


def _random(size: int) -> bytes:
    global _pool, _at
    if _at + size > len(_pool):
        _pool, _at = os.urandom(_POOL_BYTES), 0
    _at += size
    return _pool[_at - size:_at]


def _forget() -> None:
    # A forked worker must not hand out the ids its parent's pool still holds.
    global _pool, _at
    _pool, _at = b"", 0


os.register_at_fork(after_in_child=_forget)


def request_id() -> str:
    """32 hex digits (128 bits): the id the client, the upstream and the decision log see."""
    return _random(16).hex()


def event_id() -> str:
    """24 URL-safe characters (144 bits): a transaction's id across its step-up repeat."""
    return base64.urlsafe_b64encode(_random(18)).decode()
