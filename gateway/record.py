"""After the decision: ``on: allow`` counters, metrics and the decision log (docs/protocol.md §6–7)."""

from __future__ import annotations

import logging
import time
from collections.abc import Coroutine

from auth.tiers import tier_rank
from state.base import StateError
from metrics.definitions import (AUTH_FAILURES, BAD_REQUESTS, CHALLENGER_DECISIONS, OVERHEAD,
                                 REQUESTS, RISK_SCORE, RULE_HITS, STATE_ERRORS, UNMATCHED_ROUTE)

log = logging.getLogger("txgate.record")
# A challenge, a locked user and a user with nothing enrolled are all "the rules wanted more".
_STEP_UP_CODES = frozenset({"insufficient_user_authentication", "otp_reused", "user_locked",
                            "enrollment_required", "too_many_attempts"})


def outcome(ex) -> str:
    """The decision label of the contract: allow, review, step_up, deny or error."""
    error = ex.error
    if error is None and not ex.forwarded:
        return "error"   # the client went away before an answer
    if error is None:
        return "review" if ex.decision is not None and ex.decision.action == "review" else "allow"
    if error.code in _STEP_UP_CODES:
        return "step_up"
    if error.code == "transaction_denied":
        return "deny"
    return "error"


def challenger_outcome(ex) -> str | None:
    """What the gateway would have done had the challenger decided (None: it did not run).

    Its deny is a deny; a tier it asks for above the one the request proved is a step-up; a
    review is a review; anything else forwards. A challenger that failed on the transaction's
    attributes is an error."""
    if ex.challenger_failed:
        return "error"
    decision = ex.challenger_decision
    if decision is None:
        return None
    if decision.action == "deny":
        return "deny"
    wanted = decision.required_tier
    if wanted and tier_rank(wanted) > tier_rank(ex.tier or "client"):
        return "step_up"
    return "review" if decision.action == "review" else "allow"


class Recorder:
    def __init__(self, decision_log):
        self._log = decision_log

    def record(self, ex) -> None:
        route = ex.route.name if ex.route is not None else UNMATCHED_ROUTE
        decided = outcome(ex)
        REQUESTS.labels(route, decided).inc()
        if decided == "error" and ex.error is not None:
            if ex.error.code == "invalid_signature":   # always an AuthError: it has a reason
                AUTH_FAILURES.labels(ex.error.reason).inc()
                # The reason and the claimed keyid only: never a signature or a secret.
                log.info("signature refused: %s", ex.error.reason, extra={
                    "event": "signature_refused", "reason": ex.error.reason,
                    "client_id": ex.client_id or ex.error.client_id,
                    "request_id": ex.request_id, "route": route})
            else:
                BAD_REQUESTS.labels(route, ex.error.code).inc()
        elapsed = time.perf_counter() - ex.started
        overhead = ex.overhead_s if ex.overhead_s is not None else elapsed
        OVERHEAD.labels(route).observe(overhead)
        decision = ex.decision
        if decision is not None:
            RISK_SCORE.labels(route).observe(decision.score)
            for hit in decision.hits:
                RULE_HITS.labels(hit.rule, hit.action or "score", hit.mode).inc()
        challenged = challenger_outcome(ex)
        if challenged is not None:
            CHALLENGER_DECISIONS.labels(route, decided, challenged).inc()
        if ex.route is not None and ex.route.config.transaction is not None:
            self._log.write(self._entry(ex, decided, elapsed))

    def _entry(self, ex, decided: str, elapsed: float) -> dict:
        decision = ex.decision
        entry = {
            "ts": time.time(),
            "request_id": ex.request_id,
            # One per transaction: a step-up repeat carries its challenge's event id, so replay
            # joins a challenge, its answers and its lockout into one transaction.
            "event_id": ex.event_id,
            "route": ex.route.name,
            "client_id": ex.client_id,
            "keyid": ex.key_id,
            "user_id": ex.transaction.get("user_id"),
            "tier": ex.tier,
            "decision": decided,
            "action": decision.action if decision else None,
            "score": decision.score if decision else None,
            "set_by": decision.set_by if decision else None,
            "rules": [_hit(h) for h in decision.hits] if decision else [],
            "features": ex.attrs,
            "transaction": ex.transaction,
            "latency_ms": round(elapsed * 1000, 3),
            "rules_version": ex.rules.version if ex.rules is not None else None,
            "status": ex.error.status if ex.error is not None else ex.upstream_status,
        }
        if ex.error is not None:
            entry["error"] = ex.error.code
        if ex.side.policy is not None:
            entry["degraded"] = ex.side.policy
        if ex.normalized:
            entry["normalized"] = ex.normalized
        challenged = challenger_outcome(ex)
        if challenged is not None:
            entry["challenger"] = _challenger(ex, challenged)
        return entry

    @staticmethod
    def settle(ex) -> Coroutine | None:
        """Make the ``on: allow`` counters agree with what became of the request; returns the
        state round trip this still needs, to be awaited by the request (never fire-and-forget),
        or None when there is none (most forwarded payments: a Task per request cost ~3 % of
        the CPU, docs/performance.md).

        Forwarded with a status below 400: the provisional counts stand, the provisional
        first-seen marks are confirmed (with the next state call); the kinds that cannot be
        provisional are recorded now, and a step-up restarts the reset counters. Otherwise
        the provisional counts are withdrawn.
        """
        target, observation = ex.velocity, ex.observation
        if target is None or observation is None:
            return None
        if not ex.forwarded or ex.upstream_status is None or ex.upstream_status >= 400:
            return _trips(ex, target.withdraw(observation))
        target.confirm(observation)
        trips = []
        if target.allow_after_forward:
            trips.append(target.record_allowed(ex.attrs, ex.event_id))
        if ex.stepped_up:
            trips.append(target.strong_auth(ex.attrs))
        return _trips(ex, *trips) if trips else None


async def _trips(ex, *trips: Coroutine) -> None:
    try:
        for trip in trips:
            await trip
    except StateError as exc:
        STATE_ERRORS.labels(exc.operation).inc()
        log.error("on-allow counters not settled for request %s: %s", ex.request_id, exc)
    finally:
        for trip in trips:
            trip.close()     # the ones a failure left unstarted: no "never awaited" warning


def _challenger(ex, decided: str) -> dict:
    """The decision log's ``challenger``: what the challenger rule set said, never enforced."""
    other = ex.challenger_decision
    return {"version": ex.challenger.version, "decision": decided,
            "action": other.action if other else None, "score": other.score if other else None,
            "rules": [_hit(h) for h in other.hits] if other else []}


def _hit(hit) -> dict:
    out = {"id": hit.rule, "mode": hit.mode}
    if hit.action is not None:
        out["action"] = hit.action
    if hit.score is not None:
        out["score"] = hit.score
    return out
