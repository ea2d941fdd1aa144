-- wrk script for bench/ingest.py: replays pre-signed inbound webhooks, one unique message id each.
--
--   wrk -t T -c C -d 10s -s bench/wrk_signed.lua http://127.0.0.1:PORT/webhooks/twilio -- PREFIX \
--       [SIGNATURE_HEADER [CONTENT_TYPE]]
--
-- Thread i reads PREFIX.i: one request a line, "<signature>\t<body>"; the signature goes in
-- SIGNATURE_HEADER (default X-Twilio-Signature), the body is sent as CONTENT_TYPE (default the
-- urlencoded form): X-Hub-Signature-256 and application/json for WhatsApp Cloud. The requests
-- are formatted once in init(), so request() only hands over a prebuilt string. A thread that runs out
-- of bodies starts over (a repeated MessageSid) and counts it in `wrapped`, which ingest.py reports.
-- done() prints one line, "WRK_JSON {...}", with wrk's figures and the per-thread counters.

local threads = {}
local next_tid = 0

function setup(thread)
   thread:set("tid", next_tid)
   next_tid = next_tid + 1
   table.insert(threads, thread)
end

function init(args)
   local path = args[1] .. "." .. tid
   local header = args[2] or "X-Twilio-Signature"
   local content_type = args[3] or "application/x-www-form-urlencoded"
   requests = {}
   for line in io.lines(path) do
      local tab = line:find("\t", 1, true)
      local headers = {
         ["Content-Type"] = content_type,
         [header] = line:sub(1, tab - 1),
      }
      requests[#requests + 1] = wrk.format("POST", wrk.path, headers, line:sub(tab + 1))
   end
   if #requests == 0 then
      error("no requests in " .. path)
   end
   idx = 0
   sent = 0
   wrapped = 0
   ok = 0
   s4xx = 0
   s5xx = 0
   sother = 0
end

function request()
   idx = idx + 1
   if idx > #requests then
      idx = 1
      wrapped = wrapped + 1
   end
   sent = sent + 1
   return requests[idx]
end

function response(status, headers, body)
   if status == 200 then
      ok = ok + 1
   elseif status >= 500 then
      s5xx = s5xx + 1
   elseif status >= 400 then
      s4xx = s4xx + 1
   else
      sother = sother + 1
   end
end

function done(summary, latency, requests)
   local sums = {sent = 0, wrapped = 0, ok = 0, s4xx = 0, s5xx = 0, sother = 0}
   for _, thread in ipairs(threads) do
      for name, _ in pairs(sums) do
         sums[name] = sums[name] + (thread:get(name) or 0)
      end
   end
   local e = summary.errors
   local out = string.format(
      '{"duration_us":%d,"responses":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d},'
      .. '"sent":%d,"wrapped":%d,"ok":%d,"s4xx":%d,"s5xx":%d,"sother":%d}',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9),
      sums.sent, sums.wrapped, sums.ok, sums.s4xx, sums.s5xx, sums.sother)
   io.write("WRK_JSON " .. out .. "\n")
end
