"""Single-use claims (signature nonces and signatures) across store outages.

The shared store is where a claim is refused a second time for the whole fleet. Each process
also keeps every claim it accepted, for as long as the claim lives (``auth.signature
.max_skew_s`` bounds it), so that:

- while the store is down (``fail_open`` and ``local`` routes), a request this process already
  accepted, before or during the outage, is still a replay;
- a claim the store lost (a restart without persistence, a failover) is still refused here;
- claims accepted while the store was down are written to it when it answers again, before
  any other request uses it, so other gateways refuse them from then on.

What remains (docs/security.md): during an outage, or before the accepting gateway has
written its journal back, a replay sent to a *different* gateway is accepted. A signature
older than ``max_skew_s`` is refused everywhere, so that is the longest such a window lasts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from state.base import StateBackend
from state.memory import MemoryBackend

log = logging.getLogger("txgate.replay")
# Claims written back per round: the direct lane pipelines concurrent commands.
_DRAIN_BATCH = 512


class ReplayGuard:
    def __init__(self, store: StateBackend, local: MemoryBackend, clock=time.monotonic):
        self._store = store
        self._local = local
        self._clock = clock
        self._journal: list[tuple[str, float]] = []   # (key, deadline) accepted while down
        self._lock = asyncio.Lock()

    @property
    def pending(self) -> int:
        """Claims accepted while the store was down and not yet written to it."""
        return len(self._journal)

    async def seen(self, claims: Sequence[tuple[str, int]]) -> bool:
        """True when this process already accepted one of ``claims``."""
        for key, _ in claims:
            if await self._local.get(key) is not None:
                return True
        return False

    async def keep(self, claims: Sequence[tuple[str, int]], *, store_down: bool) -> bool:
        """Remember ``claims`` here; False (nothing kept) when one was already accepted.

        With ``store_down`` they are also journaled, to be written to the store by ``ready``.
        """
        if not claims:
            return True
        if not (await self._local.trip(claims, ())).fresh:
            return False
        if store_down:
            now = self._clock()
            self._journal.extend((key, now + ttl_ms / 1000) for key, ttl_ms in claims)
        return True

    async def ready(self) -> None:
        """Write the journal to the store before it is used again; raises StateError while
        it still fails (the journal is kept for the next try)."""
        if not self._journal:
            return
        async with self._lock:
            while self._journal:
                now = self._clock()
                batch = [(key, deadline - now) for key, deadline in self._journal[:_DRAIN_BATCH]
                         if deadline > now]
                # A claim another gateway took meanwhile is refused there too: nothing to do.
                await asyncio.gather(*(self._store.claim(key, ttl) for key, ttl in batch))
                del self._journal[:_DRAIN_BATCH]
            log.info("state store answers again: claims accepted during the outage written back")
