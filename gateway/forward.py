"""Forward an accepted request upstream over pooled keep-alive connections
(``gateway.upstream``) and stream the answer.

Hop-by-hop headers (RFC 9110 §7.6.1, plus every name listed in ``Connection``) are removed in
both directions; client-sent ``Txgate-*`` headers never reach the upstream. A request is sent
once and never retried, so a payment cannot be submitted twice.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Iterable, Mapping

from aiohttp import web
from multidict import CIMultiDict

from gateway.config import RouteConfig
from gateway.errors import GatewayError
from gateway.headers import DROPPED
from gateway.upstream import UpstreamClient, UpstreamResponse

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authenticate", "proxy-authorization",
})
# An answer of known length up to this size is read whole and sent as one Response: one
# write instead of prepare + write + write_eof, and no chunk iterator (most API answers).
SMALL_BODY = 64 * 1024


# Built once: a request without a Connection header (nearly all) drops exactly these.
_DROP_UPSTREAM = HOP_BY_HOP | DROPPED | {"host", "content-length"}


def _connection_tokens(headers: Mapping[str, str]) -> set[str]:
    tokens: set[str] = set()
    for value in headers.getall("Connection", ()) if hasattr(headers, "getall") else ():
        tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return tokens


def _drop(base: frozenset[str], headers: Mapping[str, str]) -> frozenset[str]:
    """``base`` plus every name the message's Connection header lists."""
    if "Connection" not in headers:
        return base
    tokens = _connection_tokens(headers)
    return base | tokens if tokens else base


def upstream_headers(incoming: Mapping[str, str], *, client_ip: str, proto: str, host: str | None,
                     added: Mapping[str, str]) -> CIMultiDict:
    """Headers for the upstream request: end-to-end ones of the client plus ours. ``host`` is
    the configured host the request matched (or ``public_host``), never the client's own."""
    drop = _drop(_DROP_UPSTREAM, incoming)
    out = CIMultiDict([(name, value) for name, value in incoming.items()
                       if (lower := name.lower()) not in drop
                       and not lower.startswith("txgate-")])
    node = f'"[{client_ip}]"' if ":" in client_ip else client_ip
    forwarded = f"for={node};proto={proto}" + (f';host="{host}"' if host else "")
    previous = incoming.get("Forwarded")
    out["Forwarded"] = f"{previous}, {forwarded}" if previous else forwarded
    xff = incoming.get("X-Forwarded-For")
    out["X-Forwarded-For"] = f"{xff}, {client_ip}" if xff else client_ip
    # Set by us or not at all: a client must not tell the upstream which host or scheme it used.
    if host:
        out["X-Forwarded-Host"] = host
    out["X-Forwarded-Proto"] = proto
    out.update(added)
    return out


def downstream_headers(upstream: Mapping[str, str]) -> CIMultiDict:
    drop = _drop(HOP_BY_HOP, upstream)
    return CIMultiDict((k, v) for k, v in upstream.items() if k.lower() not in drop)


class Forwarder:
    """One per process: owns the upstream connections."""

    def __init__(self, timeout_s: float, routes: Iterable[RouteConfig] = ()):
        self._client = UpstreamClient(timeout_s)
        # Route upstream URL -> context verifying it against that route's own CA bundle;
        # every other https upstream is verified against the system CAs.
        self.tls_contexts: dict[str, ssl.SSLContext] = {
            route.upstream: ssl.create_default_context(cafile=route.upstream_ca_file)
            for route in routes if route.upstream.startswith("https://") and route.upstream_ca_file}

    async def close(self) -> None:
        await self._client.close()

    async def open(self, method: str, upstream: str, raw_path: str, headers: CIMultiDict,
                   body: bytes) -> UpstreamResponse:
        """Send the request to ``upstream`` (a route's URL); the caller streams the response.
        Errors become 502/504."""
        origin = self._client.origin(upstream, self.tls_contexts.get(upstream))
        try:
            # The upstream gets the very path that was matched, byte for byte.
            return await self._client.send(origin, method, raw_path, headers, body)
        except TimeoutError:
            raise GatewayError(504, "upstream_timeout", "the upstream did not answer in time") from None
        except OSError:
            raise GatewayError(502, "upstream_unavailable", "the upstream refused or reset the connection") from None


class ClientStalled(ConnectionResetError):
    """The client stopped reading the answer: no write progressed for ``write_timeout_s``."""


async def _write(request: web.Request, write, timeout_s: float) -> None:
    """One write towards the client, cut off when it makes no progress for ``timeout_s``: a
    client that stops reading would otherwise hold the handler, its upstream connection and
    the buffered chunk for ever (aiohttp waits for the socket to drain without a limit)."""
    try:
        async with asyncio.timeout(timeout_s):
            await write()
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()
        raise ClientStalled("the client stopped reading the answer") from None


async def stream_back(request: web.Request, upstream: UpstreamResponse,
                      extra: Mapping[str, str], write_timeout_s: float) -> web.StreamResponse:
    """Relay status, headers and body; chunk by chunk unless small and of known length, so
    memory stays bounded for any size. Each write towards the client must progress within
    ``write_timeout_s`` (a small answer is one write the kernel's socket buffer takes whole)."""
    length = upstream.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) <= SMALL_BODY \
            and request.method != "HEAD" and upstream.status not in (204, 304):
        try:
            body = await upstream.read()
        finally:
            upstream.release()
        headers = downstream_headers(upstream.headers)
        del headers["Content-Length"]   # set again from the body actually read
        headers.update(extra)
        return web.Response(status=upstream.status, reason=upstream.reason, body=body,
                            headers=headers)
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                  headers=downstream_headers(upstream.headers))
    response.headers.update(extra)
    if upstream.headers.get("Content-Length") is None:
        response.enable_chunked_encoding()
    try:
        await _write(request, lambda: response.prepare(request), write_timeout_s)
        async for chunk in upstream.chunks():
            await _write(request, lambda: response.write(chunk), write_timeout_s)
        await _write(request, response.write_eof, write_timeout_s)
    finally:
        upstream.release()
    return response
