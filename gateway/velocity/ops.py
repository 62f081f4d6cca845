"""The operations a velocity call sends to a state backend: plain data, no behaviour.

A backend executes them with the same semantics in Lua (``redis.py`` runs ``script.py``) or in
Python (``memory.py``); ``window.py`` holds the numbers both share.
"""

from __future__ import annotations

from dataclasses import dataclass

# Kinds of operation. Count and sum share NUMBER: a count adds 1, a sum adds the scaled amount.
NUMBER = "n"      # bucketed sliding window when window_ms > 0, else one running integer
DISTINCT = "d"    # last-seen time per member digest, trimmed to DISTINCT_CAP members
FIRST_SEEN = "f"  # first time the key was seen; result is its age in ms, ABSENT if never
RESET = "x"       # delete the key (strong authentication restarts the counter)

ABSENT = -1


@dataclass(frozen=True, slots=True)
class Op:
    """One counter of one entity: read it, and add ``value`` first when ``update`` is set."""

    key: str
    kind: str
    update: bool
    value: int | str  # increment (NUMBER), member digest (DISTINCT), unused otherwise
    window_ms: int    # 0 = no window (running total since the last reset)
    bucket_ms: int    # bucket width of a windowed NUMBER, 0 otherwise
    ttl_ms: int       # expiry set on every write


@dataclass(frozen=True, slots=True)
class Batch:
    """Operations on keys of one hash tag, applied atomically.

    When ``marker`` is set, the updates apply only if the marker key did not exist yet (it is
    then created with ``marker_ttl_ms``): that makes a repeated event id read-only.
    """

    marker: str | None
    marker_ttl_ms: int
    ops: tuple[Op, ...]
