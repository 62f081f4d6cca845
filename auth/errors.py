"""Errors of the auth package.

``AuthError`` ends a request: the gateway turns it into the JSON answer of the contract
(docs/protocol.md) in one place, as every ``RequestError``. ``reason`` is a short, fixed metric label (``txgate_auth_failures_total{reason}``);
it never carries a key, secret, code or signature, so it is safe to log and to count.

``CredentialError`` and ``MasterKeyError`` are mistakes an operator can make (bad PEM, unknown
id, missing master key); the CLI prints their message as one line, the admin API answers 4xx.
"""

from __future__ import annotations


class RequestError(Exception):
    """Every error that ends a request, of the gateway or of auth: the HTTP ``status``, the
    contract's error ``code``, extra response ``headers``, and the JSON ``body`` fields the
    client is told beyond ``error`` and ``request_id`` (gateway.responses builds the answer)."""

    def __init__(self, status: int, code: str, text: str,
                 headers: dict[str, str] | None = None, body: dict | None = None):
        super().__init__(text)
        self.status = status
        self.code = code
        self.headers = headers or {}
        self.body = body or {}


class AuthError(RequestError):
    """A request refused by authentication: ``status`` and contract ``code``, metric ``reason``."""

    def __init__(self, status: int, code: str, reason: str,
                 headers: dict[str, str] | None = None, body: dict | None = None):
        super().__init__(status, code, f"{status} {code} ({reason})", headers, body)
        self.reason = reason
        # The keyid a refused signature claimed: for the log line only, never trusted.
        self.client_id: str | None = None


def invalid_signature(reason: str) -> AuthError:
    """The one answer for every client-signature failure; only the metric reason differs."""
    return AuthError(401, "invalid_signature", reason)


class CredentialError(Exception):
    """An operator mistake about credentials; ``status`` is the admin API's answer (400/404/409)."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_credential"):
        super().__init__(message)
        self.status = status
        self.code = code


class MasterKeyError(Exception):
    """The master key is missing, malformed or not the one the stored secrets were sealed with."""
