-- perf/wrk-report.lua: makes wrk print one machine-readable line at the end of a run.
-- Latencies are in microseconds, from wrk's own histogram. Requests go out exactly as
-- wrk builds them from its command line (-H headers included): no per-request Lua.
done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "WRKRESULT requests=%d duration_us=%d bytes=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f " ..
      "err_connect=%d err_read=%d err_write=%d err_timeout=%d non2xx=%d\n",
      summary.requests, summary.duration, summary.bytes,
      summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
      e.connect, e.read, e.write, e.timeout, e.status))
end
