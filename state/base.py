"""The state backend interface: every piece of shared state txgate keeps goes through it.

Two implementations (``memory`` for one process, ``redis`` for a fleet) must behave the same;
one behaviour suite in ``tests/state`` runs against both. Keys that belong to one
entity carry a Redis Cluster hash tag (``{u:alice}:...``) chosen by the caller, so that a
multi-key operation on one entity stays in one slot.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from state.ops import Batch, Trip


class StateError(Exception):
    """The state store did not answer in time or failed; ``operation`` names what was tried."""

    def __init__(self, operation: str, message: str):
        super().__init__(f"state store {operation} failed: {message}")
        self.operation = operation


class StateBackend(ABC):
    """Shared key/value state with TTLs, single-use claims and the velocity script."""

    name: str

    async def start(self) -> None:
        """Open connections; a backend that needs none does nothing."""

    async def close(self) -> None:
        """Release connections."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise StateError unless the store answers."""

    @abstractmethod
    async def claim(self, key: str, ttl_s: float) -> bool:
        """Mark ``key`` used for ``ttl_s``; True only for the first caller (nonces, replays)."""

    @abstractmethod
    async def put(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        """Store ``value``; without ``ttl_s`` it never expires."""

    @abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The stored value, or None when absent or expired."""

    @abstractmethod
    async def take(self, key: str) -> bytes | None:
        """Atomically read and delete (single-use records such as challenges)."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key`` if present."""

    @abstractmethod
    async def incr(self, key: str, ttl_s: float) -> int:
        """Add one and return the new value; the TTL starts at the first increment."""

    @abstractmethod
    async def advance(self, key: str, value: int, ttl_s: float) -> bool:
        """Store ``value`` only if it is greater than the stored one (or none is stored).

        Returns True when stored. Used for "accept each TOTP time step once".
        """

    @abstractmethod
    async def hset(self, key: str, field: str, value: bytes) -> None:
        """Set one field of a record collection (credentials)."""

    @abstractmethod
    async def hreplace(self, key: str, field: str, expected: bytes, value: bytes) -> bool:
        """Set one field only if it still holds ``expected`` (compare-and-set); True when set.
        Lets a bulk rewrite (``txgate auth rekey``) never undo a concurrent change."""

    @abstractmethod
    async def hget(self, key: str, field: str) -> bytes | None:
        """One field of a record collection, or None."""

    @abstractmethod
    async def hgetall(self, key: str) -> dict[str, bytes]:
        """Every field of a record collection."""

    @abstractmethod
    async def hdel(self, key: str, field: str) -> bool:
        """Remove one field of a record collection; True when it was there (live lists)."""

    # True when ``planned`` runs a rule set's own velocity script (state.velocity_plan): a
    # single Redis server. The others take the generic ``trip``.
    plans = False

    async def velocity(self, batches: Sequence[Batch]) -> list[list[int]]:
        """Apply each batch of counter operations atomically; one result list per batch.

        Each batch holds the keys of one entity (one hash tag), so a cluster may run the
        batches on different nodes concurrently; ``state.velocity_script`` defines the semantics.
        """
        return [list(r) for r in (await self.trip((), batches)).results]

    @abstractmethod
    async def trip(self, claims: Sequence[tuple[str, int]], batches: Sequence[Batch]) -> Trip:
        """Claim every (key, ttl ms) and, only if all were fresh, apply the batches.

        On one server this is one atomic round trip: the request path's only state call. When
        a claim was already taken nothing is written and ``Trip.fresh`` is False.
        """
