-- wrk script: durable hold + confirm pairs (checkout, issue 11).
--
--   wrk -t2 -c64 -d6s --latency -s tests/load/checkout.lua http://127.0.0.1:5059 -- 5 30000
--
-- Arguments after --: WINDOW seconds of load (default 5; give wrk at least
-- one second more, for the drain below), TTL_MS of each hold (default 30000).
--
-- Each request is either POST /api/v1/Holds (1 unit, NVDA/TSLA/AMD in turn)
-- or POST /api/v1/Holds/{id}/Confirm of a hold this thread was given. wrk
-- keeps one Lua state per thread for all of that thread's connections and
-- does not say which connection an answer belongs to, so the hold ids a
-- thread's 201s carry go to a queue and the thread's next request confirms
-- the oldest one: every hold is confirmed exactly once, holds and confirms
-- alternate, and at most one hold per connection waits.
--
-- After WINDOW seconds the thread creates no more holds: it confirms the
-- ones it still has, sends peeks (GET) meanwhile, and stops itself
-- (wrk.thread:stop()) once no hold, confirm or order of its own is in
-- flight, so that the counts done() prints are exactly what the server did
-- (a request still in flight when wrk stops would be done by the server
-- and never counted here). Pairs per second counts the confirms answered
-- within the window only.
--
-- done() prints (parsed by tests/bench/bench_http.sh):
--   checkout window_s W pairs_in_window N pairs_per_s R
--   checkout holds H confirms C pending P inflight I
--   checkout sold NVDA n TSLA n AMD n
--   checkout status S: n          (any answer that was neither a 201 hold nor a 200 confirm)
--   p50 X us, p99 Y us            (holds and confirms together: wrk keeps one histogram)
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
   local ttl = tonumber(args[2]) or 30000
   t0, deadline = nil, nil
   queue, qh, qt = {}, 1, 0
   holds, confirms, in_window, inflight, draining = 0, 0, 0, 0, false
   sold = { NVDA = 0, TSLA = 0, AMD = 0 }
   codes = {}
   n = id or 0
   hold_req = {}
   local hdr = { ["Content-Type"] = "application/json" }
   for i, s in ipairs(skus) do
      hold_req[i] = wrk.format("POST", "/api/v1/Holds", hdr,
         string.format('{"items":[{"sku":"%s","quantity":1}],"ttl_ms":%d}', s, ttl))
   end
   peek_req = wrk.format("GET", "/api/v1/ManyStock/Cache/PeekFastAtomic/NVDA")
   -- A confirm is the same request but for its id: made once, then only
   -- concatenated (wrk.format per request was a measurable share of the
   -- client's CPU, which shares the 2 cores with the server).
   confirm_pre, confirm_post =
      wrk.format("POST", "/api/v1/Holds/@ID@/Confirm", nil, ""):match("^(.-)@ID@(.*)$")
end

function request()
   -- wrk calls request() once in the first thread's state before the run,
   -- to check the script (script_verify_request): the first call of each
   -- state is a peek that counts nothing.
   if not first_done then first_done = true; return peek_req end
   local t = now()
   if not t0 then t0 = t; deadline = t + window end
   if qt >= qh then
      local hid = queue[qh]
      queue[qh] = nil
      qh = qh + 1
      inflight = inflight + 1
      return confirm_pre .. hid .. confirm_post
   end
   if t < deadline then
      n = n + 1
      inflight = inflight + 1
      return hold_req[(n % #skus) + 1]
   end
   draining = true
   return peek_req
end

function response(status, headers, body)
   if status == 201 then
      -- The server's answer starts {"hold_id":"h_<32 hex>": read it in place.
      local hid = body:find('{"hold_id":"h_', 1, true) == 1 and body:byte(47) == 34
         and body:sub(13, 46) or nil
      inflight = inflight - 1
      if hid then
         holds = holds + 1
         qt = qt + 1
         queue[qt] = hid
      else
         codes[201] = (codes[201] or 0) + 1
      end
   elseif status == 200 and body:find('"status":"confirmed"', 47, true) then
      inflight = inflight - 1
      confirms = confirms + 1
      if now() < deadline then in_window = in_window + 1 end
      local at = body:find('"sku":"', 70, true)
      local s = at and body:sub(at + 7, body:find('"', at + 7, true) - 1)
      if s then sold[s] = (sold[s] or 0) + 1 end
   elseif status == 200 then
      -- a peek of the drain
   else
      inflight = inflight - 1
      codes[status] = (codes[status] or 0) + 1
   end
   if draining and inflight == 0 and qt < qh and deadline then
      wrk.thread:stop()
   end
end

function done(summary, latency, requests)
   local w, pw, h, c, p, inf = 0, 0, 0, 0, 0, 0
   local s = { NVDA = 0, TSLA = 0, AMD = 0 }
   local tc = {}
   for _, t in ipairs(threads) do
      w = t:get("window")
      pw = pw + t:get("in_window")
      h = h + t:get("holds")
      c = c + t:get("confirms")
      p = p + (t:get("qt") - t:get("qh") + 1)
      inf = inf + t:get("inflight")
      for k, v in pairs(t:get("sold")) do s[k] = (s[k] or 0) + v end
      for k, v in pairs(t:get("codes")) do tc[k] = (tc[k] or 0) + v end
   end
   io.write(string.format("checkout window_s %g pairs_in_window %d pairs_per_s %.1f\n", w, pw, pw / w))
   io.write(string.format("checkout holds %d confirms %d pending %d inflight %d\n", h, c, p, inf))
   io.write(string.format("checkout sold NVDA %d TSLA %d AMD %d\n", s.NVDA, s.TSLA, s.AMD))
   for k, v in pairs(tc) do io.write(string.format("checkout status %d: %d\n", k, v)) end
   io.write(string.format("p50 %.0f us, p99 %.0f us\n", latency:percentile(50), latency:percentile(99)))
end
