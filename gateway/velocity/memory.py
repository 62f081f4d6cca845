"""The velocity operations in Python for MemoryBackend: the semantics of ``script.py``'s Lua.

Everything here is synchronous, so a call is atomic with respect to the event loop exactly as a
script is on Redis. Values live in the backend's own store (so its clock and lazy expiry apply):
a dict bucket -> total for windowed numbers, a dict member -> last seen ms for distinct, an int
for running totals and first-seen times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.velocity.ops import (ABSENT, DISTINCT, FIRST_SEEN, NUMBER, PROVISIONAL, UNDO, Batch,
                                  Op, Trip)
from gateway.velocity.window import DISTINCT_CAP, NUMBER_CAP, bucket_count

if TYPE_CHECKING:
    from gateway.state.memory import MemoryBackend


def apply_trip(backend: MemoryBackend, claims: Sequence[tuple[str, int]],
               batches: Sequence[Batch]) -> Trip:
    """Claims, then every batch, against ``backend``'s store: the Lua script's semantics."""
    # The executor is the backend's friend: it uses the store's private _live/_store so that
    # expiry and the injectable clock behave exactly as for every other key.
    now = math.floor(backend._clock() * 1000)
    if any(backend._live(key) is not None for key, _ in claims):
        return Trip(False, now, (), ())
    for key, ttl_ms in claims:
        backend._store(key, b"1", ttl_ms / 1000)
    applied, results = [], []
    for batch in batches:
        apply, result = _apply(backend, batch, now)
        applied.append(apply)
        results.append(tuple(result))
    return Trip(True, now, tuple(applied), tuple(results))


def _apply(backend: MemoryBackend, batch: Batch, now: int) -> tuple[bool, list[int]]:
    apply = True
    if batch.marker is not None and batch.undo:
        backend._values.pop(batch.marker, None)
        backend._expiry.pop(batch.marker, None)
    elif batch.marker is not None:
        apply = backend._live(batch.marker) is None
        if apply:
            backend._store(batch.marker, b"1", batch.marker_ttl_ms / 1000)
    return apply, [_op(backend, op, apply and op.update, now) for op in batch.ops]


def _op(backend: MemoryBackend, op: Op, update: bool, now: int) -> int:
    if op.kind == UNDO:
        _undo(backend, op)
        return 0
    if op.kind in (NUMBER, PROVISIONAL):
        total, added = _number(backend, op, update, now)
        # A provisional number reports the total without its own (kept) increment.
        return min(NUMBER_CAP, total - added if op.kind == PROVISIONAL else total)
    ttl_s = op.ttl_ms / 1000
    current = backend._live(op.key)
    if op.kind == DISTINCT:
        members = current if isinstance(current, dict) else {}
        if op.window_ms > 0:
            for member in [m for m, seen in members.items() if seen <= now - op.window_ms]:
                del members[member]
        if update:
            members[op.value] = now
            if len(members) > DISTINCT_CAP:
                # Same order as a Redis sorted set: by time, then by member.
                ranked = sorted(members.items(), key=lambda item: (item[1], item[0]))
                for member, _ in ranked[: len(members) - DISTINCT_CAP]:
                    del members[member]
            backend._store(op.key, members, ttl_s)
        return len(members)
    if op.kind == FIRST_SEEN:
        first = current if isinstance(current, int) else None
        if update:
            first = now if first is None else first
            backend._store(op.key, first, ttl_s)
        return ABSENT if first is None else now - first
    backend._values.pop(op.key, None)
    backend._expiry.pop(op.key, None)
    return 0


def _number(backend: MemoryBackend, op: Op, update: bool, now: int) -> tuple[int, int]:
    """The total (uncapped) and the part of the increment kept below NUMBER_CAP."""
    current = backend._live(op.key)
    added = 0
    if op.window_ms > 0:
        buckets = current if isinstance(current, dict) else {}
        if update:
            cur = now // op.bucket_ms
            result = buckets.get(cur, 0) + int(op.value)
            buckets[cur] = min(NUMBER_CAP, result)
            added = int(op.value) - max(0, result - NUMBER_CAP)
            backend._store(op.key, buckets, op.ttl_ms / 1000)
        oldest = now // op.bucket_ms - bucket_count(op.window_ms, op.bucket_ms) + 1
        for index in [i for i in buckets if i < oldest]:
            del buckets[index]
        return sum(buckets.values()), added
    total = current if isinstance(current, int) else 0
    if update:
        result = total + int(op.value)
        total = min(NUMBER_CAP, result)
        added = int(op.value) - max(0, result - NUMBER_CAP)
        backend._store(op.key, total, op.ttl_ms / 1000)
    return total, added


def _undo(backend: MemoryBackend, op: Op) -> None:
    """Take back a provisional increment: the bucket of its time, or the running total."""
    # A number that saturated kept less than it is now asked to give back: a withdrawal of a
    # positive increment stops at zero (as in the Lua script).
    value = int(op.value)
    floor = 0 if value < 0 else -NUMBER_CAP
    current = backend._live(op.key)
    if op.bucket_ms > 0 and isinstance(current, dict):
        index = op.window_ms // op.bucket_ms
        if index in current:
            current[index] = max(floor, current[index] + value)
    elif op.bucket_ms == 0 and isinstance(current, int):
        backend._values[op.key] = max(floor, current + value)
