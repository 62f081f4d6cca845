"""Random expressions x random transactions: the compiled engine agrees with the reference evaluator."""
import re

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rules import RuleLoadError, load_rules
from rules.reference import evaluate
from rules.regex import parse_regex

TYPES = {"x": "number", "y": "number", "z": "number", "s": "string", "t": "string", "f": "boolean"}
NUMS = st.sampled_from(["0", "1", "2", "3", "-1", "0.5", "2.5", "10"])
NUM_ATTRS = st.sampled_from(["x", "y", "z"])
STR_ATTRS = st.sampled_from(["s", "t"])
STR_LITS = st.sampled_from(["''", "'a'", "'ab'", "'é'", "'a%'", "'.'"])
CMP = st.sampled_from(["==", "!=", "<", "<=", ">", ">="])

regex_atom = st.sampled_from(["a", "b", "é", "%", ".", r"\.", "[ab]", "[^a]", r"\d", "[a-c1]", "(a|b)", "(ab|%)"])
regex_piece = st.tuples(regex_atom, st.sampled_from(["", "", "*", "+", "?", "{2}", "{1,2}"])).map("".join)
REGEX = st.lists(regex_piece, min_size=1, max_size=4).map("".join)


@st.composite
def numeric_atom(draw):
    a, b, c = draw(NUM_ATTRS), draw(NUM_ATTRS), draw(NUM_ATTRS)
    n, m = draw(NUMS), draw(NUMS)
    op = draw(CMP)
    return draw(st.sampled_from([
        f"{a} {op} {n}", f"{n} {op} {a}", f"{a} {op} {b}", f"{a} - {b} {op} {n}", f"{a} + {n} {op} {b}",
        f"{a} * 2 {op} {b}", f"{a} * -2 {op} {b} + {m}", f"{a} / 4 {op} {b} - {n}", f"{a} {op} {b} / {c}",
        f"{n} - {a} {op} {b}", f"{n} < {a} <= {m}", f"{a} in [{n}, {m}]", f"{a} not in [{n}]",
    ]))


@st.composite
def string_atom(draw, negated):
    a, b = draw(STR_ATTRS), draw(STR_ATTRS)
    lit, lit2 = draw(STR_LITS), draw(STR_LITS)
    choices = [f"{a} == {lit}", f"{a} != {lit}", f"{a} == {b}", f"{a} in [{lit}, {lit2}]",
               f"{a} not in [{lit}]", f"{a} in lists.L", f"{a} not in lists.L", f"exists({a})",
               "f", "f == False", "f != True", "exists(f)"]
    if not negated:      # the engine has no negated regex; the compiler refuses it
        choices.append(f"matches({a}, {draw(REGEX)!r})")
    return draw(st.sampled_from(choices))


def expression(negated=False, depth=3):
    atom = st.one_of(numeric_atom(), string_atom(negated))
    if depth == 0:
        return atom
    return st.one_of(
        atom,
        st.tuples(expression(negated, depth - 1), st.sampled_from(["and", "or"]), expression(negated, depth - 1))
          .map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        expression(not negated, depth - 1).map(lambda e: f"not ({e})"),
    )


NUM_VALUES = st.sampled_from([0, 1, 2, 3, -1, 0.5, 2.5, 10, 1.25, 4])
STR_VALUES = st.text(alphabet="ab1.%é", max_size=4)
TRANSACTION = st.fixed_dictionaries({}, optional={
    "x": NUM_VALUES, "y": NUM_VALUES, "z": NUM_VALUES, "s": STR_VALUES, "t": STR_VALUES, "f": st.booleans()})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(whens=st.lists(expression(), min_size=1, max_size=6), txs=st.lists(TRANSACTION, min_size=1, max_size=8))
def test_engine_agrees_with_reference(tmp_path_factory, whens, txs):
    d = tmp_path_factory.mktemp("diff")
    body = "lists:\n  L: ['a', 'é', '']\nrules:\n" + "".join(
        f"  - id: R{i}\n    when: {w!r}\n    score: 1\n" for i, w in enumerate(whens))
    (d / "r.yaml").write_text(body)
    try:
        rs = load_rules(d, TYPES)
    except RuleLoadError as e:
        # The only acceptable refusals, each reported with its rule's line: a regex the engine
        # itself cannot build, a condition too large for it.
        assert all("the engine cannot build regex" in m or "too large for the engine" in m
                   for m in e.errors), e.errors
        assume(False)
    try:
        for tx in txs:
            got = {h.rule for h in rs.decide(tx, "payments").hits}
            want = {r.id for r in rs.rules if evaluate(r.expr, tx)}
            assert got == want, (tx, [(r.id, r.when, r.condition) for r in rs.rules if r.id in got ^ want])
    finally:
        rs.close()


@settings(max_examples=300, deadline=None)
@given(pattern=REGEX, subject=st.text(alphabet="ab1.%é-", max_size=5))
def test_regex_translation_matches_python(tmp_path_factory, pattern, subject):
    """The reference pattern is derived from the source with Python's own re (ASCII \\d)."""
    rx = parse_regex(pattern)
    assert (re.fullmatch(rx.python, subject) is not None) == (re.fullmatch(pattern, subject, re.ASCII) is not None)
