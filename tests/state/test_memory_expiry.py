"""The memory backend forgets expired keys that nobody reads again (nonces, used signatures)."""

import asyncio

from state.memory import MemoryBackend
from tests.fixtures.redis import Clock


def test_expired_keys_that_are_never_read_again_are_swept():
    clock = Clock()
    backend = MemoryBackend(clock=clock)

    async def scenario():
        for i in range(10_000):
            assert await backend.claim(f"{{c:app}}:nonce:{i}", 1.0)
        assert len(backend) == 10_000
        clock.now += 2
        for i in range(2_000):
            await backend.claim(f"{{c:app}}:later:{i}", 1.0)
        # Each write sweeps a few due keys: memory follows the live keys, not the history.
        assert len(backend) == 2_000
        for i in range(2_000):
            await backend.claim(f"{{c:app}}:more:{i}", 100.0)
        assert len(backend) == 4_000

    asyncio.run(scenario())


def test_a_refreshed_key_outlives_its_first_deadline():
    clock = Clock()
    backend = MemoryBackend(clock=clock)

    async def scenario():
        await backend.put("{u:a}:k", b"v", 1.0)
        clock.now += 0.5
        await backend.put("{u:a}:k", b"v2", 10.0)      # refreshed before it expired
        clock.now += 1.0
        for i in range(20):                             # writes that sweep due entries
            await backend.put(f"{{u:b}}:{i}", b"x", 1.0)
        assert await backend.get("{u:a}:k") == b"v2"
        clock.now += 10
        await backend.put("{u:c}:x", b"x", 1.0)
        assert await backend.get("{u:a}:k") is None

    asyncio.run(scenario())
