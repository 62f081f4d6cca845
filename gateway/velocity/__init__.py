"""Velocity and history features: the rule set's counters, one state round trip per request."""

from gateway.velocity.core import Observation, Velocity

__all__ = ["Observation", "Velocity"]
