"""The regex subset of `matches(attr, "...")`, translated to the engine's dialect.

The engine has its own small regex language (whole-string match, `%` as escape) with gaps and
bugs we measured: `%s` misses tab, `%w` misses `_`, `a{0}` matches "a", `%^`, `%-`, `%/` and
backslashes inside classes fail to compile. So rule authors write a documented subset of the
familiar Python/PCRE syntax, we parse it into a tiny tree and emit only engine constructs that
behave like Python's `re.fullmatch` (checked by the differential test in tests/rules). The
same tree also yields the Python pattern the reference evaluator uses.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MAX_PATTERN = 256
MAX_REPEAT = 100

# Characters that are syntax in the engine's dialect and were measured to work when escaped.
_ENGINE_ESCAPABLE = set(".[](){}*+?|%")
# Source metacharacters; any of them may be escaped with a backslash to mean itself.
_META = set("\\.[](){}*+?|^$")
_CLASS_SHORTHAND = {"d": "0-9", "w": "0-9A-Za-z_"}


class RegexError(ValueError):
    """A pattern outside the supported subset."""


@dataclass(frozen=True)
class Regex:
    source: str
    engine: str   # the engine's dialect
    python: str   # an equivalent Python pattern, for re.fullmatch


def _lit_engine(ch: str) -> str:
    return "%" + ch if ch in _ENGINE_ESCAPABLE else ch


class _Parser:
    """Recursive descent over the subset; each method returns (engine, python) fragments."""

    def __init__(self, src: str):
        self.s = src
        self.i = 0

    def fail(self, msg: str) -> RegexError:
        return RegexError(f"regex {self.s!r} at position {self.i}: {msg}")

    def peek(self) -> str | None:
        return self.s[self.i] if self.i < len(self.s) else None

    def parse(self) -> tuple[str, str]:
        out = self.alternation()
        if self.i != len(self.s):
            raise self.fail("unbalanced ')'")
        return out

    def alternation(self) -> tuple[str, str]:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.sequence())
        return "|".join(b[0] for b in branches), "|".join(b[1] for b in branches)

    def sequence(self) -> tuple[str, str]:
        eng, py = [], []
        while self.peek() not in (None, "|", ")"):
            e, p = self.atom()
            e, p = self.quantified(e, p)
            eng.append(e)
            py.append(p)
        if not eng:
            # The engine refuses empty patterns and empty groups and mishandles empty branches.
            raise self.fail("empty pattern or alternative")
        return "".join(eng), "".join(py)

    def atom(self) -> tuple[str, str]:
        ch = self.s[self.i]
        if ch == "(":
            self.i += 1
            if self.peek() == "?":
                raise self.fail("group flags like (?:...) are not supported; plain (...) groups do not capture anyway")
            e, p = self.alternation()
            if self.peek() != ")":
                raise self.fail("missing ')'")
            self.i += 1
            return f"({e})", f"(?:{p})"
        if ch == "[":
            return self.char_class()
        if ch == ".":
            self.i += 1
            return ".", "."
        if ch == "\\":
            return self.escape(in_class=False)
        if ch in "^$":
            raise self.fail(f"'{ch}' is only allowed at the very start/end (matching is always whole-string)")
        if ch in "*+?{":
            raise self.fail(f"'{ch}' has nothing to repeat")
        if ch in "]}":
            raise self.fail(f"unescaped '{ch}'")
        self.check_char(ch)
        self.i += 1
        return _lit_engine(ch), re.escape(ch)

    def check_char(self, ch: str) -> None:
        if not ch.isprintable():
            raise self.fail(f"control character {ch!r} is not supported")

    def escape(self, in_class: bool) -> tuple[str, str]:
        self.i += 1
        ch = self.peek()
        if ch is None:
            raise self.fail("trailing backslash")
        self.i += 1
        if ch in _CLASS_SHORTHAND:
            body = _CLASS_SHORTHAND[ch]
            return (body, body) if in_class else (f"[{body}]", f"[{body}]")
        if in_class:
            if ch == "]":
                return "%]", r"\]"
            raise self.fail(f"'\\{ch}' is not supported inside [...]")
        if ch in _META and ch in _ENGINE_ESCAPABLE:
            return "%" + ch, re.escape(ch)
        if ch == "\\":
            return "\\", r"\\"
        raise self.fail(f"'\\{ch}' is not supported (use \\d, \\w, [...] or escape one of . [ ] ( ) {{ }} * + ? | \\)")

    def char_class(self) -> tuple[str, str]:
        self.i += 1
        negate = self.peek() == "^"
        if negate:
            self.i += 1
        eng, py = [], []
        trailing_dash = False
        first = True
        while True:
            ch = self.peek()
            if ch is None:
                raise self.fail("missing ']'")
            if ch == "]" and not first:
                self.i += 1
                break
            first = False
            if ch == "\\":
                e, p = self.escape(in_class=True)
                eng.append(e)
                py.append(p)
                continue
            if ch == "-":
                # A literal '-' must stand last: the engine refuses it first and escaped.
                if self.i + 1 < len(self.s) and self.s[self.i + 1] == "]":
                    trailing_dash = True
                    self.i += 1
                    continue
                raise self.fail("'-' inside [...] must be last or part of a range like a-z")
            if ch in "[^" or ch == "]":
                raise self.fail(f"'{ch}' inside [...] is not supported")
            self.check_char(ch)
            lo = ch
            self.i += 1
            if self.peek() == "-" and self.i + 1 < len(self.s) and self.s[self.i + 1] != "]":
                hi = self.s[self.i + 1]
                if hi in "\\[]^":
                    raise self.fail(f"range end '{hi}' is not supported")
                self.check_char(hi)
                if hi < lo:
                    raise self.fail(f"bad range {lo}-{hi}")
                self.i += 2
                eng.append(f"{_class_lit(lo)}-{_class_lit(hi)}")
                py.append(f"{re.escape(lo)}-{re.escape(hi)}")
            else:
                eng.append(_class_lit(lo))
                py.append(re.escape(lo))
        if trailing_dash:
            eng.append("-")
            py.append(r"\-")
        if not eng:
            raise self.fail("empty class")
        neg = "^" if negate else ""
        return f"[{neg}{''.join(eng)}]", f"[{neg}{''.join(py)}]"

    def quantified(self, e: str, p: str) -> tuple[str, str]:
        ch = self.peek()
        if ch in ("*", "+", "?"):
            self.i += 1
            if self.peek() in ("*", "+", "?", "{"):
                raise self.fail("lazy, possessive or stacked quantifiers are not supported")
            return e + ch, p + ch
        if ch == "{":
            m = re.compile(r"\{(\d+)(,(\d*))?\}").match(self.s, self.i)
            if not m:
                raise self.fail("a repeat is {n}, {n,} or {n,m}")
            lo = int(m.group(1))
            hi = m.group(3)
            # The engine treats a{0} as a, so counts start at 1 (write x? or x* for optional).
            if lo < 1 or lo > MAX_REPEAT or (hi and not (lo <= int(hi) <= MAX_REPEAT)):
                raise self.fail(f"repeat counts must be 1..{MAX_REPEAT} with n <= m")
            self.i = m.end()
            if self.peek() in ("*", "+", "?", "{"):
                raise self.fail("lazy, possessive or stacked quantifiers are not supported")
            return e + m.group(0), p + m.group(0)
        return e, p


def _class_lit(ch: str) -> str:
    return "%" + ch if ch in "%]" else ch


def parse_regex(source: str) -> Regex:
    """Translate a pattern of the documented subset, or raise RegexError saying what is not supported."""
    if len(source) > MAX_PATTERN:
        raise RegexError(f"regex longer than {MAX_PATTERN} characters")
    body = source
    # Matching is always whole-string, so ^ and $ at the ends are accepted as the no-ops they are.
    if body.startswith("^"):
        body = body[1:]
    if body.endswith("$") and not body.endswith("\\$"):
        body = body[:-1]
    engine, python = _Parser(body).parse()
    return Regex(source=source, engine=engine, python=python)
