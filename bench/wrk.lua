-- wrk script: POST prepared bodies round-robin, print a JSON summary (latency percentiles in microseconds).
-- args: path content-type body-dir body-count [accept]
-- A body <i>.body may come with <i>.headers ("Name: value" lines, e.g. a V2 Inference-Header-Content-Length):
-- those headers are sent with that body, beside the common ones; a body without one is sent as before.
local bodies = {}
local headers = {}
local counter = 0
local path

local function body_headers(file)
  local extra = {}
  for line in file:read("*a"):gmatch("[^\r\n]+") do
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    extra[name] = value
  end
  -- wrk.format uses the table it is given instead of wrk.headers, so each body's table holds the common ones
  local all = {}
  for name, value in pairs(wrk.headers) do
    all[name] = value
  end
  for name, value in pairs(extra) do
    all[name] = value
  end
  return all
end

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
    local extra = io.open(args[3] .. "/" .. i .. ".headers", "rb")
    if extra ~= nil then
      headers[#bodies] = body_headers(extra)
      extra:close()
    end
  end
end

function request()
  counter = counter + 1
  local i = (counter % #bodies) + 1
  return wrk.format("POST", path, headers[i], bodies[i])
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
