"""Auto-pipelining on one Redis connection: every call made in one event-loop iteration leaves
in ONE write, and the replies are parsed together as they arrive (what ioredis calls
auto-pipelining).

With a connection per call (``DirectLane``), each of N concurrent requests pays its own write
syscall, its own readiness event and its own read; on loopback the write alone was ~18 % of the
gateway's CPU under load (py-spy). Here N calls cost one write and, usually, one read. Redis
executes one connection's commands in order and answers in order, so a FIFO of futures pairs
each reply with its call. Connecting, AUTH, SELECT and TLS stay redis-py's (its connection
object); after that handshake its stream reader and writer are used directly.

A caller that gives up (its ``asyncio.timeout``) leaves its future in the FIFO: the reply that
arrives later is dropped, so the pairing never slips. A connection that answers nothing for
``stall_s`` while calls wait is closed and every waiting call fails: a paused or unreachable
server cannot make the FIFO and the write buffer grow without bound.

Security records that must outlive the primary (``state.replicas``) ask for ``replicas``: one
``WAIT`` then ends the write they leave in, and answers for all of them at once (WAIT covers
every earlier write of the connection). A WAIT per call would hold the connection once per
call, since Redis reads nothing more from a client blocked in WAIT.
"""

from __future__ import annotations

import asyncio
from collections import deque

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, ResponseError

from state.replicas import Replicas

READ_CHUNK = 1 << 16


class PipelinedLane:
    """One connection, shared by every call; see the module docstring."""

    def __init__(self, client: Redis, stall_s: float):
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        kwargs["socket_timeout"] = None   # the caller's asyncio.timeout bounds each call
        self._make = lambda: pool.connection_class(**kwargs)
        self._stall_s = stall_s
        self._conn = None
        self._connecting: asyncio.Task | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._out: list[bytes] = []
        self._waiting: deque[asyncio.Future] = deque()
        self._flush: asyncio.Handle | None = None
        self._acks: dict[Replicas, asyncio.Future] = {}   # the WAITs ending the next write
        self._reader_task: asyncio.Task | None = None
        self._last_answer = 0.0

    async def execute(self, *args: str | bytes | int, replicas: Replicas | None = None) -> object:
        """Send one command (with whatever else this loop iteration sends) and return its
        parsed answer; an error reply raises it. With ``replicas``, the answer comes once the
        WAIT that ends its write says enough replicas hold it (``NotReplicated`` otherwise)."""
        if self._writer is None:
            await self._connect()
        loop = asyncio.get_running_loop()
        answer = loop.create_future()
        if not self._waiting:
            # Nothing was outstanding: the stall clock starts with this call.
            self._last_answer = loop.time()
        elif loop.time() - self._last_answer > self._stall_s:
            self._reset(RedisConnectionError("no answer from the server"))
            return await self.execute(*args, replicas=replicas)
        self._waiting.append(answer)
        self._out.append(hiredis.pack_command(args))
        acked = None
        if replicas is not None:
            acked = self._acks.get(replicas)
            if acked is None:
                acked = self._acks[replicas] = loop.create_future()
        if self._flush is None:
            self._flush = loop.call_soon(self._write)
        if acked is None:
            return await answer
        error = result = None
        try:
            result = await answer
        except ResponseError as exc:
            error = exc    # a script may have written before it failed: its WAIT still counts
        try:
            # Shared by every call of the write: one caller giving up must not cancel it.
            acknowledged = await asyncio.shield(acked)
        except ResponseError as exc:
            acknowledged = exc
        replicas.check(acknowledged)
        if error is not None:
            raise error
        return result

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args,
                      replicas: Replicas | None = None) -> object:
        return await self.execute("EVALSHA", sha, numkeys, *keys_and_args, replicas=replicas)

    async def eval(self, script: str, numkeys: int, *keys_and_args,
                   replicas: Replicas | None = None) -> object:
        return await self.execute("EVAL", script, numkeys, *keys_and_args, replicas=replicas)

    def _write(self) -> None:
        self._flush = None
        out, self._out = self._out, []
        acks, self._acks = self._acks, {}
        if self._writer is None:     # reset since these were queued: their calls failed
            return
        for replicas, acked in acks.items():
            out.append(hiredis.pack_command(replicas.command))
            self._waiting.append(acked)
        self._writer.write(b"".join(out))

    async def _connect(self) -> None:
        # Concurrent first calls share one connection attempt.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            await asyncio.shield(connecting)
        finally:
            if connecting.done() and self._connecting is connecting:
                self._connecting = None

    async def _open(self) -> None:
        conn = self._make()
        try:
            await conn.connect()
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        # Held: redis-py closes a connection object's socket when it is garbage collected.
        self._conn, self._writer = conn, conn._writer
        self._reader_task = asyncio.ensure_future(self._read(conn._reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        parser = hiredis.Reader(protocolError=InvalidResponse, replyError=ResponseError)
        waiting = self._waiting
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    raise RedisConnectionError("the server closed the connection")
                parser.feed(data)
                self._last_answer = loop.time()
                while (reply := parser.gets()) is not False:
                    answer = waiting.popleft()
                    if answer.done():
                        continue          # its caller gave up: the reply is dropped
                    if isinstance(reply, ResponseError):
                        # NOSCRIPT and friends as redis-py names them (Script.run relies on it).
                        answer.set_exception(BaseParser.parse_error(str(reply)))
                    else:
                        answer.set_result(reply)
        except Exception as exc:   # noqa: BLE001 - whatever broke, the pairing is gone
            # (an IndexError is a reply nobody asked for.) Only the current connection's reader
            # resets: an old one was cancelled by the reset that replaced it.
            if self._reader_task is asyncio.current_task():
                self._reset(exc if isinstance(exc, RedisConnectionError)
                            else RedisConnectionError(type(exc).__name__))

    def _reset(self, error: Exception) -> None:
        """Close the connection; every waiting call fails with ``error``."""
        writer, reader_task = self._writer, self._reader_task
        self._conn = self._writer = self._reader_task = None
        self._out = []
        waiting, self._waiting = self._waiting, deque()
        acks, self._acks = self._acks, {}
        waiting.extend(acks.values())
        for answer in waiting:
            if not answer.done():
                answer.set_exception(error)
        if reader_task is not None and reader_task is not asyncio.current_task():
            reader_task.cancel()
        if writer is not None:
            writer.close()

    async def close(self) -> None:
        reader_task = self._reader_task
        self._reset(RedisConnectionError("closed"))
        if reader_task is not None:
            try:
                await reader_task
            except asyncio.CancelledError:
                pass
