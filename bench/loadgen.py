"""A constant-rate (open-loop) HTTP/1.1 load generator for the fixed-load latency test.

Debian ships wrk but not wrk2, and wrk is closed-loop: when the server slows down, wrk sends
less and the slow moments vanish from its percentiles (coordinated omission). Here request k is
due at ``start + k / rate`` whatever happened before, and its latency is measured from that due
time, so any queueing the server causes is counted. Requests come from a ``signed.py`` file and
are each sent once. Idle keep-alive connections are reused; when none is free a new one opens.

    python -m bench.loadgen HOST PORT REQUESTS_FILE RATE DURATION_S

Prints one JSON object: sent, ok (2xx), non_2xx, errors, p50/p99/p99.9 in µs, achieved rate.
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson

from bench.signed import SEP

MAX_CONNECTIONS = 512


class _Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, pool: list):
        self.pool, self.transport, self.buf, self.waiter = pool, None, b"", None
        self.need = -1

    def connection_made(self, transport):
        self.transport = transport

    def send(self, raw: bytes) -> asyncio.Future:
        self.waiter = asyncio.get_running_loop().create_future()
        self.buf, self.need = b"", -1
        self.transport.write(raw)
        return self.waiter

    def data_received(self, data: bytes):
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            length = None
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if length is None:
                self._fail(RuntimeError("response without Content-Length"))
                return
            self.status = int(head[0].split()[1])
            self.need = end + 4 + length
        if len(self.buf) >= self.need and self.waiter is not None:
            waiter, self.waiter = self.waiter, None
            waiter.set_result(self.status)

    def _fail(self, exc):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.waiter = None

    def connection_lost(self, exc):
        self._fail(exc or ConnectionResetError("closed"))
        if self in self.pool:
            self.pool.remove(self)


async def run(host: str, port: int, requests: list[bytes], rate: float, duration: float) -> dict:
    loop = asyncio.get_running_loop()
    idle: list[_Conn] = []
    open_count = 0
    latencies: list[float] = []
    counts = {"ok": 0, "non_2xx": 0, "errors": 0}
    total = min(len(requests), int(rate * duration))
    pending = set()

    async def one(raw: bytes, due: float):
        nonlocal open_count
        conn = idle.pop() if idle else None
        try:
            if conn is None:
                if open_count >= MAX_CONNECTIONS:
                    raise RuntimeError("connection limit reached")
                open_count += 1
                _, conn = await loop.create_connection(lambda: _Conn(idle), host, port)
            status = await conn.send(raw)
        except Exception:   # a refused or reset connection is one error, never a crash
            counts["errors"] += 1
            if conn is not None:
                conn.transport.close()
            open_count -= 1
            return
        latencies.append(time.perf_counter() - due)
        counts["ok" if 200 <= status < 300 else "non_2xx"] += 1
        idle.append(conn)

    start = time.perf_counter() + 0.05
    for k in range(total):
        due = start + k / rate
        delay = due - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        task = loop.create_task(one(requests[k], due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    elapsed = time.perf_counter() - start
    latencies.sort()

    def pct(p: float) -> int:
        if not latencies:
            return 0
        return int(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1e6)

    for conn in idle:
        conn.transport.close()
    return {"sent": total, **counts, "p50_us": pct(50), "p99_us": pct(99), "p999_us": pct(99.9),
            "rate": round(total / elapsed, 1)}


def main() -> None:
    import uvloop

    host, port, path, rate, duration = sys.argv[1:6]
    with open(path, "rb") as f:
        requests = [line.rstrip(b"\n").replace(SEP, b"\r\n") for line in f]
    uvloop.install()
    result = asyncio.run(run(host, int(port), requests, float(rate), float(duration)))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
