"""Live lists: named sets of values that change without a rule reload, shared by every gateway.

One hash per list, ``txl:{NAME}`` (the list is its own Cluster slot): member -> ``"<expiry in
epoch ms, 0 = never> <JSON {reason, added_at, actor}>"``. A request reads membership inside its
one state round trip (``member_op``: the velocity script's MEMBER kind compares the expiry with
the store's clock); ``LiveLists`` adds, removes and shows members for the admin API and the CLI.
Expired members stop matching at once and are dropped from the hash by the list's next show
(never on a change: reading a whole large list would stall the store for every request).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from state.base import StateBackend
from state.ops import MEMBER, Op

PREFIX = "txl"
MAX_VALUE_CHARS = 1024
MAX_VALUES = 1000          # per change
MAX_REASON_CHARS = 500
MAX_TTL_S = 400 * 86400    # as the longest counter window


class ListError(ValueError):
    """A change the store refuses before writing anything (bad value, reason or ttl)."""


def list_key(name: str) -> str:
    return f"{PREFIX}:{{{name}}}"


def member_op(name: str, value: str) -> Op:
    """The read of one value's membership, for a request's round trip."""
    return Op(list_key(name), MEMBER, False, value, 0, 0, 0)


@dataclass(frozen=True)
class Member:
    value: str
    reason: str | None
    added_at: float
    expires_at: float | None    # epoch seconds; None: until removed
    actor: str

    def to_json(self) -> dict:
        return {"value": self.value, "reason": self.reason, "added_at": self.added_at,
                "expires_at": self.expires_at, "actor": self.actor}


def _entry(member: Member) -> bytes:
    expires_ms = 0 if member.expires_at is None else int(member.expires_at * 1000)
    meta = {"reason": member.reason, "added_at": member.added_at, "actor": member.actor}
    return f"{expires_ms} ".encode() + json.dumps(meta, separators=(",", ":")).encode()


def _member(value: str, entry: bytes) -> Member:
    expires, _, meta = entry.partition(b" ")
    data = json.loads(meta)
    expires_ms = int(expires)
    return Member(value, data.get("reason"), data["added_at"],
                  None if expires_ms == 0 else expires_ms / 1000, data["actor"])


def check_values(values: Sequence) -> list[str]:
    """The values of one change, or ListError naming what is wrong."""
    if not isinstance(values, (list, tuple)) or not values:
        raise ListError("values: expected a non-empty list of strings")
    if len(values) > MAX_VALUES:
        raise ListError(f"values: at most {MAX_VALUES} per change")
    for value in values:
        if not isinstance(value, str) or not value or len(value) > MAX_VALUE_CHARS:
            raise ListError(f"values: each is a non-empty string of at most {MAX_VALUE_CHARS} "
                            "characters")
        if "\x00" in value:
            raise ListError("values: a value may not contain NUL")
    return list(dict.fromkeys(values))


class LiveLists:
    """Changes and reads of live lists on one state backend."""

    def __init__(self, backend: StateBackend, clock: Callable[[], float] = time.time):
        self._backend = backend
        self._clock = clock

    async def add(self, name: str, values: Sequence[str], *, actor: str,
                  reason: str | None = None, ttl_s: int | None = None) -> list[Member]:
        """Add (or renew) members; each keeps ``reason`` and expires after ``ttl_s``."""
        values = check_values(values)
        if reason is not None and (not isinstance(reason, str)
                                   or len(reason) > MAX_REASON_CHARS):
            raise ListError(f"reason: expected a string of at most {MAX_REASON_CHARS} characters")
        if ttl_s is not None and (type(ttl_s) is not int or not 1 <= ttl_s <= MAX_TTL_S):
            raise ListError(f"ttl: expected 1 s to {MAX_TTL_S // 86400} days")
        now = self._clock()
        added = []
        for value in values:
            member = Member(value, reason, now, None if ttl_s is None else now + ttl_s, actor)
            await self._backend.hset(list_key(name), value, _entry(member))
            added.append(member)
        return added

    async def remove(self, name: str, values: Sequence[str]) -> list[str]:
        """Remove members; returns those that were there."""
        values = check_values(values)
        return [v for v in values if await self._backend.hdel(list_key(name), v)]

    async def show(self, name: str) -> list[Member]:
        """The members that are live now, by value; the expired ones are dropped."""
        now = self._clock()
        live = []
        for value, entry in (await self._backend.hgetall(list_key(name))).items():
            member = _member(value, entry)
            if member.expires_at is not None and member.expires_at <= now:
                await self._backend.hdel(list_key(name), value)
            else:
                live.append(member)
        return sorted(live, key=lambda m: m.value)
