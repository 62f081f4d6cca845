"""The direct lane on a Redis Cluster: one ``DirectLane`` per master, routed by our own slot map.

redis-py's cluster client costs about twice the CPU of the single-server direct lane per
payment (pure-Python packing, a node lookup and a retry wrapper per command). Here the slot map
is read once (CLUSTER SLOTS) and read again only when a node says it is stale (MOVED), when a
master cannot be reached, or when a call broke mid-way (a failover is the usual cause).

A request's velocity scripts go out as ONE round: per node, one pipelined packet holding one
EVALSHA per slot (claims in theirs, each entity in its own), written to every node before any
reply is read.

Why one script per slot and not one per node: measured on Redis 7.0, a script declaring
``#!lua flags=allow-cross-slot-keys`` is still refused (CROSSSLOT) when its declared KEYS span
slots; the flag only lets a script reach *undeclared* keys of other slots. Undeclared keys
escape the cluster's redirection check, and one that is not (or no longer) local fails the
script after its earlier writes stay applied — during a slot move that would count half a
request. Pipelining one script per slot costs the same single round trip and syscalls per node
and keeps every script checked by the cluster before it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from hiredis import pack_command
from redis.asyncio import Redis
from redis.asyncio.connection import ConnectionPool
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import (AskError, ClusterDownError, MovedError, NoScriptError,
                              RedisError, ResponseError, TryAgainError)
from redis.exceptions import ConnectionError as RedisConnectionError

from state import velocity_script
from state.ops import Batch, Trip, undo_of
from state.redis_direct import DirectLane
from state.replicas import NotReplicated, Replicas

# A slot being moved answers TRYAGAIN while a multi-key call finds its keys split between
# the two nodes; MIGRATE moves an entity's keys in one go, so this is brief.
TRYAGAIN_PAUSE_S = 0.002
# Replies that mean "not here, nothing done": the call goes elsewhere.
_REDIRECTED = (MovedError, AskError, TryAgainError, ClusterDownError)


class Unreachable(ConnectionError):
    """A node could not be connected to: nothing was sent, the call may go elsewhere."""


class NodeLane(DirectLane):
    """``DirectLane`` split in two: ``send`` several commands in one write, ``receive`` their
    replies in order. A round sends to every node before it reads from any, so the nodes work
    in parallel without a Task per node."""

    async def send(self, commands: Sequence[tuple]):
        """Write every command at once; returns the connection to ``receive`` from."""
        packed = b"".join(pack_command(command) for command in commands)
        conn = self._idle.pop() if self._idle else self._make()
        try:
            try:
                await self._connected(conn)
            except (OSError, RedisConnectionError) as exc:
                raise Unreachable(type(exc).__name__) from None
            await conn.send_packed_command(packed, check_health=False)
        except BaseException:
            await conn.disconnect(nowait=True)
            raise
        return conn

    async def receive(self, conn, count: int) -> list:
        """``count`` replies, each the answer or the ResponseError it was."""
        replies = []
        try:
            for _ in range(count):
                try:
                    replies.append(await conn.read_response())
                except ResponseError as error:
                    replies.append(error)
        except BaseException:
            # As in DirectLane.execute: a connection broken or abandoned mid-call is never reused.
            await conn.disconnect(nowait=True)
            raise
        self._idle.append(conn)
        return replies


class ClusterLane:
    """Connections to every master and the map of which master serves which slot."""

    def __init__(self, client: Redis):
        # The seed client is never used to send: it holds the URL's options (auth, TLS, db).
        self._kwargs = dict(client.connection_pool.connection_kwargs)
        self._connection_class = client.connection_pool.connection_class
        self._seeds = [(self._kwargs["host"], int(self._kwargs["port"]))]
        self._nodes: dict[tuple[str, int], NodeLane] = {}
        self._slots: list[tuple[str, int] | None] = []
        self._version = 0
        self._refreshing = asyncio.Lock()

    def _node(self, addr: tuple[str, int]) -> NodeLane:
        lane = self._nodes.get(addr)
        if lane is None:
            kwargs = {**self._kwargs, "host": addr[0], "port": addr[1]}
            pool = ConnectionPool(connection_class=self._connection_class, **kwargs)
            lane = self._nodes[addr] = NodeLane(Redis(connection_pool=pool))
        return lane

    async def refresh(self, seen: int | None = None) -> None:
        """Read the slot map again, unless another caller already did since ``seen``."""
        async with self._refreshing:
            if seen is not None and seen != self._version:
                return
            failure: Exception = ClusterDownError("no node answered CLUSTER SLOTS")
            for addr in [*self._nodes, *self._seeds]:
                try:
                    ranges = await self._node(addr).execute("CLUSTER", "SLOTS")
                except (OSError, RedisError) as exc:
                    failure = exc
                    continue
                slots: list = [None] * REDIS_CLUSTER_HASH_SLOTS
                masters = set()
                for start, end, master, *_ in ranges:
                    # An empty host means "the address you reached me on".
                    owner = (master[0].decode() or addr[0], int(master[1]))
                    slots[start:end + 1] = [owner] * (end - start + 1)
                    masters.add(owner)
                self._slots = slots
                for gone in set(self._nodes) - masters - set(self._seeds):
                    await self._nodes.pop(gone).close()
                self._version += 1
                return
            raise failure

    async def _owner(self, key: str | bytes) -> tuple[str, int]:
        if not self._slots:
            await self.refresh(self._version)
        owner = self._slots[key_slot(key.encode() if isinstance(key, str) else key)]
        if owner is None:
            raise ClusterDownError("slot not served")
        return owner

    async def masters(self) -> list[tuple[str, int]]:
        if not self._slots:
            await self.refresh(self._version)
        return sorted({owner for owner in self._slots if owner is not None})

    async def execute(self, *args, replicas: Replicas | None = None) -> object:
        """One command routed by its key (``args[1]``); a keyless one (PING) goes to every
        master, so that a readiness check fails while any part of the key space is down."""
        if len(args) < 2:
            replies = await asyncio.gather(*(self._node(addr).execute(*args)
                                             for addr in await self.masters()))
            return replies[0]
        return await self._one(args[1], args, replicas)

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args,
                      replicas: Replicas | None = None) -> object:
        return await self._one(keys_and_args[0], ("EVALSHA", sha, numkeys, *keys_and_args),
                               replicas)

    async def eval(self, script: str, numkeys: int, *keys_and_args,
                   replicas: Replicas | None = None) -> object:
        return await self._one(keys_and_args[0], ("EVAL", script, numkeys, *keys_and_args),
                               replicas)

    async def _one(self, key: str, command: tuple, replicas: Replicas | None) -> object:
        [reply] = await self.round([(key, command)], replicas)
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def round(self, calls: Sequence[tuple[str, tuple]],
                    replicas: Replicas | None = None) -> list:
        """Send every (routing key, command) at once, one pipelined packet per node; with
        ``replicas`` each packet ends with WAIT (``state.replicas``), and a node whose
        replicas did not acknowledge raises ``NotReplicated``.

        Redirections are followed (MOVED goes where it says and reads the map again, ASK sends
        ASKING first there, TRYAGAIN
        waits a moment) until each call has its answer; the caller's timeout bounds this. A
        call's reply is its answer or its ResponseError. A node that breaks mid-call raises:
        its scripts may or may not have run, so nothing is sent again.
        """
        replies: list = [None] * len(calls)
        pending = list(range(len(calls)))
        asking: dict[int, tuple[str, int]] = {}
        moved: dict[int, tuple[str, int]] = {}
        while pending:
            version = self._version
            per_node: dict[tuple[str, int], list[int]] = {}
            for i in pending:
                addr = asking.get(i) or moved.get(i) or await self._owner(calls[i][0])
                per_node.setdefault(addr, []).append(i)
            answers = await self._exchange(
                [(addr, [calls[i][1] for i in indices], [i in asking for i in indices])
                 for addr, indices in per_node.items()], replicas)
            pending, stale, wait = [], False, False
            for (addr, indices), answer in zip(per_node.items(), answers):
                if isinstance(answer, Unreachable):
                    # A failed master: once its replica took over, the map names it.
                    stale = wait = True
                    for i in indices:
                        asking.pop(i, None), moved.pop(i, None)
                    pending += indices
                    continue
                if isinstance(answer, NotReplicated):
                    raise answer
                if isinstance(answer, BaseException):
                    await self.refresh(version)
                    raise answer
                for i, reply in zip(indices, answer):
                    asking.pop(i, None)
                    if isinstance(reply, MovedError):
                        moved[i] = (reply.host, reply.port)
                        stale = True
                        pending.append(i)
                    elif isinstance(reply, AskError):
                        asking[i] = (reply.host, reply.port)
                        pending.append(i)
                    elif isinstance(reply, (TryAgainError, ClusterDownError)):
                        wait = True
                        pending.append(i)
                    else:
                        replies[i] = reply
            if stale:
                await self.refresh(version)
            if wait:
                await asyncio.sleep(TRYAGAIN_PAUSE_S)
        return replies

    async def _exchange(self, packets: list[tuple[tuple[str, int], list[tuple], list[bool]]],
                        replicas: Replicas | None = None) -> list:
        """Per node: its commands (ASKING before those flagged, WAIT after all with
        ``replicas``) sent before any node is read; its replies in order, or the exception
        that broke it."""
        sent, answers = [], []
        for addr, commands, asking in packets:
            packed: list[tuple] = []
            for command, ask in zip(commands, asking):
                packed += [("ASKING",), command] if ask else [command]
            if replicas is not None:
                packed.append(replicas.command)
            lane = self._node(addr)
            try:
                sent.append((lane, await lane.send(packed), asking))
            except (OSError, RedisError) as exc:
                sent.append((None, exc, asking))
        try:
            for lane, conn, asking in sent:
                if lane is None:
                    answers.append(conn)
                    continue
                try:
                    replies = await lane.receive(conn, len(asking) + sum(asking)
                                                 + (replicas is not None))
                    if replicas is not None:
                        acknowledged = replies.pop()
                        # A node that redirected every call wrote nothing: the calls get
                        # their WAIT where they go (a demoted master refuses WAIT itself).
                        if not all(isinstance(reply, _REDIRECTED) for reply in replies):
                            replicas.check(acknowledged)
                except (OSError, RedisError) as exc:
                    answers.append(exc)
                    continue
                # Drop ASKING's "OK".
                answers.append([reply for reply, keep in zip(replies, _kept(asking)) if keep])
        except BaseException:
            for lane, conn, _ in sent[len(answers) + 1:]:
                if lane is not None:      # sent, never read: out of step for good
                    await conn.disconnect(nowait=True)
            raise
        return answers

    async def close(self) -> None:
        nodes, self._nodes = self._nodes, {}
        for lane in nodes.values():
            await lane.close()


def _kept(asking: list[bool]) -> list[bool]:
    return [keep for ask in asking for keep in ((False, True) if ask else (True,))]


async def trip(lane: ClusterLane, claims: Sequence[tuple[str, int]],
               batches: Sequence[Batch], replicas: Replicas | None = None) -> Trip:
    """Claims and counters in one round: a script for the claims' slot and one per entity slot,
    every node at once.

    The scripts of a round cannot see each other, so when a claim was already taken the
    entity scripts have counted anyway; they are taken back then (a replay is rare). Numbers
    are restored exactly and the request's event markers deleted; a distinct member or a
    first-seen key stays as written — the same member and key the original request of the
    replayed signature wrote moments before, so only its last-seen time moves.
    """
    groups: dict[str, list[Batch]] = {}
    for batch in batches:
        groups.setdefault(batch.tag, []).append(batch)
    parts: list[tuple[Sequence[tuple[str, int]], list[Batch]]] = (
        [(claims, [])] if claims else [])
    parts += [((), group) for group in groups.values()]
    trips = await _run(lane, parts, replicas)
    claimed = trips[0] if claims else None
    counted = trips[1:] if claims else trips
    if claimed is not None and not claimed.fresh:
        await _take_back(lane, [(group, part) for (_, group), part
                                in zip(parts[1:], counted)])
        return claimed
    by_batch = {}
    for (_, group), part in zip(parts[1:] if claims else parts, counted):
        for batch, applied, result in zip(group, part.applied, part.results):
            by_batch[id(batch)] = (applied, result)
    now = max((part.now_ms for part in trips), default=0)
    return Trip(True, now, tuple(by_batch[id(b)][0] for b in batches),
                tuple(by_batch[id(b)][1] for b in batches))


async def _run(lane: ClusterLane, parts, replicas: Replicas | None = None) -> list[Trip]:
    """One velocity script per part, all in one round; NOSCRIPT parts once more with EVAL."""
    calls = []
    for part_claims, group in parts:
        keys, args = velocity_script.script_call(part_claims, group)
        calls.append((keys[0], keys, args))
    script = velocity_script.VELOCITY
    replies = await lane.round([(route, ("EVALSHA", script.sha, len(keys), *keys, *args))
                                for route, keys, args in calls], replicas)
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        # A restarted or failed-over node lost its script cache: EVAL runs and caches it.
        again = await lane.round([(calls[i][0], ("EVAL", script.text, len(calls[i][1]),
                                                 *calls[i][1], *calls[i][2])) for i in missing],
                                replicas)
        for i, reply in zip(missing, again):
            replies[i] = reply
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return [velocity_script.parse(reply, group) for reply, (_, group) in zip(replies, parts)]


async def _take_back(lane: ClusterLane, counted: list[tuple[list[Batch], Trip]]) -> None:
    undo = []
    for group, part in counted:
        for batch, applied in zip(group, part.applied):
            if not applied:
                continue
            ops = tuple(undone for op in batch.ops
                        if (undone := undo_of(op, part.now_ms)) is not None)
            if batch.marker is not None or ops:
                undo.append(Batch(batch.marker, batch.marker_ttl_ms, ops, undo=True))
    if undo:
        groups: dict[str, list[Batch]] = {}
        for batch in undo:
            groups.setdefault(batch.tag, []).append(batch)
        await _run(lane, [((), group) for group in groups.values()])
