-- wrk script for the bench: POST one JSON body, check every answer, print a JSON summary.
-- The body is read from the file named by BENCH_BODY_FILE (default: a small chat request);
-- BENCH_API_KEY, when set, is sent as `Authorization: Bearer`.
-- An answer is valid when its status is 200 and its body has "choices" and "usage".

local path = os.getenv("BENCH_BODY_FILE")
local body = '{"model":"bench-model","messages":[{"role":"user","content":"Hi"}],"max_tokens":32}'
if path and path ~= "" then
  local file = assert(io.open(path, "rb"))
  body = file:read("*a")
  file:close()
end

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("BENCH_API_KEY")
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

-- Per thread (each has its own Lua state); done() adds them up through thread:get().
invalid = 0
example = ""

function response(status, headers, answer)
  if status ~= 200
    or not string.find(answer, '"choices"', 1, true)
    or not string.find(answer, '"usage"', 1, true) then
    invalid = invalid + 1
    if example == "" then
      example = status .. " " .. string.sub(answer, 1, 200)
    end
  end
end

function done(summary, latency, requests)
  local bad, first = 0, ""
  for _, thread in ipairs(threads) do
    bad = bad + thread:get("invalid")
    if first == "" then first = thread:get("example") end
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"invalid":%d,"connect_errors":%d,'
      .. '"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, bad, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
  if first ~= "" then
    io.write("BENCH_EXAMPLE " .. string.gsub(first, "\n", " ") .. "\n")
  end
end
