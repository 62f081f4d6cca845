"""The side of state a request runs on: the shared store, or this process's fallback.

A request starts on the shared side. When the store fails, ``Pipeline.degrade`` — the one
place the route's ``on_state_error`` is read — moves it to the side the policy names, and the
stage that failed runs again there. Stages call ``ex.side`` and never test the policy:

| side | single-use claims | counters |
|---|---|---|
| shared | in the store, in the request's one round trip; kept here too | in the store |
| ``fail_open`` | kept here, journaled for the store's return | none (decided without) |
| ``local`` | kept here, journaled for the store's return | this process's own |

(``fail_closed`` has no fallback: 503.) Claims always pass through ``gateway.replay``, so a
replay is refused across an outage at the gateway that accepted the original.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.replay import ReplayGuard
from gateway.velocity import Observation, Velocity
from state.base import StateBackend

_REPLAY = Observation(False, {})


class SharedSide:
    """The configured store, for the whole fleet."""

    policy = None   # not degraded

    def __init__(self, store: StateBackend, replay: ReplayGuard):
        self._store = store
        self._replay = replay

    def velocity(self, pair) -> Velocity:
        return pair.shared

    async def claim(self, claims: Sequence[tuple[str, int]]) -> bool:
        """Claim a pass-through request's signature; False for a replay. Raises StateError."""
        if await self._replay.seen(claims):
            return False
        await self._replay.ready()
        if not (await self._store.trip(claims, ())).fresh:
            return False
        return await self._replay.keep(claims, store_down=False)

    async def observe(self, pair, attrs: dict, event_id: str,
                      claims: Sequence[tuple[str, int]]) -> Observation:
        """The claims and every counter in ONE store call. Raises StateError."""
        if await self._replay.seen(claims):
            return _REPLAY
        await self._replay.ready()
        observation = await pair.shared.observe_once(attrs, event_id, claims)
        if observation.fresh and not await self._replay.keep(claims, store_down=False):
            return _REPLAY
        return observation


class LocalSide:
    """This process alone while the store is down: ``fail_open`` (no counters) or ``local``."""

    def __init__(self, policy: str, replay: ReplayGuard):
        self.policy = policy
        self._replay = replay
        self._counts = policy == "local"

    def velocity(self, pair) -> Velocity | None:
        return pair.local if self._counts else None

    async def claim(self, claims: Sequence[tuple[str, int]]) -> bool:
        return await self._replay.keep(claims, store_down=True)

    async def observe(self, pair, attrs: dict, event_id: str,
                      claims: Sequence[tuple[str, int]]) -> Observation | None:
        if not await self._replay.keep(claims, store_down=True):
            return _REPLAY
        if not self._counts:
            return None
        return await pair.local.observe_once(attrs, event_id, ())
