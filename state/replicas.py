"""Security records that outlive the loss of a Redis primary: WAIT for replicas.

Redis replicates asynchronously: a primary killed a moment after it answered takes its last
writes with it, and the replica promoted in its place never saw them. For a counter that is an
error of a few counts; for a signature's claim, a used TOTP step, a failed OTP attempt, a
lockout or a taken challenge it is a replay or brute-force window. So a call that writes one
is followed, on the same connection and in the same packet, by ``WAIT n timeout``: Redis
answers it once ``n`` replicas acknowledged the connection's writes so far, or at the timeout
with how many did. The gateway answers only after that; fewer than ``n`` is a failed call
(``NotReplicated``), decided by the route's ``on_state_error`` like any other.

Why this is enough: a failover promotes the replica with the most of the primary's stream
(Sentinel and Redis Cluster both rank replicas by replication offset), and with one replica
per primary that is the one that acknowledged. A record whose WAIT did not return may or may
not survive; its request was refused (503), so nothing accepted depended on it.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.exceptions import RedisError


class NotReplicated(RedisError):
    """Fewer replicas than asked acknowledged a write within the timeout."""


@dataclass(frozen=True, slots=True)
class Replicas:
    """How many replicas must hold a write, and how long the primary waits for them."""

    count: int
    timeout_ms: int

    @property
    def command(self) -> tuple:
        return ("WAIT", self.count, self.timeout_ms)

    def check(self, acknowledged) -> None:
        """Raise unless ``acknowledged`` (WAIT's reply) reaches ``count``; an error reply
        (WAIT on a primary just turned replica) is no acknowledgement either."""
        if isinstance(acknowledged, Exception):
            raise NotReplicated(f"WAIT failed: {type(acknowledged).__name__}")
        if int(acknowledged) < self.count:
            raise NotReplicated(f"{int(acknowledged)} of {self.count} replicas acknowledged")


class Acked:
    """A lane whose every call waits for ``replicas``; ``Script.run`` and the velocity script
    take it wherever they take the lane."""

    def __init__(self, lane, replicas: Replicas):
        self._lane = lane
        self._replicas = replicas

    def execute(self, *args):
        return self._lane.execute(*args, replicas=self._replicas)

    def evalsha(self, sha: str, numkeys: int, *keys_and_args):
        return self._lane.evalsha(sha, numkeys, *keys_and_args, replicas=self._replicas)

    def eval(self, script: str, numkeys: int, *keys_and_args):
        return self._lane.eval(script, numkeys, *keys_and_args, replicas=self._replicas)
