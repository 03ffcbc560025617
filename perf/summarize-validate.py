#!/usr/bin/env python3
"""perf/summarize-validate.py FILE: the summary of perf/validate-vs-nginx's runs.

FILE holds one run per line ("key=value" pairs, as wrk-report.lua and the script write
them), or is a results file whose "## runs" section holds them. Prints markdown tables.
"""
import statistics
import sys


def load(path):
    lines = open(path).read().splitlines()
    if "## runs" in lines:
        start = lines.index("## runs") + 1
        end = next((i for i in range(start, len(lines)) if not lines[i].strip()), len(lines))
        lines = lines[start:end]
    return [dict(kv.split("=", 1) for kv in line.split()) for line in lines if line.strip()]


runs = load(sys.argv[1])
def f(d, k):
    if k == "cpu_us_per_req":  # the server's CPU time per answered request
        return f(d, "server_cpu_pct") / 100 * f(d, "duration_us") / max(1.0, f(d, "requests"))
    return float(d[k])
def clean(ds): return [d for d in ds if d.get("disturbed") != "1"]
print("## summary (medians over rounds; latencies from wrk, closed loop; CPU in % of one core;")
print("## others' CPU: the most used in one of these runs by processes not part of the benchmark;")
print("## disturbed rounds (others above the limit) are left out when undisturbed ones exist)")
print()
print("| conns | server | req/s | p50 ms | p99 ms | server CPU | server CPU µs per request | wrk CPU | others' CPU | undisturbed runs | errors | non-2xx |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
rows = {}
for d in runs:
    rows.setdefault((int(d["conns"]), d["kind"], d["server"]), []).append(d)
korder = {"valid": 0, "fixed": 0, "invalid": 1, "fixed-i": 1, "valid-pinned": 2, "fixed-pinned": 2}
def label(server, kind):
    what = {"valid": "validate", "invalid": "validate, unknown token (401)",
            "valid-pinned": "validate, pinned (server on CPU 0, wrk -t1 on CPU 1)",
            "fixed": "return 200", "fixed-i": "return 200 (the 401 run's pair)",
            "fixed-pinned": "return 200, pinned (2 workers on CPU 0, wrk -t1 on CPU 1)"}[kind]
    return f"{server} {what}"
for (c, kind, server), all_ds in sorted(rows.items(), key=lambda kv: (korder[kv[0][1]], kv[0][0], kv[0][2] == "nginx", kv[0][2])):
    ok = clean(all_ds)
    ds = ok or all_ds
    med = lambda k: statistics.median(f(d, k) for d in ds)
    errs = sum(int(d["err_connect"]) + int(d["err_read"]) + int(d["err_write"]) + int(d["err_timeout"]) for d in all_ds)
    non2xx = sum(int(d["non2xx"]) for d in all_ds)
    print(f"| {c} | {label(server, kind)} | {med('rps'):.0f} | {med('p50_us')/1000:.3f} | {med('p99_us')/1000:.3f} | "
          f"{med('server_cpu_pct'):.0f}% | {med('cpu_us_per_req'):.2f} | {med('wrk_cpu_pct'):.0f}% | {max(f(d, 'others_cpu_pct') for d in ds):.0f}% | "
          f"{len(ok)} of {len(all_ds)} | {errs} | {non2xx} |")
print()
print("## latchkey / nginx requests/s, per round (same round, same wrk settings)")
print()
lks = sorted({d["server"] for d in runs if d["server"] != "nginx"})
def ratios(c, lk, klk, kng):
    out = []
    for r in sorted({d["round"] for d in runs if int(d["conns"]) == c}, key=int):
        a = [d for d in runs if int(d["conns"]) == c and d["round"] == r and d["server"] == lk and d["kind"] == klk]
        b = [d for d in runs if int(d["conns"]) == c and d["round"] == r and d["server"] == "nginx" and d["kind"] == kng]
        if a and b:
            out.append((f(a[0], "rps") / f(b[0], "rps"), a[0].get("disturbed") != "1"))
    return out
for lk in lks:
    for c in sorted({int(d["conns"]) for d in runs if d["kind"] == "valid"}):
        rs = ratios(c, lk, "valid", "fixed")
        if not rs:
            continue
        good = [x for x, ok in rs if ok]
        use = good or [x for x, _ in rs]
        m = statistics.median(use)
        print(f"{lk}, conns={c}: " + ", ".join(f"{x:.3f}" + ("" if ok else "(d)") for x, ok in rs)
              + f"; median {m:.3f} over {len(use)} {'undisturbed ' if good else ''}round(s)"
              + ("  -> target >= 0.70 met" if m >= 0.70 else "  -> target >= 0.70 MISSED"))
    for klk, kng, what in (("invalid", "fixed-i", "unknown token (401)"), ("valid-pinned", "fixed-pinned", "pinned, one core each")):
        rs = ratios(100, lk, klk, kng)
        if rs:
            print(f"{lk}, conns=100, {what}: {rs[0][0]:.3f}" + ("" if rs[0][1] else " (disturbed)"))
print()
print("## CPU per request (server CPU time / requests, median over every run, disturbed or not:")
print("## time taken by other processes does not count in it, so it holds up on a busy machine)")
print()
for c in sorted({int(d["conns"]) for d in runs if d["kind"] == "valid"}):
    ng = [f(d, "cpu_us_per_req") for d in runs if d["server"] == "nginx" and d["kind"] == "fixed" and int(d["conns"]) == c]
    if not ng:
        continue
    parts = []
    for lk in lks:
        v = [f(d, "cpu_us_per_req") for d in runs if d["server"] == lk and d["kind"] == "valid" and int(d["conns"]) == c]
        if v:
            parts.append(f"{lk} {statistics.median(v):.2f} µs (nginx/latchkey {statistics.median(ng) / statistics.median(v):.3f})")
    print(f"conns={c}: nginx {statistics.median(ng):.2f} µs; " + "; ".join(parts))
print()
for lk in lks:
    p99 = [d for d in runs if d["server"] == lk and d["kind"] == "valid" and int(d["conns"]) == 100]
    if p99:
        use = clean(p99) or p99
        m = statistics.median(f(d, "p99_us") for d in use)
        print(f"{lk} validate p99 at 100 connections: median {m/1000:.3f} ms, worst {max(f(d, 'p99_us') for d in use)/1000:.3f} ms"
              + ("  -> target < 2 ms met" if m < 2000 else "  -> target < 2 ms MISSED"))
dist = [d for d in runs if d.get("disturbed") == "1"]
if dist:
    print(f"NOTE: {len(dist)} run(s) kept although other processes used the CPU meanwhile (disturbed=1)")
bad = [d for d in runs if d["kind"].startswith("valid") and int(d["non2xx"]) > 0]
if bad:
    print("WARNING: some valid-token runs got non-2xx answers: their numbers are not validate's")
