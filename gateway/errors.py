"""Errors a request can end with. Each becomes a JSON answer in one place (gateway.responses)."""

from __future__ import annotations

from auth.errors import RequestError

# Only a malformed request is told what was wrong (a field or header, never a rule).
_EXPLAINED = (400, 415)


class GatewayError(RequestError):
    """A request that ends here with ``status`` and the error ``code`` of docs/protocol.md."""

    def __init__(self, status: int, code: str, message: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(status, code, message or code, headers,
                         {"message": message} if message and status in _EXPLAINED else None)


class InvalidRequest(GatewayError):
    def __init__(self, message: str):
        super().__init__(400, "invalid_request", message)


class StateUnavailable(GatewayError):
    def __init__(self):
        super().__init__(503, "state_unavailable", "the shared state store is unavailable")


class UsageError(Exception):
    """A command-line mistake the user can fix; the CLI prints it as one line."""
