"""The velocity operations on Redis: one EVALSHA of the Lua script (``script.py``) per call.

The script text and its SHA are computed once at import; a server that lost its script cache
(restart, failover, SCRIPT FLUSH) answers NOSCRIPT and gets the script with EVAL, which both
runs it and caches it again on that node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from redis.exceptions import NoScriptError

from gateway.velocity.ops import Batch, Trip
from gateway.velocity.script import LUA
from gateway.velocity.window import DISTINCT_CAP, NUMBER_CAP

SCRIPT = LUA.replace("__DISTINCT_CAP__", str(DISTINCT_CAP)).replace("__NUMBER_CAP__",
                                                                   str(NUMBER_CAP))
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
_MODE = {(False, False): "0", (True, False): "1", (True, True): "2"}


def script_call(claims: Sequence[tuple[str, int]], batches: Sequence[Batch]
                ) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV for claims (key, ttl ms) and batches, in the layout ``script.py`` reads."""
    keys = [key for key, _ in claims]
    args: list[str | int] = [len(claims), *(ttl for _, ttl in claims)]
    for batch in batches:
        has_marker = batch.marker is not None
        args += [_MODE[has_marker, batch.undo and has_marker], batch.marker_ttl_ms,
                 len(batch.ops)]
        if has_marker:
            keys.append(batch.marker)
        for op in batch.ops:
            keys.append(op.key)
            args += [op.kind, "1" if op.update else "0", op.value,
                     op.window_ms, op.bucket_ms, op.ttl_ms]
    return keys, args


def parse(raw: Sequence, batches: Sequence[Batch]) -> Trip:
    values = [int(v) for v in raw]
    if not values[0]:
        return Trip(False, values[1], (), ())
    applied, results, at = [], [], 2
    for batch in batches:
        applied.append(bool(values[at]))
        results.append(tuple(values[at + 1:at + 1 + len(batch.ops)]))
        at += 1 + len(batch.ops)
    return Trip(True, values[1], tuple(applied), tuple(results))


def merge(batches: Sequence[Batch]) -> tuple[list[Batch], list[tuple[int, int, int]]]:
    """For a single server: one batch per kind of marker (``e:``, ``a:``, none) instead of one
    per entity, and where each original batch's results lie in the merged ones.

    On one server all markers of a kind are set or unset together (the call is atomic), so the
    first one decides for all: fewer keys and arguments, the same semantics.
    """
    merged: dict[tuple, list] = {}
    where = []
    for batch in batches:
        kind = (None if batch.marker is None else batch.marker.rsplit("}", 1)[1], batch.undo)
        first, ops = merged.setdefault(kind, [batch, []])
        where.append((list(merged).index(kind), len(ops), len(batch.ops)))
        ops.extend(batch.ops)
    out = [Batch(first.marker, first.marker_ttl_ms, tuple(ops), first.undo)
           for first, ops in merged.values()]
    return out, where


async def run_merged(client, claims: Sequence[tuple[str, int]], batches: Sequence[Batch]) -> Trip:
    """``run`` with the batches merged per marker kind (single server only)."""
    merged, where = merge(batches)
    trip = await run(client, claims, merged)
    if not trip.fresh:
        return trip
    return Trip(True, trip.now_ms, tuple(trip.applied[m] for m, _, _ in where),
                tuple(trip.results[m][start:start + n] for m, start, n in where))


async def run(client, claims: Sequence[tuple[str, int]], batches: Sequence[Batch]) -> Trip:
    """Run claims and batches in one script call on ``client``; errors propagate."""
    keys, args = script_call(claims, batches)
    try:
        raw = await client.evalsha(SHA, len(keys), *keys, *args)
    except NoScriptError:
        raw = await client.eval(SCRIPT, len(keys), *keys, *args)
    return parse(raw, batches)
