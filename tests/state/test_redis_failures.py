"""A down or slow Redis is a StateError within timeout_ms, and the backend recovers by itself."""

from __future__ import annotations

import asyncio
import time

import pytest

from state import StateError, create_backend

OPERATIONS = [
    ("ping", lambda b: b.ping()),
    ("claim", lambda b: b.claim("{u:a}:n", 5)),
    ("put", lambda b: b.put("{u:a}:k", b"secret-value", 5)),
    ("get", lambda b: b.get("{u:a}:k")),
    ("take", lambda b: b.take("{u:a}:k")),
    ("delete", lambda b: b.delete("{u:a}:k")),
    ("incr", lambda b: b.incr("{u:a}:i", 5)),
    ("advance", lambda b: b.advance("{u:a}:t", 5, 5)),
    ("hset", lambda b: b.hset("{c}:h", "f", b"secret-value")),
    ("hget", lambda b: b.hget("{c}:h", "f")),
    ("hgetall", lambda b: b.hgetall("{c}:h")),
    ("velocity", lambda b: b.velocity([])),
]


def test_stopped_server_raises_state_error_then_recovers(redis_server):
    async def scenario():
        backend = create_backend("redis", redis_server.url, False, 200)
        await backend.put("{u:a}:k", b"before", 60)
        redis_server.stop()
        for name, call in OPERATIONS:
            if name == "velocity":
                continue  # an empty batch list needs no round trip
            with pytest.raises(StateError) as raised:
                await call(backend)
            assert raised.value.operation == name
            assert "secret" not in str(raised.value) and "{u:a}" not in str(raised.value)
        redis_server.start()
        # Same backend object: the pool reconnects on its own.
        await backend.ping()
        await backend.put("{u:a}:k", b"after", 60)
        assert await backend.get("{u:a}:k") == b"after"
        await backend.close()
    asyncio.run(scenario())


def test_slow_server_times_out_quickly(redis_server):
    async def scenario():
        backend = create_backend("redis", redis_server.url, False, 100)
        await backend.ping()
        sleeper = asyncio.create_task(asyncio.to_thread(redis_server.cli, "DEBUG", "SLEEP", "2"))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(StateError) as raised:
            await backend.get("{u:a}:k")
        # Answered long before the 2 s sleep ends: timeout_ms=100 and no retries.
        assert time.monotonic() - started < 1.5
        assert raised.value.operation == "get"
        await sleeper
        assert await backend.get("{u:a}:k") is None  # answers again once the server does
        await backend.close()
    asyncio.run(scenario())


def test_cluster_unreachable_is_a_state_error():
    async def scenario():
        from tests.fixtures.ports import free_port
        backend = create_backend("redis", f"redis://127.0.0.1:{free_port()}", True, 100)
        with pytest.raises(StateError):
            await backend.ping()
        await backend.close()
    asyncio.run(scenario())


def test_factory_rejects_bad_configuration():
    from state.memory import MemoryBackend
    assert isinstance(create_backend("memory", None, False, 100), MemoryBackend)
    with pytest.raises(ValueError):
        create_backend("redis", None, False, 100)
    with pytest.raises(ValueError):
        create_backend("etcd", "x", False, 100)
