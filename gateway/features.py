"""The built-in rule attributes every request has (docs/rules.md, "Attributes")."""

from __future__ import annotations

import time


def builtin_attributes(ex) -> dict:
    return builtins(ex.route.name, ex.request.method, ex.tier, ex.client_id, ex.request.remote,
                    time.time())


def builtins(route: str, method: str, tier: str, client_id: str | None, ip: str | None,
             now: float) -> dict:
    """The built-ins of one request at ``now`` (the scenario runner passes its own clock)."""
    attrs = {
        "route": route,
        "method": method,
        "tier": tier,
        "hour": time.gmtime(now).tm_hour,
    }
    if client_id is not None:
        attrs["client_id"] = client_id
    if ip:
        attrs["ip"] = ip
    return attrs
