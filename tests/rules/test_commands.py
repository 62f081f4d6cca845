"""check / run_tests / replay as the CLI calls them, and the shipped pack's own tests."""
import io
import re
import json
from pathlib import Path

from rules import load_rules
from rules.commands import check, replay, run_tests
from rules.loader import case_files
from rules.ruletests import read_cases
from rules.scenarios import Scenario
from gateway.scenario_runner import ScenarioRunner

PACK = Path(__file__).parents[2] / "rules" / "default"
RULES = """\
rules:
  - {id: VEL-001, when: user_tx_1h > 10, action: deny}
  - {id: GEO-002, when: 'country in ["KP"]', score: 60, mode: shadow, routes: [transfers]}
"""


def run(fn, *args, **options):
    out, err = io.StringIO(), io.StringIO()
    code = fn(*args, out=out, err=err, **options)
    return code, out.getvalue(), err.getvalue()


def test_default_pack_tests_pass():
    out, err = io.StringIO(), io.StringIO()
    code = run_tests(PACK, out=out, err=err, scenario_runner=ScenarioRunner(),
                     require_coverage=True)
    out = out.getvalue()
    assert code == 0, out + err.getvalue()
    with load_rules(PACK) as rs:
        assert out.strip().splitlines()[-3] == f"coverage: every rule ({len(rs.rules)}) has a positive case"
    passed = int(out.strip().splitlines()[-1].split()[0])
    assert out.strip().splitlines()[-1] == f"{passed} passed, 0 failed" and passed >= 150
    kinds = out.strip().splitlines()[-2]
    assert re.fullmatch(r"cases: \d{3} passed, 0 failed; scenarios: \d{2} passed, 0 failed, .*", kinds)


def test_every_rule_of_the_pack_has_a_scenario_firing_it_and_one_not():
    rs = load_rules(PACK)
    try:
        items = [c for f in case_files(PACK) for c in read_cases(f)[0]]
        steps = [st for s in items if isinstance(s, Scenario) and not s.pending for st in s.steps]
        ids = {r.id for r in rs.rules}
        assert ids - {r for st in steps for r in st.rules} == set()
        assert ids - {r for st in steps for r in st.not_rules} == set()
    finally:
        rs.close()


def test_scenarios_without_the_gateway_fail_clearly(write):
    d = write(r__yaml=RULES, r_test__yaml="""\
        - name: burst
          steps: [{transaction: {user_id: u1}, expect: {not_rules: [VEL-001]}}]
        """)
    code, out, _ = run(run_tests, d)
    assert code == 1 and f"FAIL scenario {d / 'r_test.yaml'}:1: burst" in out
    assert "a scenario needs the gateway's counters: run it with `txgate rules test`" in out
    assert out.splitlines()[-2:] == ["cases: 0 passed, 0 failed; scenarios: 0 passed, 1 failed, 0 pending",
                                     "0 passed, 1 failed"]


def test_default_pack_has_positive_and_negative_cases_for_every_rule():
    rs = load_rules(PACK, {"user_id": "string", "amount": "number", "currency": "string",
                           "payee": "string", "device_id": "string", "country": "string"})
    try:
        cases = [c for f in case_files(PACK) for c in read_cases(f)[0] if not isinstance(c, Scenario)]
        positive = {r for c in cases for r in c.rules}
        negative = {r for c in cases for r in c.not_rules}
        ids = {r.id for r in rs.rules}
        assert len(ids) >= 50
        assert ids - positive == set() and ids - negative == set()
        assert all(r.description and r.tags for r in rs.rules)
        assert {r.mode for r in rs.rules} == {"enforce", "shadow"}
        assert {rt for r in rs.rules for rt in r.routes} == {"payments", "transfers", "loans", "wealth"}
    finally:
        rs.close()


def test_check_ok_and_errors(write):
    code, out, err = run(check, PACK)
    assert code == 0 and out.startswith("OK: ") and " rules, 19 counters, version " in out
    d = write(a__yaml="rules:\n  - {id: X, when: 'a >', action: deny}\n  - {id: Y, when: a > 1, action: nope}\n")
    code, out, err = run(check, d)
    assert code == 1 and out == ""
    assert err.splitlines()[0].startswith(f"{d / 'a.yaml'}:2: bad when:")
    assert err.splitlines()[1].startswith(f"{d / 'a.yaml'}:3: action 'nope'")


def test_failing_case_prints_expected_actual_and_matches(write):
    d = write(r__yaml=RULES, r_test__yaml="""\
        - name: burst is denied
          transaction: {user_id: u1}
          features: {user_tx_1h: 11}
          expect: {action: deny, rules: [VEL-001]}
        - name: wrong expectation
          transaction: {country: KP}
          features: {user_tx_1h: 12}
          expect: {action: review, not_rules: [VEL-001], rules: [GEO-002]}
        """)
    code, out, _ = run(run_tests, d)
    assert code == 1
    assert f"FAIL case {d / 'r_test.yaml'}:5: wrong expectation" in out
    assert "expected action review, got deny" in out
    assert "expected rules not to match: VEL-001" in out
    assert "matched: VEL-001, GEO-002; action deny, score 0" in out    # route taken from GEO-002
    assert out.splitlines()[-1] == "1 passed, 1 failed"


def test_cases_can_expect_what_set_the_action(write):
    d = write(r__yaml=RULES, r_test__yaml="""\
        - name: the rule
          features: {user_tx_1h: 12}
          expect: {set_by: rule VEL-001}
        - name: the score
          features: {user_tx_1h: 1}
          expect: {set_by: "score 0 < review 50"}
        - name: wrong
          features: {user_tx_1h: 12}
          expect: {set_by: "score 0 < review 50"}
        - name: not text
          features: {user_tx_1h: 12}
          expect: {set_by: 5}
        """)
    code, out, err = run(run_tests, d)
    assert code == 1
    assert out.splitlines()[1:3] == ["    expected set_by 'score 0 < review 50', got 'rule VEL-001'",
                                     "    matched: VEL-001; action deny, score 0"]
    assert f"{d / 'r_test.yaml'}:12: expect.set_by is text" in err
    assert out.splitlines()[-1] == "2 passed, 2 failed"


def test_bad_test_files_and_bad_rules_fail(write):
    d = write(r__yaml=RULES, r_test__yaml="- {name: x, transaction: {}, expect: {action: maybe}, extra: 1}\n")
    code, out, err = run(run_tests, d)
    assert code == 1 and "unknown case key 'extra'" in err and "action 'maybe'" in err
    assert out.splitlines()[-1] == "0 passed, 2 failed"
    (d / "r.yaml").write_text("rules: [{id: A, when: '(', action: deny}]\n")
    code, out, err = run(run_tests, d)
    assert code == 1 and "bad when" in err and out.splitlines()[-1] == "0 passed, 1 failed"


def test_replay_reports_changes_and_hits(write, tmp_path):
    d = write(r__yaml=RULES)
    log = tmp_path / "decisions.jsonl"
    records = [
        {"route": "payments", "decision": "allow", "rules": [], "features": {"user_tx_1h": 3}, "rules_version": "old"},
        {"route": "payments", "decision": "allow", "rules": [], "features": {"user_tx_1h": 12}, "rules_version": "old"},
        {"route": "payments", "decision": "step_up", "action": "require_otp",
         "rules": [{"id": "OLD-1", "action": "require_otp", "mode": "enforce"}],
         "features": {"user_tx_1h": 1}, "rules_version": "old"},
        {"route": "transfers", "decision": "deny", "rules": [{"id": "VEL-001", "action": "deny", "mode": "enforce"}],
         "features": {"user_tx_1h": 20, "country": "KP"}, "rules_version": "old"},
        {"route": "payments", "decision": "step_up", "rules": [], "features": {"user_tx_1h": 1}},
    ]
    log.write_text("\n".join(json.dumps(r) for r in records) + "\nnot json\n\n")
    code, out, err = run(replay, log, d)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("replayed 5 transactions from 6 records (logged rules old (4), ? (1) -> candidate ")
    assert "  skipped line 6: not JSON" in out
    assert "3 decisions change" in out
    table = {tuple(line.split()) for line in lines}
    hits = {tuple(line.split()[:4]) for line in lines}
    assert ("allow", "deny", "1") in table and ("require_otp", "allow", "1") in table
    assert ("step_up", "allow", "1") in table
    assert ("VEL-001", "1", "2", "+1") in hits and ("OLD-1", "1", "0", "-1") in hits
    assert ("GEO-002", "0", "1", "+1") in hits
    # --changes: what set each side; records written before set_by show their action alone.
    log.write_text("\n".join(json.dumps({**r, "request_id": f"q{i}"}) for i, r in enumerate(
        records[1:3] + [{**records[0], "set_by": "score 0 < review 50", "features": {"user_tx_1h": 11}}])))
    code, out, err = run(replay, log, d, changes=True)
    assert code == 0, err
    assert out.split("changed transactions\n")[1].splitlines() == [
        "  q0  user=None  amount=-  allow -> deny (rule VEL-001)  +VEL-001",
        "  q1  user=None  amount=-  require_otp -> allow (score 0 < review 50)  -OLD-1",
        "  q2  user=None  amount=-  allow (score 0 < review 50) -> deny (rule VEL-001)  +VEL-001"]
    code, out, err = run(replay, log, d, json_out=True, changes=True)
    assert [(c["from_set_by"], c["to_set_by"]) for c in json.loads(out)["changes"]] == [
        (None, "rule VEL-001"), (None, "score 0 < review 50"),
        ("score 0 < review 50", "rule VEL-001")]


def test_replay_missing_log(write, tmp_path):
    code, _, err = run(replay, tmp_path / "missing.jsonl", write(r__yaml=RULES))
    assert code == 1 and "missing.jsonl" in err


def test_explain_names_the_threshold_a_score_reached_and_its_scores(write):
    from rules.explain import why
    d = write(r__yaml="rules:\n  - {id: A, when: amount > 1, score: 40}\n  - {id: B, when: amount > 2, score: 40}\n"
                      "  - {id: C, when: amount > 3, score: 90, mode: shadow}\n"
                      "  - {id: D, when: amount > 9, action: require_otp}\n")
    with load_rules(d) as rs:
        assert why(rs.decide({"amount": 5}, "payments")) == "score 80 >= require_otp 70 (A +40, B +40)"
        assert why(rs.decide({"amount": 1.5}, "payments")) == "score 40 < review 50 (A +40)"
        assert why(rs.decide({"amount": 1}, "payments")) == "score 0 < review 50"
        assert why(rs.decide({"amount": 10}, "payments")) == "rule D"