"""`rules replay --recompute`: the candidate's counters, recomputed over a decision log.

Each record is counted at its timestamp as the gateway's ``Velocity`` counts a request on a
memory backend (the velocity script's semantics: ``state/velocity_script.py``, whose Python
twin is ``state/memory.py``): a step-up repeat reads its transaction's counts without counting
again (same event id), and what became of each request under the candidate settles the
counters as ``gateway.record.Recorder.settle`` does (provisional ``on: allow`` counts withdrawn
when the candidate would not forward it; distinct ``on: allow`` recorded, ``reset_on:
strong_auth`` restarted when it would). What cannot be known from the log: history before its
first record (the warm-up) and the upstream's answer to a request the gateway did not forward
(taken as a success).

Why not run ``Velocity`` itself, as the scenario runner does: a replay counts millions of
records in one process, in time order, and settles each before the next. Velocity's
generality (keys built as strings, operations described for a script, markers and expiry as
stored keys, confirmations deferred to a later call) cost 2.4 times the CPU a record (320 vs
134 µs on the bench's log, docs/performance.md). Here every counter keeps its values in a dict
by key tuple, a record's operations run directly, and a settled record needs nothing deferred.
``tests/gateway/test_backtest_counters.py`` drives this and ``Velocity`` on a
``MemoryBackend`` with the same random traffic and requires the same features at every record.
"""

from __future__ import annotations

import math

from auth.tiers import tier_rank
from gateway.velocity.counters import CounterPlan, member_digest
from rules.ruleset import RuleSet
from state.memory import Members
from state.ops import ABSENT, DISTINCT, FIRST_SEEN, NUMBER
from state.window import DISTINCT_CAP, NUMBER_CAP, SUM_SCALE, bucket_count, scaled_amount

# How many markers may be set between two purges of the expired ones (memory, not semantics:
# an expired marker reads as absent either way).
_PURGE_EVERY = 200_000


class _Counter:
    """One candidate counter's values, by key: the first key value, or a tuple of all of them,
    as strings (as the store's key text tells values apart)."""

    __slots__ = ("spec", "feature", "rest", "where", "field", "is_sum", "values", "ttl_s")

    def __init__(self, plan: CounterPlan):
        self.spec = plan.spec
        self.feature = plan.spec.feature
        self.rest = tuple(name for name, _ in plan.rest)
        # The counter's `where:`, None when it counts every transaction.
        self.where = plan.spec.counts if plan.spec.where_expr is not None else None
        self.field = plan.spec.field
        self.is_sum = plan.is_sum
        self.values: dict = {}
        self.ttl_s = plan.ttl_ms / 1000

    def key(self, first: str, attrs: dict):
        """The key for these attributes, or None when a key attribute is absent."""
        if not self.rest:
            return first
        parts = [first]
        for name in self.rest:
            value = attrs.get(name)
            if value is None:
                return None
            parts.append(value if type(value) is str else str(value))
        return tuple(parts)

    def reset(self, key) -> None:
        self.values.pop(key, None)

    def _live(self, key, now_s: float):
        """The key's [value, expiry s], or None when absent or expired (then dropped, as the
        store's expiry would have). Windowed numbers keep no expiry: see _Window."""
        entry = self.values.get(key)
        if entry is not None and entry[1] <= now_s:
            del self.values[key]
            return None
        return entry


class _Window(_Counter):
    """count/sum over a sliding window. A key's value is [the sum of its buckets, its lowest
    bucket index, bucket index -> total]: a read adds nothing up, and visits the buckets only
    once the window has left the lowest behind. A key the store would have expired holds only
    buckets a read prunes (its TTL is the window and a bucket past its last write)."""

    __slots__ = ("width", "span")

    def __init__(self, plan: CounterPlan):
        super().__init__(plan)
        self.width = plan.bucket_ms
        self.span = bucket_count(plan.window_ms, plan.bucket_ms)

    def observe(self, key, attrs: dict, update: bool, now: int, now_s: float, rc,
                undo: list | None = None):
        """The feature value; with ``undo`` (a provisional update, recorded there to be taken
        back), the total without this update."""
        inc = (scaled_amount(attrs.get(self.field)) or 0) if self.is_sum else 1
        entry = self.values.get(key)
        cur = now // self.width
        added = 0
        if update and inc:
            if entry is None:
                entry = self.values[key] = [0, cur, {}]
            buckets = entry[2]
            before = buckets.get(cur, 0)
            result = before + inc
            kept = result if result < NUMBER_CAP else NUMBER_CAP
            buckets[cur] = kept
            entry[0] += kept - before
            if cur < entry[1]:
                entry[1] = cur
            added = inc - max(0, result - NUMBER_CAP)
            if undo is not None:
                undo.append((self, key, inc))
        elif entry is None:
            return 0
        oldest = cur - self.span + 1
        if entry[1] < oldest:
            buckets = entry[2]
            for index in [i for i in buckets if i < oldest]:
                entry[0] -= buckets.pop(index)
            entry[1] = min(buckets, default=oldest)
        total = entry[0] - added if undo is not None else entry[0]
        if total > NUMBER_CAP:
            total = NUMBER_CAP
        return total / SUM_SCALE if self.is_sum else total

    def undo(self, key, inc: int, at: int, now_s: float) -> None:
        """Take back a provisional increment from the bucket of its time. A number that
        saturated kept less than it is asked to give back: withdrawing a positive increment
        stops at zero (as in the script)."""
        entry = self.values.get(key)
        index = at // self.width
        if entry is not None and index in entry[2]:
            buckets = entry[2]
            value = max(0 if inc > 0 else -NUMBER_CAP, buckets[index] - inc)
            entry[0] += value - buckets[index]
            buckets[index] = value


class _Running(_Counter):
    """count/sum since the last reset: [total, expiry s]."""

    __slots__ = ()

    def observe(self, key, attrs: dict, update: bool, now: int, now_s: float, rc,
                undo: list | None = None):
        inc = (scaled_amount(attrs.get(self.field)) or 0) if self.is_sum else 1
        entry = self._live(key, now_s)
        total = entry[0] if entry is not None else 0
        if update and inc:
            result = total + inc
            total = min(NUMBER_CAP, result)
            self.values[key] = [total, now_s + self.ttl_s]
            if undo is not None:
                total -= inc - max(0, result - NUMBER_CAP)
                undo.append((self, key, inc))
        if total > NUMBER_CAP:
            total = NUMBER_CAP
        return total / SUM_SCALE if self.is_sum else total

    def undo(self, key, inc: int, at: int, now_s: float) -> None:
        entry = self._live(key, now_s)
        if entry is not None:
            entry[0] = max(0 if inc > 0 else -NUMBER_CAP, entry[0] - inc)


class _Distinct(_Counter):
    """distinct members: [Members, expiry s]."""

    __slots__ = ("window_ms",)

    def __init__(self, plan: CounterPlan):
        super().__init__(plan)
        self.window_ms = plan.window_ms

    def observe(self, key, attrs: dict, update: bool, now: int, now_s: float, rc,
                undo: list | None = None) -> int:
        entry = self._live(key, now_s)
        member = attrs.get(self.field) if update else None
        if member is None and entry is None:
            return 0
        members = entry[0] if entry is not None else Members()
        heap = members.heap
        # The oldest sighting is at most the heap's top: nothing to drop when that is recent.
        if self.window_ms > 0 and heap and heap[0][0] <= now - self.window_ms:
            members.drop_oldest(seen_until=now - self.window_ms)
        if member is not None:
            members.add(rc.digest(member), now)
            if len(members.seen) > DISTINCT_CAP:
                members.drop_oldest(keep=DISTINCT_CAP)
            self.values[key] = [members, now_s + self.ttl_s]
        return len(members.seen)


class _FirstSeen(_Counter):
    """first_seen: [mark, expiry s]; a mark is its ms, or (ms, event) while provisional."""

    __slots__ = ()

    def observe(self, key, attrs: dict, update: bool, now: int, now_s: float, rc,
                undo: list | None = None):
        """The age in s, None when never seen. With ``undo`` (an ``on: allow`` counter) the
        mark is provisional, the event's, until ``settle`` and reads as absent till then."""
        entry = self._live(key, now_s)
        mark = entry[0] if entry is not None else None
        if update:
            if mark is None:
                mark = (now, rc.event) if undo is not None else now
            self.values[key] = [mark, now_s + self.ttl_s]
            if undo is not None:
                undo.append((self, key, (now, rc.event)))
        if mark is None:
            return None
        if type(mark) is int:
            return (now - mark) // 1000
        return (now - mark[0]) // 1000 if now - mark[0] >= rc.settle_ms else None

    def settle(self, key, mark: tuple, forwarded: bool, now_s: float) -> None:
        """Make this request's own provisional mark final, or take it back."""
        entry = self._live(key, now_s)
        if entry is None or entry[0] != mark:
            return   # another request's mark, or gone
        if forwarded:
            entry[0] = mark[0]
        else:
            del self.values[key]


def _counter(plan: CounterPlan) -> _Counter:
    if plan.kind == NUMBER:
        return _Window(plan) if plan.window_ms else _Running(plan)
    if plan.kind == DISTINCT:
        return _Distinct(plan)
    if plan.kind == FIRST_SEEN:
        return _FirstSeen(plan)
    raise ValueError(f"counter {plan.spec.name}: unknown kind {plan.kind!r}")


class RecomputedCounters:
    """The hook `rules.replay.replay_lines` calls per record, in time order: ``features``
    then ``settle``."""

    def __init__(self, rs: RuleSet, challenge_ttl_s: int, *, settle_s: float):
        counters = [_counter(CounterPlan.of(spec)) for spec in rs.counters]
        # Events live as long as in the gateway (gateway.services): challenge_ttl_s + 60.
        self._event_ttl_s = float(challenge_ttl_s + 60)
        self.settle_ms = int(settle_s * 1000)
        # By first key attribute, as Velocity groups them (one marker per entity and event):
        # (name, read and counted outright (on: attempt; on: allow distinct only read),
        # applied provisionally (on: allow count/sum/first_seen), applied after forwarding
        # (on: allow distinct)). The first two hold each counter as (its observe, feature,
        # itself when its key has more parts, its where, counted on attempt).
        groups: dict[str, tuple[list, list, list]] = {}
        for c in counters:
            spec = c.spec
            outright, provisional, late = groups.setdefault(spec.key[0], ([], [], []))
            entry = (c.observe, c.feature, c if c.rest else None, c.where, spec.on == "attempt")
            if spec.on == "allow" and type(c) is not _Distinct:
                provisional.append(entry)
            else:
                outright.append(entry)
                if spec.on == "allow":
                    late.append(c)
        self._groups = [(name, *lists) for name, lists in groups.items()]
        self._resets = [c for c in counters if c.spec.reset_on == "strong_auth"]
        self._features = frozenset(c.feature for c in counters)
        self._markers: dict[tuple, float] = {}
        self._marked = 0
        self._digests: dict[str, str] = {}   # distinct member -> its digest: values recur
        self._attrs: dict = {}
        self._now = (0, 0.0)
        self.event = ""
        # This record's provisional updates: (marker, [(counter, key, increment or mark)]).
        self._pending: list = []
        self.differences: dict[str, int] = {}   # counter feature -> records where it differs

    def digest(self, member) -> str:
        text = member if type(member) is str else str(member)
        digest = self._digests.get(text)
        if digest is None:
            digest = self._digests[text] = member_digest(text)
        return digest

    def _mark(self, marker: tuple, now_s: float) -> bool:
        """Set ``marker`` unless it is live: True when this event updates under it."""
        deadline = self._markers.get(marker)
        if deadline is not None and deadline > now_s:
            return False
        self._markers[marker] = now_s + self._event_ttl_s
        self._marked += 1
        if self._marked >= _PURGE_EVERY:
            self._marked = 0
            self._markers = {m: d for m, d in self._markers.items() if d > now_s}
        return True

    def features(self, record: dict) -> dict:
        """The record's features with the candidate's counters recomputed at its time."""
        ts = record.get("ts")
        if isinstance(ts, (int, float)):
            self._now = (math.floor(float(ts) * 1000), float(ts))
        now, now_s = self._now
        logged = record["features"]
        counted = self._features
        attrs = {k: v for k, v in logged.items() if k not in counted}
        self.event = event = str(record.get("event_id") or record.get("request_id") or "")
        found = {}
        pending = []
        for name, outright, provisional, _ in self._groups:
            value = attrs.get(name)
            if value is None:
                continue
            first = value if type(value) is str else str(value)
            apply = None   # the event's marker for this entity, set with its first counter
            for observe, feature, keyed, where, on_attempt in outright:
                key = keyed.key(first, attrs) if keyed is not None else first
                if key is None:
                    continue
                if apply is None:
                    apply = self._mark(("e", name, first, event), now_s)
                found[feature] = observe(key, attrs, apply and on_attempt
                                         and (where is None or where(attrs)), now, now_s, self)
            apply = None
            for observe, feature, keyed, where, _ in provisional:
                key = keyed.key(first, attrs) if keyed is not None else first
                if key is None:
                    continue
                if apply is None:
                    marker = ("a", name, first, event)
                    apply = self._mark(marker, now_s)
                    # Where this event's updates are recorded, to be settled; when it already
                    # counted, a list nobody keeps (the counters read as provisional ones do).
                    undo = []
                    if apply:
                        pending.append((marker, undo))
                found[feature] = observe(key, attrs, apply and (where is None or where(attrs)),
                                         now, now_s, self, undo)
        for feature, result in found.items():
            if result is not None:
                attrs[feature] = result
        for name in counted:
            if name in logged and logged[name] != attrs.get(name):
                self.differences[name] = self.differences.get(name, 0) + 1
        self._attrs, self._pending = attrs, pending
        return attrs

    def settle(self, record: dict, decision) -> None:
        """What Recorder.settle does once the candidate's decision on this record is known."""
        tier = record.get("tier") or "client"
        wanted = decision.required_tier
        forwarded = decision.action != "deny" and (wanted is None or tier_rank(wanted) <= tier_rank(tier))
        status = record.get("status") if record.get("decision") in ("allow", "review") else None
        ok = forwarded and (not isinstance(status, int) or status < 400)
        now, now_s = self._now
        for marker, updates in self._pending:
            if not ok:
                # The marker goes too, so that the step-up repeat of the event can count.
                self._markers.pop(marker, None)
            for c, key, value in updates:
                if type(c) is _FirstSeen:
                    c.settle(key, value, ok, now_s)
                elif not ok:
                    c.undo(key, value, now, now_s)
        self._pending = []
        if not ok:
            return
        attrs = self._attrs
        for name, _, _, late in self._groups:
            value = attrs.get(name)
            if value is None or not late:
                continue
            first = value if type(value) is str else str(value)
            keyed = [(c, key) for c in late if (c.where is None or c.where(attrs))
                     and (key := c.key(first, attrs)) is not None]
            if keyed and self._mark(("l", name, first, self.event), now_s):
                for c, key in keyed:
                    c.observe(key, attrs, True, now, now_s, self)
        if tier != "client":   # the tier was proven by answering a challenge
            for c in self._resets:
                value = attrs.get(c.spec.key[0])
                if value is not None:
                    key = c.key(value if type(value) is str else str(value), attrs)
                    if key is not None:
                        c.reset(key)
