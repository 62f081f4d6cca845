"""Outcome metrics of a replay: what each rule and each rule set stopped, and at what cost.

Every transaction gets a class: ``fraud`` or ``genuine`` from its label (joined on any of its
request ids), ``genuine`` when unlabelled and older than ``mature_after_s`` at ``as_of``, else
none (left out of precision, recall and friction; still counted in hits). "Stopped" is a deny
or a step-up; amounts are the label's ``amount``, else the logged transaction's ``amount``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from rules.labels import Label
from rules.replay import STEP_UP_OUTCOMES, STOPPED, ReplayReport, Transaction

SETS = ("logged", "candidate")


@dataclass(frozen=True)
class Outcomes:
    sets: dict          # "logged" / "candidate" -> set metrics
    rules: dict         # rule id -> {"logged": metrics, "candidate": metrics, "step_up": {...}}
    step_up: dict       # outcome -> transactions (the logged step-ups)
    labels: dict | None  # how the labels joined, None without a labels file
    classes: dict       # id(transaction) -> (class, amount) for the transactions with a class


def classify(report: ReplayReport, labels: dict[str, Label] | None, *, as_of: float | None,
             mature_after_s: float | None) -> tuple[dict[int, tuple[str, float]], dict | None]:
    """id(transaction) -> (class, amount) for the transactions with a class; join counts."""
    if labels is None:
        return {}, None
    classes: dict[int, tuple[str, float]] = {}
    joined = Counter()
    seen: set[int] = set()
    for request_id, label in labels.items():
        tx = report.by_request.get(request_id)
        if tx is None:
            joined["not_in_log"] += 1
            continue
        if id(tx) in seen:
            joined["duplicate_transaction"] += 1
            continue
        seen.add(id(tx))
        if as_of is not None and label.reported_at is not None and label.reported_at > as_of:
            joined["reported_after_as_of"] += 1
            continue
        amount = label.amount if label.amount is not None else tx.amount
        classes[id(tx)] = (label.label, amount or 0.0)
        joined[label.label] += 1
    for tx in report.transactions:
        if id(tx) in classes:
            continue
        mature = (mature_after_s is not None and as_of is not None and tx.ts is not None
                  and as_of - tx.ts >= mature_after_s)
        if mature:
            classes[id(tx)] = ("genuine", tx.amount or 0.0)
            joined["matured_genuine"] += 1
        else:
            joined["left_out"] += 1
    return classes, {k: joined[k] for k in ("fraud", "genuine", "matured_genuine", "left_out",
                                            "not_in_log", "duplicate_transaction",
                                            "reported_after_as_of")}


def outcomes(report: ReplayReport, labels: dict[str, Label] | None, *, challenge_ttl_s: float,
             as_of: float | None = None, mature_after_s: float | None = None) -> Outcomes:
    as_of = as_of if as_of is not None else report.last_ts
    classes, joined = classify(report, labels, as_of=as_of, mature_after_s=mature_after_s)
    sets = {s: _Tally() for s in SETS}
    rules: dict[str, dict] = {}
    step_ups = Counter()
    for tx in report.transactions:
        cls, amount = classes.get(id(tx), (None, 0.0))
        outcome = tx.step_up_outcome(report.last_ts, challenge_ttl_s)
        if outcome:
            step_ups[outcome] += 1
        for s, action, hits in (("logged", tx.before, tx.before_hits),
                                ("candidate", tx.after, tx.after_hits)):
            sets[s].add(cls, amount, action in STOPPED, action == "deny")
            for rule in hits:
                entry = rules.setdefault(rule, {"logged": _Tally(), "candidate": _Tally(),
                                                "step_up": Counter()})
                entry[s].add(cls, amount, True, action == "deny")
                if s == "logged" and outcome:
                    entry["step_up"][outcome] += 1
    fraud = (sets["logged"].fraud, sets["logged"].fraud_amount)
    return Outcomes(
        sets={s: t.as_set(fraud, labelled=labels is not None) for s, t in sets.items()},
        rules={r: {"logged": e["logged"].as_rule(fraud, labels is not None),
                   "candidate": e["candidate"].as_rule(fraud, labels is not None),
                   "step_up": {o: e["step_up"][o] for o in STEP_UP_OUTCOMES}}
               for r, e in sorted(rules.items())},
        step_up={o: step_ups[o] for o in STEP_UP_OUTCOMES},
        labels=joined, classes=classes)


class _Tally:
    """Counts for one rule or one set; `stopped` is what it counts as a hit."""

    def __init__(self):
        self.hits = self.tp = self.fp = self.denied_genuine = self.fraud = self.genuine = 0
        self.tp_amount = self.fp_amount = self.fraud_amount = self.genuine_amount = 0.0

    def add(self, cls: str | None, amount: float, stopped: bool, denied: bool) -> None:
        self.hits += stopped
        if cls == "fraud":
            self.fraud += 1
            self.fraud_amount += amount
            if stopped:
                self.tp += 1
                self.tp_amount += amount
        elif cls == "genuine":
            self.genuine += 1
            self.genuine_amount += amount
            if stopped:
                self.fp += 1
                self.fp_amount += amount
                self.denied_genuine += denied

    def as_rule(self, fraud: tuple[int, float], labelled: bool) -> dict:
        out = {"hits": self.hits}
        if labelled:
            out.update({"tp": self.tp, "fp": self.fp, "precision": _ratio(self.tp, self.tp + self.fp),
                        "recall": _ratio(self.tp, fraud[0]),
                        "recall_amount": _ratio(self.tp_amount, fraud[1]),
                        "fraud_amount": round(self.tp_amount, 2),
                        "genuine_amount": round(self.fp_amount, 2)})
        return out

    def as_set(self, fraud: tuple[int, float], labelled: bool) -> dict:
        out = {"stopped": self.hits}
        if labelled:
            out.update({
                "fraud": fraud[0], "fraud_amount": round(fraud[1], 2),
                "fraud_stopped": self.tp, "fraud_amount_stopped": round(self.tp_amount, 2),
                "genuine": self.genuine, "genuine_amount": round(self.genuine_amount, 2),
                "genuine_stopped": self.fp, "genuine_amount_stopped": round(self.fp_amount, 2),
                "genuine_denied": self.denied_genuine,
                "genuine_stepped_up": self.fp - self.denied_genuine,
                "precision": _ratio(self.tp, self.tp + self.fp),
                "recall": _ratio(self.tp, fraud[0]),
                "recall_amount": _ratio(self.tp_amount, fraud[1])})
        return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def change_rows(report: ReplayReport) -> list[dict]:
    """The transactions whose decision changes: id, user, amount, from -> to and what set
    each (the logged set_by, None in records older than it), rules +/-."""
    return [_change(tx) for tx in report.transactions if tx.changed]


def _change(tx: Transaction) -> dict:
    return {"request_id": tx.request_ids[0] if tx.request_ids else None, "line": tx.line,
            "user_id": tx.user_id, "amount": tx.amount, "from": tx.before, "to": tx.after,
            "from_set_by": tx.before_set_by, "to_set_by": tx.after_set_by,
            "added": [r for r in tx.after_hits if r not in tx.before_hits],
            "removed": [r for r in tx.before_hits if r not in tx.after_hits]}
