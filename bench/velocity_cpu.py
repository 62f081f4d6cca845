"""The client side of the velocity call: CPU µs per `Velocity.observe_once` (docs/performance.md).

    python -m bench.velocity_cpu [CALLS]

One real `redis-server` on a free port, the shipped pack's counters, two claims a call and 32
calls in flight at a time (as a loaded gateway has them), on uvloop; each forwarded call's
first-seen marks confirmed as the gateway does. Prints the process's CPU per call over CALLS
calls (default 32,000) after 3,200 to warm up: everything but the Redis server, i.e. what
the gateway pays for one state round trip (building the operations, packing the script call,
the socket, parsing the answer).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from bench import rulepack
from bench.micro.test_stages import ATTRS, KINDS
from gateway.velocity import Velocity
from rules import load_rules
from state import create_backend
from tests.fixtures.redis import RedisServer

IN_FLIGHT = 32


async def _measure(url: str, calls: int) -> float:
    backend = create_backend("redis", url, False, 1000)
    await backend.start()
    with load_rules(rulepack.DEFAULT, KINDS) as rs:
        velocity = Velocity(rs.counters, backend)

        async def one(i: int) -> None:
            claims = [(f"{{c:bench}}:sig:{i}", 600_000), (f"{{c:bench}}:nonce:{i}", 600_000)]
            attrs = {**ATTRS, "amount_base": ATTRS["amount"], "user_id": f"u{i % 5000}"}
            velocity.confirm(await velocity.observe_once(attrs, f"e{i}", claims))

        async def run(first: int, count: int) -> None:
            for k in range(first, first + count, IN_FLIGHT):
                await asyncio.gather(*(one(i) for i in range(k, k + IN_FLIGHT)))

        await run(0, 3_200)
        started = time.process_time()
        await run(10_000, calls)
        cpu = time.process_time() - started
    await backend.close()
    return cpu / calls * 1e6


def main(argv: list[str]) -> int:
    import uvloop

    calls = int(argv[0]) if argv else 32_000
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            uvloop.install()
            us = asyncio.run(_measure(f"redis://127.0.0.1:{server.port}/0", calls))
        finally:
            server.stop()
    print(f"velocity call, client side: {us:.1f} µs CPU a call ({calls} calls, {IN_FLIGHT} in flight)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
