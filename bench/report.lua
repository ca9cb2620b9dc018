-- wrk script for mockehr's benchmarks (bench/wrk.py).
--
-- Arguments (after `--`): [bodies-file threads]. With a bodies file, every request is a POST of
-- the next line of that file for this thread (lines i with i % threads == thread id), so each
-- single-use body (an assertion with a fresh jti) is sent exactly once. Without, wrk's default
-- request is sent. done() prints one JSON line with the counts and latency percentiles (wrk's
-- own summary has no p95).

local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local bodies = nil
local position = 0

function init(args)
  if args[1] ~= nil then
    local total = tonumber(args[2])
    bodies = {}
    local i = 0
    for line in io.lines(args[1]) do
      if i % total == tid then
        table.insert(bodies, line)
      end
      i = i + 1
    end
  end
end

function request()
  if bodies == nil then
    return wrk.request()
  end
  position = position + 1
  local body = bodies[position] or bodies[#bodies]
  return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "non_2xx": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, e.status, e.connect, e.read, e.write, e.timeout))
end
