-- perf/auth-throughput.lua: wrk requests for perf/auth-throughput (issue 6, item 7).
--
--   wrk ... -s perf/auth-throughput.lua URL -- signin POOL_SIZE
--   wrk ... -s perf/auth-throughput.lua URL -- signup PREFIX
--   wrk ... -s perf/auth-throughput.lua URL -- validate TOKENS_FILE
--
-- signin: POST /api/auth/signin as pool<i>@example.com (i cycles over 0..POOL_SIZE-1, each
-- wrk thread from its own offset); signup: POST /api/auth/signup with an email no one used
-- (PREFIX, wrk thread id and a per-thread counter); validate: GET /api/auth/validate with a
-- token drawn at random from TOKENS_FILE (one per line). The password of every request is
-- "perf benchmark password". At the end one machine-readable line, like wrk-report.lua's,
-- plus ok= (200 or 201) and bad= (anything else; last_bad = the last such status).
local threads = {}
local next_id = 0

function setup(thread)
   next_id = next_id + 1
   thread:set("tid", next_id)
   table.insert(threads, thread)
end

local mode, pool_n, prefix, tokens
local counter = 0
ok_n, bad_n, last_bad = 0, 0, 0

local password = "perf benchmark password"
local json_headers = { ["Content-Type"] = "application/json" }

function init(args)
   mode = args[1]
   if mode == "signin" then
      pool_n = tonumber(args[2]) or 1
      counter = (tid - 1) * 7919
   elseif mode == "signup" then
      prefix = args[2] or "x"
   elseif mode == "validate" then
      tokens = {}
      for line in io.lines(args[2]) do
         if #line > 0 then tokens[#tokens + 1] = line end
      end
      math.randomseed(tid * 7919 + os.time())
   else
      error("auth-throughput.lua: mode must be signin, signup or validate")
   end
end

function request()
   counter = counter + 1
   if mode == "validate" then
      return wrk.format("GET", "/api/auth/validate",
         { Authorization = "Bearer " .. tokens[math.random(#tokens)] })
   end
   local email
   if mode == "signin" then
      email = string.format("pool%d@example.com", counter % pool_n)
   else
      email = string.format("su-%s-%d-%d@example.com", prefix, tid, counter)
   end
   return wrk.format("POST", "/api/auth/" .. mode, json_headers,
      '{"email":"' .. email .. '","password":"' .. password .. '"}')
end

function response(status, headers, body)
   if status == 200 or status == 201 then
      ok_n = ok_n + 1
   else
      bad_n = bad_n + 1
      last_bad = status
   end
end

function done(summary, latency, requests)
   local ok, bad, lb = 0, 0, 0
   for _, t in ipairs(threads) do
      ok = ok + (t:get("ok_n") or 0)
      bad = bad + (t:get("bad_n") or 0)
      local l = t:get("last_bad") or 0
      if l ~= 0 then lb = l end
   end
   local e = summary.errors
   io.write(string.format(
      "WRKRESULT requests=%d duration_us=%d rps=%.2f ok=%d ok_rps=%.2f bad=%d last_bad=%d " ..
      "p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f " ..
      "err_connect=%d err_read=%d err_write=%d err_timeout=%d\n",
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
      ok, ok / (summary.duration / 1e6), bad, lb,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      latency.mean, e.connect, e.read, e.write, e.timeout))
end
