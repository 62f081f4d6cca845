"""A loaded, compiled rule set: the object the gateway calls `decide` on."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from rules.counters import CounterSpec
from rules.decision import Decision, Hit, combine
from rules.engine import MAX_NUMBER, CompiledRules, number_text, to_json
from rules.compiler import key

MAX_STRING = 65536
_SHORT = 4096               # strings this short skip the length check of MAX_STRING
_EXACT_INT = 2 ** 53        # = MAX_NUMBER: f"{n}.0" is then repr(float(n)), without exponent


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
        # Route goes into every fact: route filters are compiled as conditions on it.
        self._fields = tuple((n, '"%s":' % key(n), kinds.get(n)) for n in sorted(attribute_names - {"route"}))
        self._route_key = '"%s":' % key("route")
        self._engine = CompiledRules({f"r{i}": r.condition for i, r in enumerate(rules)})

    def decide(self, attrs: dict, route: str) -> Decision:
        """Evaluate every rule for one transaction; absent attributes make their comparisons false."""
        if not isinstance(route, str):
            raise ValueError("route must be a string")
        parts = [self._route_key + to_json(route)]
        for name, prefix, kind in self._fields:
            value = attrs.get(name)
            if value is None:
                continue
            parts.append(prefix + _encode(name, value, kind))
        fired = self._engine.evaluate(",".join(parts))
        hits = tuple(self._hits[n] for n in sorted(fired, key=self._order.__getitem__))
        return combine(hits, self._thresholds)

    def close(self) -> None:
        """Free the engine's memory; decide() fails afterwards."""
        self._engine.close()

    def __enter__(self) -> "RuleSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _encode(name: str, value, kind: str | None) -> str:
    """Type-check one attribute value against its kind and encode it for the engine."""
    # The common cases first, exactly as below but without the checks they cannot fail
    # (every attribute of every request and replayed record passes here): a float whose
    # repr has no exponent, an int within the exact range, a short string.
    t = type(value)
    if t is float and kind != "string" and kind != "boolean" and (
            1e-4 <= abs(value) < 1e15 or value == 0):
        return repr(value)
    if t is int and kind != "string" and kind != "boolean" and -_EXACT_INT <= value <= _EXACT_INT:
        return f"{value}.0"
    if t is str and kind != "number" and kind != "boolean" and len(value) <= _SHORT and "\x00" not in value:
        return to_json(value)
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
