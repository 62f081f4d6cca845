"""Step-up challenges: single-use, expiring, bound to one user and one exact request.

A challenge lives under the user's hash tag (``{u:USER}:challenge:ID``), so answering it on
behalf of another user finds nothing. It records the hash of the request it was issued for
(``request_hash``: method, target and body) and the method it asked for; ``take`` deletes it
atomically, so it can be answered once, rightly or wrongly.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import struct
import time
from dataclasses import dataclass

from state.base import StateBackend

_ID = re.compile(r"ch_[A-Za-z0-9_-]{16,64}")


def request_hash(method: str, target: str, body: bytes) -> bytes:
    """SHA-256 over method, target (path?query) and body, each length-prefixed so that no two
    different requests frame to the same bytes."""
    digest = hashlib.sha256(b"txgate-request-v1")
    for part in (method.encode(), target.encode(), body):
        digest.update(struct.pack(">Q", len(part)))
        digest.update(part)
    return digest.digest()


@dataclass(frozen=True, slots=True)
class Challenge:
    id: str
    user: str
    method: str            # "otp" | "device": what was asked for
    request_hash: bytes
    expires_at: float
    event_id: str | None = None   # the transaction this challenge was issued for

    def matches(self, user: str, req_hash: bytes) -> bool:
        return self.user == user and hmac.compare_digest(self.request_hash, req_hash)


class ChallengeStore:
    """Issue and take challenges on the state backend."""

    def __init__(self, state: StateBackend, ttl_s: int = 300, clock=time.time):
        self._state, self.ttl_s, self._clock = state, ttl_s, clock

    @staticmethod
    def _key(user: str, challenge_id: str) -> str:
        return f"{{u:{user}}}:challenge:{challenge_id}"

    async def issue(self, user: str, method: str, req_hash: bytes,
                    event_id: str | None = None) -> Challenge:
        """A new challenge with a fresh random id. ``event_id`` is stored with it, so that the
        repeat that answers it is counted as the same transaction (see ``event_of``)."""
        challenge = Challenge("ch_" + secrets.token_urlsafe(18), user, method, req_hash,
                              self._clock() + self.ttl_s, event_id)
        record = {"user": user, "method": method, "hash": req_hash.hex(),
                  "expires_at": challenge.expires_at, "event": event_id}
        await self._state.put(self._key(user, challenge.id), json.dumps(record).encode(),
                              self.ttl_s)
        return challenge

    async def event_of(self, user: str, challenge_id: str, req_hash: bytes) -> str | None:
        """The event id a live challenge of this user was issued with, when it was issued for
        this very request; None otherwise. It reads without taking: the answer does that."""
        challenge = await self._read(user, challenge_id, self._state.get)
        if challenge is None or not challenge.matches(user, req_hash):
            return None
        return challenge.event_id

    async def take(self, user: str, challenge_id: str) -> Challenge | None:
        """The challenge, removed from the store; None when unknown, used, expired or not this
        user's."""
        return await self._read(user, challenge_id, self._state.take)

    async def _read(self, user: str, challenge_id: str, fetch) -> Challenge | None:
        if not _ID.fullmatch(challenge_id):
            return None
        raw = await fetch(self._key(user, challenge_id))
        if raw is None:
            return None
        record = json.loads(raw)
        # The store's TTL may be coarse (Redis rounds); the recorded deadline is exact.
        if record["user"] != user or record["expires_at"] <= self._clock():
            return None
        return Challenge(challenge_id, record["user"], record["method"],
                         bytes.fromhex(record["hash"]), record["expires_at"], record.get("event"))
