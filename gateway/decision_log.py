"""The decision log (docs/protocol.md §7): one JSON line per decided request, written off the hot path.

Records go into a bounded queue that one writer task drains in batches into every sink. A full
queue or a failing sink is counted in ``txgate_decision_log_errors_total{sink}`` and logged
(rate-limited), never dropped silently; ``close()`` flushes what is queued.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import orjson

from metrics.definitions import DECISION_LOG_ERRORS

log = logging.getLogger("txgate.decision_log")
_STOP = object()   # tells the writer to finish


class FileSink:
    name = "file"

    def __init__(self, path: str):
        self.path = Path(path)
        # The directory is the deployment's (systemd LogsDirectory=, a volume): creating one
        # wherever a config points would leave root-owned folders behind.
        self._file = open(self.path, "ab", buffering=1024 * 1024)

    async def write(self, lines: list[bytes]) -> None:
        # Appending a few KB to a buffered file costs microseconds: the loop thread does it.
        self._file.write(b"".join(lines))
        self._file.flush()

    async def close(self) -> None:
        self._file.close()


class RedisStreamSink:
    """XADD every record to a Redis Stream trimmed to about ``maxlen`` entries."""

    name = "redis_stream"

    def __init__(self, client, stream: str, maxlen: int, timeout_s: float = 2.0):
        self._client, self._stream, self._maxlen = client, stream, maxlen
        self._timeout_s = timeout_s

    async def write(self, lines: list[bytes]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for line in lines:
            pipe.xadd(self._stream, {"record": line.rstrip(b"\n")}, maxlen=self._maxlen,
                      approximate=True)
        # A hung Redis (a partition, a long fork, DEBUG SLEEP) would otherwise hold the one
        # writer task for minutes: the file sink would wait behind it and the queue would fill.
        # Past the timeout the batch is a failed write, counted like any other.
        async with asyncio.timeout(self._timeout_s):
            await pipe.execute()

    async def close(self) -> None:
        await self._client.aclose()


def open_sinks(config) -> list:
    """The sinks ``config`` (a gateway.config.Config) names: a file, a Redis stream, or both."""
    cfg = config.decision_log
    sinks = []
    if cfg.path:
        sinks.append(FileSink(cfg.path))
    if cfg.redis_stream:
        from redis.asyncio import Redis, RedisCluster
        from redis.asyncio.sentinel import Sentinel
        url = config.state.url or "redis://127.0.0.1:6379"
        sentinel = config.state.backend_options()["sentinel"]
        if sentinel is not None:
            # The primary the sentinels name, followed across a failover by redis-py.
            client = Sentinel(sentinel[1]).master_for(sentinel[0])
        else:
            # A stream is one key: on a cluster the client must route it to its slot's node.
            client = (RedisCluster if config.state.cluster else Redis).from_url(url)
        sinks.append(RedisStreamSink(client, cfg.redis_stream, cfg.redis_maxlen))
    return sinks


class DecisionLog:
    def __init__(self, sinks: list, queue_size: int = 10_000):
        self._sinks = sinks
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task | None = None
        self._last_warning = 0.0
        self.failing: dict[str, str] = {}   # sink -> last error, for /readyz

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._drain())

    def write(self, record: dict) -> None:
        """Queue one record; never blocks the request."""
        try:
            self._queue.put_nowait(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
        except asyncio.QueueFull:
            DECISION_LOG_ERRORS.labels("queue").inc()
            self._warn("queue", "decision log queue is full; record not written")

    async def _drain(self) -> None:
        done = False
        while not done:
            batch = []
            item = await self._queue.get()
            while item is not _STOP:
                batch.append(item)
                if self._queue.empty() or len(batch) >= 512:
                    break
                item = self._queue.get_nowait()
            done = item is _STOP
            if batch:
                await self._write(batch)

    async def _write(self, batch: list[bytes]) -> None:
        for sink in self._sinks:
            try:
                await sink.write(batch)
                self.failing.pop(sink.name, None)
            except Exception as exc:  # any sink failure is counted, whatever its type
                DECISION_LOG_ERRORS.labels(sink.name).inc(len(batch))
                self.failing[sink.name] = type(exc).__name__
                self._warn(sink.name, f"decision log sink failed: {type(exc).__name__}")

    def _warn(self, sink: str, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning > 5:
            self._last_warning = now
            log.warning("%s (sink=%s)", message, sink)

    async def close(self) -> None:
        """Write everything still queued, then close the sinks."""
        if self._task is not None:
            await self._queue.put(_STOP)   # waits for room: nothing queued is lost
            await self._task
        for sink in self._sinks:
            # A sink that failed may fail again while closing (a full disk refuses the file's
            # last flush): report it and still close the others, so shutdown completes.
            try:
                await sink.close()
            except Exception as exc:  # whatever the sink raised, the others must close
                self.failing[sink.name] = type(exc).__name__
                log.warning("decision log sink %s failed to close: %s", sink.name,
                            type(exc).__name__)
