"""The device signing payload (docs/protocol.md §5, "Step-up"): what a user's device signs to approve exactly
one transaction (PSD2 RTS Art. 5, dynamic linking).

UTF-8, one field a line, no trailing newline::

    txgate-device-v1
    <challenge id>
    <user id>
    <amount>          shortest plain decimal: 10.5, 1250, 0.01 (no exponent, no trailing zeros)
    <currency>
    <payee>
    <request hash>    lowercase hex SHA-256 of method, target and body (challenges.request_hash)

Absent fields are empty lines. The gateway sends the payload base64-encoded with a device
challenge, so clients need not rebuild it; it is rebuilt from the repeated request on the way
back, so a change of amount, currency, payee or body breaks the signature.
"""

from __future__ import annotations

import base64
import binascii
from decimal import Decimal, InvalidOperation

VERSION = "txgate-device-v1"


def format_amount(amount) -> str:
    """Amounts as the shortest plain decimal; floats through repr (the text the client sent)."""
    if amount is None:
        return ""
    if isinstance(amount, bool):
        return str(amount).lower()
    if isinstance(amount, int):
        return str(amount)
    try:
        value = Decimal(repr(amount)) if isinstance(amount, float) else Decimal(str(amount))
    except InvalidOperation:
        return str(amount)
    text = format(value.normalize(), "f")
    return text


def _line(value) -> str:
    text = "" if value is None else str(value)
    # A field may not add lines: that would let one transaction's fields mimic another's.
    return text.replace("\r", " ").replace("\n", " ")


def signing_payload(challenge_id: str, user_id: str, amount, currency, payee,
                    req_hash: bytes) -> bytes:
    """The exact bytes a device signs for this challenge and transaction."""
    return "\n".join((VERSION, _line(challenge_id), _line(user_id), format_amount(amount),
                      _line(currency), _line(payee), req_hash.hex())).encode("utf-8")


def decode_signature(value: str) -> bytes | None:
    """A base64 (standard or URL-safe, padding optional) signature header, or None."""
    value = value.strip()
    if not value or len(value) > 512:
        return None
    try:
        return base64.b64decode(value.replace("-", "+").replace("_", "/")
                                + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
