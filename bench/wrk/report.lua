-- wrk's own --latency table stops at p99 and hides the error counts in prose; this prints what
-- scripts/bench needs as one JSON line, tagged so it can be told from wrk's report.
-- Latencies are in microseconds, duration too; "status" counts responses with a status >= 400.

done = function(summary, latency, requests)
  local e = summary.errors
  local function p(q)
    return latency:percentile(q)
  end
  io.write(string.format(
    'LEVEE_BENCH {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d},' ..
    '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"p50":%d,"p90":%d,"p99":%d,"p99.9":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.timeout, e.status,
    latency.min, latency.mean, latency.stdev,
    p(50), p(90), p(99), p(99.9), latency.max))
end
