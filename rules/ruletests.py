"""`*_test.yaml` cases: a transaction and its features in, an expected decision out.

Items with `steps:` are scenarios instead (``rules.scenarios``): their features come from the
real counters, so the gateway runs them.

Cases run through the real engine (the same `RuleSet.decide` the gateway calls), so a passing
suite says what production will do, quirks included.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rules.decision import ACTIONS
from rules.ruleset import RuleSet
from rules.scenarios import Scenario, is_scenario, read_scenario
from rules.yamlsrc import LineDict, line_of, load_yaml

CASE_KEYS = {"name", "route", "tier", "transaction", "features", "expect"}
EXPECT_KEYS = {"action", "rules", "not_rules", "score", "set_by"}
DEFAULT_ROUTE = "payments"


@dataclass(frozen=True)
class Case:
    name: str
    where: str                     # FILE:LINE
    route: str | None
    attrs: dict
    action: str | None
    rules: tuple[str, ...]         # must all match
    not_rules: tuple[str, ...]     # must not match
    score: float | None
    set_by: str | None = None      # the decision's set_by, exactly: "rule ATO-004"


def read_cases(file: Path) -> tuple[list[Case | Scenario], list[str]]:
    """Parse one test file; return its cases and scenarios, and its errors as FILE:LINE: message."""
    data, problems = load_yaml(file.read_text(encoding="utf-8"))
    errors = [f"{file}:{ln}: {m}" for ln, m in problems]
    if data is None:
        return [], errors
    if not isinstance(data, list):
        return [], errors + [f"{file}:{line_of(data)}: a test file is a list of cases"]
    cases = []
    for item, ln in zip(data, data.item_lines):
        where = f"{file}:{ln}"
        problems = []
        if is_scenario(item):
            scenario, problems = read_scenario(file, item, ln)
            errors += problems
            if scenario is not None:
                cases.append(scenario)
            continue
        if not isinstance(item, LineDict):
            errors.append(f"{where}: a case is a mapping with name, transaction, features, expect")
            continue
        problems += [f"{file}:{line_of(item, k)}: unknown case key {k!r}" for k in item if k not in CASE_KEYS]
        expect = item.get("expect")
        if not isinstance(expect, LineDict):
            problems.append(f"{where}: case needs expect: {{action: ..., rules: [...]}}")
            expect = LineDict()
        problems += [f"{file}:{line_of(expect, k)}: unknown expect key {k!r}" for k in expect if k not in EXPECT_KEYS]
        attrs = {}
        for part in ("transaction", "features"):
            value = item.get(part, {})
            if not isinstance(value, dict):
                problems.append(f"{file}:{line_of(item, part)}: {part} must be a mapping")
            else:
                attrs.update(value)
        if "tier" in item:
            attrs["tier"] = item["tier"]
        attrs.setdefault("tier", "client")
        if "action" in expect and expect["action"] not in ACTIONS:
            problems.append(f"{file}:{line_of(expect, 'action')}: action {expect['action']!r} is not one of {', '.join(ACTIONS)}")
        lists = {}
        for k in ("rules", "not_rules"):
            v = expect.get(k, [])
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                problems.append(f"{file}:{line_of(expect, k)}: expect.{k} must be a list of rule ids")
                v = []
            lists[k] = tuple(v)
        if not (EXPECT_KEYS & set(expect)):
            problems.append(f"{where}: expect says nothing to check")
        if "set_by" in expect and (not isinstance(expect["set_by"], str) or not expect["set_by"]):
            problems.append(f"{file}:{line_of(expect, 'set_by')}: expect.set_by is text, as the "
                            "decision log writes it (\"rule ATO-004\", \"score 130 >= deny 100\")")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: case needs a name")
        if problems:
            errors += problems
            continue
        cases.append(Case(name, where, item.get("route"), attrs, expect.get("action"),
                          lists["rules"], lists["not_rules"], expect.get("score"),
                          expect.get("set_by")))
    return cases, errors


def case_route(case: Case, rs: RuleSet) -> str:
    """The case's route, else the first route an expected rule is limited to, else payments."""
    return case.route or route_of(rs, case.rules + case.not_rules)


def route_of(rs: RuleSet, rule_ids) -> str:
    """The first route one of these rules is limited to, else payments."""
    by_id = {r.id: r for r in rs.rules}
    for rid in rule_ids:
        rule = by_id.get(rid)
        if rule and rule.routes:
            return rule.routes[0]
    return DEFAULT_ROUTE


def run_case(case: Case, rs: RuleSet) -> list[str]:
    """Failure messages for one case (empty when it passes)."""
    known = {r.id for r in rs.rules}
    missing = [r for r in case.rules + case.not_rules if r not in known]
    if missing:
        return [f"unknown rule ids: {', '.join(missing)}"]
    try:
        decision = rs.decide(case.attrs, case_route(case, rs))
    except ValueError as e:
        return [f"transaction refused: {e}"]
    failures = decision_failures(case, decision)
    if failures:
        failures.append(f"matched: {', '.join(h.rule for h in decision.hits) or '(none)'}; "
                        f"action {decision.action}, score {decision.score:g}")
    return failures


def decision_failures(expected, decision) -> list[str]:
    """What of ``expected``'s action, rules, not_rules and score the decision missed (a case,
    or a scenario step)."""
    matched = [h.rule for h in decision.hits]
    failures = []
    if expected.action is not None and decision.action != expected.action:
        failures.append(f"expected action {expected.action}, got {decision.action}")
    absent = [r for r in expected.rules if r not in matched]
    if absent:
        failures.append(f"expected rules to match: {', '.join(absent)}")
    extra = [r for r in expected.not_rules if r in matched]
    if extra:
        failures.append(f"expected rules not to match: {', '.join(extra)}")
    if expected.score is not None and abs(decision.score - float(expected.score)) > 1e-9:
        failures.append(f"expected score {expected.score}, got {decision.score:g}")
    if expected.set_by is not None and decision.set_by != expected.set_by:
        failures.append(f"expected set_by {expected.set_by!r}, got {decision.set_by!r}")
    return failures
