"""A loaded, compiled rule set: the object the gateway calls `decide` on."""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field

import orjson

from rules.counters import CounterSpec
from rules.decision import Decision, Hit, combine
from rules.engine import MAX_NUMBER, CompiledRules, number_text, to_json
from rules.compiler import key

# rules/fact.c, built by setup.py. Loaded by name, as rules.engine loads the engine: static
# tools (import-linter, grimp) see no source for an extension and would read an import
# statement as this module importing its own package.
_fact = importlib.import_module("rules._fact")

MAX_STRING = 65536
# rules/fact.c writes the fact: strings this short skip the length check of MAX_STRING; below
# FAST_NUMBER, float(n) is exact and written without exponent.
assert (_fact.SHORT, _fact.FAST_NUMBER) == (4096, 10 ** 15) and _fact.SHORT <= MAX_STRING
# How many combinations of fired rules keep their decision (each a few hundred bytes).
_DECIDED_KEPT = 4096
# The value types each kind takes without a check beyond range and length (a bool is not an int
# here: the C code compares types exactly, never as subclasses).
_TAKES = {"number": _fact.TAKES_FLOAT | _fact.TAKES_INT, "string": _fact.TAKES_STR,
          "boolean": _fact.TAKES_BOOL,
          None: _fact.TAKES_FLOAT | _fact.TAKES_INT | _fact.TAKES_STR | _fact.TAKES_BOOL}


@dataclass(frozen=True)
class Rule:
    id: str
    description: str
    when: str
    action: str | None
    score: float | None
    mode: str                       # "enforce" | "shadow"
    tags: tuple[str, ...]
    routes: tuple[str, ...]         # empty: every route
    file: str
    line: int
    expr: object = field(repr=False, compare=False)       # the parsed IR
    condition: object = field(repr=False, compare=False)  # the compiled engine condition (before the guard)

    @property
    def hit(self) -> Hit:
        return Hit(self.id, self.action, self.score, self.mode)


class RuleSet:
    """Rules + lists + counters + thresholds of one load, compiled into one engine ruleset."""

    def __init__(self, *, version: str, rules: tuple[Rule, ...], counters: tuple[CounterSpec, ...],
                 lists: dict[str, tuple], thresholds: dict[str, float], kinds: dict[str, str],
                 attribute_names: frozenset[str],
                 memberships: tuple[tuple[str, str, str], ...] = (), live_lists: tuple[str, ...] = ()):
        self.version = version
        self.rules = rules
        self.counters = counters
        self.lists = lists   # static lists by name; a live one is a rules.expressions.LiveList
        # What the rules read of live lists: (attribute, tested attribute, list name); the
        # gateway looks each up in the request's state round trip.
        self.memberships = memberships
        self.live_lists = live_lists     # every live list declared, read or not
        self.thresholds = thresholds
        self.attribute_names = attribute_names
        self.kinds = kinds
        self._thresholds = tuple(sorted((v, k) for k, v in thresholds.items()))
        self._hits = {f"r{i}": r.hit for i, r in enumerate(rules)}
        self._order = {f"r{i}": i for i in range(len(rules))}
        # Route goes into every fact: route filters are compiled as conditions on it. Per
        # attribute (rules/fact.c): its name, its key in the fact as JSON and a colon, the
        # value types it takes as they are, its kind.
        self._fields = tuple((n, orjson.dumps(key(n)) + b":", _TAKES[kinds.get(n)], kinds.get(n))
                             for n in sorted(attribute_names - {"route"}))
        self._route_prefix = orjson.dumps(key("route")) + b":"
        self._engine = CompiledRules({f"r{i}": r.condition for i, r in enumerate(rules)})
        self._no_hits = combine((), self._thresholds)   # most transactions: decided once
        self._decided: dict[frozenset, Decision] = {}     # fired rules -> their decision

    def decide(self, attrs: dict, route: str) -> Decision:
        """Evaluate every rule for one transaction; absent attributes make their comparisons false."""
        if not isinstance(route, str):
            raise ValueError("route must be a string")
        # The common values are written as they are, exactly as _encode would write them (a
        # finite float in the range where its repr has no exponent; an int as that float; a
        # short string without NUL; a boolean); any other is encoded and checked by _encode
        # (which raises for a wrong type). None: a string is not valid Unicode.
        body = _fact.encode(self._fields, attrs, self._route_prefix, route, _encode)
        if body is None:
            raise ValueError(_unencodable(attrs, route))
        fired = self._engine.evaluate(body)
        if not fired:
            return self._no_hits
        # The same rules fire together again and again: their decision (immutable) is kept,
        # up to a bound, as combining them and writing set_by cost as much as encoding the fact.
        fired = frozenset(fired)
        decision = self._decided.get(fired)
        if decision is None:
            if len(self._decided) >= _DECIDED_KEPT:
                self._decided.clear()
            hits = tuple(self._hits[n] for n in sorted(fired, key=self._order.__getitem__))
            decision = self._decided[fired] = combine(hits, self._thresholds)
        return decision

    def close(self) -> None:
        """Free the engine's memory; decide() fails afterwards."""
        self._engine.close()

    def __enter__(self) -> "RuleSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _unencodable(attrs: dict, route: str) -> str:
    """Why orjson refused a fact whose values all passed the checks: a string that is not
    valid Unicode (a lone surrogate, which the engine cannot take either)."""
    for name, value in (("route", route), *attrs.items()):
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                return f"attribute {name!r}: string is not valid Unicode (a lone surrogate)"
    return "attributes that cannot be written as JSON"


def _encode(name: str, value, kind: str | None) -> str:
    """Type-check one attribute value against its kind and encode it for the engine (the
    values decide() cannot pass to orjson as they are)."""
    if isinstance(value, bool):
        if kind not in (None, "boolean"):
            raise ValueError(f"attribute {name!r}: expected a {kind}, got a boolean")
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if kind not in (None, "number"):
            raise ValueError(f"attribute {name!r}: expected a {kind}, got a number")
        if not math.isfinite(value):
            raise ValueError(f"attribute {name!r}: {value!r} is not a finite number")
        if abs(value) > MAX_NUMBER:
            raise ValueError(f"attribute {name!r}: {value!r} is out of range")
        return number_text(value)
    if isinstance(value, str):
        if kind not in (None, "string"):
            raise ValueError(f"attribute {name!r}: expected a {kind}, got a string")
        if len(value) > MAX_STRING or "\x00" in value:
            raise ValueError(f"attribute {name!r}: string too long or containing NUL")
        return to_json(value)
    raise ValueError(f"attribute {name!r}: unsupported type {type(value).__name__}")
