"""The one place where an error that ends a request becomes its JSON answer."""

from __future__ import annotations

import orjson
from aiohttp import web

from auth.errors import RequestError


def error_response(exc: RequestError, request_id: str) -> web.Response:
    body = {"error": exc.code, "request_id": request_id, **exc.body}
    response = web.Response(status=exc.status, body=orjson.dumps(body),
                            content_type="application/json",
                            headers={**exc.headers, "Txgate-Request-Id": request_id})
    if exc.status == 413:
        response.force_close()   # the unread body must not be parsed as the next request
    return response
