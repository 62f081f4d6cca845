"""Counter declarations: what the velocity stage keeps per key, and the feature name rules read."""
from __future__ import annotations

import re
from dataclasses import dataclass
from dataclasses import field as _field   # `field` is also a CounterSpec attribute

AGGREGATES = ("count", "sum", "distinct", "first_seen")
RESETS = ("strong_auth",)
ON = ("attempt", "allow")
# global: one value per key across every API client (one risk view per user across business
# lines); client: one per key and calling client, so that one client's traffic cannot move
# the counters another client's users are judged by.
SCOPES = ("global", "client")
from rules.reference import evaluate

_WINDOW = re.compile(r"^([1-9][0-9]*)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_WINDOW_S = 400 * 86400


@dataclass(frozen=True)
class CounterSpec:
    name: str
    key: tuple[str, ...]
    aggregate: str
    field: str | None = None
    window_s: int | None = None
    reset_on: str | None = None
    on: str = "attempt"
    scope: str = "global"
    # `where:` as written, and its parsed expression (rules.expressions IR; the loader parses
    # it once, lists known): only transactions it holds for are counted.
    where: str | None = None
    where_expr: object = _field(default=None, compare=False, repr=False)

    @property
    def feature(self) -> str:
        """The attribute name rules use: the counter's name, or NAME_age_s for first_seen."""
        return f"{self.name}_age_s" if self.aggregate == "first_seen" else self.name

    def counts(self, attrs: dict) -> bool:
        """Whether this transaction is one the counter counts: its ``where:`` holds, with the
        rules' meaning (rules.reference: an atom on an absent attribute is false)."""
        if self.where_expr is None:
            return True
        try:
            return evaluate(self.where_expr, attrs)
        except TypeError:
            # A value of another kind than the where compares it with (only possible for an
            # attribute no route declares): not counted, as the engine would not match it.
            return False


def parse_window(text) -> int:
    """`30s`, `15m`, `1h`, `7d` -> seconds; ValueError otherwise."""
    m = _WINDOW.match(str(text)) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"window {text!r} is not a whole number followed by s, m, h or d (e.g. 15m)")
    seconds = int(m.group(1)) * _UNIT[m.group(2)]
    if seconds > MAX_WINDOW_S:
        raise ValueError(f"window {text!r} is longer than 400d")
    return seconds


def counter_from_dict(d: dict) -> CounterSpec:
    """Validate one `counters:` entry (keys already checked) and build its spec; ValueError on misuse."""
    name = d.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError("counter needs a name that is an identifier (letters, digits, _)")
    key = d.get("key")
    if (not isinstance(key, list) or not key
            or not all(isinstance(k, str) and k.isidentifier() for k in key)):
        raise ValueError(f"counter {name}: key must be a non-empty list of attribute names")
    aggregate = d.get("aggregate")
    if aggregate not in AGGREGATES:
        raise ValueError(f"counter {name}: aggregate must be one of {', '.join(AGGREGATES)}")
    field = d.get("field")
    if aggregate in ("sum", "distinct"):
        if not isinstance(field, str) or not field.isidentifier():
            raise ValueError(f"counter {name}: {aggregate} needs field: ATTRIBUTE")
    elif field is not None:
        raise ValueError(f"counter {name}: {aggregate} takes no field")
    window = parse_window(d["window"]) if "window" in d else None
    reset_on = d.get("reset_on")
    if reset_on is not None and reset_on not in RESETS:
        raise ValueError(f"counter {name}: reset_on must be strong_auth")
    if aggregate == "first_seen":
        if reset_on is not None:
            raise ValueError(f"counter {name}: first_seen takes no reset_on (window: is its retention)")
    elif (window is None) == (reset_on is None):
        raise ValueError(f"counter {name}: give exactly one of window: or reset_on:")
    on = d.get("on", "attempt")
    if on not in ON:
        raise ValueError(f"counter {name}: on must be attempt or allow")
    scope = d.get("scope", "global")
    if scope not in SCOPES:
        raise ValueError(f"counter {name}: scope must be global or client")
    where = d.get("where")
    if where is not None and (not isinstance(where, str) or not where.strip()):
        raise ValueError(f"counter {name}: where must be a condition, e.g. where: amount_base >= 100")
    return CounterSpec(name, tuple(key), aggregate, field, window, reset_on, on, scope,
                       None if where is None else where.strip())
