"""Redis calls sent on connections of our own, one call per connection at a time, packed by
hiredis: the cluster's per-master lanes build on it (``redis_cluster.NodeLane``); a single
server shares one auto-pipelined connection instead (``redis_pipelined``).

redis-py's ``execute_command`` costs far more CPU than the network round trip for the velocity
script: its pure-Python ``pack_command`` encodes each of ~120 arguments one by one, and every
call goes through the pool's lock, the retry wrapper, observability hooks and an event
dispatch; a plain GET through it costs ~80 µs of CPU. This lane keeps only what a call needs: ``hiredis.pack_command`` (C), a
stack of idle redis-py connections (so connecting, AUTH, SELECT and TLS stay redis-py's), a
send and a read. The caller bounds the whole call with one ``asyncio.timeout``.
"""

from __future__ import annotations

from hiredis import pack_command
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from state.replicas import Replicas


class DirectLane:
    """Connections built like the client's pool builds them, used one call at a time.

    The caller limits concurrency (``RedisBackend``'s slots), so at most that many exist.
    """

    def __init__(self, client: Redis):
        pool = client.connection_pool
        kwargs = dict(pool.connection_kwargs)
        # The caller's asyncio.timeout covers send and read together; a per-socket-operation
        # timeout as well would cost an asyncio.wait_for (a Task) on every send.
        kwargs["socket_timeout"] = None
        self._make = lambda: pool.connection_class(**kwargs)
        self._idle: list = []

    async def _connected(self, conn) -> None:
        """Make an idle or new connection ready to send on."""
        if not conn.is_connected:
            await conn.connect()
        elif await conn.can_read():
            # Data or EOF waiting on an idle connection: the server closed it (restart,
            # timeout) or it is out of step. Start afresh, as redis-py's pool does.
            await conn.disconnect()
            await conn.connect()

    async def execute(self, *args: str | bytes | int, replicas: Replicas | None = None) -> object:
        """Send one command and return its parsed answer; an error reply raises it. With
        ``replicas``, WAIT follows in the same packet and too few acknowledgements raise
        ``NotReplicated`` (``state.replicas``)."""
        packed = pack_command(args)
        if replicas is not None:
            packed += pack_command(replicas.command)
        conn = self._idle.pop() if self._idle else self._make()
        error = None
        try:
            await self._connected(conn)
            await conn.send_packed_command(packed, check_health=False)
            try:
                answer = await conn.read_response()
            except ResponseError as exc:
                # An error reply (NOSCRIPT, a script error) was read whole: still in step once
                # WAIT's reply is read too.
                error = exc
            if replicas is not None:
                acknowledged = await conn.read_response()
        except BaseException:
            # Timed out, cancelled or broken mid-call: an answer may still be in flight, so the
            # connection can never be reused.
            await conn.disconnect(nowait=True)
            raise
        self._idle.append(conn)
        if error is not None:
            raise error
        if replicas is not None:
            replicas.check(acknowledged)
        return answer

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.disconnect(nowait=True)
