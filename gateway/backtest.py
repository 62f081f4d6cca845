"""`rules replay --recompute`: the candidate's counters, recomputed over a decision log.

Records go through the gateway's own Velocity on a MemoryBackend whose clock is the record's
timestamp: a step-up repeat reads its transaction's counts without counting again (same event
id), and what became of each request under the candidate settles the counters as
gateway.record.Recorder.settle does (provisional ``on: allow`` counts withdrawn when the
candidate would not forward it; distinct/first_seen ``on: allow`` recorded, ``reset_on:
strong_auth`` restarted when it would). What cannot be known from the log: history before its
first record (the warm-up) and the upstream's answer to a request the gateway did not forward
(taken as a success).
"""

from __future__ import annotations

from auth.tiers import tier_rank
from gateway.velocity import Velocity
from rules.ruleset import RuleSet
from state.memory import MemoryBackend, run_sync


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class RecomputedCounters:
    """The hook `rules.replay.replay_lines` calls per record, in time order."""

    def __init__(self, rs: RuleSet, challenge_ttl_s: int, *, settle_s: float):
        self._clock = _Clock()
        # Events live as long as in the gateway (gateway.services): challenge_ttl_s + 60.
        self.velocity = Velocity(rs.counters, MemoryBackend(clock=self._clock),
                                 settle_s=settle_s,
                                 event_ttl_s=challenge_ttl_s + 60)
        self._features = frozenset(c.feature for c in rs.counters)
        self._observation = None
        self._attrs: dict = {}
        self.differences: dict[str, int] = {}   # counter feature -> records where it differs

    def features(self, record: dict) -> dict:
        """The record's features with the candidate's counters recomputed at its time."""
        ts = record.get("ts")
        if isinstance(ts, (int, float)):
            self._clock.now = float(ts)
        logged = record["features"]
        attrs = {k: v for k, v in logged.items() if k not in self._features}
        event = record.get("event_id") or record.get("request_id") or ""
        observation = run_sync(self.velocity.observe_once(attrs, str(event), ()))
        attrs.update(observation.features)
        for name in self._features:
            if name in logged and logged[name] != attrs.get(name):
                self.differences[name] = self.differences.get(name, 0) + 1
        self._observation, self._attrs = observation, attrs
        return attrs

    def settle(self, record: dict, decision) -> None:
        """What Recorder.settle does once the candidate's decision on this record is known."""
        tier = record.get("tier") or "client"
        wanted = decision.required_tier
        forwarded = decision.action != "deny" and (wanted is None or tier_rank(wanted) <= tier_rank(tier))
        status = record.get("status") if record.get("decision") in ("allow", "review") else None
        ok = forwarded and (not isinstance(status, int) or status < 400)
        event = str(record.get("event_id") or record.get("request_id") or "")
        if not ok:
            run_sync(self.velocity.withdraw(self._observation))
            return
        self.velocity.confirm(self._observation)
        if self.velocity.allow_after_forward:
            run_sync(self.velocity.record_allowed(self._attrs, event))
        if tier != "client":   # the tier was proven by answering a challenge
            run_sync(self.velocity.strong_auth(self._attrs))
