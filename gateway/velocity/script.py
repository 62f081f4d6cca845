"""The velocity Lua script (kept as a string so that it ships inside any wheel or zipapp).

``memory.py`` implements the same semantics in Python; change both together. The behaviour
suite in tests/gateway/velocity runs against both and against a real cluster.
"""

LUA = r"""
-- txgate velocity: read and update the counters of one entity (one hash-tag slot) atomically.
-- gateway/velocity/memory.py implements the same semantics in Python; keep the two in step.
--
-- ARGV[1] marker TTL (ms), ARGV[2] '1' when KEYS[1] is the event marker, then 6 per counter:
--   kind ('n' number, 'd' distinct, 'f' first_seen, 'x' reset), update ('1'/'0'), value,
--   window ms (0 = none), bucket ms, ttl ms.   KEYS: [marker,] one key per counter.
-- Returns one integer per counter: total (scaled sum or count), distinct members, first-seen
-- age in ms (-1 when never seen), 0 for a reset.

local t = redis.call('TIME')
-- Time comes from the store so that gateways with skewed clocks agree.
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cap = tonumber('__DISTINCT_CAP__')

local apply = true
local k0 = 0
if ARGV[2] == '1' then
  k0 = 1
  -- A repeated event id (step-up repeat, retried record) reads but never counts twice.
  apply = redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[1]) ~= false
end

local function windowed(key, upd, inc, win, bucket, ttl)
  local cur = math.floor(now / bucket)
  local oldest = cur - math.ceil(win / bucket) + 1
  if upd then
    redis.call('HINCRBY', key, string.format('%d', cur), inc)
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
  return total
end

local out = {}
for i = 1, (#ARGV - 2) / 6 do
  local a = 2 + (i - 1) * 6
  local kind, val = ARGV[a + 1], ARGV[a + 3]
  local upd = apply and ARGV[a + 2] == '1'
  local win, bucket, ttl = tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), ARGV[a + 6]
  local key = KEYS[k0 + i]
  if kind == 'n' then
    if win > 0 then
      out[i] = windowed(key, upd, val, win, bucket, ttl)
    else
      if upd then
        redis.call('INCRBY', key, val)
        redis.call('PEXPIRE', key, ttl)
      end
      out[i] = tonumber(redis.call('GET', key) or '0')
    end
  elseif kind == 'd' then
    -- Members older than the window leave first; (now - win, now] is the exact window.
    if win > 0 then redis.call('ZREMRANGEBYSCORE', key, '-inf', now - win) end
    if upd then
      redis.call('ZADD', key, now, val)
      redis.call('ZREMRANGEBYRANK', key, 0, -(cap + 1))
      redis.call('PEXPIRE', key, ttl)
    end
    out[i] = redis.call('ZCARD', key)
  elseif kind == 'f' then
    if upd then
      redis.call('SET', key, string.format('%d', now), 'NX')
      redis.call('PEXPIRE', key, ttl)
    end
    local first = redis.call('GET', key)
    if first then out[i] = now - tonumber(first) else out[i] = -1 end
  else
    redis.call('DEL', key)
    out[i] = 0
  end
end
return out
"""
