"""What txgate knows about one request as it moves through the pipeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(slots=True)
class Exchange:
    request: web.Request
    request_id: str
    started: float                       # perf_counter at arrival
    side: Any                            # gateway.sides: where this request's state goes
    route: Any = None                    # gateway.routing.Route
    body: bytes = b""
    client_id: str | None = None
    key_id: str | None = None            # the RFC 9421 keyid the client signed with
    tier: str | None = None              # the tier proven so far
    stepped_up: bool = False
    transaction: dict = field(default_factory=dict)
    normalized: dict = field(default_factory=dict)  # field -> value as sent, when normalized
    attrs: dict = field(default_factory=dict)      # everything the rules see
    event_id: str | None = None
    request_hash: bytes | None = None    # binds challenges to method, target and body
    claims: tuple = ()                   # (state key, ttl ms) the signature must claim once
    observation: Any = None              # gateway.velocity.Observation of the one state trip
    velocity: Any = None                 # the Velocity that observation came from
    rules: Any = None                    # the RuleSet pinned for this request
    decision: Any = None                 # rules.Decision
    challenger: Any = None               # the challenger RuleSet pinned, when configured
    challenger_features: dict = field(default_factory=dict)  # its own counters and lists
    challenger_decision: Any = None      # rules.Decision, never enforced (None: it failed)
    challenger_failed: bool = False      # its decide refused this transaction's attributes
    error: Exception | None = None
    forwarded: bool = False
    upstream_status: int | None = None
    overhead_s: float | None = None      # gateway time before the upstream was called
