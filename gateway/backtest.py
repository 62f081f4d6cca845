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
134 µs on the bench's log, docs/performance.md). Here every counter keeps its values by key, a
record's operations run directly, and a settled record needs nothing deferred. Even so, in
Python the counters were most of a recompute's time (~75 of ~130 µs a record), so the
per-record part is C (``gateway/backtest_counters.c``, built by setup.py beside the rule
engine); this module lays the counters out for it and says what became of each request.
``tests/gateway/test_backtest_counters.py`` drives this and ``Velocity`` on a
``MemoryBackend`` with the same random traffic and requires the same features at every record.
"""

from __future__ import annotations

from auth.tiers import tier_rank
from gateway import _backtest_counters as compiled
from gateway.velocity.counters import CounterPlan, member_digest
from rules.ruleset import RuleSet
from state.ops import DISTINCT, FIRST_SEEN, NUMBER
from state.window import DISTINCT_CAP, NUMBER_CAP, SUM_SCALE, bucket_count, scaled_amount

# The C code spells these numbers itself: they must be the store's.
assert (compiled.NUMBER_CAP, compiled.SUM_SCALE, compiled.DISTINCT_CAP) == (
    NUMBER_CAP, SUM_SCALE, DISTINCT_CAP), "gateway/backtest_counters.c disagrees with state/window.py"


def _layout(plan: CounterPlan) -> tuple:
    """One counter as the C code takes it (Counters_init in gateway/backtest_counters.c)."""
    spec = plan.spec
    if plan.kind == NUMBER:
        kind = compiled.WINDOW if plan.window_ms else compiled.RUNNING
    elif plan.kind == DISTINCT:
        kind = compiled.DISTINCT
    elif plan.kind == FIRST_SEEN:
        kind = compiled.FIRST_SEEN
    else:
        raise ValueError(f"counter {spec.name}: unknown kind {plan.kind!r}")
    span = bucket_count(plan.window_ms, plan.bucket_ms) if plan.bucket_ms else 0
    field = spec.field if plan.is_sum or plan.kind == DISTINCT else None
    return (kind, spec.feature, spec.key[0], tuple(name for name, _ in plan.rest), field,
            spec.counts if spec.where_expr is not None else None, plan.is_sum,
            spec.on == "attempt", plan.bucket_ms, span, plan.window_ms, plan.ttl_ms / 1000)


class RecomputedCounters:
    """The hook `rules.replay.replay_lines` calls per record, in time order: ``features``
    then ``settle``."""

    def __init__(self, rs: RuleSet, challenge_ttl_s: int, *, settle_s: float):
        plans = [CounterPlan.of(spec) for spec in rs.counters]
        # By first key attribute, as Velocity groups them (one marker per entity and event):
        # read and counted outright (on: attempt; on: allow distinct only read), applied
        # provisionally (on: allow count/sum/first_seen), applied after forwarding (on: allow
        # distinct).
        groups: dict[str, tuple[list, list, list]] = {}
        for i, plan in enumerate(plans):
            spec = plan.spec
            outright, provisional, late = groups.setdefault(spec.key[0], ([], [], []))
            if spec.on == "allow" and plan.kind != DISTINCT:
                provisional.append(i)
            else:
                outright.append(i)
                if spec.on == "allow":
                    late.append(i)
        # Events live as long as in the gateway (gateway.services): challenge_ttl_s + 60.
        self._counters = compiled.Counters(
            [_layout(plan) for plan in plans], [(name, *lists) for name, lists in groups.items()],
            [i for i, plan in enumerate(plans) if plan.spec.reset_on == "strong_auth"],
            float(challenge_ttl_s + 60), int(settle_s * 1000), member_digest, scaled_amount)
        # The record's features with the candidate's counters recomputed at its time.
        self.features = self._counters.features

    @property
    def differences(self) -> dict[str, int]:
        """Counter feature -> records where the recomputed value differs from the logged one."""
        return self._counters.differences

    def settle(self, record: dict, decision) -> None:
        """What Recorder.settle does once the candidate's decision on this record is known."""
        tier = record.get("tier") or "client"
        wanted = decision.required_tier
        forwarded = decision.action != "deny" and (wanted is None or tier_rank(wanted) <= tier_rank(tier))
        status = record.get("status") if record.get("decision") in ("allow", "review") else None
        ok = forwarded and (not isinstance(status, int) or status < 400)
        # A tier above the client's was proven by answering a challenge: reset_on strong_auth.
        self._counters.settle(ok, tier != "client")
