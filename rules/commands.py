"""`txgate rules check | test | replay` and `txgate explain` as library functions returning exit codes.

The CLI wires argparse to these; each prints user errors as lines, never a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path

from rules.loader import RuleLoadError, load_rules, case_files
from rules.explain import explain as explain_request
from rules.labels import parse_time, read_labels
from rules.outcomes import outcomes
from rules.replay import replay_lines
from rules.replay_output import as_json, print_text
from rules.ruletests import read_cases, run_case


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


def run_tests(path, out=None, err=None, attribute_types: dict[str, str] | None = None) -> int:
    """Run the *_test.yaml cases beside the rules; last line `N passed, N failed`; 1 on any failure."""
    out, err = out or sys.stdout, err or sys.stderr
    rs = _load(path, err, attribute_types)
    if rs is None:
        print("0 passed, 1 failed", file=out)
        return 1
    passed = failed = 0
    with rs:
        files = case_files(Path(path)) if Path(path).exists() else []
        if not files:
            print(f"{path}: no *_test.yaml files", file=err)
        for f in files:
            cases, errors = read_cases(f)
            for e in errors:
                print(e, file=err)
            failed += len(errors)
            for case in cases:
                problems = run_case(case, rs)
                if problems:
                    failed += 1
                    print(f"FAIL {case.where}: {case.name}", file=out)
                    for p in problems:
                        print(f"    {p}", file=out)
                else:
                    passed += 1
    print(f"{passed} passed, {failed} failed", file=out)
    return 1 if failed or not passed else 0


def replay(log_path, rules_path, out=None, err=None, attribute_types: dict[str, str] | None = None,
           *, labels_path=None, skip_bad_labels: bool = False, mature_after_days: float | None = None,
           as_of: str | None = None, challenge_ttl_s: float = 300, changes: bool = False,
           json_out: bool = False) -> int:
    """Re-decide a decision log's transactions under the candidate rules and print what
    changes; with a labels file, what each rule and set stopped and at what cost."""
    out, err = out or sys.stdout, err or sys.stderr
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
            with open(log_path, "rb") as fh:
                report = replay_lines(fh, rs)
        except OSError as e:
            print(f"{log_path}: {e.strerror or e}", file=err)
            return 1
        found = outcomes(report, labels, challenge_ttl_s=challenge_ttl_s, as_of=as_of_ts,
                         mature_after_s=None if mature_after_days is None else mature_after_days * 86400)
        if json_out:
            out.write(as_json(report, found, rs.version, changes).decode())
        else:
            print_text(report, found, rs.version, changes, out)
    return 0


def explain(log_path, request_id: str, rules_path, out=None, err=None,
            attribute_types: dict[str, str] | None = None) -> int:
    """Why one logged request was decided as it was, and what `rules_path` decides on it."""
    out, err = out or sys.stdout, err or sys.stderr
    rs = _load(rules_path, err, attribute_types)
    if rs is None:
        return 1
    with rs:
        return explain_request(log_path, request_id, rs, str(rules_path), out, err)
