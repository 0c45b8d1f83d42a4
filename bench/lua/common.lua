-- Shared by the wrk scenarios: per-thread ids, data files, a JSON summary at the end.
-- Arguments after `--`: <path prefix> <data file> [<second data file>]

local threads = {}
local next_thread = 0

function setup(thread)
  thread:set("thread_id", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end

function lines(path)
  local out = {}
  for line in io.lines(path) do
    if #line > 0 then out[#out + 1] = line end
  end
  return out
end

function seed()
  math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919)
end

-- A checkout of 1 to 3 units from `ids`, with an Idempotency-Key unique to this thread's
-- `n`-th request.
function checkout_request(path, ids, tag, n)
  local items = {}
  for i = 1, math.random(3) do
    items[i] = string.format('{"product_id":"%s","quantity":1}', ids[math.random(#ids)])
  end
  local body = '{"customer_email":"load@example.com","items":[' .. table.concat(items, ",") .. ']}'
  local key = string.format("%s-%d-%d-%d", tag, os.time(), thread_id or 0, n)
  return wrk.format("POST", path, {["Content-Type"] = "application/json", ["Idempotency-Key"] = key}, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
