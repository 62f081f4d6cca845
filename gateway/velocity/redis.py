"""The velocity operations on Redis: one EVALSHA of the Lua script (``script.py``) per batch call.

The script text and its SHA are computed once at import; a server that lost its script cache
(restart, failover, SCRIPT FLUSH) answers NOSCRIPT and gets the script with EVAL, which both
runs it and caches it again on that node.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from redis.exceptions import NoScriptError

from gateway.velocity.ops import Batch
from gateway.velocity.script import LUA
from gateway.velocity.window import DISTINCT_CAP

SCRIPT = LUA.replace("__DISTINCT_CAP__", str(DISTINCT_CAP))
SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()


def script_call(batch: Batch) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV for one batch, in the layout the Lua script (``script.py``) reads."""
    keys: list[str] = []
    args: list[str | int] = [batch.marker_ttl_ms, "1" if batch.marker is not None else "0"]
    if batch.marker is not None:
        keys.append(batch.marker)
    for op in batch.ops:
        keys.append(op.key)
        args += [op.kind, "1" if op.update else "0", op.value,
                 op.window_ms, op.bucket_ms, op.ttl_ms]
    return keys, args


async def run_batch(client, batch: Batch) -> list[int]:
    """Run one batch on ``client`` (a Redis or RedisCluster); errors propagate to the caller."""
    keys, args = script_call(batch)
    try:
        result = await client.evalsha(SHA, len(keys), *keys, *args)
    except NoScriptError:
        result = await client.eval(SCRIPT, len(keys), *keys, *args)
    return [int(value) for value in result]


def merge(batches: Sequence[Batch]) -> Batch:
    """One batch for a single server: every op behind the first batch's marker.

    On one server all markers are set or unset together (each call is atomic), so a single
    marker decides for all of them, and the request stays one round trip.
    """
    ops = tuple(op for batch in batches for op in batch.ops)
    return Batch(batches[0].marker, batches[0].marker_ttl_ms, ops)
