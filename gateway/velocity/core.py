"""Velocity: the counters a rule set declares, read and updated in one state round trip."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from gateway.state.base import StateBackend
from gateway.velocity.counters import PREFIX, CounterPlan, encode
from gateway.velocity.ops import Batch, Op
from gateway.velocity.window import EVENT_TTL_S

if TYPE_CHECKING:
    from rules import CounterSpec


class Velocity:
    """Counters of one rule set over one state backend.

    For the ``local`` failure policy, ``Velocity(counters, MemoryBackend())`` is a per-process
    fallback with the same semantics.
    """

    def __init__(self, counters: Sequence[CounterSpec], backend: StateBackend,
                 *, event_ttl_s: int = EVENT_TTL_S):
        self.backend = backend
        self._plans = [CounterPlan.of(spec) for spec in counters]
        self._allow = [plan for plan in self._plans if plan.spec.on == "allow"]
        self._resets = [plan for plan in self._plans if plan.spec.reset_on == "strong_auth"]
        # The event marker must outlive a step-up round trip (challenge_ttl_s, 300 s by default).
        self._event_ttl_ms = event_ttl_s * 1000

    async def observe(self, attrs: dict, event_id: str) -> dict[str, int | float]:
        """Every counter's value for this request, ``on: attempt`` updates included.

        A repeated ``event_id`` is read without counting it again. Raises StateError.
        """
        groups: dict[str, list[tuple[CounterPlan, Op]]] = {}
        for plan in self._plans:
            located = plan.tag_and_key(attrs)
            if located is not None:
                tag, key = located
                op = plan.op(key, attrs, update=plan.spec.on == "attempt")
                groups.setdefault(tag, []).append((plan, op))
        results = await self._run(groups, f"e:{encode(event_id)}")
        features: dict[str, int | float] = {}
        for members, values in zip(groups.values(), results):
            for (plan, _), result in zip(members, values):
                value = plan.feature(result)
                if value is not None:
                    features[plan.spec.feature] = value
        return features

    async def record_allowed(self, attrs: dict, event_id: str) -> None:
        """Apply the ``on: allow`` updates of a forwarded request, once per ``event_id``."""
        groups: dict[str, list[tuple[CounterPlan, Op]]] = {}
        for plan in self._allow:
            located = plan.tag_and_key(attrs)
            if located is not None:
                tag, key = located
                groups.setdefault(tag, []).append((plan, plan.op(key, attrs, update=True)))
        await self._run(groups, f"a:{encode(event_id)}")

    async def strong_auth(self, attrs: dict) -> None:
        """Restart every ``reset_on: strong_auth`` counter of these key values."""
        groups: dict[str, list[tuple[CounterPlan, Op]]] = {}
        for plan in self._resets:
            located = plan.tag_and_key(attrs)
            if located is not None:
                tag, key = located
                groups.setdefault(tag, []).append((plan, plan.reset(key)))
        await self._run(groups, None)

    async def _run(self, groups: dict[str, list[tuple[CounterPlan, Op]]],
                   marker: str | None) -> list[list[int]]:
        if not groups:
            return []
        batches = [
            Batch(None if marker is None else f"{PREFIX}:{tag}:{marker}", self._event_ttl_ms,
                  tuple(op for _, op in members))
            for tag, members in groups.items()
        ]
        return await self.backend.velocity(batches)
