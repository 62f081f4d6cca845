"""`txgate rules check | test | replay` and `txgate explain` as library functions returning exit codes.

The CLI wires argparse to these; each prints user errors as lines, never a traceback.
"""
from __future__ import annotations

import functools
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from rules.loader import RuleLoadError, case_files, load_rules, unchecked_attributes
from rules.explain import explain as explain_request
from rules.labels import parse_time, read_labels
from rules.outcomes import outcomes
from rules.replay import replay_file, unread_attributes, without_gc
from rules.replay_output import as_json, print_text
from rules.ruletests import read_cases, run_case
from rules.scenarios import Scenario


def _load(path, err, attribute_types):
    try:
        return load_rules(path, attribute_types)
    except RuleLoadError as e:
        for line in e.errors:
            print(line, file=err)
        return None


def check(path, out=None, err=None, attribute_types: dict[str, str] | None = None,
          config: str | None = None) -> int:
    """Validate a rules directory: errors as FILE:LINE: message on err; 0 when it loads.

    Attribute names are checked against ``attribute_types`` (the transaction fields of
    ``config``'s routes). Without them, the last line lists the names that could not be
    checked, so that a typo never passes unseen."""
    out, err = out or sys.stdout, err or sys.stderr
    rs = _load(path, err, attribute_types)
    if rs is None:
        return 1
    with rs:
        print(f"OK: {len(rs.rules)} rules, {len(rs.counters)} counters, version {rs.version}", file=out)
        if attribute_types is not None:
            print("attribute names checked against the transaction fields of "
                  f"{config or 'the routes given'}", file=out)
            return 0
        unchecked = unchecked_attributes(rs)
    if unchecked:
        why = (f"{config} declares no transaction fields" if config is not None
               else "no config: give --config FILE, or run where the gateway's txgate.yaml is")
        names = ", ".join(name + (f" (did you mean {near}?)" if near else "")
                          for name, near in unchecked.items())
        print(f"not checked ({why}): {names}", file=out)
    return 0


def run_tests(path, out=None, err=None, attribute_types: dict[str, str] | None = None,
              scenario_runner=None, require_coverage: bool = False) -> int:
    """Run the *_test.yaml cases and scenarios beside the rules; the coverage (the rules no
    case or scenario step expects to match), a line per kind, then `N passed, N failed`; 1 on
    any failure, and with ``require_coverage`` on any rule without a positive case.

    Scenarios need the gateway's counters: ``scenario_runner`` (gateway.scenario_runner,
    passed in by the CLI so that rules/ stays free of gateway/) runs them; without one they fail.
    """
    out, err = out or sys.stdout, err or sys.stderr
    rs = _load(path, err, attribute_types)
    if rs is None:
        print("0 passed, 1 failed", file=out)
        return 1
    tally = {"case": [0, 0], "scenario": [0, 0, 0]}   # passed, failed (, pending)
    invalid = skipped = 0
    positive: set[str] = set()   # rules some case or scenario step expects to match
    with rs:
        files = case_files(Path(path)) if Path(path).exists() else []
        if not files:
            print(f"{path}: no *_test.yaml files", file=err)
        for f in files:
            cases, errors = read_cases(f)
            for e in errors:
                print(e, file=err)
            invalid += len(errors)
            for case in cases:
                kind = "scenario" if isinstance(case, Scenario) else "case"
                if kind == "scenario" and case.config_only and not getattr(
                        scenario_runner, "has_config", False):
                    skipped += 1
                    print(f"SKIPPED scenario {case.where}: {case.name} (needs --config)", file=out)
                    continue
                pending = getattr(case, "pending", None)
                if not pending:   # a pending scenario shows nothing yet
                    positive.update(_expected_rules(case))
                problems = _run_one(case, rs, scenario_runner)
                if pending and problems:
                    tally[kind][2] += 1
                    print(f"PENDING scenario {case.where}: {case.name} ({pending})", file=out)
                    continue
                if pending:
                    problems = [f"passes now: remove `pending: {pending}`"]
                if problems:
                    tally[kind][1] += 1
                    print(f"FAIL {kind} {case.where}: {case.name}", file=out)
                    for p in problems:
                        print(f"    {p}", file=out)
                else:
                    tally[kind][0] += 1
        total, uncovered = len(rs.rules), [r.id for r in rs.rules if r.id not in positive]
    coverage = (f"coverage: every rule ({total}) has a positive case" if not uncovered
                else f"coverage: {total - len(uncovered)} of {total} rules have a positive case; "
                     f"without one: {', '.join(uncovered)}")
    print(("FAIL " if require_coverage and uncovered else "") + coverage, file=out)
    (cp, cf), (sp, sf, spend) = tally["case"], tally["scenario"]
    print(f"cases: {cp} passed, {cf} failed; scenarios: {sp} passed, {sf} failed, {spend} pending"
          + (f", {skipped} skipped" if skipped else "")
          + (f"; {invalid} invalid test items" if invalid else ""), file=out)
    passed, failed = cp + sp, cf + sf + invalid + (len(uncovered) if require_coverage else 0)
    print(f"{passed} passed, {failed} failed", file=out)
    return 1 if failed or not passed else 0


def _expected_rules(case) -> set[str]:
    """The rules a case, or any step of a scenario, expects to match."""
    if isinstance(case, Scenario):
        return {r for step in case.steps for r in step.rules}
    return set(case.rules)


def _run_one(case, rs, scenario_runner) -> list[str]:
    if not isinstance(case, Scenario):
        return run_case(case, rs)
    if scenario_runner is None:
        return ["a scenario needs the gateway's counters: run it with `txgate rules test`"]
    return scenario_runner.run(case, rs)


@without_gc()   # until the report is freed: a collection would walk all of it
def replay(log_path, rules_path, out=None, err=None, attribute_types: dict[str, str] | None = None,
           *, labels_path=None, skip_bad_labels: bool = False, mature_after_days: float | None = None,
           as_of: str | None = None, challenge_ttl_s: int = 300, changes: bool = False,
           json_out: bool = False, recompute=None, html_path=None) -> int:
    """Re-decide a decision log's transactions under the candidate rules and print what
    changes; with a labels file, what each rule and set stopped and at what cost.

    ``recompute(rs, challenge_ttl_s)`` builds the counters hook of ``replay_lines``
    (gateway.backtest.RecomputedCounters: rules/ cannot import the gateway's velocity)."""
    out, err = out or sys.stdout, err or sys.stderr
    if mature_after_days is not None and not mature_after_days >= 0:
        print(f"--mature-after {mature_after_days:g}: give a number of days >= 0", file=err)
        return 1
    labels = None
    if labels_path is not None:
        try:
            labels, bad = read_labels(labels_path)
        except OSError as e:
            print(f"{labels_path}: {e.strerror or e}", file=err)
            return 1
        for line in bad:
            print(line, file=err)
        if bad and not skip_bad_labels:
            print(f"{len(bad)} bad label rows: fix them or pass --skip-bad-labels", file=err)
            return 1
    try:
        as_of_ts = parse_time(as_of, "--as-of")
    except ValueError as e:
        print(str(e), file=err)
        return 1
    rs = _load(rules_path, err, attribute_types)
    if rs is None:
        return 1
    with rs:
        try:
            counters = recompute(rs, challenge_ttl_s) if recompute is not None else None
            load = functools.partial(load_rules, rules_path, attribute_types)
            report = replay_file(log_path, rs, counters, load, os.cpu_count() or 1)
        except OSError as e:
            print(f"{log_path}: {e.strerror or e}", file=err)
            return 1
        notes = warnings(report, rs, counters)
        found = outcomes(report, labels, challenge_ttl_s=challenge_ttl_s, as_of=as_of_ts,
                         mature_after_s=None if mature_after_days is None else mature_after_days * 86400)
        if html_path is not None:
            from rules.replay_html import write_html   # plotly loads in ~1 s: only when asked
            try:
                write_html(html_path, report, found, rs.thresholds, rs.version)
            except OSError as e:
                print(f"{html_path}: {e.strerror or e}", file=err)
                return 1
        if json_out:
            out.write(as_json(report, found, rs.version, changes, notes).decode())
        else:
            print_text(report, found, rs.version, changes, out, notes)
    return 0


def warnings(report, rs, counters) -> list[str]:
    """What makes the replay differ from what the candidate would really have decided."""
    notes = []
    counted = {c.feature for c in rs.counters}
    for rule, absent in unread_attributes(report, rs).items():
        hint = ("; counters the log lacks need --recompute"
                if counters is None and counted.intersection(absent) else "")
        notes.append(f"rule {rule} reads {', '.join(absent)}, which no replayed record carries: "
                     f"it can only match without them{hint}")
    if counters is not None and rs.counters and report.first_ts is not None:
        longest = max(c.window_s or 0 for c in rs.counters)
        start = datetime.fromtimestamp(report.first_ts, timezone.utc).isoformat(timespec="seconds")
        notes.append(f"warm-up: counters start empty at the log's first record ({start}); "
                     f"for {_span(longest) if longest else 'their retention'} after it they "
                     f"saw less history than the gateway did")
        if counters.differences:
            notes.append("recomputed counters differ from the logged ones: " + ", ".join(
                f"{name} in {n} records" for name, n in sorted(counters.differences.items())))
    return notes


def _span(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def explain(log_path, request_id: str, rules_path, out=None, err=None,
            attribute_types: dict[str, str] | None = None) -> int:
    """Why one logged request was decided as it was, and what `rules_path` decides on it."""
    out, err = out or sys.stdout, err or sys.stderr
    rs = _load(rules_path, err, attribute_types)
    if rs is None:
        return 1
    with rs:
        return explain_request(log_path, request_id, rs, str(rules_path), out, err)
