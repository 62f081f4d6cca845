"""Decision log sinks (docs/protocol.md §7): the Redis Stream sink on a real redis-server, failing
sinks counted in txgate_decision_log_errors_total{sink} and shown in /readyz, and close()
writing everything still queued."""

from __future__ import annotations

import asyncio
import json
import threading

import orjson
import redis
import redis.asyncio as aioredis
import requests
from prometheus_client import REGISTRY

from gateway.decision_log import DecisionLog, FileSink, RedisStreamSink
from tests.fixtures.processes import wait_until
from tests.fixtures.signing import SignedClient


def errors(sink: str) -> float:
    return REGISTRY.get_sample_value("txgate_decision_log_errors_total", {"sink": sink}) or 0.0


def records(n: int, start: int = 0) -> list[dict]:
    return [{"request_id": f"r{i}", "decision": "allow", "score": i} for i in range(start, start + n)]


async def write_all(log: DecisionLog, batch: list[dict]) -> None:
    for record in batch:
        log.write(record)
        await asyncio.sleep(0)   # let the writer take batches of varying size


def stream_records(server, stream: str) -> list[dict]:
    return [orjson.loads(fields["record"]) for _, fields in server.cli("XRANGE", stream, "-", "+")]


def test_redis_stream_sink_delivers_every_record_in_order(redis_server):
    async def main():
        sink = RedisStreamSink(aioredis.Redis.from_url(redis_server.url), "txgate:decisions", 1000)
        log = DecisionLog([sink])
        log.start()
        await write_all(log, records(300))
        await log.close()
    asyncio.run(main())
    got = stream_records(redis_server, "txgate:decisions")
    assert [r["request_id"] for r in got] == [f"r{i}" for i in range(300)]
    assert got[7] == {"request_id": "r7", "decision": "allow", "score": 7}


def test_redis_stream_maxlen_trims_approximately(redis_server):
    maxlen = 100
    async def main():
        sink = RedisStreamSink(aioredis.Redis.from_url(redis_server.url), "txgate:trim", maxlen)
        log = DecisionLog([sink])
        log.start()
        await write_all(log, records(2000))
        await log.close()
    asyncio.run(main())
    length = redis_server.cli("XLEN", "txgate:trim")
    # "~ MAXLEN" trims whole stream nodes only: the stream keeps at least maxlen entries and at
    # most one node more, never the 2000 written.
    node = int(redis_server.cli("CONFIG", "GET", "stream-node-max-entries")["stream-node-max-entries"])
    assert maxlen <= length <= maxlen + node
    newest = stream_records(redis_server, "txgate:trim")[-1]
    assert newest["request_id"] == "r1999"


def test_a_stopped_redis_is_counted_and_reported_then_recovers(redis_server):
    async def main():
        log = DecisionLog([RedisStreamSink(aioredis.Redis.from_url(redis_server.url), "s", 1000)])
        log.start()
        await write_all(log, records(2))
        await _until(lambda: redis_server.cli("XLEN", "s") == 2)
        before = errors("redis_stream")
        redis_server.stop()
        await write_all(log, records(5, start=2))
        await _until(lambda: errors("redis_stream") - before == 5)
        assert set(log.failing) == {"redis_stream"}
        redis_server.start()
        await write_all(log, records(1, start=7))
        await _until(lambda: not log.failing)   # a successful write clears the report
        await log.close()
    asyncio.run(main())
    # The test's Redis restarts empty (no persistence): the failed records were not retried
    # into it behind the counter's back, and the next record arrived.
    assert [r["request_id"] for r in stream_records(redis_server, "s")] == ["r7"]


def test_a_hung_redis_times_out_and_does_not_hold_the_file_sink(redis_server, tmp_path):
    sleeper = threading.Thread(target=lambda: redis.Redis(port=redis_server.port).execute_command(
        "DEBUG", "SLEEP", "1.5"))
    async def main():
        client = aioredis.Redis.from_url(redis_server.url)
        await client.ping()   # connected before Redis goes to sleep
        log = DecisionLog([RedisStreamSink(client, "s", 1000, timeout_s=0.3),
                           FileSink(str(tmp_path / "d.jsonl"))])
        log.start()
        before = errors("redis_stream")
        sleeper.start()
        await asyncio.sleep(0.1)
        await write_all(log, records(4))
        await _until(lambda: errors("redis_stream") - before == 4, timeout=1.2)
        # The file has them although Redis has not answered yet.
        lines = (tmp_path / "d.jsonl").read_text().splitlines()
        assert [json.loads(line)["request_id"] for line in lines] == ["r0", "r1", "r2", "r3"]
        await log.close()
    try:
        asyncio.run(main())
    finally:
        sleeper.join()


def test_an_unwritable_file_is_counted_reported_and_still_closes():
    async def main():
        log = DecisionLog([FileSink("/dev/full")])   # every flush fails with ENOSPC
        log.start()
        before = errors("file")
        await write_all(log, records(3))
        await _until(lambda: errors("file") - before == 3)
        assert log.failing == {"file": "OSError"}
        await log.close()
    asyncio.run(main())


def test_close_writes_everything_still_queued(tmp_path):
    written: list[bytes] = []

    class SlowSink:
        name = "slow"

        async def write(self, lines):
            await asyncio.sleep(0.01)   # the writer is mid-batch while more records queue up
            written.extend(lines)

        async def close(self):
            pass

    async def main():
        log = DecisionLog([FileSink(str(tmp_path / "d.jsonl")), SlowSink()], queue_size=5000)
        log.start()
        for record in records(5000):   # no await: everything is still queued at close()
            log.write(record)
        await log.close()
    before = errors("queue")
    asyncio.run(main())
    assert errors("queue") == before
    lines = (tmp_path / "d.jsonl").read_text().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [f"r{i}" for i in range(5000)]
    assert [orjson.loads(line)["request_id"] for line in written] == [f"r{i}" for i in range(5000)]


def test_a_full_queue_is_counted_not_silent(tmp_path):
    async def main():
        log = DecisionLog([FileSink(str(tmp_path / "d.jsonl"))], queue_size=10)
        log.start()
        for record in records(15):   # the writer cannot run in between: 5 find the queue full
            log.write(record)
        await log.close()
    before = errors("queue")
    asyncio.run(main())
    assert errors("queue") - before == 5
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 10


def test_gateway_reports_a_failing_stream_sink_in_readyz_and_metrics(start_gateway, upstream,
                                                                     redis_server, tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(
        "version: 1\nrules:\n  - {id: R-1, description: big, when: amount > 1000, action: deny}\n")
    gw = start_gateway({
        # Memory state keeps the gateway ready while the sink's Redis is down.
        "state": {"backend": "memory", "url": redis_server.url},
        "rules": {"path": str(tmp_path / "rules"), "reload": "off"},
        "decision_log": {"path": str(tmp_path / "decisions.jsonl"), "redis_stream": "txgate:decisions"},
        "routes": [{"name": "payments", "match": {"path": "/pay"}, "upstream": upstream.url,
                    "transaction": {"user_id": "json:$.user_id", "amount": "json:$.amount",
                                    "currency": "json:$.currency"}}]})
    client = SignedClient("app", gw.admin_post("/admin/clients", {"id": "app", "hmac": True}).json()["secret"])

    def pay():
        r = client.request("POST", f"{gw.url}/pay", json={"user_id": "u", "amount": 5, "currency": "EUR"})
        assert r.status_code == 200

    def counted() -> float:
        for line in gw.metrics().splitlines():
            if line.startswith('txgate_decision_log_errors_total{sink="redis_stream"}'):
                return float(line.split()[-1])
        raise AssertionError("txgate_decision_log_errors_total{sink=redis_stream} is not pre-created")

    pay()
    # the client's registration (an audit line) and the first decision
    wait_until(lambda: redis_server.cli("XLEN", "txgate:decisions") == 2, what="the first record")
    assert counted() == 0
    redis_server.stop()
    for _ in range(3):
        pay()
    wait_until(lambda: counted() == 3, what="three records counted as failed")
    ready = requests.get(f"{gw.admin}/readyz", timeout=5)
    assert ready.status_code == 200   # the gateway still decides; the detail says what is wrong
    assert set(ready.json()["decision_log"]) == {"redis_stream"}
    # The file sink kept every record meanwhile.
    wait_until(lambda: len(gw.records()) == 5, what="file records")
    redis_server.start()
    pay()
    wait_until(lambda: requests.get(f"{gw.admin}/readyz", timeout=5).json()["decision_log"] == {},
               what="the sink to recover")


async def _until(check, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_gateway_on_a_cluster_writes_the_stream_to_its_slot(start_gateway, upstream, redis_cluster,
                                                           tmp_path):
    cluster = redis.RedisCluster(host="127.0.0.1", port=redis_cluster.nodes[0].port)
    # A stream whose slot lives on another node than the one the gateway's url names.
    stream = next(name for name in (f"txgate:decisions:{i}" for i in range(100))
                  if cluster.get_node_from_key(name).port != redis_cluster.nodes[0].port)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text("version: 1\nrules: []\n")
    gw = start_gateway({
        "state": {"backend": "redis", "url": redis_cluster.url, "cluster": True,
                  "wait_replicas": 0},   # the test cluster has no replicas
        "rules": {"path": str(tmp_path / "rules"), "reload": "off"},
        "decision_log": {"path": None, "redis_stream": stream},
        "routes": [{"name": "payments", "match": {"path": "/pay"}, "upstream": upstream.url,
                    "transaction": {"user_id": "json:$.user_id"}}]})
    client = SignedClient("app", gw.admin_post("/admin/clients", {"id": "app", "hmac": True}).json()["secret"])
    for i in range(5):
        assert client.request("POST", f"{gw.url}/pay", json={"user_id": f"u{i}"}).status_code == 200
    # five decisions and the client's registration (an audit line)
    wait_until(lambda: cluster.xlen(stream) == 6, what="six records in the cluster")
    assert "txgate_decision_log_errors_total{sink=\"redis_stream\"} 0.0" in gw.metrics()
    cluster.close()
