"""The velocity Lua script (a string, so that it ships inside any wheel or zipapp), the layout
of its KEYS and ARGV, and the parsing of its answer.

``memory.py`` implements the same semantics in Python; change both together. The behaviour
suite in tests/gateway/velocity runs against both and against a real cluster.
"""

from __future__ import annotations

from collections.abc import Sequence

from state.ops import Batch, Trip
from state.scripts import Script
from state.window import DISTINCT_CAP, NUMBER_CAP

LUA = r"""
-- txgate velocity: single-use claims, then counters of one or more batches, atomically.
-- state/memory.py implements the same semantics in Python; keep the two in step.
--
-- KEYS: the claim keys, then per batch [marker,] one key per op.
-- ARGV[1] number of claims C, ARGV[2 .. C+1] their TTLs (ms); ARGV[C+2] how many arguments
--   the batches take; then per batch: marker mode ('0' none, '1' set if absent, '2' delete),
--   marker TTL (ms), op count, then 6 per op: kind, update ('1'/'0'), value, window ms,
--   bucket ms, ttl ms. A rule set's own script (state/velocity_plan.py) reads its counters
--   after the batches, from a layout baked into its text.
-- Kinds: 'n' number, 'p' number whose result leaves out its own increment (an on: allow
--   counter applied provisionally), 'u' undo of a 'p' (value = minus the increment, the
--   window slot = the time it was applied), 'd' distinct, 'f' first_seen, 'q' first_seen
--   marked provisionally as '<now>:<value>' (window = the settle window), 'v' undo and 'c'
--   confirmation of a 'q' (value = the exact mark), 'x' reset,
--   'l' live-list membership (a hash member -> '<expiry ms, 0 = never> <meta>'; never written).
-- Returns {1, now, then per batch: applied (1/0) and one integer per op}: a total (scaled sum
-- or count), distinct members, first-seen age in ms (-1 when never seen), 0 for a reset/undo,
-- 1/0 for a live-list member.
-- A claim key that already exists returns {0, now} and writes nothing at all: a replayed
-- signature or nonce is refused before anything is counted.

local t = redis.call('TIME')
-- Time comes from the store so that gateways with skewed clocks agree.
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = tonumber('__DISTINCT_CAP__')
-- Numbers saturate here (window.py NUMBER_CAP, 2**52): increments are clamped to it by the
-- caller, so a bucket plus one increment stays below 2**53, exact as a Lua double.
local top_text = '__NUMBER_CAP__'
local top = tonumber(top_text)

local nclaims = tonumber(ARGV[1])
for c = 1, nclaims do
  if redis.call('EXISTS', KEYS[c]) == 1 then return {0, now} end
end
for c = 1, nclaims do
  redis.call('SET', KEYS[c], '1', 'PX', ARGV[1 + c])
end

-- The part of an increment a number kept: all of it, unless it reached the cap.
local function kept(result, inc)
  if result > top then return tonumber(inc) - (result - top) end
  return tonumber(inc)
end

-- Returns the window total (uncapped) and the part of the increment that was kept.
local function windowed(key, upd, inc, win, bucket, ttl)
  local cur = math.floor(now / bucket)
  local oldest = cur - math.ceil(win / bucket) + 1
  local added = 0
  if upd then
    local field = string.format('%d', cur)
    local result = redis.call('HINCRBY', key, field, inc)
    if result > top then redis.call('HSET', key, field, top_text) end
    added = kept(result, inc)
    redis.call('PEXPIRE', key, ttl)
  end
  local flat = redis.call('HGETALL', key)
  local total, stale = 0, {}
  for j = 1, #flat, 2 do
    if tonumber(flat[j]) < oldest then
      stale[#stale + 1] = flat[j]
    else
      total = total + tonumber(flat[j + 1])
    end
  end
  -- Pruning on read keeps the hash at about 60 fields whatever the traffic.
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  return total, added
end

-- The first-seen time of a key, or nil. A provisional mark ('<ms>:<token>', set by an on:
-- allow request not settled yet) counts only once older than `settle` ms: by then its request
-- was forwarded, or has deleted the mark.
local function first_seen(key, settle)
  local v = redis.call('GET', key)
  if not v then return nil end
  local ms = string.match(v, '^(%d+):')
  if not ms then return tonumber(v) end
  ms = tonumber(ms)
  if now - ms < settle then return nil end
  return ms
end

-- One operation of kind `kind` on `key` (the kinds above); `upd`: apply its update too.
local function op(kind, upd, val, win, bucket, ttl, key)
  if kind == 'n' or kind == 'p' then
    local total, added = 0, 0
    if win > 0 then
      total, added = windowed(key, upd, val, win, bucket, ttl)
    else
      if upd then
        local result = redis.call('INCRBY', key, val)
        if result > top then redis.call('SET', key, top_text, 'KEEPTTL') end
        added = kept(result, val)
        redis.call('PEXPIRE', key, ttl)
      end
      total = tonumber(redis.call('GET', key) or '0')
    end
    -- A provisional number reports the total without its own (kept) increment.
    if kind == 'p' then total = total - added end
    if total > top then total = top end
    return total
  elseif kind == 'u' then
    -- The bucket of the original increment, so the window total is exactly restored.
    -- A number that saturated kept less than it is now asked to give back: a withdrawal
    -- of a positive increment stops at zero.
    local field = string.format('%d', math.floor(win / (bucket > 0 and bucket or 1)))
    local floor = tonumber(val) < 0
    if bucket > 0 and redis.call('HEXISTS', key, field) == 1 then
      if redis.call('HINCRBY', key, field, val) < 0 and floor then
        redis.call('HSET', key, field, '0')
      end
    elseif bucket == 0 and redis.call('EXISTS', key) == 1 then
      if redis.call('INCRBY', key, val) < 0 and floor then
        redis.call('SET', key, '0', 'KEEPTTL')
      end
    end
    return 0
  elseif kind == 'd' then
    -- Members older than the window leave first; (now - win, now] is the exact window.
    if win > 0 then redis.call('ZREMRANGEBYSCORE', key, '-inf', now - win) end
    if upd then
      redis.call('ZADD', key, now, val)
      redis.call('ZREMRANGEBYRANK', key, 0, -(cap + 1))
      redis.call('PEXPIRE', key, ttl)
    end
    return redis.call('ZCARD', key)
  elseif kind == 'f' or kind == 'q' then
    if upd then
      local mark = string.format('%d', now)
      if kind == 'q' then mark = mark .. ':' .. val end
      redis.call('SET', key, mark, 'NX')
      redis.call('PEXPIRE', key, ttl)
    end
    local first = first_seen(key, kind == 'q' and win or 0)
    if first then return now - first end
    return -1
  elseif kind == 'v' or kind == 'c' then
    -- Only the request's own mark: another request may have replaced a withdrawn one.
    if redis.call('GET', key) == val then
      if kind == 'v' then
        redis.call('DEL', key)
      else
        redis.call('SET', key, string.match(val, '^(%d+)'), 'KEEPTTL')
      end
    end
    return 0
  elseif kind == 'l' then
    local entry = redis.call('HGET', key, val)
    local expires = entry and tonumber(string.match(entry, '^%d+'))
    if expires and (expires == 0 or expires > now) then return 1 end
    return 0
  end
  redis.call('DEL', key)
  return 0
end

local out = {1, now}
local a, k = 2 + nclaims, nclaims
local last = a + tonumber(ARGV[a])
while a < last do
  local mode, marker_ttl, nops = ARGV[a + 1], ARGV[a + 2], tonumber(ARGV[a + 3])
  a = a + 3
  local apply = true
  if mode == '1' then
    k = k + 1
    -- A repeated event id (step-up repeat, retried record) reads but never counts twice.
    apply = redis.call('SET', KEYS[k], '1', 'NX', 'PX', marker_ttl) ~= false
  elseif mode == '2' then
    k = k + 1
    redis.call('DEL', KEYS[k])
  end
  out[#out + 1] = apply and 1 or 0
  for _ = 1, nops do
    local upd = apply and ARGV[a + 2] == '1'
    k = k + 1
    out[#out + 1] = op(ARGV[a + 1], upd, ARGV[a + 3], tonumber(ARGV[a + 4]),
                       tonumber(ARGV[a + 5]), ARGV[a + 6], KEYS[k])
    a = a + 6
  end
end
__PLAN__
return out
"""

def script_text(plan: str = "") -> str:
    """The script, with ``plan`` (Lua run after the batches, ``velocity_plan``) baked in."""
    return (LUA.replace("__DISTINCT_CAP__", str(DISTINCT_CAP))
            .replace("__NUMBER_CAP__", str(NUMBER_CAP)).replace("__PLAN__", plan))


VELOCITY = Script(script_text())
_MODE = {(False, False): "0", (True, False): "1", (True, True): "2"}


def script_call(claims: Sequence[tuple[str, int]], batches: Sequence[Batch]
                ) -> tuple[list[str], list[str | int]]:
    """KEYS and ARGV for claims (key, ttl ms) and batches, in the layout ``script.py`` reads."""
    keys = [key for key, _ in claims]
    args: list[str | int] = [len(claims), *(ttl for _, ttl in claims), 0]
    for batch in batches:
        has_marker = batch.marker is not None
        args += [_MODE[has_marker, batch.undo and has_marker], batch.marker_ttl_ms,
                 len(batch.ops)]
        if has_marker:
            keys.append(batch.marker)
        for op in batch.ops:
            keys.append(op.key)
            args += [op.kind, "1" if op.update else "0", op.value,
                     op.window_ms, op.bucket_ms, op.ttl_ms]
    args[len(claims) + 1] = len(args) - len(claims) - 2
    return keys, args


def parse(raw: Sequence, batches: Sequence[Batch]) -> Trip:
    values = [int(v) for v in raw]
    if not values[0]:
        return Trip(False, values[1], (), ())
    applied, results, at = [], [], 2
    for batch in batches:
        applied.append(bool(values[at]))
        results.append(tuple(values[at + 1:at + 1 + len(batch.ops)]))
        at += 1 + len(batch.ops)
    return Trip(True, values[1], tuple(applied), tuple(results))


def merge(batches: Sequence[Batch]) -> tuple[list[Batch], list[tuple[int, int, int]]]:
    """For a single server: one batch per kind of marker (``e:``, ``a:``, none) instead of one
    per entity, and where each original batch's results lie in the merged ones.

    On one server all markers of a kind are set or unset together (the call is atomic), so the
    first one decides for all: fewer keys and arguments, the same semantics.
    """
    merged: dict[tuple, list] = {}
    where = []
    for batch in batches:
        kind = (None if batch.marker is None else batch.marker.rsplit("}", 1)[1], batch.undo)
        first, ops = merged.setdefault(kind, [batch, []])
        where.append((list(merged).index(kind), len(ops), len(batch.ops)))
        ops.extend(batch.ops)
    out = [Batch(first.marker, first.marker_ttl_ms, tuple(ops), first.undo)
           for first, ops in merged.values()]
    return out, where


async def run_merged(client, claims: Sequence[tuple[str, int]], batches: Sequence[Batch]) -> Trip:
    """``run`` with the batches merged per marker kind (single server only)."""
    merged, where = merge(batches)
    return unmerge(await run(client, claims, merged), where)


def unmerge(trip: Trip, where: list[tuple[int, int, int]]) -> Trip:
    """The trip of merged batches as the trip of the batches ``merge`` was given."""
    if not trip.fresh:
        return trip
    return Trip(True, trip.now_ms, tuple(trip.applied[m] for m, _, _ in where),
                tuple(trip.results[m][start:start + n] for m, start, n in where))


async def run(client, claims: Sequence[tuple[str, int]], batches: Sequence[Batch]) -> Trip:
    """Run claims and batches in one script call on ``client``; errors propagate."""
    keys, args = script_call(claims, batches)
    return parse(await VELOCITY.run(client, keys, args), batches)
