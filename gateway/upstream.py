"""HTTP/1.1 to the upstreams: keep-alive connections of our own, answers parsed by httptools.

aiohttp's ``ClientSession.request`` cost ~90 µs of CPU per forwarded request on this project's
bench machine, the largest single item of a pass-through request; this client, for the one
thing the gateway needs (send a request whose body is already in memory, stream the answer
back), costs ~20 µs (docs/performance.md). Parsing stays a maintained C parser's (httptools,
llhttp: the parser of Node.js); what is ours is the connection handling around it:

* one pool of idle connections per upstream origin (and TLS context), last in first out, an
  idle connection closed after ``IDLE_S``, or a second before the server said it would close
  it (``Keep-Alive: timeout=N``, Node.js sends 5 s); a connection is reused only after an
  answer read to its end that allows keep-alive, and never one its server has closed;
* a request is written once and never retried: a payment must not be submitted twice;
* ``timeout_s`` bounds the connect, and then every wait for the upstream's next bytes (as
  aiohttp's ``sock_read``): TimeoutError, as a connect timeout;
* an answer with neither length nor chunked framing ends when its server closes, and an answer
  to HEAD has no body whatever its headers say (llhttp learns neither through httptools: both
  are done here, and the connection is then closed rather than reused);
* interim answers (1xx) are skipped; an upgrade (101) is refused as a broken upstream;
* the body streams with back-pressure: reading pauses while ``HIGH_WATER`` bytes wait for the
  client.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from dataclasses import dataclass

import httptools
from multidict import CIMultiDict
from yarl import URL

IDLE_S = 30.0
_KEEP_ALIVE_TIMEOUT = re.compile(rb"(?i)(?:^|[,;\s])timeout\s*=\s*(\d+)")
HIGH_WATER = 256 * 1024
# Methods whose request has a body by definition: an empty one is sent as Content-Length: 0.
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class UpstreamBroken(ConnectionError):
    """The upstream closed, reset or answered something that is not HTTP/1.1."""


@dataclass(frozen=True, slots=True)
class Origin:
    """Where one upstream URL's requests go, parsed once."""

    host: str
    port: int
    tls: ssl.SSLContext | None
    host_header: str
    prefix: str   # the upstream URL's own path, before every forwarded path

    @classmethod
    def of(cls, base: str, tls: ssl.SSLContext | None) -> Origin:
        url = URL(base, encoded=True)
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise ValueError(f"not an http(s) upstream: {base!r}")
        host = url.raw_host
        shown = f"[{host}]" if ":" in host else host
        header = shown if url.explicit_port is None else f"{shown}:{url.port}"
        return cls(host, url.port, tls if url.scheme == "https" else None, header,
                   url.raw_path.rstrip("/"))


def _header_text(value: str) -> str:
    if "\r" in value or "\n" in value:
        # Parsed headers cannot hold one; ours never do. Checked so that no value can ever
        # start a header or a request of its own at the upstream.
        raise ValueError("a line break in a header for the upstream")
    return value


def request_head(method: str, path: str, origin: Origin, headers: CIMultiDict,
                 body: bytes) -> bytes:
    """The request line and headers. ``path`` is sent byte for byte as the client sent it (the
    gateway routed and decided on exactly it); Host and Content-Length are the gateway's."""
    lines = [f"{method} {origin.prefix}{_header_text(path)} HTTP/1.1\r\n"
             f"Host: {origin.host_header}\r\n"]
    for name, value in headers.items():
        lines.append(f"{_header_text(name)}: {_header_text(value)}\r\n")
    if body or method in _BODY_METHODS:
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("\r\n")
    # As aiohttp writes them: what its server decoded (UTF-8, undecodable bytes kept as
    # surrogates) goes out as the same bytes.
    return "".join(lines).encode("utf-8", "surrogateescape")


class _Connection(asyncio.Protocol):
    """One keep-alive connection to an origin and the answer it is reading."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float):
        self._loop = loop
        self._timeout_s = timeout_s
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.idle_until = 0.0
        self._busy = False
        self._reset_answer(head_only=False)

    def _reset_answer(self, head_only: bool) -> None:
        self._head_only = head_only
        self.status = 0
        self.reason = ""
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._interim = False
        self._has_head = False
        self.complete = False
        self._keep_alive = False
        self.idle_limit_s = IDLE_S   # how long the connection may wait in the pool after it
        self._until_eof = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._last_data = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # ----- asyncio.Protocol ----------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self._busy or self.complete:
            # Bytes nobody asked for (on an idle connection, or after the answer ended): the
            # connection is out of step and is never reused; the answer already read stands.
            self.transport.abort()
            return
        self._last_data = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamBroken("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBroken(f"the upstream's answer is not HTTP/1.1: {exc}"))

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        if (self._has_head and self._until_eof and not self.complete and exc is None
                and self._error is None):
            self.complete = True         # the close ends an answer without length (RFC 9112 §6.3)
            self._wake()
        elif not self.complete:
            self._fail(UpstreamBroken("the upstream closed the connection"))

    # ----- httptools callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.complete:
            # A second answer in the same read: it answers nothing we sent (raising stops the
            # parser here, and the connection is dropped).
            raise UpstreamBroken("the upstream sent more than one answer")

    def on_status(self, reason: bytes) -> None:
        self.reason = reason.decode("utf-8", "surrogateescape")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            self._interim = True         # 100 Continue, 103 Early Hints: the answer follows
            return
        self.status = status
        self._has_head = True
        # One pass over the headers: the framing, and how long the server keeps the
        # connection (``idle_limit_s``).
        length, codings = False, b""
        for name, value in self._raw_headers:
            name = name.lower()
            if name == b"content-length":
                length = True
            elif name == b"transfer-encoding":
                codings = value
            elif name == b"keep-alive" and (found := _KEEP_ALIVE_TIMEOUT.search(value)):
                # A second less than the server's own timeout, so that the connection is not
                # reused just as the server closes it (that request would fail: no retry).
                self.idle_limit_s = max(0.0, min(IDLE_S, int(found.group(1)) - 1.0))
        # Where the body ends: a length, or chunked as the last transfer coding; else the
        # close does (RFC 9112 §6.3).
        framed = length or codings.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        self._until_eof = status not in (204, 304) and not framed
        if self._head_only:
            # llhttp would wait for the body the headers announce; HEAD has none. The
            # parser is out of step with the stream now: the connection is never reused.
            self.complete = True
            if self.transport is not None:
                self.transport.pause_reading()
        self._wake()

    def on_body(self, chunk: bytes) -> None:
        if self._head_only:
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered >= HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            self.reason, self._raw_headers = "", []
            return
        if not self._head_only:
            self.complete = True
            # Read now: llhttp forgets the answer's flags once the next one may begin.
            self._keep_alive = self._parser.should_keep_alive()
        self._wake()

    # ----- the request's side -----------------------------------------------------------------
    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = error
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _check_idle(self) -> None:
        self._timer = None
        if self.complete or self._error is not None:
            return
        now = self._loop.time()
        if self._paused:
            # Reading is held for a slow client: the upstream is not the one being slow.
            self._last_data = now
        if now - self._last_data >= self._timeout_s:
            self._fail(TimeoutError("the upstream sent nothing in time"))
        else:
            self._timer = self._loop.call_at(self._last_data + self._timeout_s, self._check_idle)

    async def _wait(self) -> None:
        """Until the parser makes progress; TimeoutError when the upstream is silent."""
        if self._error is not None:
            raise self._error
        self._waiter = self._loop.create_future()
        if self._timer is None:
            self._timer = self._loop.call_at(self._last_data + self._timeout_s, self._check_idle)
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def send(self, data: bytes, head_only: bool) -> None:
        self._reset_answer(head_only)
        self._busy = True
        self._last_data = self._loop.time()
        self.transport.write(data)

    async def head(self) -> None:
        while not self._has_head:
            await self._wait()

    def take(self) -> bytes:
        chunks, self._chunks = self._chunks, deque()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def more(self) -> bool:
        """Wait until body bytes are buffered; False once the answer is complete."""
        while not self._chunks:
            if self.complete:
                return False
            await self._wait()
        return True

    def headers(self) -> CIMultiDict:
        return CIMultiDict((name.decode("utf-8", "surrogateescape"),
                            value.decode("utf-8", "surrogateescape"))
                           for name, value in self._raw_headers)

    def reusable(self) -> bool:
        # Not while part of the request is still unsent (an upstream may answer before
        # reading a whole body): the next request would queue behind it.
        return (self.complete and self._error is None and not self._head_only
                and not self._until_eof and self.transport is not None
                and not self.transport.is_closing() and self._keep_alive
                and self.transport.get_write_buffer_size() == 0)

    def finished(self) -> None:
        self._busy = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class UpstreamResponse:
    """An upstream's answer: status and headers read, the body still streaming."""

    def __init__(self, connection: _Connection, release):
        self._conn = connection
        self._release = release
        self.status = connection.status
        self.reason = connection.reason
        self.headers = connection.headers()

    async def read(self) -> bytes:
        """The whole body (for answers known to be small)."""
        parts = []
        while await self._conn.more():
            parts.append(self._conn.take())
        return b"".join(parts)

    async def chunks(self):
        """The body as it arrives, in pieces of at most what was buffered."""
        while await self._conn.more():
            yield self._conn.take()

    def release(self) -> None:
        """Back to the pool when the answer was read to its end, else closed."""
        release, self._release = self._release, None
        if release is not None:
            release(self._conn)


class UpstreamClient:
    """The pools of every upstream origin of one process."""

    def __init__(self, timeout_s: float):
        self._timeout_s = timeout_s
        self._origins: dict[tuple[str, int], Origin] = {}
        # Idle connections per (host, port, TLS context): routes whose upstreams differ only
        # in their path share them.
        self._idle: dict[tuple, list[_Connection]] = {}
        self._system_tls: ssl.SSLContext | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def origin(self, base: str, tls: ssl.SSLContext | None) -> Origin:
        key = (base, id(tls))
        origin = self._origins.get(key)
        if origin is None:
            if tls is None and base.startswith("https:"):
                if self._system_tls is None:
                    self._system_tls = ssl.create_default_context()
                tls = self._system_tls
            origin = self._origins[key] = Origin.of(base, tls)
        return origin

    async def send(self, origin: Origin, method: str, path: str, headers: CIMultiDict,
                   body: bytes) -> UpstreamResponse:
        """Write the request once and wait for the answer's status and headers.

        Raises TimeoutError (connect or no answer in time), OSError (refused, reset, closed)
        or UpstreamBroken (not an HTTP/1.1 answer)."""
        data = request_head(method, path, origin, headers, body)
        connection = self._reuse(origin) or await self._connect(origin)
        connection.send(data + body if body else data, head_only=method == "HEAD")
        try:
            await connection.head()
        except BaseException:
            self._discard(connection)
            raise
        return UpstreamResponse(connection, lambda conn: self._release(origin, conn))

    def _reuse(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get((origin.host, origin.port, origin.tls))
        now = asyncio.get_running_loop().time()
        while idle:
            connection = idle.pop()
            if (connection.idle_until > now and connection.transport is not None
                    and not connection.transport.is_closing()):
                return connection
            self._discard(connection)
        return None

    async def _connect(self, origin: Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout_s):
            _, connection = await loop.create_connection(
                lambda: _Connection(loop, self._timeout_s), origin.host, origin.port,
                ssl=origin.tls, server_hostname=origin.host if origin.tls else None)
        return connection

    def _release(self, origin: Origin, connection: _Connection) -> None:
        connection.finished()
        if not connection.reusable():
            self._discard(connection)
            return
        loop = asyncio.get_running_loop()
        connection.idle_until = loop.time() + connection.idle_limit_s
        self._idle.setdefault((origin.host, origin.port, origin.tls), []).append(connection)
        if self._sweeper is None:
            self._sweeper = loop.call_later(IDLE_S, self._sweep)

    @staticmethod
    def _discard(connection: _Connection) -> None:
        connection.finished()
        if connection.transport is not None:
            connection.transport.abort()

    def _sweep(self) -> None:
        """Close connections idle past their limit; runs while any connection is idle."""
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        for idle in self._idle.values():
            stale = [c for c in idle if c.idle_until <= now]
            idle[:] = [c for c in idle if c.idle_until > now]
            for connection in stale:
                self._discard(connection)
        if any(self._idle.values()):
            self._sweeper = loop.call_later(IDLE_S / 2, self._sweep)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for connection in idle:
                if connection.transport is not None:
                    connection.transport.close()
        self._idle.clear()
