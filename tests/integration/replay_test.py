#!/usr/bin/env python3
# Smoke test of latchkey-replay (perf/replay, issue 8) against a real stack. Not a timing
# assertion: it checks that a short open-loop replay runs, that its report is there and
# consistent with itself, and that the requests it says it sent are exactly the ones the
# server counted (http_requests_total, per route).
#
#   1. a 9 s scenario (setup of 5 accounts and 5 sessions; signup, think, signin, validate,
#      signout, random validate; pool validate and signin) at 10 to 30 new users/s;
#   2. report.json: per-step sums equal the phase and run totals, status counts equal the
#      answers, sent = answered + cut + timeouts after sending, percentiles monotone, the
#      per-second series adds up to the totals, one verdict per target; report.png is a PNG;
#   3. the deltas of http_requests_total per route equal the report's sent counts;
#   4. record -> replay: the gateway's access log (log.file) becomes a trace, replayed at 4x,
#      with the same checks;
#   5. hostile input: a bad scenario names its problem (exit 1), a remote target is refused.
#
#   tests/integration/replay_test.py BUILD_DIR      (e.g. build/release or build/san)
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lkstack  # noqa: E402

T = lkstack.Checks("replay")
BUILD = lkstack.build_dir()
ROOT = lkstack.ROOT
REPLAY = os.path.join(ROOT, BUILD, "bin", "latchkey-replay")

CONF = """
[gateway]
listen = 127.0.0.1:@PORT@
[signup]
count = 1
[signin]
count = 1
[hash]
ops = 1
mem = 8MiB
"""

SCENARIO = {
    "name": "replay-smoke",
    "setup": {"users": 5, "tokens": 5},
    "phases": [
        {"name": "steady", "duration": 4, "arrivalRate": 10},
        {"name": "ramp", "duration": 5, "arrivalRate": 10, "rampTo": 30},
    ],
    "flows": [
        {"name": "full", "weight": 2,
         "steps": [{"signup": "unique"}, {"think": 0.3}, {"signin": "own"}, {"validate": "own"},
                   {"signout": "own"}, {"validate": "random"}]},
        {"name": "pool", "weight": 1, "steps": [{"validate": "pool"}, {"signin": "pool"}]},
    ],
}

API_ROUTES = ["POST /api/auth/signup", "POST /api/auth/signin", "GET /api/auth/validate",
              "POST /api/auth/signout"]
PCTS = ["min", "p50", "p90", "p95", "p99", "p99.9", "max"]
COUNTS = ["attempts", "sent", "answered", "errors", "unsent", "cut", "timeoutsSent",
          "timeoutsUnsent"]


def requests_total(S):
    """http_requests_total summed per "METHOD route", or None when /metrics did not answer."""
    try:
        with urllib.request.urlopen("http://%s/metrics" % S.base, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    out = {}
    for m in re.finditer(r'^http_requests_total\{method="([A-Z]+)",route="([^"]*)",status="\d+"\} (\d+)',
                         text, re.M):
        k = m.group(1) + " " + m.group(2)
        out[k] = out.get(k, 0) + int(m.group(3))
    return out


def settled_delta(S, before, want, timeout=20):
    """The per-route deltas since before, once they equal want (the gateway ships its
    counters to the collector periodically) or at the timeout."""
    end = time.time() + timeout
    delta = {}
    while time.time() < end:
        now = requests_total(S) or {}
        delta = {r: now.get(r, 0) - before.get(r, 0) for r in API_ROUTES}
        if all(delta[r] == want.get(r, 0) for r in API_ROUTES):
            time.sleep(1.5)  # and nothing more comes
            now = requests_total(S) or {}
            return {r: now.get(r, 0) - before.get(r, 0) for r in API_ROUTES}
        time.sleep(0.5)
    return delta


def check_stats(what, s):
    ok = True
    lat = s["latencyMs"]
    if s["answered"] and any(lat[a] > lat[b] for a, b in zip(PCTS, PCTS[1:])):
        ok = T.check("%s: percentiles are monotone" % what, False, lat)
    if sum(s["status"].values()) != s["answered"]:
        ok = T.check("%s: answers by status add up to the answers" % what, False, s)
    if s["attempts"] != s["answered"] + s["cut"] + s["unsent"] + s["timeoutsSent"] + s["timeoutsUnsent"]:
        ok = T.check("%s: attempts = answered + failures" % what, False, s)
    if s["sent"] != s["answered"] + s["cut"] + s["timeoutsSent"]:
        ok = T.check("%s: sent = answered + cut + timeouts after sending" % what, False, s)
    return ok


def add(dst, s):
    for k in COUNTS:
        dst[k] = dst.get(k, 0) + s[k]


def check_report(name, out, stdout, expect_steps):
    path = os.path.join(out, "report.json")
    if not T.check("%s: report.json written" % name, os.path.isfile(path), out):
        return None
    with open(path) as f:
        rep = json.load(f)
    ok = True
    totals = {}
    for ph in rep["phases"]:
        ok &= check_stats("%s phase %s all" % (name, ph["name"]), ph["all"])
        summed = {}
        for step, s in ph["steps"].items():
            ok &= check_stats("%s phase %s %s" % (name, ph["name"], step), s)
            add(summed, s)
            add(totals.setdefault(step, {}), s)
        if any(summed.get(k, 0) != ph["all"][k] for k in COUNTS):
            ok = T.check("%s phase %s: steps add up to the phase" % (name, ph["name"]), False,
                         (summed, ph["all"]))
    for step, s in rep["total"]["steps"].items():
        ok &= check_stats("%s total %s" % (name, step), s)
        if any(totals.get(step, {}).get(k, 0) != s[k] for k in COUNTS):
            ok = T.check("%s: phases add up to the total of %s" % (name, step), False, (totals.get(step), s))
    allsum = {}
    for s in rep["total"]["steps"].values():
        add(allsum, s)
    ok &= check_stats("%s total all" % name, rep["total"]["all"])
    if any(allsum.get(k, 0) != rep["total"]["all"][k] for k in COUNTS):
        ok = T.check("%s: steps add up to the run's total" % name, False, (allsum, rep["total"]["all"]))
    T.check("%s: per-step and per-phase sums, status counts and percentiles consistent" % name, ok)
    ser_sent = sum(x["sent"] for x in rep["series"])
    ser_ans = sum(x["answered"] for x in rep["series"])
    T.check("%s: the per-second series adds up to the totals" % name,
            ser_sent == rep["total"]["all"]["sent"] and ser_ans == rep["total"]["all"]["answered"],
            (ser_sent, ser_ans, rep["total"]["all"]))
    T.check("%s: every step of the scenario was made" % name,
            set(rep["total"]["steps"]) == set(expect_steps), sorted(rep["total"]["steps"]))
    T.check("%s: no error, no timeout, no cut connection" % name,
            rep["total"]["all"]["errors"] == 0 and rep["total"]["all"]["answered"] > 50,
            {k: rep["total"]["all"][k] for k in COUNTS})
    verdicts = [t["verdict"] for t in rep["targets"]]
    T.check("%s: one verdict per target of the seed's table (8)" % name,
            len(verdicts) == 8 and set(verdicts) <= {"PASS", "FAIL", "n/a"}, verdicts)
    T.check("%s: the printed report has the target lines" % name,
            re.search(r"^(PASS|FAIL) signup p95 < 500 ms", stdout, re.M) is not None and
            re.search(r"^(PASS|FAIL) signin errors < 0.5 %", stdout, re.M) is not None, stdout[-1500:])
    png = os.path.join(out, "report.png")
    head = open(png, "rb").read(8) if os.path.isfile(png) else b""
    T.check("%s: report.png is a PNG" % name, head == b"\x89PNG\r\n\x1a\n", head)
    return rep


def replay(args, timeout=90):
    r = subprocess.run([REPLAY, "--quiet"] + args, capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr


if not os.access(REPLAY, os.X_OK):
    T.check("latchkey-replay is built in " + BUILD, False, REPLAY)
    sys.exit(T.done())

S = lkstack.Stack(BUILD, CONF, name="replay")
LOGFILE = os.path.join(S.tmp, "latchkey.log")
with open(S.conf, "a") as f:
    f.write("[log]\nfile = %s\n" % LOGFILE)
if not T.check("the stack starts", S.start()):
    print(S.tail())
    sys.exit(T.done())
TARGET = "http://" + S.base

# 1-3. a short scenario
scen = os.path.join(S.tmp, "smoke.json")
with open(scen, "w") as f:
    json.dump(SCENARIO, f)
before = requests_total(S)
T.check("/metrics answers before the run", before is not None)
before = before or {}
out1 = os.path.join(S.tmp, "out1")
rc, stdout, stderr = replay([scen, "--target", TARGET, "--out", out1])
T.check("the scenario replay exits 0", rc == 0, stderr[-2000:])
rep = check_report("scenario", out1, stdout, ["signup", "signin", "validate", "signout"])
if rep:
    want = rep["sentByRouteIncludingSetup"]
    delta = settled_delta(S, before, want)
    T.check("the server counted exactly the requests the report says were sent, per route",
            all(delta[r] == want.get(r, 0) for r in API_ROUTES), (delta, want))

# 4. record -> trace -> replay at 4x
time.sleep(1.5)  # the gateway writes its access lines once per loop turn
trace = os.path.join(S.tmp, "smoke.trace")
rc, _, stderr = replay(["--record-from-log", LOGFILE, "--trace", trace])
T.check("--record-from-log turns the access log into a trace", rc == 0 and os.path.isfile(trace), stderr)
lines = open(trace).read().splitlines() if os.path.isfile(trace) else []
reqs = [ln for ln in lines if ln and not ln.startswith("#")]
T.check("the trace has the run's requests (setup included)",
        rep is not None and len([ln for ln in reqs if "/api/auth/" in ln]) >=
        sum(rep["sentByRouteIncludingSetup"].get(r, 0) for r in API_ROUTES), (len(reqs), lines[:3]))
before = requests_total(S) or {}
out2 = os.path.join(S.tmp, "out2")
rc, stdout, stderr = replay(["--trace", trace, "--speed", "4", "--target", TARGET, "--out", out2])
T.check("the trace replay at 4x exits 0", rc == 0, stderr[-2000:])
rep2 = check_report("trace", out2, stdout, ["signup", "signin", "validate", "signout", "get"])
if rep2:
    want = rep2["sentByRouteIncludingSetup"]
    delta = settled_delta(S, before, want)
    T.check("the server counted exactly the trace replay's requests, per route",
            all(delta[r] == want.get(r, 0) for r in API_ROUTES), (delta, want))
    T.check("the trace replay lasted about a quarter of the recording",
            rep2["phasesSeconds"] < 0.4 * (rep["phasesSeconds"] + 3) if rep else False,
            rep2["phasesSeconds"])

# 5. hostile input
bad = os.path.join(S.tmp, "bad.json")
with open(bad, "w") as f:
    f.write('{"phases": [{"duration": 5, "arrivalRate": 10, "rampto": 20}], "flows": []}')
rc, _, stderr = replay([bad, "--target", TARGET, "--out", os.path.join(S.tmp, "out3")])
T.check("a scenario with a misspelt key is refused, naming it", rc == 1 and '"rampto"' in stderr, (rc, stderr))
with open(bad, "wb") as f:
    f.write(os.urandom(2000))
rc, _, stderr = replay([bad, "--target", TARGET, "--out", os.path.join(S.tmp, "out3")])
T.check("a binary scenario file is refused with a message", rc == 1 and "scenario" in stderr, (rc, stderr))
rc, _, stderr = replay(["--trace", bad, "--target", TARGET, "--out", os.path.join(S.tmp, "out3")])
T.check("a file that is not a trace is refused", rc == 1 and "not a trace file" in stderr, (rc, stderr))
rc, _, stderr = replay([scen, "--target", "http://192.0.2.1:80", "--out", os.path.join(S.tmp, "out3")])
T.check("a non-loopback target is refused without --allow-remote", rc == 1 and "loopback" in stderr, (rc, stderr))

T.check("the stack is still ready", S.http("GET", "/ready")[0] == 200)
rc = S.stop()
T.check("latchkeyd stops cleanly", rc == 0, rc)
T.check("no sanitizer report from the stack", S.sanitizer_reports() == "", S.sanitizer_reports()[:2000])
sys.exit(T.done())
