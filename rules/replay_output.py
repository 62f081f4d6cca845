"""What `txgate rules replay` prints: the text tables, or one JSON document (docs/rules.md)."""
from __future__ import annotations

from collections import Counter

import orjson

from rules.outcomes import Outcomes, change_rows
from rules.replay import ReplayReport


def changed_pairs(report: ReplayReport) -> Counter:
    return Counter((tx.before, tx.after) for tx in report.transactions if tx.changed)


def as_json(report: ReplayReport, outcomes: Outcomes, candidate_version: str, changes: bool,
            warnings: list[str]) -> bytes:
    doc = {
        "candidate_version": candidate_version,
        "logged_versions": dict(report.versions.most_common()),
        "records": report.records,
        "transactions": report.compared,
        "first_ts": report.first_ts, "last_ts": report.last_ts,
        "skipped": [{"line": int(s.split(":", 1)[0]), "reason": s.split(": ", 1)[1]}
                    for s in report.skipped],
        "changed": [{"from": a, "to": b, "count": n}
                    for (a, b), n in sorted(changed_pairs(report).items(), key=lambda kv: (-kv[1], kv[0]))],
        "sets": outcomes.sets,
        "rules": [{"id": rid, **entry} for rid, entry in outcomes.rules.items()],
        "step_up": outcomes.step_up,
        "labels": outcomes.labels,
        "warnings": warnings,
    }
    if changes:
        doc["changes"] = change_rows(report)
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)


def print_text(report: ReplayReport, outcomes: Outcomes, candidate_version: str, changes: bool,
               out, warnings: list[str]) -> None:
    pairs = changed_pairs(report)
    changed = sum(pairs.values())
    logged = ", ".join(f"{v} ({n})" for v, n in report.versions.most_common()) or "-"
    print(f"replayed {report.compared} transactions from {report.records} records "
          f"(logged rules {logged} -> candidate {candidate_version})", file=out)
    for note in warnings:
        print(f"warning: {note}", file=out)
    for why in report.skipped[:10]:
        print(f"  skipped line {why}", file=out)
    if len(report.skipped) > 10:
        print(f"  ... and {len(report.skipped) - 10} more skipped", file=out)
    print(f"{changed} decisions change", file=out)
    if changed:
        print(f"  {'from':<16}{'to':<16}{'count':>7}", file=out)
        for (a, b), n in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {a:<16}{b:<16}{n:>7}", file=out)
    su = outcomes.step_up
    print("step-ups (logged): " + ", ".join(f"{n} {o}" for o, n in su.items()), file=out)
    print("rule hits", file=out)
    print(f"  {'rule':<20}{'before':>8}{'after':>8}{'delta':>8}"
          f"{'passed':>8}{'failed':>8}{'abandon':>8}{'pending':>8}", file=out)
    for rid, entry in outcomes.rules.items():
        b, a = entry["logged"]["hits"], entry["candidate"]["hits"]
        s = entry["step_up"]
        print(f"  {rid:<20}{b:>8}{a:>8}{a - b:>+8}"
              f"{s['passed']:>8}{s['failed']:>8}{s['abandoned']:>8}{s['pending']:>8}", file=out)
    if outcomes.labels is not None:
        _print_outcomes(outcomes, out)
    if changes:
        _print_changes(report, out)


def _print_outcomes(outcomes: Outcomes, out) -> None:
    j = outcomes.labels
    print(f"labels: {j['fraud']} fraud, {j['genuine']} genuine, {j['matured_genuine']} unlabelled "
          f"counted genuine (mature), {j['left_out']} unlabelled left out; "
          f"{j['not_in_log']} labels not in the log", file=out)
    if j["duplicate_transaction"] or j["reported_after_as_of"]:
        print(f"  ignored: {j['duplicate_transaction']} second labels of one transaction, "
              f"{j['reported_after_as_of']} reported after --as-of", file=out)
    print(f"  {'set':<20}{'stopped':>8}{'TP':>6}{'FP':>6}{'prec':>7}{'recall':>7}{'recall€':>8}"
          f"{'genuine€ stopped':>18}", file=out)
    for name, m in outcomes.sets.items():
        print(f"  {name:<20}{m['stopped']:>8}{m['fraud_stopped']:>6}{m['genuine_stopped']:>6}"
              f"{_pct(m['precision']):>7}{_pct(m['recall']):>7}{_pct(m['recall_amount']):>8}"
              f"{m['genuine_amount_stopped']:>18.2f}", file=out)
    print("  per rule (logged | candidate)", file=out)
    print(f"  {'rule':<20}{'TP':>6}{'FP':>6}{'prec':>7}{'recall':>7}{'recall€':>8}  |"
          f"{'TP':>6}{'FP':>6}{'prec':>7}{'recall':>7}{'recall€':>8}", file=out)
    for rid, entry in outcomes.rules.items():
        cells = []
        for s in ("logged", "candidate"):
            m = entry[s]
            cells.append(f"{m['tp']:>6}{m['fp']:>6}{_pct(m['precision']):>7}{_pct(m['recall']):>7}"
                         f"{_pct(m['recall_amount']):>8}")
        print(f"  {rid:<20}{cells[0]}  |{cells[1]}", file=out)


def _print_changes(report: ReplayReport, out) -> None:
    print("changed transactions", file=out)
    for row in change_rows(report):
        amount = "-" if row["amount"] is None else f"{row['amount']:g}"
        moved = " ".join([f"+{r}" for r in row["added"]] + [f"-{r}" for r in row["removed"]])
        print(f"  {row['request_id'] or 'line ' + str(row['line'])}  user={row['user_id']}  "
              f"amount={amount}  {_set(row['from'], row['from_set_by'])} -> "
              f"{_set(row['to'], row['to_set_by'])}  {moved}".rstrip(), file=out)


def _set(action: str, set_by: str | None) -> str:
    return f"{action} ({set_by})" if set_by else action


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"
