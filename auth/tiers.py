"""The authentication tiers, lowest first, and the step-up headers of the HTTP protocol
(docs/protocol.md): the one definition every package uses."""

from __future__ import annotations

# client: a registered API client signed the request; otp: plus the user's TOTP code;
# device: plus the user's registered device key over the exact transaction.
TIERS = ("client", "otp", "device")
_RANK = {tier: rank for rank, tier in enumerate(TIERS)}

H_CHALLENGE = "Txgate-Challenge"
H_OTP = "Txgate-OTP"
H_DEVICE_SIGNATURE = "Txgate-Device-Signature"
H_DEVICE_ID = "Txgate-Device-Id"
STEP_UP_HEADERS = (H_CHALLENGE, H_OTP, H_DEVICE_SIGNATURE, H_DEVICE_ID)


def tier_rank(tier: str) -> int:
    """Position of ``tier`` in client < otp < device; ValueError for anything else."""
    try:
        return _RANK[tier]
    except KeyError:
        raise ValueError(f"unknown tier {tier!r}") from None
