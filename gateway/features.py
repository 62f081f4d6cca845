"""The built-in rule attributes every request has (docs/rules.md, "Attributes")."""

from __future__ import annotations

import time
from datetime import datetime, tzinfo


def builtin_attributes(ex, zone: tzinfo) -> dict:
    return builtins(ex.route.name, ex.request.method, ex.tier, ex.client_id, ex.request.remote,
                    time.time(), zone)


def builtins(route: str, method: str, tier: str, client_id: str | None, ip: str | None,
             now: float, zone: tzinfo) -> dict:
    """The built-ins of one request at ``now`` (the scenario runner passes its own clock);
    ``hour`` and ``weekday`` (0 = Monday) are the local time in ``zone`` (rules.timezone)."""
    local = datetime.fromtimestamp(now, zone)
    attrs = {
        "route": route,
        "method": method,
        "tier": tier,
        "hour": local.hour,
        "weekday": local.weekday(),
    }
    if client_id is not None:
        attrs["client_id"] = client_id
    if ip:
        attrs["ip"] = ip
    return attrs
