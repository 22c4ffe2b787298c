-- wrk script: durable orders, POST /api/v1/Orders of 1 unit (checkout, issue 11).
--
--   wrk -t2 -c64 -d6s --latency -s tests/load/orders.lua http://127.0.0.1:5059 -- 5
--
-- Argument after --: WINDOW seconds of load (default 5; give wrk at least one
-- second more). Orders go to NVDA/TSLA/AMD in turn. After WINDOW seconds the
-- thread sends only peeks (GET) and stops itself (wrk.thread:stop()) once
-- none of its orders is in flight, so the 201s done() prints are exactly the
-- orders the server made (see checkout.lua). Orders per second counts the
-- 201s answered within the window.
--
-- done() prints (parsed by tests/bench/bench_http.sh):
--   orders window_s W orders_in_window N orders_per_s R
--   orders created C inflight I
--   orders sold NVDA n TSLA n AMD n
--   orders status S: n            (any answer to an order other than 201)
--   p50 X us, p99 Y us
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
   t0, deadline = nil, nil
   created, in_window, inflight, draining = 0, 0, 0, false
   sold = { NVDA = 0, TSLA = 0, AMD = 0 }
   codes = {}
   n = id or 0
   order_req = {}
   local hdr = { ["Content-Type"] = "application/json" }
   for i, s in ipairs(skus) do
      order_req[i] = wrk.format("POST", "/api/v1/Orders", hdr,
         string.format('{"items":[{"sku":"%s","quantity":1}]}', s))
   end
   peek_req = wrk.format("GET", "/api/v1/ManyStock/Cache/PeekFastAtomic/NVDA")
end

function request()
   -- the first call of each state (wrk checks the script with one call in
   -- the first thread's state before the run) is a peek that counts nothing
   if not first_done then first_done = true; return peek_req end
   local t = now()
   if not t0 then t0 = t; deadline = t + window end
   if t < deadline then
      n = n + 1
      inflight = inflight + 1
      return order_req[(n % #skus) + 1]
   end
   draining = true
   return peek_req
end

function response(status, headers, body)
   if status == 201 then
      inflight = inflight - 1
      created = created + 1
      if now() < deadline then in_window = in_window + 1 end
      local s = body:match('"sku":"(%w+)"')
      if s then sold[s] = (sold[s] or 0) + 1 end
   elseif status == 200 then
      -- a peek
   else
      inflight = inflight - 1
      codes[status] = (codes[status] or 0) + 1
   end
   if draining and inflight == 0 then
      wrk.thread:stop()
   end
end

function done(summary, latency, requests)
   local w, pw, c, inf = 0, 0, 0, 0
   local s = { NVDA = 0, TSLA = 0, AMD = 0 }
   local tc = {}
   for _, t in ipairs(threads) do
      w = t:get("window")
      pw = pw + t:get("in_window")
      c = c + t:get("created")
      inf = inf + t:get("inflight")
      for k, v in pairs(t:get("sold")) do s[k] = (s[k] or 0) + v end
      for k, v in pairs(t:get("codes")) do tc[k] = (tc[k] or 0) + v end
   end
   io.write(string.format("orders window_s %g orders_in_window %d orders_per_s %.1f\n", w, pw, pw / w))
   io.write(string.format("orders created %d inflight %d\n", c, inf))
   io.write(string.format("orders sold NVDA %d TSLA %d AMD %d\n", s.NVDA, s.TSLA, s.AMD))
   for k, v in pairs(tc) do io.write(string.format("orders status %d: %d\n", k, v)) end
   io.write(string.format("p50 %.0f us, p99 %.0f us\n", latency:percentile(50), latency:percentile(99)))
end
