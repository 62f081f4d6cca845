"""MEMORY USAGE of each counter kind for one entity, filled the way traffic fills it.

The numbers in docs/counters.md come from this test (run with ``-s`` to print them); the bounds
fail the build if a change makes counters much bigger.
"""

from __future__ import annotations

import asyncio

from state import create_backend
from gateway.velocity import Velocity
from tests.gateway.velocity.helpers import forwarded, spec

BOUNDS = {  # bytes per counter per entity, measured on Redis 7.0 with default encodings
    "count, 60 buckets": 1300,
    "sum, 60 buckets": 1600,
    "distinct, 10 members": 600,
    "distinct, 100 members": 4800,
    "distinct, 1000 members (cap)": 180_000,
    "first_seen": 150,
    "running sum (reset_on)": 150,
    "event marker": 150,
}


def test_memory_per_counter_per_entity(redis_server):
    key = "txv:{user_id=u}"
    measured = {}

    async def scenario():
        backend = create_backend("redis", redis_server.url, False, 1000)
        # A 1 s window has 16 ms buckets: one observe every ~17 ms for a window fills them all.
        v = Velocity([spec("n", ["user_id"], "count", window_s=1),
                      spec("s", ["user_id"], "sum", field="amount", window_s=1),
                      spec("f", ["user_id", "payee"], "first_seen"),
                      spec("r", ["user_id"], "sum", field="amount", reset_on="strong_auth")],
                     backend)
        for i in range(70):
            await forwarded(v, {"user_id": "u", "amount": 123456.78 + i, "payee": "p"}, f"e{i}")
            await asyncio.sleep(0.017)
        measured["count, 60 buckets"] = redis_server.cli("MEMORY", "USAGE", f"{key}:n:count:w1")
        measured["sum, 60 buckets"] = redis_server.cli("MEMORY", "USAGE", f"{key}:s:sum:w1")
        measured["first_seen"] = redis_server.cli(
            "MEMORY", "USAGE", f"{key}:f:first_seen:rnone:payee=p")
        measured["running sum (reset_on)"] = redis_server.cli(
            "MEMORY", "USAGE", f"{key}:r:sum:rstrong_auth")
        measured["event marker"] = redis_server.cli("MEMORY", "USAGE", f"{key}:e:e0")
        assert redis_server.cli("HLEN", f"{key}:n:count:w1") <= 61
        d = Velocity([spec("d", ["device_id"], "distinct", field="user_id", window_s=3600)],
                     backend)
        for size in (10, 100, 1000):
            await asyncio.gather(*(forwarded(d, {"device_id": f"d{size}", "user_id": f"user-{i}"},
                                             f"d{size}-{i}") for i in range(size)))
            label = f"distinct, {size} members" + (" (cap)" if size == 1000 else "")
            measured[label] = redis_server.cli(
                "MEMORY", "USAGE", f"txv:{{device_id=d{size}}}:d:distinct:w3600", "SAMPLES", "0")
        await backend.close()

    asyncio.run(scenario())
    for label, size in measured.items():
        print(f"{label:32} {size:>8} bytes")
    for label, bound in BOUNDS.items():
        assert 0 < measured[label] <= bound, (label, measured[label])
