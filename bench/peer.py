"""The baseline: a bare aiohttp reverse proxy, as small as a competent one can be.

One pooled ClientSession, uvloop like txgate (gateway.workers), hop-by-hop headers dropped, the
body relayed in full. Everything txgate does on top of this is what the benchmark prices.

    python -m bench.peer PORT UPSTREAM_URL
"""

from __future__ import annotations

import asyncio
import signal
import sys

import aiohttp
from aiohttp import web

_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                  "transfer-encoding", "upgrade", "host", "content-length"})


async def serve(port: int, upstream: str) -> None:
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                    cookie_jar=aiohttp.DummyCookieJar(),
                                    skip_auto_headers=("User-Agent", "Accept-Encoding"))

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with session.request(request.method, upstream + request.raw_path, headers=headers,
                                   data=body or None, allow_redirects=False) as answer:
            payload = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
            return web.Response(status=answer.status, body=payload, headers=out)

    runner = web.ServerRunner(web.Server(handle, access_log=None), handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await runner.cleanup()
    await session.close()


def main() -> None:
    import uvloop   # txgate runs on uvloop; a peer on the default loop would flatter txgate

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2].rstrip("/")))


if __name__ == "__main__":
    main()
