#!/usr/bin/env python3
# perf/openloop.py: a small open-loop load generator (python3 standard library only), for
# latencies at a fixed arrival rate (issue 6, item 7; used by perf/auth-throughput).
#
#   perf/openloop.py HOST:PORT signin|signup RATE SECONDS [POOL_SIZE|PREFIX] [THREADS]
#
# Request i is due at start + i / RATE, whatever happened to the earlier ones (open loop:
# a slow answer does not delay the next arrivals, unlike wrk's closed loop). Its latency is
# measured from that scheduled time, not from when it was actually sent, so a generator that
# falls behind counts the delay against the server instead of hiding it (no coordinated
# omission). THREADS (default 64) clients with one keep-alive connection each take the next
# due request; their number only has to exceed RATE x latency. The send lag (actual send
# minus scheduled time) is reported so that a generator too slow for the rate shows.
#
# signin: pool<i % POOL_SIZE>@example.com; signup: su-<PREFIX>-ol-<i>@example.com; the
# password is "perf benchmark password" (as in auth-throughput.lua). Prints one JSON object.
import http.client
import json
import socket
import sys
import threading
import time

PASSWORD = "perf benchmark password"


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def run(hostport, kind, rate, seconds, arg, nthreads=64):
    host, port = hostport.rsplit(":", 1)
    n = int(rate * seconds)
    pool = int(arg) if kind == "signin" else 0
    prefix = arg if kind == "signup" else ""
    lock = threading.Lock()
    state = {"next": 0}
    out = []  # (scheduled, sent, done, status)
    start = time.monotonic() + 0.5

    def client():
        conn = None
        while True:
            with lock:
                i = state["next"]
                state["next"] += 1
            if i >= n:
                break
            due = start + i / rate
            d = due - time.monotonic()
            if d > 0:
                time.sleep(d)
            if kind == "signin":
                email = "pool%d@example.com" % (i % pool)
            else:
                email = "su-%s-ol-%d@example.com" % (prefix, i)
            body = json.dumps({"email": email, "password": PASSWORD})
            sent = time.monotonic()
            status = "conn"
            for attempt in (0, 1):  # a keep-alive connection the server closed: reconnect once
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(host, int(port), timeout=30)
                    conn.request("POST", "/api/auth/" + kind, body=body,
                                 headers={"Content-Type": "application/json"})
                    r = conn.getresponse()
                    r.read()
                    status = r.status
                    if r.getheader("Connection", "").lower() == "close":
                        conn.close()
                        conn = None
                    break
                except (OSError, http.client.HTTPException, socket.timeout):
                    if conn is not None:
                        conn.close()
                    conn = None
                    status = "conn"
            fin = time.monotonic()
            with lock:
                out.append((due, sent, fin, status))
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(nthreads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    ok = [r for r in out if r[3] in (200, 201)]
    lat = sorted((r[2] - r[0]) * 1000.0 for r in ok)
    lag = sorted((r[1] - r[0]) * 1000.0 for r in out)
    statuses = {}
    for r in out:
        statuses[str(r[3])] = statuses.get(str(r[3]), 0) + 1
    span = (max(r[2] for r in out) - start) if out else 0
    return {
        "kind": kind, "rate": rate, "seconds": seconds, "scheduled": n, "answered": len(out),
        "ok": len(ok), "statuses": statuses, "threads": nthreads,
        "achieved_ok_rps": round(len(ok) / span, 2) if span > 0 else 0,
        "p50_ms": round(percentile(lat, 50), 1) if lat else None,
        "p95_ms": round(percentile(lat, 95), 1) if lat else None,
        "p99_ms": round(percentile(lat, 99), 1) if lat else None,
        "max_ms": round(lat[-1], 1) if lat else None,
        "send_lag_p99_ms": round(percentile(lag, 99), 1) if lag else None,
        "send_lag_max_ms": round(lag[-1], 1) if lag else None,
    }


def main(argv):
    if len(argv) < 5 or argv[2] not in ("signin", "signup"):
        sys.exit("usage: openloop.py HOST:PORT signin|signup RATE SECONDS [POOL_SIZE|PREFIX] [THREADS]")
    try:
        rate, seconds = float(argv[3]), float(argv[4])
        arg = argv[5] if len(argv) > 5 else ("1" if argv[2] == "signin" else "x")
        nthreads = int(argv[6]) if len(argv) > 6 else 64
        if argv[2] == "signin" and int(arg) < 1:
            raise ValueError("pool size")
    except ValueError as e:
        sys.exit("openloop.py: bad number: %s" % e)
    if not (rate > 0 and seconds > 0 and nthreads > 0):
        sys.exit("openloop.py: RATE, SECONDS and THREADS must be positive")
    print(json.dumps(run(argv[1], argv[2], rate, seconds, arg, nthreads)))


if __name__ == "__main__":
    main(sys.argv)
