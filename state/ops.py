"""The operations a velocity call sends to a state backend: plain data, and which update
takes back which (``undo_of``).

A backend executes them with the same semantics in Lua (``redis.py`` runs ``script.py``) or in
Python (``memory.py``); ``window.py`` holds the numbers both share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

# Kinds of operation. Count and sum share NUMBER: a count adds 1, a sum adds the scaled amount.
NUMBER = "n"      # bucketed sliding window when window_ms > 0, else one running integer
DISTINCT = "d"    # last-seen time per member digest, trimmed to DISTINCT_CAP members
FIRST_SEEN = "f"  # first time the key was seen; result is its age in ms, ABSENT if never
RESET = "x"       # delete the key (strong authentication restarts the counter)
# An on: allow NUMBER applied in the request's one state round trip, before the decision: its
# result leaves out its own increment, so the rules see what an after-the-fact update would
# have shown. UNDO takes it back when the request is then not forwarded; its window_ms holds
# the time of the original increment (so the same bucket is decremented).
PROVISIONAL = "p"
UNDO = "u"
# An on: allow FIRST_SEEN applied in the round trip too: its mark is "<ms>:<token>" (value =
# the request's token, window_ms = the settle window) and reads as absent until it is older
# than the settle window, by when the request that set it was forwarded or has withdrawn it
# with UNDO_FIRST (value = the exact mark: only that request's own mark is deleted).
PROVISIONAL_FIRST = "q"
UNDO_FIRST = "v"
# Makes the exact provisional mark ``value`` a plain first-seen time, once its request was
# forwarded (sent with a later state call: no round trip of its own).
CONFIRM_FIRST = "c"
# Is ``value`` a member of the live list whose hash is the key (state.lists), at the store's
# time? 1 or 0; never writes. A live list is read in the request's one round trip like a counter.
MEMBER = "l"

ABSENT = -1


class Op(NamedTuple):
    """One counter of one entity: read it, and add ``value`` first when ``update`` is set.

    A NamedTuple rather than a frozen dataclass: a request builds one per counter, and a
    frozen dataclass's ``__init__`` (one ``object.__setattr__`` per field) costs twice as much.
    """

    key: str
    kind: str
    update: bool
    value: int | str  # increment (NUMBER), member digest (DISTINCT), token or mark (*_FIRST)
    window_ms: int    # 0 = no window (running total since the last reset); see the kinds
    bucket_ms: int    # bucket width of a windowed NUMBER, 0 otherwise
    ttl_ms: int       # expiry set on every write


@dataclass(frozen=True, slots=True)
class Batch:
    """Operations on keys of one hash tag, applied atomically.

    When ``marker`` is set, the updates apply only if the marker key did not exist yet (it is
    then created with ``marker_ttl_ms``): that makes a repeated event id read-only. An ``undo``
    batch instead deletes its marker and applies its ops unconditionally.
    """

    marker: str | None
    marker_ttl_ms: int
    ops: tuple[Op, ...]
    undo: bool = False

    @property
    def tag(self) -> str:
        """The hash tag every key of the batch carries (its Redis Cluster slot)."""
        return tag_of(self.marker if self.marker is not None else self.ops[0].key)


@dataclass(frozen=True, slots=True)
class Trip:
    """The answer of one state round trip.

    ``fresh`` is False when a single-use claim was already taken; nothing was written then.
    ``applied[i]`` says whether batch i's marker was fresh (its updates happened).
    """

    fresh: bool
    now_ms: int
    applied: tuple[bool, ...]
    results: tuple[tuple[int, ...], ...]


def tag_of(key: str) -> str:
    """The hash tag of a key (``{...}``, its Redis Cluster slot)."""
    return key[key.index("{"):key.index("}") + 1]


def undo_of(op: Op, at_ms: int) -> Op | None:
    """The operation that takes back an update applied at ``at_ms``, or None when it cannot be
    (or need not be) taken back."""
    if not op.update:
        return None
    if op.kind in (NUMBER, PROVISIONAL):
        # window_ms holds the time of the increment, so its own bucket is decremented.
        return Op(op.key, UNDO, True, -int(op.value), at_ms, op.bucket_ms, op.ttl_ms)
    if op.kind == PROVISIONAL_FIRST:
        return Op(op.key, UNDO_FIRST, True, f"{at_ms}:{op.value}", 0, 0, 0)
    return None


def confirm_of(op: Op, at_ms: int) -> Op | None:
    """The operation that makes a provisional first-seen mark set at ``at_ms`` final, if any."""
    if op.kind != PROVISIONAL_FIRST or not op.update:
        return None
    return Op(op.key, CONFIRM_FIRST, True, f"{at_ms}:{op.value}", 0, 0, 0)
