"""The fact the engine reads (rules/fact.c) is the text the dict-and-orjson encoding of the
previous code wrote, byte for byte, for every kind of value: the fast paths (floats in and out
of the range written without exponent, ints near 10**15 and past 2**63, short and long strings,
escapes, NUL, non-ASCII, booleans), values of the wrong type (the same ValueError) and strings
that are not valid Unicode."""

import math
import random

import orjson
import pytest

from rules import _fact
from rules.compiler import key
from rules.ruleset import _TAKES, _encode, _unencodable

KINDS = {"n": "number", "s": "string", "b": "boolean", "any": None}
_ACCEPTS = {"number": {float, int}, "string": {str}, "boolean": {bool}, None: {float, int, str, bool}}


def reference(attrs: dict, route: str) -> str:
    """The previous code's RuleSet.decide encoding, kept as the oracle."""
    fact = {key("route"): route}
    try:
        for name in sorted(KINDS):
            kind, value = KINDS[name], attrs.get(name)
            if value is None:
                continue
            t = type(value)
            if t in _ACCEPTS[kind]:
                if t is float:
                    if 1e-4 <= value < 1e15 or -1e15 < value <= -1e-4 or value == 0:
                        fact[key(name)] = value
                        continue
                elif t is int:
                    if -10 ** 15 < value < 10 ** 15:
                        fact[key(name)] = float(value)
                        continue
                elif t is str:
                    if len(value) <= 4096 and "\x00" not in value:
                        fact[key(name)] = value
                        continue
                else:
                    fact[key(name)] = value
                    continue
            fact[key(name)] = orjson.Fragment(_encode(name, value, kind).encode())
        return orjson.dumps(fact)[1:-1].decode()
    except (orjson.JSONEncodeError, UnicodeEncodeError):
        raise ValueError(_unencodable(attrs, route)) from None


def encoded(attrs: dict, route: str) -> str:
    fields = tuple((n, orjson.dumps(key(n)) + b":", _TAKES[KINDS[n]], KINDS[n]) for n in sorted(KINDS))
    body = _fact.encode(fields, attrs, orjson.dumps(key("route")) + b":", route, _encode)
    if body is None:
        raise ValueError(_unencodable(attrs, route))
    return body


def values(rnd: random.Random):
    yield from (0.0, -0.0, 1e-4, 9.9e-5, -1e-4, 1e15, 999999999999999.9, -1e15, 1e300, 5e-324,
                math.inf, -math.inf, math.nan, 0.1 + 0.2, 2.0 ** 53, 10 ** 15, 10 ** 15 - 1,
                -(10 ** 15) + 1, 2 ** 63, -(2 ** 64), 0, 7, True, False, None, "", "x" * 4096,
                "x" * 4097, "a\x00b", 'q"uo\\te', "\n\r\t\b\f\x01\x1f\x7f", "é€😀", "\ud800",
                "\ud800" + "x" * 4097, b"bytes", [1], {"a": 1})
    for _ in range(3000):
        yield rnd.choice((
            rnd.uniform(-1e16, 1e16), rnd.random() * 10 ** rnd.randint(-8, 20),
            rnd.randint(-2 ** 70, 2 ** 70), rnd.randint(-10 ** 6, 10 ** 6),
            "".join(chr(rnd.choice((rnd.randint(0, 0x7f), rnd.randint(0x80, 0x10ffff))))
                    for _ in range(rnd.randint(0, 12))).replace("\ud800", ""),
            rnd.random() < 0.5))


def outcome(encode, attrs, route):
    try:
        return encode(attrs, route)
    except ValueError as e:
        return f"ValueError: {e}"


def test_the_fact_is_written_as_the_dict_encoding_wrote_it():
    rnd = random.Random(5)
    pool = list(values(rnd))
    for value in pool:
        for name in KINDS:
            attrs = {name: value, "n": 12.5, "unused": "u"}
            assert outcome(encoded, attrs, "payments") == outcome(reference, attrs, "payments"), (name, value)
    for _ in range(3000):
        attrs = {name: rnd.choice(pool) for name in KINDS if rnd.random() < 0.8}
        route = rnd.choice(("payments", "tr\"ans\\fers", "ro\ud800ute"))
        assert outcome(encoded, attrs, route) == outcome(reference, attrs, route), (attrs, route)


def test_a_slow_path_that_raises_is_the_error():
    with pytest.raises(ValueError, match="expected a number, got a string"):
        encoded({"n": "12"}, "payments")


def test_a_kept_decision_is_the_one_combining_gives(write, monkeypatch):
    """Decisions are kept by the set of rules that fired; past the bound they are made again."""
    from rules import load_rules
    from rules import ruleset as ruleset_module
    from rules.decision import combine

    monkeypatch.setattr(ruleset_module, "_DECIDED_KEPT", 3)
    rules = "".join(f"  - {{id: R{i}, when: amount >= {i * 10}, score: {i * 7}}}\n" for i in range(1, 7))
    with load_rules(write(r__yaml="version: 1\nrules:\n" + rules)) as rs:
        for amount in (15, 25, 35, 45, 55, 65, 15, 45, 65, 5):
            decision = rs.decide({"amount": amount}, "payments")
            hits = tuple(rs._hits[f"r{i}"] for i in range(6) if amount >= (i + 1) * 10)
            assert decision == combine(hits, rs._thresholds), amount
        assert len(rs._decided) <= 3
        assert rs.decide({"amount": 65}, "payments") is rs.decide({"amount": 66}, "payments")


def test_a_malformed_field_is_an_error_not_a_crash():
    with pytest.raises(TypeError, match="a field is"):
        _fact.encode((("a",),), {"a": 1}, b'"r":', "payments", _encode)
    with pytest.raises(TypeError, match="a field is"):
        _fact.encode((("a", "not bytes", 1, None),), {"a": 1}, b'"r":', "payments", _encode)
