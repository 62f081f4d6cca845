"""The built-in rule attributes every request has (docs/rules.md, "Attributes")."""

from __future__ import annotations

import time


def builtin_attributes(ex) -> dict:
    attrs = {
        "route": ex.route.name,
        "method": ex.request.method,
        "tier": ex.tier,
        "hour": time.gmtime().tm_hour,
    }
    if ex.client_id is not None:
        attrs["client_id"] = ex.client_id
    if ex.request.remote:
        attrs["ip"] = ex.request.remote
    return attrs
