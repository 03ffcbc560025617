#!/usr/bin/env python3
# Observability (issue 7), on one real stack (latchkeyd, embedded Postgres, every role):
#
#   1. GET /metrics: text/plain; version=0.0.4, `promtool check metrics` passes, every
#      family latchkey exports has HELP and TYPE;
#   2. counters move by exactly the expected amounts after a known number of signups,
#      signins, failed signins and validates (once the processes have shipped);
#   3. a real Prometheus (started here on a free loopback port, its own data directory, the
#      configuration of docs/prometheus.yml pointed at this stack, 1 s scrapes) sees a
#      non-zero rate(auth_attempts_total[1m]) through its HTTP API; every expression of
#      docs/grafana-dashboard.json parses there and names only series latchkey exports;
#      docs/prometheus-alerts.yml passes `promtool check rules`;
#   4. a signin worker killed (latchkeyd restarts it): no counter goes backwards, and
#      latchkey_restarts_total{role="signin"} counts it;
#   5. the collector stopped (SIGSTOP), then killed: /metrics answers 503 (after its 1 s
#      timeout, then at once) while signup, signin and validate keep working; back to 200
#      when latchkeyd has restarted it;
#   6. logs: every line of log.file is one logfmt event (time, level, role, pid, rid when
#      there is one); a request id shows in the gateway's and the worker's lines; no
#      password, token or token hash anywhere; log.file follows logrotate (rename, then
#      SIGUSR1 to latchkeyd).
#
#   tests/integration/metrics_test.py BUILD_DIR      (e.g. build/release or build/san)
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lkstack  # noqa: E402
from lkstack import token_hash  # noqa: E402

T = lkstack.Checks("metrics")
BUILD = lkstack.build_dir()
ROOT = lkstack.ROOT

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
[supervisor]
restart_delay = 3s
restart_max = 20
"""

S = lkstack.Stack(BUILD, CONF, name="metrics")
LOGFILE = os.path.join(S.tmp, "latchkey.log")
with open(S.conf, "a") as f:
    f.write("[log]\nfile = %s\n" % LOGFILE)

PW = "metrics horse battery %d" % os.getpid()
BAD_PW = "wrong horse battery %d" % os.getpid()
SECRETS = [PW, BAD_PW]   # tokens and token hashes are added as they come

FAMILIES = [
    "auth_attempts_total", "http_requests_total", "request_duration_seconds", "active_sessions",
    "latchkey_workers_connected", "latchkey_workers_busy", "latchkey_queue_depth",
    "latchkey_queue_rejections_total", "latchkey_restarts_total", "latchkey_processes",
    "latchkey_pg_query_duration_seconds", "latchkey_pg_connections",
    "latchkey_cache_map_size_bytes", "latchkey_cache_used_bytes", "latchkey_cache_readers",
    "latchkey_cache_stale_readers_cleared_total", "latchkey_argon2_duration_seconds",
    "latchkey_resident_memory_bytes", "latchkey_cpu_seconds_total", "latchkey_build_info",
]


# ---- helpers ------------------------------------------------------------------------------
def get(path, timeout=10, headers=None):
    """(status, headers dict, body text, seconds) of one request; status 'conn' on failure."""
    c = http.client.HTTPConnection("127.0.0.1", S.port, timeout=timeout)
    t0 = time.time()
    try:
        c.request("GET", path, headers=headers or {})
        r = c.getresponse()
        body = r.read().decode(errors="replace")
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body, time.time() - t0
    except (OSError, http.client.HTTPException):
        return "conn", {}, "", time.time() - t0
    finally:
        c.close()


def parse(text):
    """{"name{labels}": value} of every sample, and {family: type}."""
    samples, types = {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
        elif line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            samples[series] = float(value)
    return samples, types


def scrape():
    st, h, body, _ = get("/metrics")
    if st != 200:
        return None, None
    return parse(body)


def wait_for(pred, timeout=15, step=0.25):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()


def delta(before, after, series):
    return after.get(series, 0.0) - before.get(series, 0.0)


def counters(samples, types):
    """The samples that may never go backwards: counters and histogram parts."""
    out = {}
    for s, v in samples.items():
        name = s.split("{", 1)[0]
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if types.get(name) == "counter" or types.get(base) == "histogram":
            out[s] = v
    return out


def promtool(*args, stdin=None):
    r = subprocess.run(["promtool"] + list(args), input=stdin, capture_output=True, text=True,
                       timeout=60)
    return r.returncode, r.stdout + r.stderr


# ---- 1. the exposition ----------------------------------------------------------------------
T.check("the stack starts", S.start(), S.tail())
T.check("promtool is installed (Debian package prometheus)", shutil.which("promtool") is not None)

st, h, body, _ = wait_for(lambda: (lambda r: r if r[0] == 200 and "latchkey_metrics_sources{role=\"sweeper\"}" in r[2] and "latchkey_processes" in r[2] else None)(get("/metrics")), 20) or get("/metrics")
T.check("GET /metrics answers 200", st == 200, st)
T.check("Content-Type is text/plain; version=0.0.4",
        h.get("content-type", "").startswith("text/plain; version=0.0.4"), h.get("content-type"))
rc, out = promtool("check", "metrics", stdin=body)
T.check("promtool check metrics passes on the live /metrics", rc == 0, out[:2000])
samples, types = parse(body)
for fam in FAMILIES:
    T.check("%s has HELP and TYPE" % fam,
            ("# HELP %s " % fam) in body and fam in types, fam)
T.check("every role ships (sources: gateway, signup, signin, sweeper, metrics, supervisor)",
        all(('latchkey_metrics_sources{role="%s"}' % r) in samples
            for r in ["gateway", "signup", "signin", "sweeper", "metrics", "supervisor"]),
        [s for s in samples if s.startswith("latchkey_metrics_sources")])
T.check("HEAD /metrics answers 200 without a body",
        (lambda c: (c.request("HEAD", "/metrics"), c.getresponse())[1])(
            http.client.HTTPConnection("127.0.0.1", S.port, timeout=5)).status == 200)
st, _, _, _ = get("/metrics?x=1")
T.check("POST-only routes and others keep their answers (GET /metrics?x=1 is the route)",
        st in (200, 404), st)

# ---- 2. exact counts ------------------------------------------------------------------------
time.sleep(2.5)  # everything before is shipped
b_samples, b_types = scrape()
emails = ["m%d-%d@example.com" % (os.getpid(), i) for i in range(3)]
results = {"signup": [], "signin": [], "validate": []}
for e in emails:
    results["signup"].append(S.signup(e, PW)[0])
dup = S.signup(emails[0], PW)[0]                  # 409 (or 429: a repeat within the window)
results["signup"].append(dup if dup != 429 else 409)
tokens = []
for i in range(4):
    st, b = S.signin(emails[i % 3], PW)
    results["signin"].append(st)
    if st == 200:
        tokens.append(b["token"])
for i in range(2):
    results["signin"].append(S.signin(emails[1], BAD_PW)[0])        # 401
for i in range(5):
    results["validate"].append(S.validate(tokens[i % len(tokens)])[0] if tokens else None)
for i in range(2):
    results["validate"].append(S.validate("A" * 43)[0])             # 401
SECRETS += tokens + [token_hash(t) for t in tokens]
T.check("the traffic got the expected answers",
        results == {"signup": [201, 201, 201, 409], "signin": [200, 200, 200, 200, 401, 401],
                    "validate": [200] * 5 + [401] * 2}, results)

want = {
    'auth_attempts_total{type="signup",result="success"}': 3,
    'auth_attempts_total{type="signup",result="failure"}': 1,
    'auth_attempts_total{type="signin",result="success"}': 4,
    'auth_attempts_total{type="signin",result="failure"}': 2,
    'http_requests_total{method="POST",route="/api/auth/signup",status="201"}': 3,
    'http_requests_total{method="POST",route="/api/auth/signup",status="%d"}' % dup: 1,
    'http_requests_total{method="POST",route="/api/auth/signin",status="200"}': 4,
    'http_requests_total{method="POST",route="/api/auth/signin",status="401"}': 2,
    'http_requests_total{method="GET",route="/api/auth/validate",status="200"}': 5,
    'http_requests_total{method="GET",route="/api/auth/validate",status="401"}': 2,
    'request_duration_seconds_count{route="/api/auth/validate"}': 7,
    'request_duration_seconds_count{route="/api/auth/signin"}': 6,
    'request_duration_seconds_count{route="/api/auth/signup"}': 4,
    'latchkey_argon2_duration_seconds_count{role="signin",op="verify"}': 6,
    'active_sessions': 4,
}


def moved():
    a, _ = scrape()
    if a is None:
        return None
    got = {k: delta(b_samples, a, k) for k in want}
    return got if got == want else None


got = wait_for(moved, 10)
if not got:
    a, _ = scrape()
    got = {k: delta(b_samples, a or {}, k) for k in want if delta(b_samples, a or {}, k) != want[k]}
T.check("counters moved by exactly the expected amounts (after the shipping interval)",
        got == want, {"differ": got})
time.sleep(2.2)  # two more reports: nothing counted twice
a_samples, _ = scrape()
T.check("and by no more two reports later",
        all(delta(b_samples, a_samples, k) == v for k, v in want.items()),
        {k: delta(b_samples, a_samples, k) for k in want})
T.check("signup hashed at least once per created user",
        delta(b_samples, a_samples, 'latchkey_argon2_duration_seconds_count{role="signup",op="hash"}') >= 3)
T.check("Postgres query times are counted for the workers",
        delta(b_samples, a_samples, 'latchkey_pg_query_duration_seconds_count{role="signin"}') >= 4 and
        delta(b_samples, a_samples, 'latchkey_pg_query_duration_seconds_count{role="signup"}') >= 3)
T.check("gauges: a connection per worker, workers connected, none busy, nothing queued",
        a_samples.get('latchkey_pg_connections{role="signin"}') == 1 and
        a_samples.get('latchkey_workers_connected{role="signin"}') == 1 and
        a_samples.get('latchkey_workers_busy{role="signup"}') == 0 and
        a_samples.get('latchkey_queue_depth{role="signin"}') == 0,
        {k: v for k, v in a_samples.items() if "connections" in k or "workers" in k or "queue_depth" in k})
T.check("cache and process gauges are set",
        a_samples.get("latchkey_cache_map_size_bytes", 0) > 0 and
        a_samples.get("latchkey_cache_used_bytes", 0) > 0 and
        a_samples.get('latchkey_resident_memory_bytes{role="gateway"}', 0) > 1e6 and
        a_samples.get('latchkey_cpu_seconds_total{role="gateway"}', 0) > 0)
T.check("no report was malformed", a_samples.get("latchkey_metrics_reports_malformed_total") == 0,
        a_samples.get("latchkey_metrics_reports_malformed_total"))

# ---- 3. a real Prometheus -------------------------------------------------------------------
prom_port = lkstack.free_port()
prom_dir = os.path.join(S.tmp, "prometheus")
os.makedirs(prom_dir)
with open(os.path.join(ROOT, "docs", "prometheus.yml")) as f:
    cfg = f.read()
T.check("docs/prometheus.yml scrapes /metrics of 127.0.0.1:8080",
        "metrics_path: /metrics" in cfg and "'127.0.0.1:8080'" in cfg)
cfg = cfg.replace("'127.0.0.1:8080'", "'127.0.0.1:%d'" % S.port)
cfg = re.sub(r"(scrape_interval|evaluation_interval): \d+s", r"\1: 1s", cfg)
cfg = re.sub(r"scrape_timeout: \d+s", "scrape_timeout: 1s", cfg)
shutil.copy(os.path.join(ROOT, "docs", "prometheus-alerts.yml"), prom_dir)
prom_cfg = os.path.join(prom_dir, "prometheus.yml")
with open(prom_cfg, "w") as f:
    f.write(cfg)
rc, out = promtool("check", "config", prom_cfg)
T.check("promtool check config passes (docs/prometheus.yml, pointed at this stack)", rc == 0, out)
rc, out = promtool("check", "rules", os.path.join(ROOT, "docs", "prometheus-alerts.yml"))
T.check("promtool check rules passes on docs/prometheus-alerts.yml", rc == 0, out)

prom_log = open(os.path.join(prom_dir, "prometheus.log"), "wb")
prom = subprocess.Popen(["prometheus", "--config.file=" + prom_cfg,
                         "--storage.tsdb.path=" + os.path.join(prom_dir, "data"),
                         "--web.listen-address=127.0.0.1:%d" % prom_port],
                        stdout=prom_log, stderr=subprocess.STDOUT, cwd=prom_dir)
S.extra.append(prom)


def pq(expr):
    """The result list of an instant query, or None (error; the reason in pq.err)."""
    url = "http://127.0.0.1:%d/api/v1/query?%s" % (prom_port, urllib.parse.urlencode({"query": expr}))
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            d = json.loads(r.read())
    except urllib.error.HTTPError as e:
        pq.err = e.read().decode(errors="replace")[:300]
        return None
    except (OSError, ValueError) as e:
        pq.err = str(e)
        return None
    return d["data"]["result"] if d.get("status") == "success" else None


pq.err = ""
up = wait_for(lambda: (lambda r: r if r and r[0]["value"][1] == "1" else None)(pq('up{job="latchkey"}')), 40, 0.5)
T.check("Prometheus scrapes latchkey (up == 1)", bool(up), (pq.err, up))
time.sleep(1.5)
for i in range(6):
    S.signin(emails[i % 3], PW if i % 2 else BAD_PW)


def rate_up():
    r = pq("sum(rate(auth_attempts_total[1m]))")
    return r if r and float(r[0]["value"][1]) > 0 else None


r = wait_for(rate_up, 40, 1)
T.check("Prometheus sees a non-zero rate(auth_attempts_total[1m])", bool(r), (pq.err, r))
r = pq('sum by (result) (increase(auth_attempts_total{type="signin"}[1m]))')
T.check("and signin attempts by result", r is not None and len(r) == 2, (pq.err, r))

# the dashboard: valid JSON, each expression parses in Prometheus and names only our series
with open(os.path.join(ROOT, "docs", "grafana-dashboard.json")) as f:
    dash = json.load(f)
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
known = set(types)
for fam, kind in types.items():
    if kind == "histogram":
        known |= {fam + "_bucket", fam + "_sum", fam + "_count"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "le"}


def names_of(expr):
    e = re.sub(r'"[^"]*"', "", expr)           # strings
    e = re.sub(r"\{[^}]*\}", "", e)            # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)           # ranges
    e = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", e)  # grouping labels
    out = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or m.group(0) in KEYWORDS:
            continue
        out.add(m.group(0))
    return out


bad = {}
for e in exprs:
    unknown = names_of(e) - known
    if unknown or pq(e) is None:
        bad[e] = (sorted(unknown), pq.err)
T.check("the dashboard has panels for the seed's series and the operator's",
        all(any(n in e for e in exprs) for n in
            ["http_requests_total", "histogram_quantile(0.95", "request_duration_seconds_bucket",
             "auth_attempts_total", "active_sessions", "latchkey_workers_busy",
             "latchkey_queue_depth", "latchkey_restarts_total"]), exprs)
T.check("every dashboard expression (%d) parses and names only exported series" % len(exprs),
        not bad and len(exprs) >= 10, bad)
prom.send_signal(signal.SIGTERM)
try:
    prom.wait(20)
except subprocess.TimeoutExpired:
    prom.kill()
    prom.wait()
prom_log.close()

# ---- 4. a worker restart never makes a counter go backwards ----------------------------------
time.sleep(1.2)
before, btypes = scrape()
before_c = counters(before, btypes)
old = S.pids("signin").get(("signin", 0))
os.kill(old, signal.SIGKILL)
new = wait_for(lambda: (lambda p: p if p and p != old else None)(S.pids("signin").get(("signin", 0))), 30)
T.check("latchkeyd restarts the killed signin worker", bool(new), S.status())
T.check("the stack is ready again", S.wait_ready(30))
st, _ = S.signin(emails[0], PW)
T.check("a signin works after the restart", st == 200, st)
time.sleep(2.5)
after, atypes = scrape()
after_c = counters(after, atypes)
back = {k: (v, after_c.get(k)) for k, v in before_c.items()
        if after_c.get(k) is None or after_c[k] < v}
T.check("no counter went backwards (%d counter samples)" % len(before_c), not back, back)
T.check("latchkey_restarts_total{role=\"signin\"} counted the restart",
        delta(before, after, 'latchkey_restarts_total{role="signin"}') == 1,
        delta(before, after, 'latchkey_restarts_total{role="signin"}'))
T.check("the new worker's verify is added to the old one's",
        delta(before, after, 'latchkey_argon2_duration_seconds_count{role="signin",op="verify"}') == 1,
        delta(before, after, 'latchkey_argon2_duration_seconds_count{role="signin",op="verify"}'))
T.check("the dead worker's gauges are gone: one signin Postgres connection",
        wait_for(lambda: (scrape()[0] or {}).get('latchkey_pg_connections{role="signin"}') == 1, 10))

# ---- 5. the collector down ---------------------------------------------------------------
mpid = S.pids("metrics").get(("metrics", 0))
os.kill(mpid, signal.SIGSTOP)
try:
    st, h, _, secs = get("/metrics")
    T.check("collector stopped: /metrics answers 503 after its 1 s timeout",
            st == 503 and 0.8 <= secs < 3 and h.get("retry-after") == "1", (st, secs))
    t0 = time.time()
    e = "m%d-down@example.com" % os.getpid()
    ok = [S.signup(e, PW)[0], S.signin(e, PW)[0], S.validate(tokens[0])[0], get("/health")[0]]
    T.check("and signup, signin, validate, /health keep working", ok == [201, 200, 200, 200], ok)
    T.check("without waiting on it", time.time() - t0 < 5, time.time() - t0)
    time.sleep(3)  # reports pile up against the stopped collector: bounded, nothing blocks
    t0 = time.time()
    ok = [S.validate(tokens[0])[0] for _ in range(20)]
    T.check("3 s of reports later, nothing blocks", ok == [200] * 20 and time.time() - t0 < 3,
            (ok, time.time() - t0))
finally:
    os.kill(mpid, signal.SIGCONT)
T.check("the collector answers again once resumed", wait_for(lambda: get("/metrics")[0] == 200, 10))
os.kill(mpid, signal.SIGKILL)
time.sleep(0.3)  # the gateway's ZeroMQ notices the closed connection
st, _, _, secs = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(get("/metrics")), 2, 0.05) or (None, 0, 0, 0)
T.check("collector killed: /metrics answers 503 at once", st == 503 and secs < 0.5, (st, secs))
T.check("validate keeps working meanwhile", S.validate(tokens[0])[0] == 200)
T.check("latchkeyd restarts the collector and /metrics answers 200 again",
        wait_for(lambda: get("/metrics")[0] == 200, 30))
again = wait_for(lambda: (lambda s: s if s[0] and s[0].get('auth_attempts_total{type="signup",result="success"}', 0)
                          >= after.get('auth_attempts_total{type="signup",result="success"}', 0) + 1 else None)(scrape()), 10)
T.check("its totals come back from the live processes",
        bool(again), (again or (None,))[0] and again[0].get('auth_attempts_total{type="signup",result="success"}'))

# ---- 6. logs --------------------------------------------------------------------------------
st, _ = S.http("POST", "/api/auth/signin", {"email": emails[2], "password": PW})
rid = "metrics-test-%d" % os.getpid()
c = http.client.HTTPConnection("127.0.0.1", S.port, timeout=10)
c.request("POST", "/api/auth/signin", body=json.dumps({"email": emails[2], "password": PW}),
          headers={"Content-Type": "application/json", "X-Request-Id": rid})
r = c.getresponse()
tok = json.loads(r.read()).get("token", "")
c.close()
if tok:
    SECRETS += [tok, token_hash(tok)]
time.sleep(1.5)
LINE = re.compile(r'^time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=(debug|info|warn|error) '
                  r'role=(supervisor|gateway|signup|signin|sweeper|metrics) pid=\d+( rid=[A-Za-z0-9._-]+)? '
                  r'msg="([^"\\]|\\.)*"( [a-z_]+=\S+)*$')
with open(LOGFILE, errors="replace") as f:
    lines = f.read().splitlines()
badl = [l for l in lines if not LINE.match(l)]
T.check("log.file: %d lines, each one logfmt event (time level role pid [rid] msg)" % len(lines),
        len(lines) > 20 and not badl, badl[:5])
rid_roles = {m.group(2) for m in map(LINE.match, lines) if m and m.group(3) == " rid=" + rid}
T.check("the request id shows in the gateway's and the signin worker's lines",
        rid_roles >= {"gateway", "signin"}, rid_roles)
alltext = S.log_text() + "\n".join(lines)
leaks = [s for s in SECRETS if s and s in alltext]
T.check("no password, token or token hash in any log line (%d secrets checked)" % len(SECRETS),
        not leaks and len(SECRETS) > 10, [x[:8] + "..." for x in leaks])
T.check("no Authorization header value in the logs", "Bearer " not in alltext)

# rotation: rename the file, SIGUSR1 to latchkeyd; every process follows
os.rename(LOGFILE, LOGFILE + ".1")
S.proc.send_signal(signal.SIGUSR1)
time.sleep(1.2)
S.validate(tokens[0])
S.signin(emails[0], PW)


def rotated():
    try:
        with open(LOGFILE, errors="replace") as f:
            t = f.read()
    except OSError:
        return None
    return t if "log file reopened" in t and "role=gateway" in t and "role=signin" in t else None


T.check("after logrotate (rename + SIGUSR1) the new file gets every process's lines",
        bool(wait_for(rotated, 10)))

T.check("latchkeyd stops cleanly", S.stop() == 0)
roles = set()
for path in (LOGFILE + ".1", LOGFILE):
    with open(path, errors="replace") as f:
        roles |= {m.group(2) for m in map(LINE.match, f.read().splitlines()) if m}
T.check("every role logged into log.file (the sweeper says little: its stop)",
        roles >= {"supervisor", "gateway", "signup", "signin", "sweeper", "metrics"}, roles)
T.check("no sanitizer report", S.sanitizer_reports() == "", S.sanitizer_reports()[:3000])
if T.bad:
    print(S.tail(80))
sys.exit(T.done())
