"""The Sentinel backend follows a primary's loss, and security records wait for a replica.

Real processes: a primary, its replica and three redis-sentinel (tests/fixtures/redis.py).
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import redis

from state import StateError, create_backend
from state.ops import NUMBER, Batch, Op
from tests.fixtures.processes import wait_until
from tests.fixtures.signing import SignedClient

COUNT = Batch(None, 0, (Op("{u:a}:count", NUMBER, True, 1, 0, 0, 60_000),))


def _open(group, timeout_ms=500, wait_replicas=1, url=None):
    return create_backend("redis", url, False, timeout_ms,
                          sentinel=(group.MASTER, group.nodes), wait_replicas=wait_replicas)


async def _until_answers(call, seconds=30.0):
    """Call until the store answers again (the failover is bounded by the test's deadline)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await call()
        except StateError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def test_sentinel_backend_follows_the_promoted_replica_and_keeps_acknowledged_records(
        redis_sentinel):
    old = redis_sentinel.primary()

    async def scenario():
        # The url's options apply (db 2); its address does not (the sentinels name the primary).
        backend = _open(redis_sentinel, url="redis://nowhere.invalid:1/2")
        try:
            # Acknowledged only once a replica holds them (WAIT 1).
            assert await backend.claim("{c:a}:sig:1", 60)
            assert await backend.advance("{u:a}:totp", 1000, 60)
            assert await backend.incr("{u:a}:fail", 60) == 1
            await backend.put("{u:a}:chal:1", b"challenge", 60)
            old.stop()    # SIGKILL: the primary's memory is gone
            # The same backend object finds the promoted replica through the sentinels.
            assert await _until_answers(lambda: backend.claim("{c:a}:sig:2", 60))
            assert not await backend.claim("{c:a}:sig:1", 60)       # still a replay
            assert not await backend.advance("{u:a}:totp", 1000, 60)  # still a used step
            assert await backend.incr("{u:a}:fail", 60) == 2         # no attempt forgotten
            assert await backend.take("{u:a}:chal:1") == b"challenge"
        finally:
            await backend.close()

    asyncio.run(scenario())
    new = redis_sentinel.primary()
    assert new is not old
    with redis.Redis(port=new.port, db=2) as client:
        assert client.get("{c:a}:sig:2") == b"1"


def test_a_write_no_replica_acknowledged_fails_instead_of_being_answered(redis_sentinel):
    """The replicas asleep: the claim is refused (StateError, so on_state_error decides)
    rather than acknowledged on the primary alone; without wait_replicas it is answered."""
    replicas = [s for s in redis_sentinel.servers if s is not redis_sentinel.primary()]

    async def scenario():
        waiting, unsafe = _open(redis_sentinel, 300), _open(redis_sentinel, 300, 0)
        try:
            await waiting.ping()
            await unsafe.ping()
            sleepers = [threading.Thread(target=replica.cli, args=("DEBUG", "SLEEP", "1.5"))
                        for replica in replicas]
            for sleeper in sleepers:
                sleeper.start()
            await asyncio.sleep(0.1)
            with pytest.raises(StateError) as raised:
                await waiting.claim("{c:a}:sig:1", 60)
            assert "NotReplicated" in str(raised.value)
            assert await unsafe.claim("{c:a}:sig:2", 60)
            # Reads and counters alone never wait.
            assert await waiting.get("{c:a}:sig:2") == b"1"
            assert await waiting.velocity([COUNT]) == [[1]]
            for sleeper in sleepers:
                sleeper.join()
            assert await _until_answers(lambda: waiting.claim("{c:a}:sig:3", 60))
        finally:
            await waiting.close()
            await unsafe.close()

    asyncio.run(scenario())


def test_wait_replicas_on_a_server_without_replicas_refuses_security_writes(redis_server):
    async def scenario():
        # WAIT waits timeout_ms on the server; the call's bound leaves as much again for the
        # rest, which a loaded machine needs.
        backend = create_backend("redis", redis_server.url, False, 500, wait_replicas=1)
        try:
            with pytest.raises(StateError, match="NotReplicated"):
                await backend.claim("{c:a}:sig:1", 60)
            assert await backend.get("{c:a}:sig:1") == b"1"   # written, never acknowledged
            # (After NOSCRIPT a script waits twice: the call's bound may end it first.)
            with pytest.raises(StateError, match="NotReplicated|TimeoutError"):
                await backend.advance("{u:a}:totp", 5, 60)
            assert await backend.velocity([COUNT]) == [[1]]   # counters alone never wait
        finally:
            await backend.close()

    asyncio.run(scenario())


def test_a_gateway_on_sentinel_serves_and_logs_to_the_primary(redis_sentinel, start_gateway,
                                                               upstream, tmp_path):
    """The configuration as documented: the gateway finds the primary through the sentinels,
    for its state and for its decision-log stream."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text("version: 1\nrules: []\n")
    nodes = [f"{host}:{port}" for host, port in redis_sentinel.nodes]
    gw = start_gateway({
        "state": {"backend": "redis", "timeout_ms": 1000,
                  "sentinel": {"master": redis_sentinel.MASTER, "nodes": nodes}},
        "rules": {"path": str(tmp_path / "rules"), "reload": "off"},
        "decision_log": {"path": None, "redis_stream": "txgate:decisions"},
        "routes": [{"name": "payments", "match": {"path": "/pay"}, "upstream": upstream.url,
                    "transaction": {"user_id": "json:$.user_id"}}]})
    client = SignedClient("app", gw.admin_post("/admin/clients", {"id": "app", "hmac": True}
                                               ).json()["secret"])
    prepared = client.prepare("POST", f"{gw.url}/pay", json={"user_id": "u1"})
    assert client.send(prepared).status_code == 200
    assert client.send(prepared).status_code == 401       # the claim is in the primary
    primary = redis_sentinel.primary()
    # a decision, the replay's refusal and the client's registration (an audit line)
    wait_until(lambda: primary.cli("XLEN", "txgate:decisions") == 3, what="three records")
