"""A loaded, compiled rule set: the object the gateway calls `decide` on."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import orjson

from rules.counters import CounterSpec
from rules.decision import Decision, Hit, combine
from rules.engine import MAX_NUMBER, CompiledRules, number_text, to_json
from rules.compiler import key

MAX_STRING = 65536
_SHORT = 4096               # strings this short skip the length check of MAX_STRING
_FAST_NUMBER = 10 ** 15     # below it, float(n) is exact and written without exponent
# The value types each kind takes without a check beyond range and length (a bool is not an int
# here: type() is compared, never isinstance).
_ACCEPTS = {"number": frozenset({float, int}), "string": frozenset({str}),
            "boolean": frozenset({bool}), None: frozenset({float, int, str, bool})}


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
        # attribute: its name, its key in the fact, its kind and the value types it accepts.
        self._fields = tuple((n, key(n), kinds.get(n), _ACCEPTS[kinds.get(n)])
                             for n in sorted(attribute_names - {"route"}))
        self._route_key = key("route")
        self._engine = CompiledRules({f"r{i}": r.condition for i, r in enumerate(rules)})
        self._no_hits = combine((), self._thresholds)   # most transactions: decided once

    def decide(self, attrs: dict, route: str) -> Decision:
        """Evaluate every rule for one transaction; absent attributes make their comparisons false."""
        if not isinstance(route, str):
            raise ValueError("route must be a string")
        fact = {self._route_key: route}
        # The common values go to orjson as they are, exactly as _encode would write them (a
        # finite float in the range where its repr has no exponent, which orjson writes the
        # same; an int as that float; a short string without NUL; a boolean); any other is
        # encoded and checked by _encode (which raises for a wrong type) and passed as text.
        try:
            for name, field, kind, accepts in self._fields:
                value = attrs.get(name)
                if value is None:
                    continue
                t = type(value)
                if t in accepts:
                    if t is float:
                        if 1e-4 <= value < 1e15 or -1e15 < value <= -1e-4 or value == 0:
                            fact[field] = value
                            continue
                    elif t is int:
                        if -_FAST_NUMBER < value < _FAST_NUMBER:
                            fact[field] = float(value)
                            continue
                    elif t is str:
                        if len(value) <= _SHORT and "\x00" not in value:
                            fact[field] = value
                            continue
                    else:
                        fact[field] = value
                        continue
                fact[field] = orjson.Fragment(_encode(name, value, kind).encode())
            body = orjson.dumps(fact)
        except (orjson.JSONEncodeError, UnicodeEncodeError):
            raise ValueError(_unencodable(attrs, route)) from None
        fired = self._engine.evaluate(body[1:-1].decode())
        if not fired:
            return self._no_hits
        hits = tuple(self._hits[n] for n in sorted(fired, key=self._order.__getitem__))
        return combine(hits, self._thresholds)

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
