-- wrk script for bench/api_load.py: bearer token from WRK_TOKEN, "{handle}" in the path
-- replaced by a random handle number 1..WRK_HANDLES per request, and one JSON line at the
-- end with what the table needs (wrk's own --latency has no p95).
local token = os.getenv("WRK_TOKEN") or ""
local handles = tonumber(os.getenv("WRK_HANDLES") or "1")

init = function(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
end

request = function()
  local path = wrk.path:gsub("{handle}", tostring(math.random(1, handles)))
  return wrk.format("GET", path, {["Authorization"] = "Bearer " .. token})
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
