"""The one place where an error that ends a request becomes its JSON answer."""

from __future__ import annotations

import orjson
from aiohttp import web

from auth.errors import AuthError
from gateway.errors import GatewayError


def error_response(exc: GatewayError | AuthError, request_id: str) -> web.Response:
    body = {"error": exc.code, "request_id": request_id}
    if isinstance(exc, AuthError):
        body.update(exc.body_extra or {})
    elif exc.message and exc.status in (400, 415):
        # Only a malformed request is told what was wrong: it names a field, never a rule.
        body["message"] = exc.message
    response = web.Response(status=exc.status, body=orjson.dumps(body),
                            content_type="application/json",
                            headers={**exc.headers, "Txgate-Request-Id": request_id})
    if exc.status == 413:
        response.force_close()   # the unread body must not be parsed as the next request
    return response
