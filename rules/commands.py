"""`txgate rules check | test | replay` as library functions returning exit codes.

The CLI wires argparse to these; each prints user errors as lines, never a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path

from rules.loader import RuleLoadError, load_rules, case_files
from rules.replay import format_report, replay_lines
from rules.ruletests import read_cases, run_case
from rules.scenarios import Scenario


def _load(path, err, attribute_types):
    try:
        return load_rules(path, attribute_types)
    except RuleLoadError as e:
        for line in e.errors:
            print(line, file=err)
        return None


def check(path, out=None, err=None, attribute_types: dict[str, str] | None = None) -> int:
    """Validate a rules directory: errors as FILE:LINE: message on err; 0 when it loads."""
    out, err = out or sys.stdout, err or sys.stderr
    rs = _load(path, err, attribute_types)
    if rs is None:
        return 1
    with rs:
        print(f"OK: {len(rs.rules)} rules, {len(rs.counters)} counters, version {rs.version}", file=out)
    return 0


def run_tests(path, out=None, err=None, attribute_types: dict[str, str] | None = None,
              scenario_runner=None) -> int:
    """Run the *_test.yaml cases and scenarios beside the rules; a line per kind, then
    `N passed, N failed`; 1 on any failure.

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
                problems = _run_one(case, rs, scenario_runner)
                pending = getattr(case, "pending", None)
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
    (cp, cf), (sp, sf, spend) = tally["case"], tally["scenario"]
    print(f"cases: {cp} passed, {cf} failed; scenarios: {sp} passed, {sf} failed, {spend} pending"
          + (f", {skipped} skipped" if skipped else "")
          + (f"; {invalid} invalid test items" if invalid else ""), file=out)
    passed, failed = cp + sp, cf + sf + invalid
    print(f"{passed} passed, {failed} failed", file=out)
    return 1 if failed or not passed else 0


def _run_one(case, rs, scenario_runner) -> list[str]:
    if not isinstance(case, Scenario):
        return run_case(case, rs)
    if scenario_runner is None:
        return ["a scenario needs the gateway's counters: run it with `txgate rules test`"]
    return scenario_runner.run(case, rs)


def replay(log_path, rules_path, out=None, err=None, attribute_types: dict[str, str] | None = None) -> int:
    """Re-decide a decision log's records under the candidate rules and print what changes."""
    out, err = out or sys.stdout, err or sys.stderr
    rs = _load(rules_path, err, attribute_types)
    if rs is None:
        return 1
    with rs:
        try:
            with open(log_path, encoding="utf-8") as fh:
                report = replay_lines(fh, rs)
        except OSError as e:
            print(f"{log_path}: {e.strerror or e}", file=err)
            return 1
        format_report(report, rs, out)
    return 0
