"""The benchmark's packs (bench/rulepack.py) decide the same whatever the time they run at."""
from bench.rulepack import DEFAULT, build, clock_free
from rules import load_rules
from rules.expressions import expr_attrs
from rules.yamlsrc import load_yaml

TEXT = """\
version: 1
counters:
  - {name: user_tx_1h, key: [user_id], window: 1h, aggregate: count, on: attempt}
rules:
  - id: C-1
    when: hour < 5 and user_tx_1h > 3
    action: deny
  - id: C-2
    when: weekday >= 5
    mode: enforce
    score: 10
  - id: C-3
    when: weekday == 6
    mode: shadow
    action: review
  - id: C-4
    description: at night, by the hour
    when: user_tx_1h > 100
    action: deny
"""


def test_rules_reading_hour_or_weekday_go_to_shadow_and_no_other(tmp_path):
    edited = clock_free(TEXT)
    assert load_yaml(edited)[1] == []
    (tmp_path / "r.yaml").write_text(edited)
    with load_rules(tmp_path) as rs:
        modes = {r.id: r.mode for r in rs.rules}
    assert modes == {"C-1": "shadow", "C-2": "shadow", "C-3": "shadow", "C-4": "enforce"}
    # Nothing else changes: the edit is one line per rule, YAML 1.2 words (on:) kept as written.
    assert edited.replace("    mode: shadow\n", "").replace("    mode: enforce\n", "") \
        == TEXT.replace("    mode: shadow\n", "").replace("    mode: enforce\n", "")


def test_the_shipped_pack_as_benchmarked_has_no_enforced_clock_rule(tmp_path):
    count = build(tmp_path)
    with load_rules(DEFAULT) as shipped, load_rules(tmp_path) as built:
        assert count == len(built.rules) == len(shipped.rules)
        clock = {r.id for r in shipped.rules if expr_attrs(r.expr) & {"hour", "weekday"}}
        assert clock   # the pack still has night-time rules to neutralise
        for rule in built.rules:
            assert rule.mode == ("shadow" if rule.id in clock else
                                 next(r.mode for r in shipped.rules if r.id == rule.id))
