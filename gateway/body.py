"""Read a request body within ``max_body_bytes``, refusing a larger one before reading it whole."""

from aiohttp import ClientPayloadError, web

from gateway.errors import GatewayError

_TOO_LARGE = "the request body is larger than this gateway accepts"


class ClientClosed(GatewayError):
    """The client went away before its body was complete: its doing, not the gateway's.
    499 (nginx's "client closed request") only for the log: nobody reads the answer."""

    def __init__(self):
        super().__init__(499, "client_closed", "the client closed the connection mid-body")


async def read_body(request: web.Request, limit: int) -> bytes:
    length = request.content_length
    if length is not None and length > limit:
        raise GatewayError(413, "body_too_large", _TOO_LARGE)
    if not request.body_exists:
        return b""
    chunks, size = [], 0
    try:
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:    # chunked bodies announce no length: stop at the limit
                raise GatewayError(413, "body_too_large", _TOO_LARGE)
            chunks.append(chunk)
    except (ConnectionResetError, ClientPayloadError):
        raise ClientClosed() from None
    return b"".join(chunks)
