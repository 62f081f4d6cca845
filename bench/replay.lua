-- wrk script: send pre-generated requests, each exactly once, in file order per thread.
-- The file (REQUESTS env var) holds one raw HTTP request per line with every CRLF written as
-- the byte 0x1E, so a body or header can never be mistaken for a record boundary.
-- Signed requests carry unique nonces: a request sent twice is refused as a replay, so a thread
-- that runs out of requests stops instead of wrapping around (the run then reports fewer
-- requests, never false 401s).
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local reqs = {}
local pos = 0
exhausted = 0                      -- global: done() reads it through thread:get

function init(args)
  local path = os.getenv("REQUESTS")
  local n = tonumber(os.getenv("WRK_THREADS") or "1")
  local i = 0
  for line in io.lines(path) do
    if i % n == id then
      reqs[#reqs + 1] = (line:gsub("\30", "\r\n"))
    end
    i = i + 1
  end
end

function request()
  pos = pos + 1
  if pos > #reqs then
    if os.getenv("WRAP") == "1" then
      pos = 1                        -- unsigned traffic (floor, peer) may repeat
    else
      exhausted = 1
      wrk.thread:stop()
      pos = #reqs
    end
  end
  return reqs[pos]
end

function done(summary, latency, requests)
  local ex = 0
  for _, t in ipairs(threads) do ex = ex + (tonumber(t:get("exhausted")) or 0) end
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "status_errors": %d, ' ..
    '"connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d, ' ..
    '"p50_us": %d, "p99_us": %d, "p999_us": %d, "exhausted_threads": %d}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), ex))
end
