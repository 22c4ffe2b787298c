-- wrk script for any Buy route: POST with an empty body (quantity 1) and a
-- tally of status codes printed at the end, so a run shows 200s vs 409s.
--   wrk -t2 -c64 -d10s -s tests/load/buy.lua http://127.0.0.1:5059/api/v1/OneStock/Cache/Atomic/Buy
wrk.method = "POST"
wrk.body = ""

local counts = {}
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   codes = {}
end

function response(status, headers, body)
   codes[status] = (codes[status] or 0) + 1
end

function done(summary, latency, requests)
   local total = {}
   for _, t in ipairs(threads) do
      local c = t:get("codes")
      for k, v in pairs(c) do total[k] = (total[k] or 0) + v end
   end
   for k, v in pairs(total) do
      io.write(string.format("status %d: %d\n", k, v))
   end
   io.write(string.format("p50 %.0f us, p99 %.0f us\n", latency:percentile(50), latency:percentile(99)))
end
