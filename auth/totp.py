"""TOTP codes (RFC 6238) through pyotp, reporting *which* time step matched.

pyotp's own ``verify`` answers only yes/no and stops at the first match; to accept each time
step once we need the matched step, so we generate the window's codes with pyotp and compare
them all ourselves with ``hmac.compare_digest`` (no early exit, so the timing does not say which
offset matched).
"""

from __future__ import annotations

import hashlib
import hmac

import pyotp


class Totp:
    """TOTP parameters of the deployment (``auth.totp`` in the configuration)."""

    def __init__(self, digits: int = 6, period: int = 30, valid_window: int = 1,
                 digest=hashlib.sha1):
        self.digits, self.period, self.valid_window, self.digest = \
            digits, period, valid_window, digest

    def __repr__(self) -> str:
        return f"Totp(digits={self.digits}, period={self.period}, window={self.valid_window})"

    def _otp(self, secret: str) -> pyotp.TOTP:
        return pyotp.TOTP(secret, digits=self.digits, interval=self.period, digest=self.digest)

    def step(self, now: float) -> int:
        """The RFC 6238 time step T of ``now``."""
        return int(now) // self.period

    def code(self, secret: str, step: int) -> str:
        """The code of ``step`` (demo and tests; the gateway only verifies)."""
        return self._otp(secret).generate_otp(step)

    def matching_step(self, secret: str, code: str, now: float) -> int | None:
        """The newest time step within the window whose code is ``code``, or None."""
        if len(code) != self.digits or not code.isascii() or not code.isdigit():
            return None
        otp = self._otp(secret)
        current = self.step(now)
        given = code.encode()
        matched = None
        for step in range(current - self.valid_window, current + self.valid_window + 1):
            if hmac.compare_digest(otp.generate_otp(step).encode(), given):
                matched = step
        return matched

    def replay_ttl(self) -> float:
        """How long an accepted step must be remembered: the newest step a code can belong to
        is accepted until ``valid_window`` steps after it have passed."""
        return float(self.period * (2 * self.valid_window + 2))

    def provisioning_uri(self, secret: str, user: str, issuer: str = "txgate") -> str:
        """The ``otpauth://totp/...`` URI an authenticator app scans."""
        return self._otp(secret).provisioning_uri(name=user, issuer_name=issuer)
