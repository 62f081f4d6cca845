"""A rule set's counters baked into a velocity script of its own, for a single Redis server.

The generic call (``velocity_script``) sends six arguments and a full key per counter: ~150
strings a payment for the shipped pack, built as ``Op``/``Batch`` objects, merged, flattened
and packed on every request. Here what a rule set's counters are — key layout, kind, window,
bucket width, expiry, which event marker guards them — is written into the script's text when
the rules load, and a request sends only what varies: each entity value once, and per counter
its update (or that it only reads) and the values of its further key attributes. The script
builds the keys and runs the same operations (the ``op`` function of ``velocity_script``), so
the semantics stay one Lua text; the memory backend and a cluster keep the generic call.

The request's part of ARGV, after the generic batches (confirmations, live-list reads):

* ``e`` and ``a``: '1' when the request's event marker of that kind is the next KEY (set if
  absent: its counters update only then), '0' when no counter of that kind is present;
* per entity (the counters' first key attribute): ``v<encoded value>``, or '' when the request
  has none (its counters are skipped); then per counter of the entity: '' when a further key
  attribute is absent (skipped), else ``r`` (read) or ``u<value>`` (update by / with value),
  followed by the encoded values of its further key attributes.

The answer, after the generic batches' part: the two markers' applied flags, then one integer
per present counter, in layout order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from state.ops import Batch, Trip
from state.scripts import Script
from state.velocity_script import merge, parse, script_call, script_text, unmerge

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:=-{}")


def _lua(text: str) -> str:
    """``text`` as a Lua string literal (names come from rule files: escape the rest)."""
    # Three digits each: Lua reads up to three after a backslash, so a shorter escape
    # followed by a digit would be read as another byte.
    return "'" + "".join(c if c in _SAFE else "".join(f"\\{b:03d}" for b in c.encode())
                         for c in text) + "'"


@dataclass(frozen=True, slots=True)
class Slot:
    """One counter as the script knows it."""

    tag_open: str            # "{<first key attribute>=": the entity's hash tag, opened
    suffix: str              # what follows the tag in every key of the counter
    extras: tuple[str, ...]  # ":<attribute>=" of each further key attribute
    kind: str                # a state.ops kind: n, p, d, f or q
    marker: str              # "e" (updates once per event) or "a" (on: allow, provisional)
    window_ms: int
    bucket_ms: int
    ttl_ms: int


class Layout:
    """Slots grouped by entity (in request order), and the script they make."""

    def __init__(self, groups: Sequence[Sequence[Slot]], prefix: str, marker_ttl_ms: int):
        rows = []
        for group in groups:
            for i, s in enumerate(group):
                rows.append("{%s, %s, %s, {%s}, '%s', '%s', %d, %d, %d}" % (
                    "true" if i == 0 else "false", _lua(f"{prefix}:{s.tag_open}"),
                    _lua("}" + s.suffix), ", ".join(_lua(e) for e in s.extras), s.kind,
                    s.marker, s.window_ms, s.bucket_ms, s.ttl_ms))
        self.script = Script(script_text(_PLAN.replace("__ROWS__", ",\n  ".join(rows))
                                         .replace("__MARKER_TTL__", str(marker_ttl_ms))))


_PLAN = r"""
-- The rule set's counters (state/velocity_plan.py): first of its entity, key start, key end,
-- further key attributes, kind, marker, window ms, bucket ms, ttl ms.
local PLAN = {
  __ROWS__
}
local applied = {}
for _, m in ipairs({'e', 'a'}) do
  a = a + 1
  applied[m] = false
  if ARGV[a] == '1' then
    k = k + 1
    applied[m] = redis.call('SET', KEYS[k], '1', 'NX', 'PX', __MARKER_TTL__) ~= false
  end
  out[#out + 1] = applied[m] and 1 or 0
end
local entity = ''
for _, s in ipairs(PLAN) do
  if s[1] then
    a = a + 1
    entity = ARGV[a]
  end
  if entity ~= '' then
    a = a + 1
    local arg = ARGV[a]
    if arg ~= '' then
      local key = s[2] .. string.sub(entity, 2) .. s[3]
      for _, name in ipairs(s[4]) do
        a = a + 1
        key = key .. name .. ARGV[a]
      end
      local upd = applied[s[6]] and string.byte(arg) == 117
      out[#out + 1] = op(s[5], upd, string.sub(arg, 2), s[7], s[8], s[9], key)
    end
  end
end
"""


@dataclass(frozen=True, slots=True)
class Planned:
    """The answer of a planned call: the generic batches' trip, whether the event markers
    were fresh (``e``, ``a``), and one integer per present counter in layout order."""

    trip: Trip
    applied: tuple[bool, bool]
    values: list[int]


def call(layout: Layout, claims: Sequence[tuple[str, int]], batches: Sequence[Batch],
         markers: tuple[str | None, str | None], body: list[str]
         ) -> tuple[list[str], list]:
    """KEYS and ARGV: the generic call's for claims and batches, then the planned part."""
    keys, args = script_call(claims, batches)
    for marker in markers:
        args.append("0" if marker is None else "1")
        if marker is not None:
            keys.append(marker)
    args += body
    return keys, args


def parse_planned(raw: Sequence, batches: Sequence[Batch]) -> Planned:
    trip = parse(raw, batches)
    if not trip.fresh:
        return Planned(trip, (False, False), [])
    at = 2 + sum(1 + len(b.ops) for b in batches)
    values = [int(v) for v in raw[at:]]
    return Planned(trip, (values[0] == 1, values[1] == 1), values[2:])


async def run(client, layout: Layout, claims: Sequence[tuple[str, int]],
              batches: Sequence[Batch], markers: tuple[str | None, str | None],
              body: list[str]) -> Planned:
    """One call of ``layout``'s script on ``client`` (one server: the batches are merged per
    marker kind, as ``velocity_script.run_merged`` does); errors propagate."""
    merged, where = merge(batches)
    keys, args = call(layout, claims, merged, markers, body)
    planned = parse_planned(await layout.script.run(client, keys, args), merged)
    return Planned(unmerge(planned.trip, where), planned.applied, planned.values)
