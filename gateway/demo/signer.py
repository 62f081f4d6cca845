"""A minimal RFC 9421 request signer (HMAC-SHA256), as a platform client would use.

The demo and the benchmark sign with it; the tests sign with the stock
``http-message-signatures`` library instead, so the verifier is proven against an
implementation that is not ours.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from urllib.parse import urlsplit


def content_digest(body: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


class HmacSigner:
    def __init__(self, key_id: str, secret: str, label: str = "sig1"):
        self.key_id = key_id
        self._key = secret.encode()
        self.label = label

    def __repr__(self) -> str:
        return f"HmacSigner(key_id={self.key_id!r})"

    def headers(self, method: str, url: str, body: bytes = b"", created: int | None = None,
                nonce: str | None = None) -> dict[str, str]:
        """The Content-Digest, Signature-Input and Signature headers for this request."""
        authority = urlsplit(url).netloc
        components = [("@method", method.upper()), ("@authority", authority.lower()),
                      ("@target-uri", url)]
        out: dict[str, str] = {}
        if body:
            out["Content-Digest"] = content_digest(body)
            components.append(("content-digest", out["Content-Digest"]))
        created = int(time.time()) if created is None else created
        nonce = secrets.token_hex(16) if nonce is None else nonce
        names = " ".join(f'"{name}"' for name, _ in components)
        params = (f'({names});created={created};keyid="{self.key_id}";'
                  f'alg="hmac-sha256";nonce="{nonce}"')
        base = "".join(f'"{name}": {value}\n' for name, value in components)
        base += f'"@signature-params": {params}'
        mac = hmac.new(self._key, base.encode(), hashlib.sha256).digest()
        out["Signature-Input"] = f"{self.label}={params}"
        out["Signature"] = f"{self.label}=:{base64.b64encode(mac).decode()}:"
        return out
