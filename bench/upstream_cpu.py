"""The forwarding client's CPU: `gateway.upstream` against aiohttp's `ClientSession` (the
client txgate used before, configured as its Forwarder configured it), side by side.

    python -m bench.upstream_cpu [REQUESTS]

A static upstream (aiohttp on uvloop) runs in a child process; this process sends REQUESTS
(default 20,000) payment-sized POSTs with the gateway's upstream headers through each client in
turn, 32 in flight, three times alternated, and prints the CPU of this process per request
(the upstream's is not counted) and the ratio, from the same run.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import statistics
import sys
import time

from multidict import CIMultiDict

from gateway.upstream import UpstreamClient

IN_FLIGHT = 32
BODY = (b'{"user_id":"u42","amount":"42.10","currency":"EUR",'
        b'"payee":{"iban":"DE89370400440532013000","country":"DE"}}')
HEADERS = CIMultiDict({
    "Content-Type": "application/json", "X-Device-Id": "u42-phone", "X-Channel": "app",
    "Forwarded": "for=127.0.0.1;proto=http", "X-Forwarded-For": "127.0.0.1",
    "X-Forwarded-Proto": "http", "Txgate-Request-Id": "0" * 32, "Txgate-Tier": "client",
    "Txgate-Decision": "allow", "Txgate-Risk-Score": "0"})


def _serve(port: int) -> None:
    import uvloop
    from aiohttp import web

    async def answer(_request):
        return web.Response(body=b'{"status":"accepted","id":"tx_0001"}',
                            content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def _aiohttp(url: str):
    import aiohttp
    from yarl import URL

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30),
        auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept-Encoding"))

    async def one() -> None:
        answer = await session.request("POST", URL(url + "/v1/payments", encoded=True),
                                       headers=HEADERS, data=BODY, allow_redirects=False,
                                       compress=None)
        try:
            await answer.read()
        finally:
            answer.release()
    return one, session.close


async def _ours(url: str):
    client = UpstreamClient(10)
    origin = client.origin(url, None)

    async def one() -> None:
        answer = await client.send(origin, "POST", "/v1/payments", HEADERS, BODY)
        try:
            await answer.read()
        finally:
            answer.release()
    return one, client.close


async def _cpu_per_request(make, url: str, requests: int) -> float:
    one, close = await make(url)
    for _ in range(20):              # connections open, code warm
        await asyncio.gather(*(one() for _ in range(IN_FLIGHT)))
    started = time.process_time()
    for _ in range(requests // IN_FLIGHT):
        await asyncio.gather(*(one() for _ in range(IN_FLIGHT)))
    cpu = time.process_time() - started
    await close()
    return cpu / (requests // IN_FLIGHT * IN_FLIGHT) * 1e6


def _wait(port: int) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main(argv: list[str]) -> int:
    import uvloop

    requests = int(argv[0]) if argv else 20_000
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    upstream = multiprocessing.get_context("spawn").Process(target=_serve, args=(port,),
                                                             daemon=True)
    upstream.start()
    try:
        _wait(port)
        url = f"http://127.0.0.1:{port}"
        uvloop.install()
        runs = {"aiohttp ClientSession": [], "gateway.upstream": []}
        for _ in range(3):
            for name, make in (("aiohttp ClientSession", _aiohttp), ("gateway.upstream", _ours)):
                runs[name].append(asyncio.run(_cpu_per_request(make, url, requests)))
    finally:
        upstream.terminate()
        upstream.join(10)
    base = statistics.median(runs["aiohttp ClientSession"])
    for name, values in runs.items():
        print(f"{name}: {statistics.median(values):.1f} µs CPU a request "
              f"(runs {', '.join(f'{v:.1f}' for v in values)}; "
              f"{statistics.median(values) / base:.2f}× aiohttp's)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
