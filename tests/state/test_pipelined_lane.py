"""The single server's auto-pipelined lane (state/redis_pipelined.py), on a real redis-server:
calls of one event-loop iteration leave in one write, every call gets its own answer, and a
call that gave up never shifts the pairing of the ones after it.

What the server saw is read from its own counters (``INFO stats``: ``total_reads_processed``
counts the read events it handled; ``INFO clients``), never from timings.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import pytest
import redis

from state import StateError, create_backend
from tests.fixtures.redis import RedisServer


class Server:
    """The server's own counters, read on one connection of the test's (so that reading them
    opens no connection in between)."""

    def __init__(self, redis_server):
        self._client = redis.Redis.from_url(redis_server.url)

    def __getitem__(self, name: str):
        value = self._client.info("everything")[name]
        return value if isinstance(value, dict) else int(value)

    def __contains__(self, name: str) -> bool:
        return name in self._client.info("everything")


def test_calls_of_one_loop_iteration_leave_in_one_write(redis_server):
    server = Server(redis_server)

    async def scenario():
        backend = create_backend("redis", redis_server.url, False, 2000)
        await asyncio.gather(*[backend.put(f"{{u:{i}}}", b"1", 60) for i in range(50)])
        before = server["total_reads_processed"]
        answers = await asyncio.gather(*[backend.get(f"{{u:{i}}}") for i in range(50)])
        reads = server["total_reads_processed"] - before
        await backend.close()
        return answers, reads

    answers, reads = asyncio.run(scenario())
    assert answers == [b"1"] * 50
    # 50 calls arrived in one write (a connection per call made it 50 reads); the INFO that
    # measures counts one read of its own.
    assert reads <= 2, reads


def test_every_call_gets_its_own_answer(redis_server):
    async def scenario():
        backend = create_backend("redis", redis_server.url, False, 2000)
        await asyncio.gather(*[backend.put(f"{{k:{i}}}", f"v{i}".encode(), 60) for i in range(100)])
        await backend.hset("{h}", "f", b"field")
        calls = []
        for i in range(100):
            calls.append(backend.get(f"{{k:{i}}}"))
            if i % 10 == 0:
                calls.append(backend.hgetall("{h}"))
                calls.append(backend.get("{missing}"))
        answers = await asyncio.gather(*calls)
        await backend.close()
        return answers

    answers = asyncio.run(scenario())
    expected = []
    for i in range(100):
        expected.append(f"v{i}".encode())
        if i % 10 == 0:
            expected += [{"f": b"field"}, None]
    assert answers == expected


def test_a_call_that_gave_up_does_not_shift_the_answers_after_it(redis_server):
    server = Server(redis_server)

    async def scenario():
        backend = create_backend("redis", redis_server.url, False, 100)
        await backend.put("{a}", b"A", 60)
        await backend.put("{b}", b"B", 60)
        connections = server["total_connections_received"]
        sleeper = asyncio.create_task(asyncio.to_thread(redis_server.cli, "DEBUG", "SLEEP", "0.5"))
        await asyncio.sleep(0.1)
        with pytest.raises(StateError):
            await backend.get("{a}")        # waits behind the sleep: gives up after 100 ms
        await sleeper
        # The late answer to "{a}" arrives first and is dropped, not handed to this call.
        assert await backend.get("{b}") == b"B"
        assert await backend.get("{a}") == b"A"
        opened = server["total_connections_received"] - connections
        await backend.close()
        return opened

    # The same connection served on (the fixture's DEBUG SLEEP uses a connection it holds).
    assert asyncio.run(scenario()) == 0


def test_a_server_silent_for_the_stall_time_gets_a_fresh_connection(redis_server):
    server = Server(redis_server)

    async def scenario():
        backend = create_backend("redis", redis_server.url, False, 100)   # stall after 1 s
        await backend.put("{a}", b"A", 60)
        clients = server["connected_clients"]
        sleeper = asyncio.create_task(asyncio.to_thread(redis_server.cli, "DEBUG", "SLEEP", "1.6"))
        await asyncio.sleep(0.1)
        failed = 0
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.3
        while loop.time() < end:   # calls keep coming while the server says nothing
            with pytest.raises(StateError):
                await backend.get("{a}")
            failed += 1
        await sleeper
        assert await backend.get("{a}") == b"A"
        grown = server["connected_clients"] - clients
        await backend.close()
        return failed, grown

    failed, grown = asyncio.run(scenario())
    assert failed >= 2
    # A fresh connection replaced the stalled one, which was closed, not kept beside it.
    assert grown == 0


def test_security_writes_of_one_write_share_one_wait(_redis_dir):
    """Twenty claims in one loop iteration: one WAIT ends their write and answers for all of
    them (a WAIT each would hold the connection twenty times), and each is on the replica
    when its answer comes."""
    directory = Path(tempfile.mkdtemp(prefix="wait-", dir=_redis_dir))
    primary = RedisServer(directory)
    replica = RedisServer(directory, replica_of=primary.port)
    try:
        primary.start()
        replica.start()
        while replica.cli("ROLE")[3] != "connected":
            time.sleep(0.05)
        server = Server(primary)

        async def scenario():
            backend = create_backend("redis", primary.url, False, 2000, wait_replicas=1)
            await backend.ping()
            waits = server["cmdstat_wait"]["calls"] if "cmdstat_wait" in server else 0
            claimed = await asyncio.gather(*[backend.claim(f"{{c:{i}}}:sig", 60)
                                             for i in range(20)])
            on_replica = [replica.cli("GET", f"{{c:{i}}}:sig") for i in range(20)]
            waits = server["cmdstat_wait"]["calls"] - waits
            await backend.close()
            return claimed, on_replica, waits

        claimed, on_replica, waits = asyncio.run(scenario())
        assert claimed == [True] * 20
        assert on_replica == ["1"] * 20
        assert waits == 1
    finally:
        replica.stop()
        primary.stop()
