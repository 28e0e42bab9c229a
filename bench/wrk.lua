-- wrk script: POST prepared bodies round-robin, print a JSON summary (latency percentiles in microseconds).
-- args: path content-type body-dir body-count [accept]
local bodies = {}
local counter = 0
local path

function init(args)
  path = args[1]
  wrk.headers["Content-Type"] = args[2]
  if args[5] ~= nil and args[5] ~= "" then
    wrk.headers["Accept"] = args[5]
  end
  for i = 0, tonumber(args[4]) - 1 do
    local file = assert(io.open(args[3] .. "/" .. i .. ".body", "rb"))
    bodies[#bodies + 1] = file:read("*a")
    file:close()
  end
end

function request()
  counter = counter + 1
  return wrk.format("POST", path, nil, bodies[(counter % #bodies) + 1])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nBENCH-JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "mean": %.1f, "max": %d}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
