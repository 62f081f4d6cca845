"""Re-decide logged transactions under candidate rules: what would change before it ships.

One transaction is one unit: the decision log gives a step-up challenge, the repeats that answer
it and a lockout on the way the same ``event_id``, so they are read as one transaction, decided
as its first record was (the repeat is re-decided at a higher tier, which is not a new decision
about the payment). The later records tell how the step-up ended (``step_up_outcome``).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import orjson

from rules.expressions import expr_attrs
from rules.ruleset import RuleSet

_STEP_UP = ("require_otp", "require_device")
STOPPED = frozenset({"deny", "step_up", *_STEP_UP})
STEP_UP_OUTCOMES = ("passed", "failed", "abandoned", "pending")
# Answers that end a step-up without the transaction going through.
_FAILED = frozenset({"user_locked", "too_many_attempts", "enrollment_required"})


@dataclass(slots=True)
class Transaction:
    line: int
    ts: float | None
    request_ids: list[str]
    user_id: object
    amount: float | None
    route: str
    before: str                      # the logged action
    before_hits: tuple[str, ...]
    before_score: float | None
    after: str                       # the candidate's action
    after_hits: tuple[str, ...]
    after_score: float
    stepped_up: bool                 # the logged decision asked for a step-up
    last_ts: float | None = None     # the last record of the transaction
    answered: bool = False           # a later record answered the challenge
    ended: str | None = None         # "passed" | "failed" once a record says so

    @property
    def changed(self) -> bool:
        return not (self.after == self.before
                    or (self.before == "step_up" and self.after in _STEP_UP))

    def step_up_outcome(self, log_end: float | None, challenge_ttl_s: float) -> str | None:
        """passed, failed (wrong answers, a lockout, nothing to answer with), abandoned (the
        challenge expired unanswered), pending (still answerable when the log ends)."""
        if not self.stepped_up:
            return None
        if self.ended:
            return self.ended
        expired = (log_end is not None and self.last_ts is not None
                   and log_end - self.last_ts >= challenge_ttl_s)
        if not expired:
            return "pending"
        return "failed" if self.answered else "abandoned"


@dataclass
class ReplayReport:
    records: int = 0
    skipped: list[str] = field(default_factory=list)     # "LINE: why"
    transactions: list[Transaction] = field(default_factory=list)
    by_request: dict = field(default_factory=dict)        # request id -> Transaction
    versions: Counter = field(default_factory=Counter)
    attributes: set = field(default_factory=set)           # every feature name replayed
    first_ts: float | None = None
    last_ts: float | None = None

    @property
    def compared(self) -> int:
        return len(self.transactions)


def logged_action(record: dict) -> str | None:
    """The rule action a record was decided with: its `action`, else its gateway decision name."""
    action = record.get("action")
    if isinstance(action, str):
        return action
    decision = record.get("decision")
    return decision if isinstance(decision, str) and decision != "error" else None


def replay_lines(lines, rs: RuleSet, counters=None) -> ReplayReport:
    """Decide each transaction's first JSONL record under `rs`; link its later records.

    ``counters`` (gateway.backtest.RecomputedCounters) recomputes the counter features of
    every record instead of reading the logged ones: records then go in time order, and each
    one is decided (a step-up repeat too) so the counters learn what became of it.
    """
    report = ReplayReport()
    open_events: dict[str, Transaction] = {}
    records = _records(lines, report)
    if counters is not None:
        records = sorted(records, key=lambda nr: nr[1].get("ts") if _number(nr[1].get("ts")) else 0.0)
    for n, record in records:
        ts = record.get("ts")
        ts = float(ts) if _number(ts) else None
        if ts is not None:
            report.first_ts = ts if report.first_ts is None else min(report.first_ts, ts)
            report.last_ts = ts if report.last_ts is None else max(report.last_ts, ts)
        event = record.get("event_id")
        tx = open_events.get(event) if isinstance(event, str) else None
        if tx is not None:
            _follow(tx, record, ts, report)
            if counters is not None and isinstance(record.get("features"), dict):
                try:
                    counters.settle(record, rs.decide(counters.features(record), tx.route))
                except ValueError:
                    pass   # the transaction is already decided; its repeat only feeds counters
            continue
        before = logged_action(record)
        route, features = record.get("route"), record.get("features")
        if before is None or not isinstance(route, str) or not isinstance(features, dict):
            report.skipped.append(f"{n}: no decision, route or features")
            continue
        if counters is not None:
            features = counters.features(record)
        try:
            after = rs.decide(features, route)
        except ValueError as e:
            report.skipped.append(f"{n}: {e}")
            continue
        if counters is not None:
            counters.settle(record, after)
        report.attributes.update(features)
        transaction = record.get("transaction")
        amount = transaction.get("amount") if isinstance(transaction, dict) else None
        request_id = record.get("request_id")
        score = record.get("score")
        tx = Transaction(
            line=n, ts=ts, request_ids=[request_id] if isinstance(request_id, str) else [],
            user_id=record.get("user_id"),
            amount=float(amount) if _number(amount) else None,
            route=route, before=before,
            before_hits=tuple(h["id"] for h in record.get("rules") or ()
                              if isinstance(h, dict) and isinstance(h.get("id"), str)),
            before_score=score if _number(score) else None,
            after=after.action, after_hits=tuple(h.rule for h in after.hits), after_score=after.score,
            stepped_up=record.get("decision") == "step_up", last_ts=ts)
        if tx.stepped_up and record.get("error") in _FAILED:
            tx.ended = "failed"   # locked, or nothing enrolled: no challenge to answer
        report.transactions.append(tx)
        report.versions[str(record.get("rules_version", "?"))] += 1
        if isinstance(request_id, str):
            report.by_request[request_id] = tx
        if isinstance(event, str):
            open_events[event] = tx
    return report


def _records(lines, report: ReplayReport):
    """(line number, record) of every JSON object line; the others go to `skipped`."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        report.records += 1
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            report.skipped.append(f"{n}: not JSON ({str(e).split(':')[0]})")
            continue
        if not isinstance(record, dict):
            report.skipped.append(f"{n}: not a JSON object")
            continue
        yield n, record


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def unread_attributes(report: ReplayReport, rs: RuleSet) -> dict[str, list[str]]:
    """rule id -> the attributes it reads that no replayed record carries (route aside)."""
    missing = {}
    for rule in rs.rules:
        absent = sorted(expr_attrs(rule.expr) - report.attributes - {"route"})
        if absent:
            missing[rule.id] = absent
    return missing


def _follow(tx: Transaction, record: dict, ts: float | None, report: ReplayReport) -> None:
    """A later record of the same transaction: an answer to its challenge."""
    request_id = record.get("request_id")
    if isinstance(request_id, str):
        tx.request_ids.append(request_id)
        report.by_request[request_id] = tx
    if ts is not None:
        tx.last_ts = ts
    tx.answered = True
    if tx.ended == "passed":
        return
    decision = record.get("decision")
    if decision in ("allow", "review"):
        tx.ended = "passed"
    elif decision == "deny" or record.get("error") in _FAILED:
        tx.ended = "failed"
