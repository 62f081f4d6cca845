"""Lua scripts on Redis: the one EVALSHA path, with EVAL when the server lost its script cache.

A restart, a failover or SCRIPT FLUSH empties a node's cache: it answers NOSCRIPT, and EVAL
both runs the script and caches it again on that node. ``client`` is anything with redis-py's
``evalsha``/``eval`` signature: the direct lane (``redis_direct``), a ``Redis`` or a
``ClusterLane`` (which routes by the first key). The one exception: a cluster round
(``redis_cluster.trip``) pipelines several EVALSHA per node, so it answers NOSCRIPT with EVAL
itself, the same way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from redis.exceptions import NoScriptError


class Script:
    """A script's text and SHA, computed once at import."""

    def __init__(self, text: str):
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def run(self, client, keys: Sequence, args: Sequence) -> object:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.text, len(keys), *keys, *args)


# Atomic "store if greater": GET + compare + SET must not interleave with another gateway.
ADVANCE = Script("""
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
""")

# INCR and the first increment's TTL together, so a key can never be left without expiry.
INCR = Script("""
local value = redis.call('INCR', KEYS[1])
if value == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return value
""")

# HGET + compare + HSET as one step: a record changed since it was read is left alone.
HREPLACE = Script("""
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
""")
