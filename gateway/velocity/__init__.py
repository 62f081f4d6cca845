"""Velocity and history features: the rule set's counters, one state round trip per request."""

from gateway.velocity.core import Velocity

__all__ = ["Velocity"]
