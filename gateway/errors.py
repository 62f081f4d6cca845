"""Errors a request can end with. Each becomes a JSON answer in one place (gateway.responses)."""

from __future__ import annotations


class GatewayError(Exception):
    """A request that ends here with ``status`` and the error ``code`` of the contract (§5)."""

    def __init__(self, status: int, code: str, message: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message or code)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class InvalidRequest(GatewayError):
    def __init__(self, message: str):
        super().__init__(400, "invalid_request", message)


class StateUnavailable(GatewayError):
    def __init__(self):
        super().__init__(503, "state_unavailable", "the shared state store is unavailable")


class UsageError(Exception):
    """A command-line mistake the user can fix; the CLI prints it as one line."""
