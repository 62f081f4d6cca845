"""One behaviour suite for every StateBackend: memory, a real redis-server, a real cluster."""

from __future__ import annotations

import asyncio

import pytest

from state import create_backend
from state.memory import MemoryBackend
from tests.fixtures.redis import BackendFactory


def test_ping_and_missing_keys(state_backends):
    async def scenario(b):
        await b.ping()
        assert await b.get("{u:a}:missing") is None
        assert await b.take("{u:a}:missing") is None
        assert await b.hget("{u:a}:missing", "f") is None
        assert await b.hgetall("{u:a}:missing") == {}
        await b.delete("{u:a}:missing")
    state_backends.run(scenario)


def test_put_get_delete_and_ttl_expiry(state_backends):
    async def scenario(b):
        await b.put("{u:a}:forever", b"\x00bytes\xff")
        await b.put("{u:a}:short", b"v", ttl_s=0.4)
        assert await b.get("{u:a}:forever") == b"\x00bytes\xff"
        assert await b.get("{u:a}:short") == b"v"
        await state_backends.wait(0.5)
        assert await b.get("{u:a}:short") is None
        assert await b.get("{u:a}:forever") == b"\x00bytes\xff"
        await b.put("{u:a}:forever", b"new", ttl_s=0.2)  # a later put replaces value and TTL
        assert await b.get("{u:a}:forever") == b"new"
        await b.delete("{u:a}:forever")
        assert await b.get("{u:a}:forever") is None
    state_backends.run(scenario)


def test_claim_succeeds_once_until_expiry(state_backends):
    async def scenario(b):
        results = await asyncio.gather(*(b.claim("{c:1}:nonce", 30) for _ in range(5)))
        assert sorted(results) == [False, False, False, False, True]
        # Long enough that a loaded machine cannot let it lapse between the first two claims.
        assert await b.claim("{c:1}:short", 1.5) is True
        assert await b.claim("{c:1}:short", 1.5) is False
        await state_backends.wait(1.6)
        assert await b.claim("{c:1}:short", 1.5) is True
        assert await b.claim("{c:1}:nonce", 30) is False
    state_backends.run(scenario)


def test_take_returns_value_once(state_backends):
    async def scenario(b):
        await b.put("{ch:1}:challenge", b"payload", ttl_s=5)
        results = await asyncio.gather(*(b.take("{ch:1}:challenge") for _ in range(4)))
        assert sorted(results, key=lambda r: r is None) == [b"payload", None, None, None]
        assert await b.get("{ch:1}:challenge") is None
    state_backends.run(scenario)


def test_incr_counts_and_ttl_starts_at_first_increment(state_backends):
    async def scenario(b):
        assert await b.incr("{u:a}:fails", 0.6) == 1
        await state_backends.wait(0.35)
        assert await b.incr("{u:a}:fails", 0.6) == 2  # does not push the expiry back
        await state_backends.wait(0.35)
        assert await b.incr("{u:a}:fails", 0.6) == 1
    state_backends.run(scenario)


def test_advance_stores_only_greater_values(state_backends):
    async def scenario(b):
        assert await b.advance("{u:a}:totp", 100, 5) is True
        assert await b.advance("{u:a}:totp", 100, 5) is False
        assert await b.advance("{u:a}:totp", 99, 5) is False
        assert await b.advance("{u:a}:totp", 101, 0.2) is True
        results = await asyncio.gather(*(b.advance("{u:a}:totp", 150, 5) for _ in range(4)))
        assert sorted(results) == [False, False, False, True]
        await b.put("{u:a}:step", b"7", ttl_s=0.4)
        await state_backends.wait(0.5)
        assert await b.advance("{u:a}:step", 1, 5) is True  # expired value no longer counts
    state_backends.run(scenario)


def test_hset_hget_hgetall(state_backends):
    async def scenario(b):
        await b.hset("{creds}:clients", "c1", b"one")
        await b.hset("{creds}:clients", "c2", b"two")
        await b.hset("{creds}:clients", "c1", b"uno")
        assert await b.hget("{creds}:clients", "c1") == b"uno"
        assert await b.hget("{creds}:clients", "c3") is None
        assert await b.hgetall("{creds}:clients") == {"c1": b"uno", "c2": b"two"}
        await b.delete("{creds}:clients")
        assert await b.hgetall("{creds}:clients") == {}
    state_backends.run(scenario)


def test_hreplace_sets_only_an_unchanged_field(state_backends):
    async def scenario(b):
        assert not await b.hreplace("{creds}:clients", "c1", b"one", b"uno")   # no record
        await b.hset("{creds}:clients", "c1", b"one")
        assert not await b.hreplace("{creds}:clients", "c1", b"other", b"uno")
        assert await b.hget("{creds}:clients", "c1") == b"one"
        assert await b.hreplace("{creds}:clients", "c1", b"one", b"uno")
        assert await b.hget("{creds}:clients", "c1") == b"uno"
        assert not await b.hreplace("{creds}:clients", "c2", b"one", b"dos")
        assert await b.hget("{creds}:clients", "c2") is None
        await b.delete("{creds}:clients")
    state_backends.run(scenario)


@pytest.mark.parametrize("store", ["redis_server", "redis_cluster"])
def test_scripts_survive_a_flushed_script_cache(store, request):
    # Only Redis has a script cache to lose; the memory backend has no scripts.
    target = request.getfixturevalue(store)
    state_backends = BackendFactory("cluster" if store == "redis_cluster" else "redis", target,
                                    MemoryBackend, create_backend)
    nodes = getattr(target, "nodes", [target])

    async def scenario(b):
        assert await b.advance("{u:a}:totp", 1, 5) is True
        for node in nodes:
            node.cli("SCRIPT", "FLUSH")
        assert await b.advance("{u:a}:totp", 2, 5) is True
        assert await b.incr("{u:a}:n", 5) == 1
    state_backends.run(scenario)
