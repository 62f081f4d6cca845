"""gateway.upstream against real TCP servers that answer exact bytes, well-formed or not.

The end-to-end behaviour (502/504, streaming 50 MB, no retry, TLS upstreams, header hygiene)
is tested through the gateway in test_proxy_e2e.py, hardening/test_faults.py and
hardening/test_tls.py; here each framing case of HTTP/1.1 answers is driven directly.
"""

from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict

from gateway.upstream import HIGH_WATER, UpstreamBroken, UpstreamClient

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Scripted:
    """A TCP server answering each request with the next of ``answers`` (bytes, or a callable
    taking the StreamWriter for answers spread over time); it records every raw request and
    every connection."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.requests: list[bytes] = []
        self.connections = 0

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()

    async def _serve(self, reader, writer):
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0)
                if callable(answer):
                    await answer(writer)
                else:
                    writer.write(answer)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _get(client, server, method="GET", path="/x", body=b"", headers=None, base=None):
    origin = client.origin(base or server.url, None)
    answer = await client.send(origin, method, path, CIMultiDict(headers or {}), body)
    try:
        return answer.status, answer.headers, await answer.read()
    finally:
        answer.release()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_the_request_is_sent_byte_for_byte_and_the_connection_kept_alive():
    async def main():
        async with Scripted(OK, OK) as server:
            client = UpstreamClient(2)
            headers = {"X-A": "1", "Txgate-Request-Id": "r1"}
            first = await _get(client, server, "POST", "/v1/pay%2Fx?a=1&a=2", b'{"amount":1}',
                               headers, base=server.url + "/api")
            second = await _get(client, server, "GET", "/again")
            await client.close()
            return server, first, second

    server, first, second = run(main())
    assert first == (200, CIMultiDict({"Content-Length": "2"}), b"ok")
    assert second[2] == b"ok"
    port = server.url.rsplit(":", 1)[1]
    assert server.requests[0] == (
        b"POST /api/v1/pay%2Fx?a=1&a=2 HTTP/1.1\r\nHost: 127.0.0.1:" + port.encode() +
        b"\r\nX-A: 1\r\nTxgate-Request-Id: r1\r\nContent-Length: 12\r\n\r\n"
        b'{"amount":1}')
    # A GET without body carries no Content-Length; both went over one connection.
    assert b"Content-Length" not in server.requests[1] and server.connections == 1


def test_chunked_close_delimited_head_and_interim_answers():
    chunked = (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\n"
               b"Set-Cookie: b=2\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + OK
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"

    async def close_delimited(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b" the end")
        await writer.drain()
        writer.close()

    async def main():
        async with Scripted(chunked, interim, head) as server:
            client = UpstreamClient(2)
            got = [await _get(client, server), await _get(client, server),
                   await _get(client, server, "HEAD")]
        async with Scripted(close_delimited) as eof_server:
            got.append(await _get(client, eof_server))
        await client.close()
        return server, got

    server, (a, b, c, d) = run(main())
    assert a[0] == 201 and a[2] == b"abcde" and a[1].getall("Set-Cookie") == ["a=1", "b=2"]
    assert b[:1] == (200,) and b[2] == b"ok"
    assert c[0] == 200 and c[2] == b""          # HEAD: no body, whatever the length says
    assert d[0] == 200 and d[2] == b"until the end"
    assert server.connections == 1


def test_an_answer_asking_to_close_or_to_head_is_not_reused():
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"

    async def main():
        async with Scripted(closing, OK, OK) as server:
            client = UpstreamClient(2)
            await _get(client, server)
            await _get(client, server, "HEAD")
            await _get(client, server)
            await client.close()
            return server.connections

    assert run(main()) == 3


@pytest.mark.parametrize("answer", [
    b"SSH-2.0-OpenSSH_9.6\r\n\r\n",                                      # not HTTP
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",   # an upgrade
    b"",                                                                   # closed unanswered
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",          # a truncated body
])
def test_garbage_upgrades_truncations_and_silence_then_close_are_broken_upstreams(answer):
    async def close_after(writer):
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def main():
        async with Scripted(close_after) as server:
            client = UpstreamClient(2)
            with pytest.raises(UpstreamBroken):
                await _get(client, server)
            await client.close()

    run(main())


def test_silence_before_or_within_an_answer_times_out():
    async def silent(writer):
        await asyncio.sleep(5)

    async def stalls_mid_body(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(5)

    async def drips(writer):
        # Slower in total than the timeout, but never silent for as long: not a timeout.
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n")
        for byte in b"dripss":
            await asyncio.sleep(0.15)
            writer.write(bytes([byte]))
            await writer.drain()

    async def main():
        client = UpstreamClient(0.3)
        for answer in (silent, stalls_mid_body):
            async with Scripted(answer) as server:
                with pytest.raises(TimeoutError):
                    await _get(client, server)
        async with Scripted(drips) as server:
            got = await _get(client, server)
        await client.close()
        return got

    assert run(main())[2] == b"dripss"


def test_a_large_body_is_held_back_while_unread():
    size = 8 * HIGH_WATER

    async def big(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"x" * size)
        await writer.drain()

    async def main():
        async with Scripted(big) as server:
            client = UpstreamClient(2)
            answer = await client.send(client.origin(server.url, None), "GET", "/", CIMultiDict(),
                                       b"")
            await asyncio.sleep(0.3)      # the server writes all it can; nobody reads
            buffered = answer._conn._buffered
            total = 0
            async for chunk in answer.chunks():
                total += len(chunk)
            answer.release()
            await client.close()
            return buffered, total

    buffered, total = run(main())
    assert total == size
    assert buffered < 2 * HIGH_WATER      # reading paused at the high-water mark


def test_a_line_break_in_a_header_is_refused_before_anything_is_sent():
    async def main():
        async with Scripted(OK) as server:
            client = UpstreamClient(2)
            with pytest.raises(ValueError):
                await _get(client, server, headers={"X-A": "1\r\nX-Injected: 2"})
            await client.close()
            return server.requests

    assert run(main()) == []


def test_bytes_after_the_answer_are_never_a_next_answer():
    second = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\nSECRET"
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nPRIOR"

    async def trailing(extra):
        async def answer(writer):
            writer.write(OK + extra)      # one read: the answer and what follows it
            await writer.drain()
        return answer

    async def later(writer):
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.1)          # a read of its own, after the answer ended
        writer.write(partial)
        await writer.drain()

    async def main():
        got = []
        client = UpstreamClient(1)
        for answer in (await trailing(second), await trailing(partial), later):
            async with Scripted(answer, OK) as server:
                got.append(await _get(client, server))
                await asyncio.sleep(0.2)
                # The connection was dropped: the next request gets a connection of its own
                # and its own answer, in time.
                got.append(await _get(client, server))
                got.append(server.connections)
        await client.close()
        return got

    got = run(main())
    for first, after, connections in zip(got[::3], got[1::3], got[2::3]):
        assert first == (200, CIMultiDict({"Content-Length": "2"}), b"ok")
        assert after[2] == b"ok" and connections == 2


@pytest.mark.parametrize("framing, body", [
    (b"Transfer-Encoding: gzip\r\n", b"until close"),        # not chunked: ends at the close
    (b"Transfer-Encoding: gzip, chunked\r\n", None),         # chunked last: framed
])
def test_a_transfer_coding_frames_the_answer_only_when_chunked_is_last(framing, body):
    async def answer(writer):
        if body is None:
            writer.write(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n5\r\nhello\r\n0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n" + body)
            await writer.drain()
            writer.close()
        await writer.drain()

    async def main():
        async with Scripted(answer) as server:
            client = UpstreamClient(2)
            got = await _get(client, server)
            await client.close()
            return got

    assert run(main())[2] == (body or b"hello")


def test_a_connection_whose_request_is_still_being_sent_is_not_reused():
    connections = []

    async def early(reader, writer):
        # Answers as soon as the head is in, before reading the body (as a 401 may).
        connections.append(writer)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(2)

    async def main():
        server = await asyncio.start_server(early, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        client = UpstreamClient(2)
        origin = client.origin(url, None)
        answer = await client.send(origin, "POST", "/", CIMultiDict(), b"x" * (16 << 20))
        assert await answer.read() == b"ok"
        answer.release()
        # Its body is still in the write buffer: a next request must not queue behind it.
        second = await client.send(origin, "GET", "/", CIMultiDict(), b"")
        second.release()
        await client.close()
        server.close()
        return len(connections)

    assert run(main()) == 2


def test_a_connection_is_not_kept_past_the_servers_keep_alive_timeout():
    short = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=1, max=100\r\nContent-Length: 2\r\n\r\nok"
    long = b"HTTP/1.1 200 OK\r\nKeep-Alive: timeout=60\r\nContent-Length: 2\r\n\r\nok"

    async def main():
        client = UpstreamClient(2)
        counts = []
        for first in (short, long):
            async with Scripted(first, OK) as server:
                await _get(client, server)
                await _get(client, server)
                counts.append(server.connections)
        await client.close()
        return counts

    # timeout=1 leaves no time to reuse it (a second less); 60 is kept (for IDLE_S).
    assert run(main()) == [2, 1]
