"""The only module that talks to durable-rules' C engine.

One compiled ruleset and one fixed session per loaded rule set; per transaction assert_fact ->
collect fired rules -> retract_fact. One session, because a ruleset holds at most 1,024 live
sessions and then fails with MemoryError for good; a swap deletes the session state before the
ruleset, or the session's memory leaks (docs/durable-rules.md has the engine's pitfalls). Every
rule is ANDed here with a guard field the session-state document never has, so no condition the
compiler produces can match the engine's own state (such a rule spins forever at 100% CPU).

Numbers go to the engine as doubles written without exponent: the engine rejects `1e+16`
(error 204) and does integer division (and dies of SIGFPE on x/0) when both operands are ints.
"""
from __future__ import annotations

import importlib
import itertools
import json
import math
import threading
from collections import Counter
from decimal import Decimal

import orjson

# Built by setup.py from vendor/ (docs/durable-rules.md), not the durable-rules PyPI package.
# Loaded by name: an import statement would read, to static tools (import-linter, grimp,
# which see no Python source for an extension), as this module importing its own package.
dre = importlib.import_module("rules.durable_rules_engine")
EngineError = dre.error
# What the engine's error codes mean, where a rule author can act on it (rules.h). 113 is
# one rule's; the others are the whole set's (the limits of the patched build,
# docs/durable-rules.md).
_CODES = {
    "113": "the condition is too large for the engine: more than 31 comparisons and "
           "connectives in one of its branches once every `not` is pushed down",
    "106": "too many rules for the engine: more than 1,024 different comparisons follow "
           "the same point of the rules' conditions (every rule's first comparison follows "
           "the same point)",
    "107": "too many rules for the engine: more than 127 rules go on from the same point of "
           "their conditions through an `or` (an `in` list, a negated comparison) or a test "
           "that an attribute is absent",
    "108": "too many rules for the engine: more than 255 rules end with the same comparison",
}


def meaning(exc: Exception) -> str:
    """The engine's error as a rule author reads it: what its code means, where we know."""
    code = str(exc).rsplit(" ", 1)[-1]
    return f"{_CODES[code]}, error {code}" if code in _CODES else str(exc)

GUARD_FIELD = "tx_id"
GUARD = {"$ex": {GUARD_FIELD: 1}}
_PRIME = "__prime"
_versions = itertools.count(1)
# The engine keeps integers in int64 and floats in doubles; above 2**53 doubles stop being exact.
MAX_NUMBER = 2.0 ** 53


def number_text(x: float) -> str:
    """A finite number as JSON text the engine parses as a double: a decimal point, no exponent."""
    text = repr(float(x))
    if "e" in text or "E" in text:
        text = format(Decimal(text), "f")
    if "." not in text:
        text += ".0"
    return text


def to_json(value) -> str:
    """json.dumps for conditions and facts with engine-safe numbers and raw UTF-8 strings."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite")
        return number_text(value)
    if isinstance(value, str):
        # The engine compares raw bytes: a ruleset with \u escapes never equals a UTF-8 fact.
        # orjson writes the same text as json.dumps(ensure_ascii=False) at a tenth of the cost
        # (every string attribute of every request); it refuses lone surrogates, which keep
        # json's behaviour.
        try:
            return orjson.dumps(value).decode()
        except orjson.JSONEncodeError:
            return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(k), ensure_ascii=False) + ":" + to_json(v)
                              for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__}")


def guarded(condition: dict) -> dict:
    """The rule definition for a condition: always a conjunction with the guard."""
    return {"all": [{"m": {"$and": [GUARD, condition]}}]}


def definitions(conditions: dict[str, dict]) -> dict:
    """The complete ruleset document given to the engine: guarded rules plus the prime rule."""
    defs = {name: guarded(cond) for name, cond in shared_first(conditions).items()}
    defs[_PRIME] = {"all": [{"m": {"$ex": {_PRIME: 1}}}]}
    return defs


def shared_first(conditions: dict[str, dict]) -> dict[str, dict]:
    """The conditions with every conjunction's parts in the order that lets rules share the
    engine's nodes: the parts most rules of the set test first, then the others, regexes
    after the parts tested as often, and `or` parts last.

    The engine (a Rete network) builds a conjunction as a chain of nodes in the order given,
    and two rules share a node only when the chains up to it are the same. Every node right
    after the guard is tested against every fact, so a comparison many rules make (`currency
    == "EUR"`) is best tested once, first, with the rules' own comparisons behind it and
    tested only when it holds. Parts that as many rules test are ordered by their text, so
    that every rule makes the same chain of them; a part only one rule tests keeps the
    author's place. An `or` (an `in` list, a negated comparison) goes last however many rules
    test it: the engine joins its branches in a node of each rule's own, listed at the end of
    every branch, and a branch shared by more than 127 rules refuses the set (error 107).
    A conjunction nested in another is one chain with it (`and` is associative); the parts
    of an `or` are ordered within each branch.
    """
    counts: Counter = Counter()

    def parts(cond: dict) -> list[dict]:
        if len(cond) == 1 and "$and" in cond:
            return [p for item in cond["$and"] for p in parts(item)]
        return [cond]

    def count(cond: dict) -> None:
        for part in parts(cond):
            counts[_text(part)] += 1
            for branch in part.get("$or", ()) if len(part) == 1 else ():
                count(branch)

    def order(cond: dict) -> dict:
        keyed = []
        for part in parts(cond):
            text = _text(part)
            n = counts[text]
            if len(part) == 1 and "$or" in part:
                part = {"$or": [order(branch) for branch in part["$or"]]}
            keyed.append((("$or" in part, -n, "$mt" in part, text if n > 1 else ""), part))
        if len(keyed) == 1:
            return keyed[0][1]
        keyed.sort(key=lambda kp: kp[0])   # stable: a part of one rule keeps its place
        return {"$and": [part for _, part in keyed]}

    for cond in conditions.values():
        count(cond)
    return {name: order(cond) for name, cond in conditions.items()}


def _text(part: dict) -> str:
    """A part's text, the same for equal parts (json: a rule's string may be a lone surrogate)."""
    return json.dumps(part, sort_keys=True)


def refusal(condition: dict) -> str | None:
    """Why the engine refuses to compile a condition (None when it accepts it).

    Some regexes the translator emits are valid in the engine's dialect but still refused
    (`[^a]*a`, error 507); probing them one by one lets the loader blame the right rule.
    """
    try:
        handle = dre.create_ruleset("txgate_probe_%d" % next(_versions), to_json(definitions({"probe": condition})))
    except dre.error as e:
        return meaning(e)
    dre.delete_ruleset(handle)   # no session was created: nothing else to free
    return None


class CompiledRules:
    """One engine ruleset + session; `evaluate` returns the names of the rules that fired."""

    def __init__(self, conditions: dict[str, dict]):
        if any(name == _PRIME or not name.isidentifier() for name in conditions):
            raise ValueError("rule names must be identifiers other than the reserved prime rule")
        defs = definitions(conditions)
        # Ruleset names are never reused: the engine cannot replace a ruleset by name.
        self.name = "txgate_rules_%d" % next(_versions)
        self._lock = threading.Lock()
        self._handle = dre.create_ruleset(self.name, to_json(defs))
        # delete_state segfaults on a session where no action ever ran: run one now.
        if self._fire('{"sid":"0","id":"prime","%s":1}' % _PRIME) != [_PRIME]:
            dre.delete_ruleset(self._handle)
            raise RuntimeError("engine self-check failed")

    def evaluate(self, fact_body: str) -> list[str]:
        """Fire the rules for one fact, given as the JSON members without braces (already encoded)."""
        return self._fire('{%s,"sid":"0","id":"tx","%s":1}' % (fact_body, GUARD_FIELD) if fact_body
                          else '{"sid":"0","id":"tx","%s":1}' % GUARD_FIELD)

    def _fire(self, js: str) -> list[str]:
        # One session is shared by every call, so calls must not interleave across threads.
        with self._lock:
            if self._handle is None:
                raise RuntimeError("rule set is closed")
            code, state = dre.assert_fact(self._handle, js)[:2]
            if code == 1:          # nothing matched, nothing stored
                return []
            if code != 0:
                raise RuntimeError("engine assert_fact returned %d" % code)
            fired: dict[str, None] = {}
            try:
                res = dre.start_action_for_state(self._handle, state)
                nxt = res[1] if res else None
                while nxt:
                    # One action per firing; `$or` fires once per true branch, hence the dict.
                    # The action is `{"NAME":{"m":{the fact}}}`: the name is cut out rather
                    # than the whole document parsed (names are identifiers: no escapes).
                    fired[nxt[2:nxt.index('"', 2)]] = None
                    nxt = dre.complete_and_start_action(self._handle, state)
            finally:
                dre.retract_fact(self._handle, js)
            return list(fired)

    def close(self) -> None:
        """Free the ruleset and its session (idempotent)."""
        with self._lock:
            if self._handle is None:
                return
            dre.delete_state(self._handle, "0")   # without it the session leaks
            dre.delete_ruleset(self._handle)
            self._handle = None
