-- chat.lua - wrk script of the llmgw benchmark.
-- POSTs the JSON body of the file $BENCH_BODY with "Authorization: $BENCH_AUTH"
-- and checks every response: status 200 and (de-chunked) body length
-- $BENCH_EXPECT (when set; up to $BENCH_SLACK bytes more are accepted: the built-in mock
-- provider's reply carries the request id, whose hex sequence number widens). With $BENCH_ID_OCC
-- and $BENCH_ID_W0 (a translated Responses stream names its response and items after llmgw's
-- request id "gen-<seq hex>-..", $BENCH_ID_OCC times, of width $BENCH_ID_W0 in the probe) the
-- expected length follows the width of the id in the body, exactly. done() prints one machine-readable line:
--   BENCH requests=.. duration_us=.. p50_us=.. p99_us=.. responses=.. bad_status=.. bad_len=..
--         err_connect=.. err_read=.. err_write=.. err_timeout=.. err_status=.. first_bad=..

local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
if os.getenv("BENCH_AUTH") and os.getenv("BENCH_AUTH") ~= "" then
  wrk.headers["Authorization"] = os.getenv("BENCH_AUTH")
end
expect = tonumber(os.getenv("BENCH_EXPECT") or "") or -1
slack = tonumber(os.getenv("BENCH_SLACK") or "") or 0
idocc = tonumber(os.getenv("BENCH_ID_OCC") or "") or 0
idw0 = tonumber(os.getenv("BENCH_ID_W0") or "") or 0

-- per-thread counters (globals, so that done() can read them with thread:get)
responses = 0
bad_status = 0
bad_len = 0
first_bad = "none"

function response(status, headers, body)
  responses = responses + 1
  if status ~= 200 then
    bad_status = bad_status + 1
    if first_bad == "none" then first_bad = "status_" .. status end
  elseif expect >= 0 and idocc > 0 then
    local hx = string.match(body, "gen%-(%x+)%-")
    local want = hx and expect + idocc * (#hx - idw0) or -1
    if #body ~= want then
      bad_len = bad_len + 1
      if first_bad == "none" then first_bad = "len_" .. #body end
    end
  elseif expect >= 0 and (#body < expect or #body > expect + slack) then
    bad_len = bad_len + 1
    if first_bad == "none" then first_bad = "len_" .. #body end
  end
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local n, bs, bl, fb = 0, 0, 0, "none"
  for _, t in ipairs(threads) do
    n = n + t:get("responses")
    bs = bs + t:get("bad_status")
    bl = bl + t:get("bad_len")
    if fb == "none" then fb = t:get("first_bad") end
  end
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d p50_us=%d p99_us=%d responses=%d bad_status=%d bad_len=%d " ..
    "err_connect=%d err_read=%d err_write=%d err_timeout=%d err_status=%d first_bad=%s\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    n, bs, bl, e.connect, e.read, e.write, e.timeout, e.status, fb))
end
