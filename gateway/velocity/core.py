"""Velocity: the counters a rule set declares, read and updated in one state round trip."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gateway.config import UPSTREAM_TIMEOUT_S
from state.base import StateBackend
from gateway.velocity.counters import PREFIX, CounterPlan, encode, member_digest
from state.base import StateError
from state.lists import member_op
from state.velocity_plan import Layout, Slot
from state.ops import (FIRST_SEEN, NUMBER, PROVISIONAL, PROVISIONAL_FIRST, Batch, Op, Trip,
                       confirm_of, tag_of, undo_of)
from state.window import EVENT_TTL_S


log = logging.getLogger("txgate.velocity")
# Confirmations ride on the next state call; an idle gateway sends them alone after this long.
CONFIRM_IDLE_S = 1.0


def settle_window_s(upstream_timeout_s: float) -> float:
    """How long a provisional first-seen mark reads as absent: longer than any request takes
    from its state round trip to being forwarded (its upstream answered) or withdrawn."""
    return upstream_timeout_s + 5

if TYPE_CHECKING:
    from rules import CounterSpec


@dataclass(frozen=True, slots=True)
class Observation:
    """What one request's state round trip found.

    ``fresh`` is False when a single-use claim (signature, nonce) was already used: nothing
    was counted. ``pending`` holds the ``on: allow`` increments applied provisionally, which
    ``Velocity.withdraw`` takes back when the request is not forwarded after all.
    """

    fresh: bool
    features: dict
    pending: tuple[Batch, ...] = ()
    at_ms: int = 0
    # The values only the challenger rule set declares (its own counters and live-list
    # reads), which the challenger sees over ``features``.
    challenger: dict | None = None


class Velocity:
    """Counters of one rule set over one state backend.

    ``on: allow`` counters of count, sum and first_seen kind are applied *provisionally* in the
    request's one round trip (the rules still see the value without this request) and
    withdrawn if the request ends up not forwarded. A provisional first-seen mark reads as
    absent until ``confirm`` makes it final — sent with this Velocity's next state call, so
    without a round trip of its own — or, should the confirmation be lost, until it is older
    than ``settle_s``, by when its request surely was forwarded or withdrew it
    (``settle_window_s``). ``on: allow`` distinct counters cannot be undone exactly
    and are applied after forwarding by ``record_allowed``: one more round trip.

    ``memberships`` (``RuleSet.memberships``: attribute, tested attribute, live list) are read
    in the same round trip: the attribute is True or False when the tested one is a string.

    ``challenger_counters`` and ``challenger_memberships`` (a challenger rule set's) are kept
    and read in the same round trip. A counter the champion declares identically is one
    counter; the challenger's others are its own keys (never a champion key: one that would
    coincide with a champion counter it differs from gets a key of its own), counted as the
    request really went, and reported in ``Observation.challenger``.

    For the ``local`` failure policy, ``Velocity(counters, MemoryBackend())`` is a per-process
    fallback with the same semantics (without memberships: it has no live list).
    """

    def __init__(self, counters: Sequence[CounterSpec], backend: StateBackend,
                 *, settle_s: float = settle_window_s(UPSTREAM_TIMEOUT_S),
                 event_ttl_s: int = EVENT_TTL_S,
                 memberships: Sequence[tuple[str, str, str]] = (),
                 challenger_counters: Sequence[CounterSpec] = (),
                 challenger_memberships: Sequence[tuple[str, str, str]] = ()):
        self.backend = backend
        own_reads = set(memberships)
        self._memberships = tuple(memberships) + tuple(
            m for m in challenger_memberships if m not in own_reads)
        self._challenger_reads = frozenset(m[0] for m in challenger_memberships
                                           if m not in own_reads)
        self._plans = [CounterPlan.of(spec) for spec in counters]
        champion_keys = {p.identity for p in self._plans}
        extra = [CounterPlan.of(spec, apart=CounterPlan.of(spec).identity in champion_keys)
                 for spec in challenger_counters if spec not in counters]
        self._plans += extra
        self._challenger_only = frozenset(id(p) for p in extra)
        self._provisional = frozenset(id(p) for p in self._plans
                                      if p.spec.on == "allow" and p.kind in (NUMBER, FIRST_SEEN))
        self._late = [p for p in self._plans
                      if p.spec.on == "allow" and id(p) not in self._provisional]
        self._resets = [plan for plan in self._plans if plan.spec.reset_on == "strong_auth"]
        # Decided once: the plans grouped by their first key attribute (one hash tag per
        # request each, so its value is encoded once), each as (plan, applied provisionally,
        # updated on attempt).
        groups: dict[str, list] = {}
        for p in self._plans:
            groups.setdefault(p.spec.key[0], []).append(
                (p, id(p) in self._provisional, p.spec.on == "attempt"))
        self._observing = [(name, entries[0][0].tag_open, entries)
                           for name, entries in groups.items()]
        # The event marker must outlive a step-up round trip (challenge_ttl_s, 300 s by default).
        self._event_ttl_ms = event_ttl_s * 1000
        self._settle_ms = int(settle_s * 1000)
        self._confirms: list[Op] = []
        self._idle_flush: asyncio.TimerHandle | None = None
        self._flushing: set[asyncio.Task] = set()
        # A single Redis server runs the counters as a script of this rule set's own.
        self._layout = self._plan_layout() if backend.plans else None

    def _plan_layout(self) -> Layout:
        """The counters as ``state.velocity_plan`` bakes them into a script: in the order
        ``_observe_planned`` sends them, each as the generic call would describe its operation
        (a provisional first-seen reads as absent for the settle window)."""
        groups = []
        for _, _, entries in self._observing:
            slots = []
            for plan, provisional, _ in entries:
                kind, window_ms = plan.kind, plan.window_ms
                if provisional and plan.kind == FIRST_SEEN:
                    kind, window_ms = PROVISIONAL_FIRST, self._settle_ms
                elif provisional:
                    kind = PROVISIONAL
                slots.append(Slot(plan.tag_open, plan.suffix, tuple(s for _, s in plan.rest),
                                  kind, "a" if provisional else "e", window_ms, plan.bucket_ms,
                                  plan.ttl_ms))
            groups.append(slots)
        return Layout(groups, PREFIX, self._event_ttl_ms)

    @property
    def allow_after_forward(self) -> bool:
        """True when some ``on: allow`` counter still needs ``record_allowed`` after forwarding."""
        return bool(self._late)

    async def observe_once(self, attrs: dict, event_id: str,
                           claims: Sequence[tuple[str, int]]) -> Observation:
        """Claim ``claims`` (key, ttl ms) and observe every counter in ONE state call.

        ``on: attempt`` counters count this request (once per ``event_id``: a repeat reads
        them). Count/sum ``on: allow`` counters are applied now, provisionally (once per
        ``event_id``), and reported without this request; call ``withdraw`` if the request is
        then not forwarded, ``record_allowed`` if it is. Raises StateError.
        """
        if self._layout is not None:
            return await self._observe_planned(attrs, event_id, claims)
        event, allowed = f"e:{encode(event_id)}", f"a:{encode(event_id)}"
        token = None
        members, batches, pending_index = [], [], []
        for name, tag_open, entries in self._observing:
            value = attrs.get(name)
            if value is None:
                continue
            base = f"{PREFIX}:{tag_open}{encode(value)}}}"
            now_ops, allow_ops = [], []
            for plan, is_provisional, on_attempt in entries:
                key = plan.key_under(base, attrs)
                if key is None:
                    continue
                if is_provisional and plan.kind == FIRST_SEEN:
                    # The mark names this event, so that only its own withdrawal deletes it.
                    token = token or member_digest(event_id)
                    allow_ops.append((plan, self._provisional_first(plan, key, attrs, token)))
                elif is_provisional:
                    allow_ops.append((plan, plan.op(key, attrs, True, PROVISIONAL)))
                else:
                    now_ops.append((plan, plan.op(key, attrs, on_attempt)))
            for marker, ops in ((event, now_ops), (allowed, allow_ops)):
                if ops:
                    members.append(ops)
                    if marker is allowed:
                        pending_index.append(len(batches))
                    batches.append(Batch(f"{base}:{marker}", self._event_ttl_ms,
                                         tuple(op for _, op in ops)))
        counted = len(batches)
        read, lists = self._list_reads(attrs)
        # Earlier requests' confirmations go first, so that this request already reads them.
        # Lost with a failed call: an unconfirmed mark counts once the settle window is over.
        confirms = self._take_confirms()
        trip: Trip = await self.backend.trip(claims, confirms + batches + lists)
        if not trip.fresh:
            self._requeue(confirms)
            return Observation(False, {})
        skip = len(confirms)
        results = trip.results[skip:]
        features: dict[str, int | float | bool] = {}
        challenger: dict[str, int | float | bool] = {}
        self._list_features(read, results[counted:], features, challenger)
        for ops, values in zip(members, results):
            for (plan, _), result in zip(ops, values):
                self._feature(plan, result, features, challenger)
        pending = tuple(batches[i] for i in pending_index if trip.applied[skip + i])
        return Observation(True, features, pending, trip.now_ms, challenger)

    async def _observe_planned(self, attrs: dict, event_id: str,
                               claims: Sequence[tuple[str, int]]) -> Observation:
        """``observe_once`` through the rule set's own script (``state.velocity_plan``): the
        request sends its entity values and updates, the script knows the rest."""
        event = encode(event_id)
        token = None
        body: list[str] = []
        present: list[CounterPlan] = []
        pending: list[Batch] = []
        markers = [None, None]    # the first entity's "e:" and "a:" markers that are needed
        memo: dict = {}
        for name, tag_open, entries in self._observing:
            value = attrs.get(name)
            if value is None:
                body.append("")
                continue
            entity = encode(value)
            body.append("v" + entity)
            base = f"{PREFIX}:{tag_open}{entity}}}"
            allow_ops = []
            for plan, is_provisional, on_attempt in entries:
                extras = plan.extras(attrs)
                if extras is None:
                    body.append("")
                    continue
                if not is_provisional:
                    update, amount = plan.update(attrs, on_attempt, memo)
                    markers[0] = markers[0] or f"{base}:e:{event}"
                else:
                    # Built as the generic call would, for withdraw and confirm.
                    key = plan.key_with(base, extras)
                    if plan.kind == FIRST_SEEN:
                        token = token or member_digest(event_id)
                        op = self._provisional_first(plan, key, attrs, token)
                    else:
                        op = plan.op(key, attrs, True, PROVISIONAL, memo)
                    allow_ops.append(op)
                    update, amount = op.update, op.value
                body.append(f"u{amount}" if update else "r")
                body += extras
                present.append(plan)
            if allow_ops:
                marker = f"{base}:a:{event}"
                markers[1] = markers[1] or marker
                pending.append(Batch(marker, self._event_ttl_ms, tuple(allow_ops)))
        read, lists = self._list_reads(attrs)
        confirms = self._take_confirms()
        planned = await self.backend.planned(self._layout, claims, confirms + lists,
                                             (markers[0], markers[1]), body)
        trip = planned.trip
        if not trip.fresh:
            self._requeue(confirms)
            return Observation(False, {})
        features: dict[str, int | float | bool] = {}
        challenger: dict[str, int | float | bool] = {}
        self._list_features(read, trip.results[len(confirms):], features, challenger)
        for plan, result in zip(present, planned.values):
            self._feature(plan, result, features, challenger)
        return Observation(True, features, tuple(pending) if planned.applied[1] else (),
                           trip.now_ms, challenger)

    def _provisional_first(self, plan: CounterPlan, key: str, attrs: dict, token: str) -> Op:
        """The provisional first-seen mark: it names this event (only its own withdrawal
        deletes it) and reads as absent for the settle window."""
        update, _ = plan.update(attrs, True)     # where: applies
        return Op(key, PROVISIONAL_FIRST, update, token, self._settle_ms, 0, plan.ttl_ms)

    def _list_reads(self, attrs: dict) -> tuple[list[str], list[Batch]]:
        """The membership attributes read for this request, and their batches (one per read:
        its list's slot on a cluster; merged on one server)."""
        read, batches = [], []
        for name, tested, list_name in self._memberships:
            value = attrs.get(tested)
            if isinstance(value, str):
                read.append(name)
                batches.append(Batch(None, 0, (member_op(list_name, value),)))
        return read, batches

    def _list_features(self, read: list[str], results, features: dict, challenger: dict) -> None:
        for name, values in zip(read, results):
            (challenger if name in self._challenger_reads else features)[name] = values[0] == 1

    def _feature(self, plan: CounterPlan, result: int, features: dict, challenger: dict) -> None:
        value = plan.feature(result)
        if value is not None:
            (challenger if id(plan) in self._challenger_only else features)[plan.feature_name] = value

    def _requeue(self, confirms: list[Batch]) -> None:
        """A refused call wrote nothing: its confirmations ride on the next one."""
        self._confirms[:0] = [op for batch in confirms for op in batch.ops]

    def confirm(self, observation: Observation) -> None:
        """Make the provisional first-seen marks of a forwarded request final: queued for this
        Velocity's next state call (no round trip of their own), or sent alone when none comes
        within CONFIRM_IDLE_S."""
        self._confirms += [op for batch in observation.pending for raw in batch.ops
                           if (op := confirm_of(raw, observation.at_ms)) is not None]
        if not self._confirms or self._idle_flush is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return   # driven without a loop (replays): the next call carries them
        self._idle_flush = loop.call_later(CONFIRM_IDLE_S, self._flush_idle)

    def _take_confirms(self) -> list[Batch]:
        if not self._confirms:
            return []
        ops, self._confirms = self._confirms, []
        if self._idle_flush is not None:
            self._idle_flush.cancel()
            self._idle_flush = None
        by_tag: dict[str, list[Op]] = {}
        for op in ops:
            by_tag.setdefault(tag_of(op.key), []).append(op)
        return [Batch(None, 0, tuple(group)) for group in by_tag.values()]

    def _flush_idle(self) -> None:
        self._idle_flush = None
        task = asyncio.ensure_future(self._send_confirms())
        self._flushing.add(task)
        task.add_done_callback(self._flushing.discard)

    async def _send_confirms(self) -> None:
        confirms = self._take_confirms()
        if not confirms:
            return
        try:
            await self.backend.trip((), confirms)
        except StateError as exc:
            # Not retried: an unconfirmed mark counts anyway once the settle window is over.
            log.warning("first-seen confirmations not sent: %s", exc)

    async def withdraw(self, observation: Observation) -> None:
        """Take back the provisional ``on: allow`` updates of a request not forwarded.

        The allow marker is deleted too, so the step-up repeat of the same transaction can
        count it when it is forwarded. Raises StateError.
        """
        undo = []
        for batch in observation.pending:
            ops = tuple(undone for op in batch.ops
                        if (undone := undo_of(op, observation.at_ms)) is not None)
            undo.append(Batch(batch.marker, batch.marker_ttl_ms, ops, undo=True))
        if undo:
            await self.backend.trip((), undo)

    async def record_allowed(self, attrs: dict, event_id: str) -> None:
        """Apply the ``on: allow`` updates that cannot be provisional (distinct) for a forwarded
        request, once per ``event_id``. The others were already applied by ``observe_once``.
        """
        groups: dict[str, list[tuple[CounterPlan, Op]]] = {}
        for plan in self._late:
            if not plan.spec.counts(attrs):
                continue
            located = plan.tag_and_key(attrs)
            if located is not None:
                tag, key = located
                groups.setdefault(tag, []).append((plan, plan.op(key, attrs, update=True)))
        # The "a:" marker is already set by the provisional observe of the same event: the
        # late kinds need their own, or they would be read as already applied and never
        # counted.
        await self._run(groups, f"l:{encode(event_id)}")

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
