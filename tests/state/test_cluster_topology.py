"""A cluster that changes under traffic: a slot moves to another master, a master dies and its
replica takes over. The gateway's counters keep deciding as before, on a real 3-master
cluster with one replica each.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import pytest

from gateway.velocity import Velocity
from state import StateError, create_backend
from tests.fixtures.redis import RedisClusterProcesses
from tests.gateway.velocity.helpers import spec

PAY = {"user_id": "alice", "amount": Decimal("2.50"), "payee": "DE02X"}
COUNTERS = [spec("attempts", ["user_id"], "count", window_s=600),
            spec("spent", ["user_id"], "sum", field="amount", window_s=600),
            spec("payees", ["user_id"], "distinct", field="payee", window_s=600)]


@pytest.fixture
def cluster(_redis_dir, request):
    # One per test: a cluster a test changed (slot owners, roles) is not the next one's.
    processes = RedisClusterProcesses(_redis_dir / request.node.name, replicas=1)
    try:
        processes.start()
        yield processes
    finally:
        processes.stop()


def node_id(node) -> str:
    return node.cli("CLUSTER", "MYID")


def holder(cluster):
    """The master holding alice's keys (every key of her counters shares one slot)."""
    [master] = [n for n in cluster.masters() if n.cli("DBSIZE")]
    return master


def move_slot(cluster, slot: int, source, target, pause: float) -> None:
    """Migrate ``slot`` as redis-cli --cluster reshard does, pausing between the steps so
    that traffic meets every state: MIGRATING/IMPORTING, keys moved (ASK), then the new
    owner (MOVED)."""
    target.cli("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source))
    source.cli("CLUSTER", "SETSLOT", slot, "MIGRATING", node_id(target))
    time.sleep(pause)
    keys = source.cli("CLUSTER", "GETKEYSINSLOT", slot, 1000)
    source.cli("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
    time.sleep(pause)
    # The new owner first, as redis-cli does: it bumps its config epoch so the change wins.
    for node in [target, source, *(n for n in cluster.masters() if n not in (source, target))]:
        node.cli("CLUSTER", "SETSLOT", slot, "NODE", node_id(target))


def test_a_slot_moving_under_traffic_loses_and_repeats_no_count(cluster):
    cluster.flushall()      # the warm-up keys

    async def scenario():
        backend = create_backend("redis", cluster.url, True, 3000)
        v = Velocity(COUNTERS, backend)
        seen = [(await v.observe_once(PAY, "e0", ())).features["attempts"]]
        source = holder(cluster)
        [key] = source.cli("KEYS", "*attempts*")
        slot = source.cli("CLUSTER", "KEYSLOT", key)
        target = next(n for n in cluster.masters() if n is not source)
        mover = asyncio.ensure_future(asyncio.to_thread(move_slot, cluster, slot, source,
                                                        target, 0.3))
        while not mover.done() or len(seen) < 40:
            claim = [(f"{{c:bank}}:sig:{len(seen)}", 60_000)]
            seen.append((await v.observe_once(PAY, f"e{len(seen)}", claim)).features["attempts"])
        await mover
        await backend.close()
        return seen, source, target, slot

    seen, source, target, slot = asyncio.run(scenario())
    assert seen == list(range(1, len(seen) + 1))          # each request counted exactly once
    assert source.cli("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    assert target.cli("CLUSTER", "COUNTKEYSINSLOT", slot) >= 3


def test_a_failed_master_is_replaced_and_counting_resumes(cluster):
    cluster.flushall()      # the warm-up keys

    async def scenario():
        backend = create_backend("redis", cluster.url, True, 300)
        v = Velocity(COUNTERS, backend)
        before = [(await v.observe_once(PAY, f"b{i}", ())).features["attempts"]
                  for i in range(20)]
        dead = holder(cluster)
        # Replication is asynchronous: wait until the replica has every write, so that what
        # is tested is the gateway following the failover, not Redis losing a last write.
        assert dead.cli("WAIT", 1, 5000) == 1, "the replica is not replicating"
        await asyncio.to_thread(dead.stop)
        failed, after, deadline = 0, [], time.monotonic() + 30
        while len(after) < 20:
            assert time.monotonic() < deadline, "no replica took over"
            try:
                after.append((await v.observe_once(PAY, f"a{failed}-{len(after)}", ()))
                             .features["attempts"])
            except StateError:
                failed += 1        # until the replica is elected: the route's policy decides
                await asyncio.sleep(0.05)
        await backend.ping()        # every master answers again
        await backend.close()
        return before, failed, after, dead

    before, failed, after, dead = asyncio.run(scenario())
    try:
        assert before == list(range(1, 21))
        assert failed > 0
        assert after == list(range(21, 41))      # counting resumes where it stopped
    finally:
        dead.start()                # rejoins as a replica of the new master
