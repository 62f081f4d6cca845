"""Each construct compiles to the engine condition we expect, and none can match the state document."""
import pytest

from rules.compiler import PREFIX
from rules.engine import GUARD, GUARD_FIELD, CompiledRules, definitions
from tests.rules.conftest import fired

CONSTRUCTS = {
    "a > 5": {"$gt": {"v_a": 5.0}},
    "5 <= a": {"$gte": {"v_a": 5.0}},
    "a == b": {"$and": [{"$ex": {"v_b": 1}}, {"v_a": {"$m": "v_b"}}]},
    "a != 2": {"$neq": {"v_a": 2.0}},
    "1 < a < 3": {"$and": [{"$gt": {"v_a": 1.0}}, {"$lt": {"v_a": 3.0}}]},
    "not (a > 5)": {"$or": [{"$nex": {"v_a": 1}}, {"$lte": {"v_a": 5.0}}]},
    "not (a > 5 or s == 'x')": {"$and": [{"$or": [{"$nex": {"v_a": 1}}, {"$lte": {"v_a": 5.0}}]},
                                         {"$or": [{"$nex": {"v_s": 1}}, {"$neq": {"v_s": "x"}}]}]},
    "s in ['x', 'y']": {"$or": [{"v_s": "x"}, {"v_s": "y"}]},
    "s not in ['x']": {"$and": [{"$ex": {"v_s": 1}}, {"$neq": {"v_s": "x"}}]},
    "not (s in ['x'])": {"$or": [{"$nex": {"v_s": 1}}, {"$neq": {"v_s": "x"}}]},
    "s in lists.L": {"$or": [{"v_s": "p"}, {"v_s": "q"}]},
    "a - b > 3": {"$and": [{"$ex": {"v_b": 1}}, {"$gt": {"v_a": {"$add": {"$l": 3.0, "$r": {"$m": "v_b"}}}}}]},
    "a * 2 > b": {"$and": [{"$ex": {"v_b": 1}}, {"$gt": {"v_a": {"$div": {"$l": {"$m": "v_b"}, "$r": 2.0}}}}]},
    "a > b / c": {"$and": [{"$ex": {"v_b": 1}}, {"$ex": {"v_c": 1}}, {"$neq": {"v_c": 0.0}},
                           {"$gt": {"v_a": {"$div": {"$l": {"$m": "v_b"}, "$r": {"$m": "v_c"}}}}}]},
    "matches(s, r'DE\\d{2}.*')": {"$mt": {"v_s": "DE[0-9]{2}.*"}},
    "exists(a)": {"$ex": {"v_a": 1}},
    "not exists(a)": {"$nex": {"v_a": 1}},
    "flag": {"v_flag": True},
    "not flag": {"$or": [{"$nex": {"v_flag": 1}}, {"$neq": {"v_flag": True}}]},
    "not (s not in [])": {"$nex": {"v_s": 1}},
}


@pytest.mark.parametrize("when", sorted(CONSTRUCTS))
def test_construct_compiles_to(ruleset, when):
    rs = ruleset(when, lists={"L": ["p", "q"]})
    assert rs.rules[0].condition == CONSTRUCTS[when]


def _walk(node):
    if isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def test_no_rule_can_match_the_session_state_document(ruleset):
    """Structurally every rule is `$and[GUARD, ...]`; behaviourally a state-shaped fact fires nothing."""
    whens = sorted(CONSTRUCTS) + ["not (a > 5) and not exists(b)", "not (s == 'x' and a < 1)"]
    rs = ruleset(*whens, lists={"L": ["p", "q"]})
    defs = definitions({f"r{i}": r.condition for i, r in enumerate(rs.rules)})
    for name, d in defs.items():
        if name == "__prime":
            continue
        m = d["all"][0]["m"]
        assert list(m) == ["$and"] and m["$and"][0] == GUARD
        for k in _walk(m["$and"][1]):
            # Only operators and prefixed attributes: never sid, id, the guard, nor `$not`.
            assert k.startswith(PREFIX) or (k.startswith("$") and k != "$not"), (name, k)
    engine = CompiledRules({f"r{i}": r.condition for i, r in enumerate(rs.rules)})
    try:
        for state_like in ('{"sid":"0","id":"0"}', '{"sid":"0","id":"0","$s":1}', '{"sid":"0","id":"x","v_a":9}'):
            assert engine._fire(state_like) == []
        # With the guard present, the all-absent transaction does fire the negations: the guard is
        # what keeps them off the state document.
        assert len(engine.evaluate("")) >= 5
    finally:
        engine.close()


def test_request_data_cannot_set_sid_id_or_guard(ruleset):
    rs = ruleset("exists(sid)", "exists(id)", f"exists({GUARD_FIELD})", "a > 1", types=None)
    attrs = {"sid": "evil", "id": "evil", GUARD_FIELD: 1, "a": 2}
    assert fired(rs, attrs) == {"R0", "R1", "R2", "R3"}
    # The engine saw them as ordinary prefixed attributes, so the fixed session keeps working.
    assert fired(rs, {"a": 0}) == set()


def test_absent_semantics(ruleset):
    rs = ruleset("a > 5", "not (a > 5)", "a != 5", "not (a == 5)", "a == b", "a > b - 1",
                 "s not in ['x']", "not (s in ['x'])")
    assert fired(rs, {}) == {"R1", "R3", "R7"}
    assert fired(rs, {"a": 5}) == {"R1"} | {"R7"}
    assert fired(rs, {"a": 6, "b": 6, "s": "y"}) == {"R0", "R2", "R3", "R4", "R5", "R6", "R7"}
    assert fired(rs, {"a": 6, "s": "x"}) == {"R0", "R2", "R3"}


def test_division_by_an_attribute_that_is_zero_is_false_both_ways(ruleset):
    rs = ruleset("a > b / c", "not (a > b / c)")
    assert fired(rs, {"a": 1, "b": 1, "c": 0}) == {"R1"}
    assert fired(rs, {"a": 1, "b": 1, "c": 2}) == {"R0"}
