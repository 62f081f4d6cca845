"""In-process state backend: one gateway process, no persistence (demo, tests, single node)."""

from __future__ import annotations

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
        else:
            self._expiry[key] = self._clock() + ttl_s

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

    async def hget(self, key: str, field: str) -> bytes | None:
        record = self._live(key)
        return record.get(field) if isinstance(record, dict) else None

    async def hgetall(self, key: str) -> dict[str, bytes]:
        record = self._live(key)
        return dict(record) if isinstance(record, dict) else {}

    async def trip(self, claims: Sequence[tuple[str, int]], batches: Sequence[Batch]) -> Trip:
        return apply_trip(self, claims, batches)
