"""Redis state backend: the shared store for a fleet of gateways (a single server, a primary
found through Sentinel, or a cluster)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from state import redis_cluster, velocity_plan, velocity_script
from state.base import StateBackend, StateError
from state.health import Health
from state.ops import Batch, Trip
from state.redis_cluster import ClusterLane
from state.redis_pipelined import PipelinedLane
from state.replicas import Acked, Replicas
from state.scripts import ADVANCE, HREPLACE, INCR, Script

T = TypeVar("T")

# Calls in flight, in all (every node of a cluster together); more wait for a free slot.
MAX_CONNECTIONS = 64


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisBackend(StateBackend):
    """Calls on connections of our own (``redis_direct``, per master on a cluster:
    ``redis_cluster``); every failure becomes a StateError.

    ``sentinel`` is (master name, [(host, port) of each sentinel]): every new connection asks
    the sentinels where the primary is, so after a failover the lane's next connection goes to
    the promoted replica (connections to the old primary broke with it, or are closed by
    Sentinel when it comes back as a replica). ``url`` then only carries the connections'
    options (user, password, db, ``rediss://`` for TLS).

    ``wait_replicas`` > 0: every write of a security record waits for that many replicas
    (``state.replicas``); counters alone (a trip without claims) never wait.
    """

    name = "redis"

    def __init__(self, url: str | None, cluster: bool = False, timeout_ms: int = 100,
                 max_connections: int = MAX_CONNECTIONS,
                 sentinel: tuple[str, Sequence[tuple[str, int]]] | None = None,
                 wait_replicas: int = 0):
        self.cluster = cluster
        # One server runs a rule set's own script (velocity_plan); a cluster splits the call
        # per slot and keeps the generic one.
        self.plans = not cluster
        self._timeout = timeout = timeout_ms / 1000
        # No client-side retries: a slow or absent store must fail within timeout_ms so that
        # on_state_error decides, instead of the request waiting through a backoff schedule.
        options = dict(
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            decode_responses=False,
            max_connections=max_connections,
        )
        self._sentinel = None
        if sentinel is None:
            # The client only holds the URL's connection options; the lanes send.
            self._client = Redis.from_url(url, **options)
        else:
            master, nodes = sentinel
            self._sentinel = Sentinel(list(nodes), sentinel_kwargs=dict(
                socket_timeout=timeout, socket_connect_timeout=timeout,
                retry=Retry(NoBackoff(), 0)))
            self._client = self._sentinel.master_for(master, **options, **_url_options(url))
        # A burst queues for a connection (for at most timeout_ms): calls take a slot first.
        self._slots = asyncio.Semaphore(max_connections)
        # Every call skips redis-py's generic command path (see redis_direct); on a single
        # server or a Sentinel-found primary all of them share one auto-pipelined connection
        # (redis_pipelined). A server silent for several timeouts while calls wait gets a
        # fresh connection (through Sentinel: to whichever server is the primary then).
        self._lane = (ClusterLane(self._client) if cluster
                      else PipelinedLane(self._client, stall_s=max(1.0, 5 * timeout)))
        # The primary waits for the replicas at most timeout_ms, on top of the call's own.
        self._replicas = Replicas(wait_replicas, _ms(timeout)) if wait_replicas else None
        self._acked = Acked(self._lane, self._replicas) if self._replicas else None
        self._health = Health("redis cluster" if cluster else
                              "redis sentinel" if sentinel else "redis")

    async def _direct(self, operation: str, call: Callable[[], Awaitable[T]],
                      acked: bool = False) -> T:
        """ONE timeout bounds the wait for a slot, the send and
        the read together (the lane's connections have no per-socket-operation timeout);
        twice as long when the call also waits for replicas."""
        acquired = False
        try:
            async with asyncio.timeout(self._timeout * (2 if acked else 1)):
                await self._slots.acquire()
                acquired = True
                try:
                    result = await call()
                finally:
                    self._slots.release()
        except TimeoutError:
            raise self._failed(operation, "TimeoutError" if acquired
                               else "no free connection within timeout") from None
        except (RedisError, OSError) as exc:
            # The message names the failure's kind only: keys and values may be secrets.
            raise self._failed(operation, type(exc).__name__) from None
        self._health.answered()
        return result

    def _failed(self, operation: str, kind: str) -> StateError:
        self._health.failed(operation, kind)
        return StateError(operation, kind)

    async def start(self) -> None:
        await self.ping()
        if not self.cluster:
            # Rule sets run scripts of their own (velocity_plan); the generic one serves
            # pass-through claims and settling. Run once now with nothing to do (EVALSHA, or
            # EVAL when not cached: the commands the gateway needs anyway), so that their
            # first call needs no EVAL.
            await self._direct("script", lambda: velocity_script.VELOCITY.run(
                self._lane, [], [0, 0]))

    async def close(self) -> None:
        try:
            await self._lane.close()
            await self._client.aclose()
            if self._sentinel is not None:
                await self._sentinel.aclose()
        except (RedisError, OSError):
            pass

    def _command(self, operation: str, command: tuple, write: bool = False):
        """``command`` on the lane; its raw replies are b"OK" and a flat HGETALL list.
        A ``write`` of a security record waits for the replicas."""
        lane = self._acked if write and self._acked else self._lane
        return self._direct(operation, lambda: lane.execute(*command), lane is self._acked)

    def _script(self, operation: str, script: Script, keys: list, args: list):
        # Every script here writes a security record (attempts, TOTP steps, credentials).
        lane = self._acked or self._lane
        return self._direct(operation, lambda: script.run(lane, keys, args),
                            lane is self._acked)

    async def ping(self) -> None:
        await self._command("ping", ("PING",))

    async def claim(self, key: str, ttl_s: float) -> bool:
        px = _ms(ttl_s)
        stored = await self._command("claim", ("SET", key, b"1", "PX", px, "NX"), write=True)
        return bool(stored)

    async def put(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        px = None if ttl_s is None else _ms(ttl_s)
        command = ("SET", key, value) if px is None else ("SET", key, value, "PX", px)
        await self._command("put", command, write=True)

    async def get(self, key: str) -> bytes | None:
        return await self._command("get", ("GET", key))

    async def take(self, key: str) -> bytes | None:
        return await self._command("take", ("GETDEL", key), write=True)

    async def delete(self, key: str) -> None:
        await self._command("delete", ("DEL", key), write=True)

    async def incr(self, key: str, ttl_s: float) -> int:
        return int(await self._script("incr", INCR, [key], [_ms(ttl_s)]))

    async def advance(self, key: str, value: int, ttl_s: float) -> bool:
        return bool(await self._script("advance", ADVANCE, [key], [int(value), _ms(ttl_s)]))

    async def hset(self, key: str, field: str, value: bytes) -> None:
        await self._command("hset", ("HSET", key, field, value), write=True)

    async def hreplace(self, key: str, field: str, expected: bytes, value: bytes) -> bool:
        return bool(await self._script("hreplace", HREPLACE, [key],
                                       [field, expected, value]))

    async def hget(self, key: str, field: str) -> bytes | None:
        return await self._command("hget", ("HGET", key, field))

    async def hgetall(self, key: str) -> dict[str, bytes]:
        record = await self._command("hgetall", ("HGETALL", key))
        if isinstance(record, list):     # the lane's raw RESP2 reply: name, value, name, …
            record = dict(zip(record[::2], record[1::2]))
        return {name.decode(): value for name, value in record.items()}

    async def hdel(self, key: str, field: str) -> bool:
        return bool(await self._command("hdel", ("HDEL", key, field)))

    async def trip(self, claims: Sequence[tuple[str, int]], batches: Sequence[Batch]) -> Trip:
        if not claims and not batches:
            return Trip(True, 0, (), ())
        # Claims are security records; counters alone never wait (docs/reliability.md).
        acked = bool(claims) and self._acked is not None
        if not self.cluster:
            lane = self._acked if acked else self._lane
            return await self._direct("velocity", lambda: velocity_script.run_merged(
                lane, claims, batches), acked)
        replicas = self._replicas if acked else None
        return await self._direct("velocity", lambda: redis_cluster.trip(
            self._lane, claims, batches, replicas), acked)

    async def planned(self, layout: velocity_plan.Layout, claims: Sequence[tuple[str, int]],
                      batches: Sequence[Batch], markers: tuple[str | None, str | None],
                      body: list[str]) -> velocity_plan.Planned:
        """``trip`` with ``layout``'s counters (single server: ``plans`` is True)."""
        acked = bool(claims) and self._acked is not None
        lane = self._acked if acked else self._lane
        return await self._direct("velocity", lambda: velocity_plan.run(
            lane, layout, claims, batches, markers, body), acked)


def _url_options(url: str | None) -> dict:
    """The connection options of ``url`` without its address (Sentinel names the primary)."""
    if not url:
        return {}
    parsed = parse_url(url)
    options = {name: value for name, value in parsed.items()
               if name not in ("host", "port", "connection_class")}
    if parsed.get("connection_class") is SSLConnection:
        options["ssl"] = True
    return options
