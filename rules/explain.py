"""`txgate explain REQUEST_ID`: why one logged request was decided as it was.

Prints the transaction (every record sharing the request's event id), every feature value the
rules saw, each matched rule with its `when` and the values it read, the score and what set
the decision (the record's ``set_by``); then what a rule set (`--rules`, else the configured one) decides on the same
features, and why.
"""
from __future__ import annotations

import sys
from datetime import datetime, timezone

import orjson

from rules.decision import SEVERITY, Decision
from rules.expressions import expr_attrs
from rules.ruleset import RuleSet


def find_transaction(log_path, request_id: str) -> tuple[int, dict, list[tuple[int, dict]]] | None:
    """(line, record, [(line, record) of its transaction]) of `request_id`, None if not logged."""
    needle = orjson.dumps(request_id)
    found = None
    with open(log_path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            if needle in line:   # a cheap filter before parsing
                record = _parse(line)
                if record is not None and record.get("request_id") == request_id:
                    found = (n, record)
                    break
    if found is None:
        return None
    event = found[1].get("event_id")
    if not isinstance(event, str):
        return found[0], found[1], [found]
    needle, records = orjson.dumps(event), []
    with open(log_path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            if needle in line:
                record = _parse(line)
                if record is not None and record.get("event_id") == event:
                    records.append((n, record))
    return found[0], found[1], records


def _parse(line: bytes) -> dict | None:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def explain(log_path, request_id: str, rs: RuleSet, rules_dir: str, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        found = find_transaction(log_path, request_id)
    except OSError as e:
        print(f"{log_path}: {e.strerror or e}", file=err)
        return 1
    if found is None:
        print(f"{log_path}: no record with request_id {request_id}", file=err)
        return 1
    line, record, transaction = found
    print(f"request {request_id} ({log_path}:{line})", file=out)
    for key in ("route", "client_id", "user_id", "tier", "rules_version"):
        print(f"  {key}: {record.get(key)}", file=out)
    print(f"  at: {_when(record.get('ts'))}", file=out)
    print("transaction: " + _values(record.get("transaction") or {}), file=out)
    if len(transaction) > 1:
        print(f"one transaction, event {record.get('event_id')}: {len(transaction)} records", file=out)
        for n, r in transaction:
            mark = "*" if n == line else " "
            print(f"  {mark} line {n}: {r.get('request_id')} tier {r.get('tier')} -> "
                  f"{r.get('decision')}" + (f" ({r['error']})" if r.get("error") else ""), file=out)
    features = record.get("features") if isinstance(record.get("features"), dict) else {}
    print("features:", file=out)
    for name in sorted(features):
        print(f"  {name} = {_show(features[name])}", file=out)
    rules = {r.id: r for r in rs.rules}
    print(f"logged decision: {record.get('decision')} (action {record.get('action')}, "
          f"score {record.get('score')})", file=out)
    logged_hits = [h for h in record.get("rules") or () if isinstance(h, dict)]
    if logged_hits and record.get("rules_version") != rs.version:
        print(f"  (the logged rules were {record.get('rules_version')}: the `when` shown is that "
              f"of rules {rs.version})", file=out)
    for hit in logged_hits:
        what = hit.get("action") or f"score {hit.get('score')}"
        print(f"  matched {hit.get('id')} ({what}, {hit.get('mode')})", file=out)
        _print_rule(rules.get(hit.get("id")), features, out)
    print(f"  set by: {_logged_reason(record, logged_hits)}", file=out)
    route = record.get("route")
    if not isinstance(route, str):
        return 0
    try:
        decision = rs.decide(features, route)
    except ValueError as e:
        print(f"rules {rs.version} ({rules_dir}) cannot decide it: {e}", file=out)
        return 0
    print(f"under rules {rs.version} ({rules_dir}): {decision.action} (score {decision.score:g})",
          file=out)
    for hit in decision.hits:
        what = hit.action or f"score {hit.score:g}"
        print(f"  matched {hit.rule} ({what}, {hit.mode})", file=out)
        _print_rule(rules[hit.rule], features, out)
    print(f"  set by: {why(decision)}", file=out)
    return 0


def _print_rule(rule, features: dict, out) -> None:
    if rule is None:
        print("    (not in the rule set given: its `when` is unknown)", file=out)
        return
    print(f"    when: {rule.when}   [{rule.file}:{rule.line}]", file=out)
    print("    read: " + ", ".join(f"{a} = {_show(features[a]) if a in features else '(absent)'}"
                                   for a in sorted(expr_attrs(rule.expr))), file=out)


def why(decision: Decision) -> str:
    """The decision's ``set_by``, with the enforced scores that make up a score it names."""
    scored = [f"{h.rule} {h.score:+g}" for h in decision.hits
              if h.mode == "enforce" and h.score is not None]
    if decision.set_by.startswith("score ") and scored:
        return f"{decision.set_by} ({', '.join(scored)})"
    return decision.set_by


def _logged_reason(record: dict, hits: list[dict]) -> str:
    set_by = record.get("set_by")
    if isinstance(set_by, str):
        return set_by
    action = record.get("action")
    if not isinstance(action, str) or action not in SEVERITY:
        return f"no rule decision was made ({record.get('error') or record.get('decision')})"
    # A record from before the decision log had set_by: what it can still tell.
    by_rule = [h.get("id") for h in hits if h.get("mode") == "enforce" and h.get("action") == action]
    if by_rule:
        return ("rule " if len(by_rule) == 1 else "rules ") + ", ".join(map(str, by_rule))
    if action == "allow":
        return f"score {record.get('score')}, below the logged set's thresholds"
    return f"score {record.get('score')}, at or above the logged set's {action} threshold"


def _when(ts) -> str:
    if not isinstance(ts, (int, float)):
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


def _values(d: dict) -> str:
    return ", ".join(f"{k}={_show(v)}" for k, v in d.items()) or "-"


def _show(value) -> str:
    return orjson.dumps(value).decode() if isinstance(value, str) else str(value)
