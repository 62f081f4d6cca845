"""In-process state backend: one gateway process, no persistence (demo, tests, single node).

The second half is the velocity script's twin: ``velocity_script.py``'s Lua semantics in
Python, run synchronously so that a call is atomic with respect to the event loop exactly as a
script is on Redis. Change the two together; the behaviour suite in tests/gateway/velocity runs
against both and against a real cluster. Values live in the backend's own store: a dict
bucket -> total for windowed numbers, the members and their last-seen ms for distinct (a sorted
set's operations, ``Members``), an int for running totals and first-seen times (a string
``"<ms>:<token>"`` for a provisional mark).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Sequence

from state.base import StateBackend
from state.ops import (ABSENT, CONFIRM_FIRST, DISTINCT, FIRST_SEEN, MEMBER, NUMBER, PROVISIONAL,
                       PROVISIONAL_FIRST, UNDO, UNDO_FIRST, Batch, Op, Trip)
from state.window import DISTINCT_CAP, NUMBER_CAP, bucket_count


class MemoryBackend(StateBackend):
    """Dict-backed store with lazy expiry. Every method runs without awaiting, so each call is
    atomic with respect to the event loop, exactly as a Redis command or script is."""

    name = "memory"

    def __init__(self, clock=time.time):
        self._clock = clock
        self._values: dict[str, object] = {}
        self._expiry: dict[str, float] = {}
        # Deadlines in time order, so that keys nobody reads again (nonces, used signatures)
        # still go: lazy expiry alone would keep every one of them for the process's life.
        self._deadlines: list[tuple[float, str]] = []

    def __len__(self) -> int:
        """Keys held, including expired ones not yet swept."""
        return len(self._values)

    def _live(self, key: str):
        deadline = self._expiry.get(key)
        if deadline is not None and deadline <= self._clock():
            del self._expiry[key]
            self._values.pop(key, None)
        return self._values.get(key)

    def _store(self, key: str, value: object, ttl_s: float | None) -> None:
        self._values[key] = value
        if ttl_s is None:
            self._expiry.pop(key, None)
            return
        now = self._clock()
        deadline = now + ttl_s
        previous = self._expiry.get(key)
        self._expiry[key] = deadline
        # A key already queued keeps its (earlier) entry; the sweep re-queues it when due.
        if previous is None or deadline < previous:
            heapq.heappush(self._deadlines, (deadline, key))
        self._sweep(now)

    def _sweep(self, now: float) -> None:
        # A few entries per write: each write queues at most one, so the sweep keeps up.
        heap = self._deadlines
        for _ in range(8):
            if not heap or heap[0][0] > now:
                return
            _, key = heapq.heappop(heap)
            current = self._expiry.get(key)
            if current is None:
                continue                  # deleted, or stored without a TTL since
            if current <= now:
                del self._expiry[key]
                self._values.pop(key, None)
            else:
                heapq.heappush(heap, (current, key))

    async def ping(self) -> None:
        return None

    async def claim(self, key: str, ttl_s: float) -> bool:
        if self._live(key) is not None:
            return False
        self._store(key, b"1", ttl_s)
        return True

    async def put(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        self._store(key, bytes(value), ttl_s)

    async def get(self, key: str) -> bytes | None:
        value = self._live(key)
        return value if isinstance(value, bytes) else None

    async def take(self, key: str) -> bytes | None:
        value = await self.get(key)
        await self.delete(key)
        return value

    async def delete(self, key: str) -> None:
        self._values.pop(key, None)
        self._expiry.pop(key, None)

    async def incr(self, key: str, ttl_s: float) -> int:
        current = self._live(key)
        if current is None:
            self._store(key, 1, ttl_s)
            return 1
        self._values[key] = int(current) + 1
        return self._values[key]

    async def advance(self, key: str, value: int, ttl_s: float) -> bool:
        current = self._live(key)
        if current is not None and int(current) >= value:
            return False
        self._store(key, int(value), ttl_s)
        return True

    async def hset(self, key: str, field: str, value: bytes) -> None:
        record = self._live(key)
        if not isinstance(record, dict):
            record = {}
            self._store(key, record, None)
        record[field] = bytes(value)

    async def hreplace(self, key: str, field: str, expected: bytes, value: bytes) -> bool:
        record = self._live(key)
        if not isinstance(record, dict) or record.get(field) != expected:
            return False
        record[field] = bytes(value)
        return True

    async def hget(self, key: str, field: str) -> bytes | None:
        record = self._live(key)
        return record.get(field) if isinstance(record, dict) else None

    async def hgetall(self, key: str) -> dict[str, bytes]:
        record = self._live(key)
        return dict(record) if isinstance(record, dict) else {}

    async def hdel(self, key: str, field: str) -> bool:
        record = self._live(key)
        return isinstance(record, dict) and record.pop(field, None) is not None

    async def trip(self, claims: Sequence[tuple[str, int]], batches: Sequence[Batch]) -> Trip:
        return _apply_trip(self, claims, batches)



def run_sync(coro):
    """The result of a memory-backend coroutine, without an event loop: every method answers
    without awaiting (replays and tests drive thousands of them a second)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the memory backend suspended")

# --- the velocity script's twin -------------------------------------------------------------

def _apply_trip(backend: MemoryBackend, claims: Sequence[tuple[str, int]],
                batches: Sequence[Batch]) -> Trip:
    """Claims, then every batch, against ``backend``'s store: the Lua script's semantics.
    Module functions of the backend's own module, so that expiry and the injectable clock
    apply to counters exactly as to every other key."""
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
    if op.kind == MEMBER:
        entry = current.get(op.value) if isinstance(current, dict) else None
        expires = int(entry.split(b" ", 1)[0]) if entry is not None else None
        return int(expires is not None and (expires == 0 or expires > now))
    if op.kind == DISTINCT:
        members = current if isinstance(current, Members) else Members()
        if op.window_ms > 0:
            members.drop_oldest(seen_until=now - op.window_ms)
        if update:
            members.add(op.value, now)
            if len(members) > DISTINCT_CAP:
                members.drop_oldest(keep=DISTINCT_CAP)
            backend._store(op.key, members, ttl_s)
        return len(members)
    if op.kind in (FIRST_SEEN, PROVISIONAL_FIRST):
        provisional = op.kind == PROVISIONAL_FIRST
        if update:
            if current is None:
                current = f"{now}:{op.value}" if provisional else now
            backend._store(op.key, current, ttl_s)
        first = _first_seen(current, now, op.window_ms if provisional else 0)
        return ABSENT if first is None else now - first
    if op.kind in (UNDO_FIRST, CONFIRM_FIRST):
        # Only the request's own mark: another request may have replaced a withdrawn one.
        if current == op.value and op.kind == UNDO_FIRST:
            backend._values.pop(op.key, None)
            backend._expiry.pop(op.key, None)
        elif current == op.value:
            backend._values[op.key] = int(op.value.split(":", 1)[0])   # its expiry stays
        return 0
    backend._values.pop(op.key, None)
    backend._expiry.pop(op.key, None)
    return 0


def _first_seen(mark: object, now: int, settle_ms: int) -> int | None:
    """The first-seen time a mark says (an int, or a provisional "<ms>:<token>" that counts
    once older than ``settle_ms``), or None."""
    if isinstance(mark, int):
        return mark
    if not isinstance(mark, str):
        return None
    first = int(mark.split(":", 1)[0])
    return first if now - first >= settle_ms else None


class Members:
    """A distinct counter's members as a Redis sorted set holds them: the last-seen ms of each
    member, plus a heap of (seen, member) so that the oldest go in O(log n) as with
    ZREMRANGEBYSCORE / ZREMRANGEBYRANK, in the same order (by time, then by member). A
    sighting that supersedes an earlier one leaves the old heap entry behind; it is skipped
    when it surfaces, and the heap is rebuilt when such entries outnumber the members."""

    __slots__ = ("seen", "heap")

    def __init__(self):
        self.seen: dict[str, int] = {}
        self.heap: list[tuple[int, str]] = []

    def __len__(self) -> int:
        return len(self.seen)

    def add(self, member: str, at: int) -> None:
        if self.seen.get(member) == at:
            return                       # its entry is in the heap already
        self.seen[member] = at
        heapq.heappush(self.heap, (at, member))
        if len(self.heap) > 2 * len(self.seen) + 16:
            self.heap = [(t, m) for m, t in self.seen.items()]
            heapq.heapify(self.heap)

    def drop_oldest(self, *, seen_until: int | None = None, keep: int | None = None) -> None:
        """Remove the members last seen at or before ``seen_until``, or the oldest beyond ``keep``."""
        heap, seen = self.heap, self.seen
        while heap:
            at, member = heap[0]
            if seen.get(member) == at and not (
                    (seen_until is not None and at <= seen_until)
                    or (keep is not None and len(seen) > keep)):
                return
            heapq.heappop(heap)
            if seen.get(member) == at:
                del seen[member]


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
