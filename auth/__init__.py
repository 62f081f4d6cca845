"""Tiered authentication: request signatures, TOTP, device signatures, credentials, challenges."""
