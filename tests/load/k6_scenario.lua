-- wrk script: the seed's k6 scenario (SuperStock/Tests/k6.js), for
-- tests/load/k6_scenario.sh: many connections POST
-- /api/v1/ManyStock/Cache/BuyFastAtomic/{sku} (quantity 1) until the stock
-- is gone, then the "No Oversell / Undersell" check reads the peeks.
--
--   wrk -t3 -c63 -d6s -s tests/load/k6_scenario.lua http://127.0.0.1:5059 -- 5
--
-- Argument after --: WINDOW seconds of buying (default 5; give wrk at least
-- one second more). Thread i buys SKU i of NVDA, TSLA, AMD (wrk does not say
-- which request an answer belongs to, and a 409's body names no SKU: one SKU
-- per thread makes every count exact); run it with -t3 (or a multiple of 3:
-- threads beyond the third repeat the cycle). After WINDOW seconds a thread
-- sends peeks (GET) only and stops itself (wrk.thread:stop()) once none of
-- its buys is in flight, so the counts are exactly what the server answered.
--
-- done() prints, one line per SKU (parsed by k6_scenario.sh):
--   k6 sku NVDA ok 4990 sold_out 81234 other 0 inflight 0
--   k6 status S: n                (answers to buys other than 200 and 409)
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } wrk_timespec;
int clock_gettime(int clk_id, wrk_timespec *tp);
]]
local ts = ffi.new("wrk_timespec")
local function now()
   ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
   return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local skus = { "NVDA", "TSLA", "AMD" }
local threads = {}

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

function init(args)
   window = tonumber(args[1]) or 5
   sku = skus[((id or 0) % #skus) + 1]
   deadline, draining = nil, false
   ok, sold_out, other, inflight = 0, 0, 0, 0
   codes = {}
   buy_req = wrk.format("POST", "/api/v1/ManyStock/Cache/BuyFastAtomic/" .. sku, nil, "")
   peek_req = wrk.format("GET", "/api/v1/ManyStock/Cache/PeekFastAtomic/" .. sku)
end

function request()
   -- the first call of each state (wrk checks the script with one call in
   -- the first thread's state before the run) is a peek that counts nothing
   if not first_done then first_done = true; return peek_req end
   local t = now()
   if not deadline then deadline = t + window end
   if t < deadline then
      inflight = inflight + 1
      return buy_req
   end
   draining = true
   return peek_req
end

function response(status, headers, body)
   if status == 200 and body:find('"ok":true', 1, true) then
      inflight = inflight - 1
      ok = ok + 1
   elseif status == 200 then
      -- a peek
   elseif status == 409 then
      inflight = inflight - 1
      sold_out = sold_out + 1
   else
      inflight = inflight - 1
      other = other + 1
      codes[status] = (codes[status] or 0) + 1
   end
   if draining and inflight == 0 then
      wrk.thread:stop()
   end
end

function done(summary, latency, requests)
   local per = {}
   local tc = {}
   for _, s in ipairs(skus) do per[s] = { ok = 0, sold_out = 0, other = 0, inflight = 0 } end
   for _, t in ipairs(threads) do
      local p = per[t:get("sku")]
      p.ok = p.ok + t:get("ok")
      p.sold_out = p.sold_out + t:get("sold_out")
      p.other = p.other + t:get("other")
      p.inflight = p.inflight + t:get("inflight")
      for k, v in pairs(t:get("codes")) do tc[k] = (tc[k] or 0) + v end
   end
   for _, s in ipairs(skus) do
      local p = per[s]
      io.write(string.format("k6 sku %s ok %d sold_out %d other %d inflight %d\n",
         s, p.ok, p.sold_out, p.other, p.inflight))
   end
   for k, v in pairs(tc) do io.write(string.format("k6 status %d: %d\n", k, v)) end
   io.write(string.format("k6 requests %d errors connect %d read %d write %d timeout %d\n",
      summary.requests, summary.errors.connect, summary.errors.read,
      summary.errors.write, summary.errors.timeout))
end
