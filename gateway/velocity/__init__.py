"""Velocity and history features: the rule set's counters, one state round trip per request."""

from gateway.velocity.core import Observation, Velocity, settle_window_s

__all__ = ["Observation", "Velocity", "settle_window_s"]
