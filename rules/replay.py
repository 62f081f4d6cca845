"""Re-decide logged transactions under candidate rules: what would change before it ships."""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from rules.ruleset import RuleSet

_STEP_UP = ("require_otp", "require_device")


@dataclass
class ReplayReport:
    records: int = 0
    skipped: list[str] = field(default_factory=list)     # "LINE: why"
    changed: Counter = field(default_factory=Counter)   # (before, after) -> n
    compared: int = 0
    hits_before: Counter = field(default_factory=Counter)
    hits_after: Counter = field(default_factory=Counter)
    versions: Counter = field(default_factory=Counter)


def logged_action(record: dict) -> str | None:
    """The rule action a record was decided with: its `action`, else its gateway decision name."""
    action = record.get("action")
    if isinstance(action, str):
        return action
    decision = record.get("decision")
    return decision if isinstance(decision, str) and decision != "error" else None


def replay_lines(lines, rs: RuleSet) -> ReplayReport:
    """Decide each JSONL record's features under `rs` and tally what changes."""
    report = ReplayReport()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        report.records += 1
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            report.skipped.append(f"{n}: not JSON ({e.msg})")
            continue
        if not isinstance(record, dict):
            report.skipped.append(f"{n}: not a JSON object")
            continue
        if record.get("type") == "audit":   # a credential change, not a decision
            report.records -= 1
            continue
        before = logged_action(record)
        route, features = record.get("route"), record.get("features")
        if before is None or not isinstance(route, str) or not isinstance(features, dict):
            report.skipped.append(f"{n}: no decision, route or features")
            continue
        try:
            after = rs.decide(features, route)
        except ValueError as e:
            report.skipped.append(f"{n}: {e}")
            continue
        report.compared += 1
        report.versions[str(record.get("rules_version", "?"))] += 1
        for hit in record.get("rules") or []:
            if isinstance(hit, dict) and isinstance(hit.get("id"), str):
                report.hits_before[hit["id"]] += 1
        for hit in after.hits:
            report.hits_after[hit.rule] += 1
        same = after.action == before or (before == "step_up" and after.action in _STEP_UP)
        if not same:
            report.changed[(before, after.action)] += 1
    return report


def format_report(report: ReplayReport, rs: RuleSet, out) -> None:
    """Print the summary, the from->to table and per-rule hits before/after."""
    changed = sum(report.changed.values())
    logged = ", ".join(f"{v} ({n})" for v, n in report.versions.most_common()) or "-"
    print(f"replayed {report.compared} of {report.records} records "
          f"(logged rules {logged} -> candidate {rs.version})", file=out)
    for why in report.skipped[:10]:
        print(f"  skipped line {why}", file=out)
    if len(report.skipped) > 10:
        print(f"  ... and {len(report.skipped) - 10} more skipped", file=out)
    print(f"{changed} decisions change", file=out)
    if changed:
        print(f"  {'from':<16}{'to':<16}{'count':>7}", file=out)
        for (a, b), n in sorted(report.changed.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {a:<16}{b:<16}{n:>7}", file=out)
    ids = sorted(set(report.hits_before) | set(report.hits_after))
    print("rule hits", file=out)
    print(f"  {'rule':<20}{'before':>8}{'after':>8}{'delta':>8}", file=out)
    for rid in ids:
        b, a = report.hits_before[rid], report.hits_after[rid]
        print(f"  {rid:<20}{b:>8}{a:>8}{a - b:>+8}", file=out)
