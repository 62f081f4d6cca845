"""In-process state backend: one gateway process, no persistence (demo, tests, single node)."""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence

from gateway.state.base import StateBackend
from gateway.velocity.memory import apply_trip
from gateway.velocity.ops import Batch, Trip


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

    async def trip(self, claims: Sequence[tuple[str, int]], batches: Sequence[Batch]) -> Trip:
        return apply_trip(self, claims, batches)
