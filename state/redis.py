"""Redis state backend: the shared store for a fleet of gateways (single server or cluster)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry

from state import velocity_script
from state.base import StateBackend, StateError
from state.health import Health
from state.ops import Batch, Trip
from state.redis_direct import DirectLane
from state.scripts import ADVANCE, HREPLACE, INCR, Script

T = TypeVar("T")

# Per node; more concurrent commands wait for a free connection (see _call).
MAX_CONNECTIONS = 64


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisBackend(StateBackend):
    """redis.asyncio client with a connection pool; every failure becomes a StateError."""

    name = "redis"

    def __init__(self, url: str, cluster: bool = False, timeout_ms: int = 100,
                 max_connections: int = MAX_CONNECTIONS):
        self.cluster = cluster
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
        if cluster:
            self._client = RedisCluster.from_url(url, **options)
        else:
            self._client = Redis.from_url(url, **options)
        # redis-py raises MaxConnectionsError when its pool is exhausted; a burst should queue
        # for a connection instead (for at most timeout_ms), so calls take a slot first.
        self._slots = asyncio.Semaphore(max_connections)
        # Single server: every call skips redis-py's generic command path (see redis_direct).
        self._lane = None if cluster else DirectLane(self._client)
        # redis-py's cluster client maps the slots on its first command; several first commands
        # at once can race that and fail (seen: ConnectionError in ~10 % of fresh clients with
        # five concurrent scripts), so the first caller maps them and the others wait for it.
        self._mapped = not cluster
        self._health = Health("redis cluster" if cluster else "redis")
        self._mapping = asyncio.Lock()

    async def _direct(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """``_call`` for the direct lane: ONE timeout bounds the wait for a slot, the send and
        the read together (the lane's connections have no per-socket-operation timeout)."""
        acquired = False
        try:
            async with asyncio.timeout(self._timeout):
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

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(self._timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise self._failed(operation, "no free connection within timeout") from None
        try:
            if not self._mapped:
                await self._map_slots()
            result = await call()
        except (RedisError, RedisClusterException, OSError, asyncio.TimeoutError) as exc:
            # The message names the failure's kind only: keys and values may be secrets.
            raise self._failed(operation, type(exc).__name__) from None
        finally:
            self._slots.release()
        self._health.answered()
        return result

    def _failed(self, operation: str, kind: str) -> StateError:
        self._health.failed(operation, kind)
        return StateError(operation, kind)

    async def _map_slots(self) -> None:
        async with self._mapping:
            if not self._mapped:
                async with asyncio.timeout(self._timeout):
                    await self._client.initialize()
                self._mapped = True

    async def start(self) -> None:
        await self.ping()

    async def close(self) -> None:
        try:
            if self._lane is not None:
                await self._lane.close()
            await self._client.aclose()
        except (RedisError, OSError):
            pass

    def _command(self, operation: str, command: tuple, call: Callable[[], Awaitable[T]]):
        """``command`` on the direct lane (single server), else ``call`` through redis-py.

        The lane answers raw replies (b"OK", a flat HGETALL list); redis-py's parsed ones
        differ only where the callers below look at both shapes."""
        if self._lane is not None:
            return self._direct(operation, lambda: self._lane.execute(*command))
        return self._call(operation, call)

    def _script(self, operation: str, script: Script, keys: list, args: list):
        if self._lane is not None:
            return self._direct(operation, lambda: script.run(self._lane, keys, args))
        return self._call(operation, lambda: script.run(self._client, keys, args))

    async def ping(self) -> None:
        await self._command("ping", ("PING",), self._client.ping)

    async def claim(self, key: str, ttl_s: float) -> bool:
        px = _ms(ttl_s)
        stored = await self._command("claim", ("SET", key, b"1", "PX", px, "NX"),
                                     lambda: self._client.set(key, b"1", px=px, nx=True))
        return bool(stored)

    async def put(self, key: str, value: bytes, ttl_s: float | None = None) -> None:
        px = None if ttl_s is None else _ms(ttl_s)
        command = ("SET", key, value) if px is None else ("SET", key, value, "PX", px)
        await self._command("put", command, lambda: self._client.set(key, value, px=px))

    async def get(self, key: str) -> bytes | None:
        return await self._command("get", ("GET", key), lambda: self._client.get(key))

    async def take(self, key: str) -> bytes | None:
        return await self._command("take", ("GETDEL", key), lambda: self._client.getdel(key))

    async def delete(self, key: str) -> None:
        await self._command("delete", ("DEL", key), lambda: self._client.delete(key))

    async def incr(self, key: str, ttl_s: float) -> int:
        return int(await self._script("incr", INCR, [key], [_ms(ttl_s)]))

    async def advance(self, key: str, value: int, ttl_s: float) -> bool:
        return bool(await self._script("advance", ADVANCE, [key], [int(value), _ms(ttl_s)]))

    async def hset(self, key: str, field: str, value: bytes) -> None:
        await self._command("hset", ("HSET", key, field, value),
                            lambda: self._client.hset(key, field, value))

    async def hreplace(self, key: str, field: str, expected: bytes, value: bytes) -> bool:
        return bool(await self._script("hreplace", HREPLACE, [key],
                                       [field, expected, value]))

    async def hget(self, key: str, field: str) -> bytes | None:
        return await self._command("hget", ("HGET", key, field),
                                   lambda: self._client.hget(key, field))

    async def hgetall(self, key: str) -> dict[str, bytes]:
        record = await self._command("hgetall", ("HGETALL", key),
                                     lambda: self._client.hgetall(key))
        if isinstance(record, list):     # the lane's raw RESP2 reply: name, value, name, …
            record = dict(zip(record[::2], record[1::2]))
        return {name.decode(): value for name, value in record.items()}

    async def trip(self, claims: Sequence[tuple[str, int]], batches: Sequence[Batch]) -> Trip:
        if not claims and not batches:
            return Trip(True, 0, (), ())
        if not self.cluster:
            return await self._direct("velocity", lambda: velocity_script.run_merged(
                self._lane, claims, batches))
        # Cluster: claims live in the client's slot, counters in each entity's. Claims go first
        # so that a replay is refused before anything is counted; then one script per entity
        # slot, all in flight at once (the request waits for the slowest, not for the sum).
        if claims:
            claimed = await self._call("velocity", lambda: velocity_script.run(
                self._client, claims, ()))
            if not claimed.fresh:
                return claimed
        groups: dict[str, list[Batch]] = {}
        for batch in batches:
            groups.setdefault(batch.tag, []).append(batch)
        parts = await asyncio.gather(*(self._call(
            "velocity", lambda group=group: velocity_script.run(self._client, (), group))
            for group in groups.values()))
        by_batch = {}
        for group, part in zip(groups.values(), parts):
            for batch, applied, result in zip(group, part.applied, part.results):
                by_batch[id(batch)] = (applied, result)
        now = max((part.now_ms for part in parts), default=0)
        return Trip(True, now, tuple(by_batch[id(b)][0] for b in batches),
                    tuple(by_batch[id(b)][1] for b in batches))
