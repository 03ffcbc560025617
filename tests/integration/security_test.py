#!/usr/bin/env python3
# Security controls (issue 5), against a real stack:
#
#   1. per-client rate limit: a burst past ratelimit.client_burst gets 429
#      too_many_attempts with Retry-After (the client is the X-Forwarded-For address of a
#      trusted proxy, 127.0.0.1 here, so every other part of this test can use addresses
#      of its own);
#   2. password policy: weak_password for a common password, the email and its local part;
#   3. a long password is never truncated (P and its first 72 bytes differ);
#   4. NFKC: composed and decomposed "é" sign in alike;
#   5. the signup repeat window: 429 with Retry-After;
#   6. a storm of parallel wrong passwords from 32 connections lets exactly
#      throttle.max_failures through, then 429 with Retry-After, even for the right
#      password; an unknown email is throttled alike, and may still sign up afterwards;
#   7. unknown email versus wrong password: medians within 10 %, and a rank-sum test does
#      not separate them at alpha = 0.001;
#   8. signout-all ends every session of the user;
#   9. latchkeyctl user disable: every token stops validating at once; enable undoes it;
#  10. no token in Postgres or in the LMDB file, in plaintext, hex or base64;
#  11. a stored hash of another cost is rehashed at the next successful signin (restart
#      with another hash.mem); a stored hash over the ceiling is a failure (9b);
#  12. the idle timeout: off by default; on (restart with session.idle_timeout), a session in
#      use outlives it, a burst of validates records only a few uses (no write per request),
#      an unused session gets 401 from validate, validate/batch and signout.
#
#   tests/integration/security_test.py BUILD_DIR      (e.g. build/release or build/san)
import base64
import hashlib
import http.client
import json
import math
import os
import random
import socket
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in tests/integration: tests/run runs what is there
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lkstack  # noqa: E402

T = lkstack.Checks("security")
BUILD = lkstack.build_dir()
SAN = "san" in os.path.basename(BUILD.rstrip("/"))
LIMIT = 5

CONF = """
[gateway]
listen = 127.0.0.1:@PORT@
route_timeout = 20s
[signup]
count = 2
[signin]
count = 4
[hash]
# low for test speed; high enough that a verification dominates a signin's time
ops = 1
mem = 32M
[ratelimit]
trusted_proxies = 127.0.0.1
[supervisor]
restart_delay = 1s
stop_timeout = 10s
"""

S = lkstack.Stack(BUILD, CONF, name="security")
# the harness turns these off for the other tests; the environment overrides the file
S.env["LATCHKEY_RATELIMIT_CLIENT_RATE"] = "10"
S.env["LATCHKEY_RATELIMIT_CLIENT_BURST"] = "20"
S.env["LATCHKEY_SIGNUP_REPEAT_WINDOW"] = "300s"
S.env["LATCHKEY_THROTTLE_MAX_FAILURES"] = str(LIMIT)
S.env["LATCHKEY_THROTTLE_BASE_DELAY"] = "60s"   # no lock expires during the test
S.env["LATCHKEY_THROTTLE_MAX_DELAY"] = "15m"

_ipn = [0]


def fresh_ip():
    """A client address of its own for every request: no part trips the rate limit but 1."""
    _ipn[0] += 1
    n = _ipn[0]
    return "10.%d.%d.%d" % ((n >> 16) & 255, (n >> 8) & 255, n & 255)


def req(method, path, body=None, token=None, xff=None, raw=None):
    """(status, headers dict lower-cased, parsed body, seconds)."""
    h, p = S.base.rsplit(":", 1)
    c = http.client.HTTPConnection(h, int(p), timeout=60)
    headers = {"X-Forwarded-For": xff or fresh_ip()}
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = "Bearer " + token
    try:
        t0 = time.perf_counter()
        c.request(method, path, body=data, headers=headers)
        r = c.getresponse()
        rawb = r.read()
        dt = time.perf_counter() - t0
        hd = {k.lower(): v for k, v in r.getheaders()}
        try:
            parsed = json.loads(rawb) if rawb else {}
        except ValueError:
            parsed = rawb.decode(errors="replace")
        return r.status, hd, parsed, dt
    except (OSError, http.client.HTTPException) as e:
        return "conn:%s" % e, {}, None, 0.0
    finally:
        c.close()


def signup(email, pw, **kw):
    return req("POST", "/api/auth/signup", {"email": email, "password": pw}, **kw)


def signin(email, pw, **kw):
    return req("POST", "/api/auth/signin", {"email": email, "password": pw}, **kw)


def validate(token):
    return req("GET", "/api/auth/validate", token=token)[0]


def retry_after_ok(hd):
    v = hd.get("retry-after", "")
    return v.isdigit() and int(v) >= 1


PW = "quiet meadow lantern 42"

if not S.start():
    print(S.tail(80))
    T.check("stack started", False)
    sys.exit(T.done())

# ---- 1. per-client rate limit --------------------------------------------------------------
res = []
for _ in range(40):
    res.append(req("POST", "/api/auth/signin", raw=b"{}", xff="203.0.113.77"))
passed = sum(1 for r in res if r[0] != 429)
limited = [r for r in res if r[0] == 429]
T.check("a burst of 40 from one client: the 20 of the burst pass, then 429 (%d passed)" % passed,
        20 <= passed <= 25, [r[0] for r in res])
T.check("... 429 too_many_attempts with Retry-After >= 1",
        limited and all(r[2].get("error") == "too_many_attempts" and retry_after_ok(r[1])
                        for r in limited), limited[:1])
st = req("POST", "/api/auth/signin", raw=b"{}", xff="203.0.113.78")[0]
T.check("another client behind the same trusted proxy is not limited", st == 400, st)
# an untrusted peer's X-Forwarded-For is not believed: 127.0.0.1 is trusted here, so this
# is covered by the unit test (tests/unit/common/ratelimit_test.c)

# ---- 2. password policy ----------------------------------------------------------------------
st, _, b, _ = signup("weak1@example.com", "password")
T.check("a common password is 400 weak_password", st == 400 and b.get("error") == "weak_password", (st, b))
st, _, b, _ = signup("longlocalpart@example.com", "LongLocalPart@Example.com")
T.check("the email as password is 400 weak_password", st == 400 and b.get("error") == "weak_password", (st, b))
st, _, b, _ = signup("longlocalpart@example.com", "longlocalpart")
T.check("the email's local part as password is 400 weak_password, with a reason",
        st == 400 and b.get("error") == "weak_password" and len(b.get("message", "")) > 0, (st, b))

# ---- 3. no truncation ------------------------------------------------------------------------
P = "".join(random.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(100))
st = signup("long@example.com", P)[0]
T.check("signup with a 100-byte password is 201", st == 201, st)
st = signin("long@example.com", P[:72])[0]
T.check("its first 72 bytes do not sign in (401)", st == 401, st)
st = signin("long@example.com", P)[0]
T.check("the whole password signs in", st == 200, st)

# ---- 4. NFKC ---------------------------------------------------------------------------------
composed = "caf\u00e9 cr\u00e8me au lait"
decomposed = "cafe\u0301 cre\u0300me au lait"
st = signup("nfkc@example.com", composed)[0]
T.check("signup with a composed password is 201", st == 201, st)
st1 = signin("nfkc@example.com", decomposed)[0]
st2 = signin("nfkc@example.com", composed)[0]
T.check("the decomposed and the composed forms both sign in", (st1, st2) == (200, 200), (st1, st2))
st = signup("nfkc2@example.com", decomposed)[0]
st1 = signin("nfkc2@example.com", composed)[0]
T.check("and the other way round", (st, st1) == (201, 200), (st, st1))

# ---- 5. repeat signup window -----------------------------------------------------------------
st, hd, b, _ = signup("nfkc@example.com", "another fine password")
T.check("a repeat signup within the window is 429 too_many_attempts with Retry-After",
        st == 429 and b.get("error") == "too_many_attempts" and retry_after_ok(hd), (st, hd, b))


# ---- 6. the storm --------------------------------------------------------------------------
def storm(email, pw, n=32):
    barrier = threading.Barrier(n)
    out = [None] * n

    def one(i):
        barrier.wait()
        out[i] = signin(email, pw)

    th = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    return out


st = signup("victim@example.com", PW)[0]
T.check("the storm's target signs up", st == 201, st)
out = storm("victim@example.com", "not the password")
through = [r for r in out if r[0] != 429]
T.check("32 parallel wrong passwords: exactly %d get through (%d)" % (LIMIT, len(through)),
        len(through) == LIMIT, sorted(str(r[0]) for r in out))
T.check("... those %d are 401" % LIMIT, all(r[0] == 401 for r in through), [r[0] for r in through])
T.check("... and the 429s carry Retry-After",
        all(retry_after_ok(r[1]) for r in out if r[0] == 429))
st, hd, b, _ = signin("victim@example.com", PW)
T.check("during the lock the right password gets 429 too",
        st == 429 and b.get("error") == "too_many_attempts" and retry_after_ok(hd), (st, b))
out = storm("ghost@example.com", "whatever it is")
through = [r for r in out if r[0] != 429]
T.check("an unknown email is throttled alike: %d get through" % len(through),
        len(through) == LIMIT and all(r[0] == 401 for r in through), sorted(str(r[0]) for r in out))
st = signup("ghost@example.com", PW)[0]
T.check("the throttled unknown email can still sign up", st == 201, st)
st = signin("ghost@example.com", PW)[0]
T.check("... (its own signin stays locked: 429)", st == 429, st)

# ---- 7. enumeration timing -------------------------------------------------------------------
NUSERS, PER = 20, 4        # 4 failures each stays under the limit of 5; a success resets
users = ["timing%d@example.com" % i for i in range(NUSERS)]
for u in users:
    signup(u, PW)
known, unknown = [], []
for rnd in range(PER):
    for i, u in enumerate(users):
        pair = [("k", u), ("u", "nobody%d.%d@example.com" % (rnd, i))]
        random.shuffle(pair)
        for kind, email in pair:
            st, _, _, dt = signin(email, "wrong password here")
            if st == 401:
                (known if kind == "k" else unknown).append(dt)
for u in users:
    signin(u, PW)


def median(xs):
    s = sorted(xs)
    n = len(s)
    return (s[n // 2] + s[(n - 1) // 2]) / 2 if n else float("nan")


def ranksum_z(a, b):
    """Mann-Whitney U as a normal z (ties get average ranks)."""
    allv = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    ranks = [0.0] * len(allv)
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1][0] == allv[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2 + 1
        i = j + 1
    r1 = sum(r for r, (_, g) in zip(ranks, allv) if g == 0)
    n1, n2 = len(a), len(b)
    u = r1 - n1 * (n1 + 1) / 2
    mu = n1 * n2 / 2
    sd = math.sqrt(n1 * n2 * (n1 + n2 + 1) / 12)
    return (u - mu) / sd if sd else 0.0


mk, mu_ = median(known), median(unknown)
z = ranksum_z(known, unknown)
print("   wrong password median %.2f ms, unknown email %.2f ms (n=%d/%d), rank-sum z=%.2f"
      % (mk * 1000, mu_ * 1000, len(known), len(unknown), z))
T.check("enough samples (%d, %d)" % (len(known), len(unknown)),
        len(known) >= NUSERS * PER - 2 and len(unknown) >= NUSERS * PER - 2)
T.check("medians within 10 %", abs(mk - mu_) <= 0.10 * max(mk, mu_), (mk, mu_))
T.check("a rank-sum test does not separate them (|z| < 3.29, alpha 0.001)", abs(z) < 3.29, z)

# ---- 8. signout-all --------------------------------------------------------------------------
signup("many@example.com", PW)
tokens = [signin("many@example.com", PW)[2].get("token") for _ in range(3)]
other = signin("nfkc@example.com", composed)[2].get("token")
T.check("three sessions of one user", all(tokens) and all(validate(t) == 200 for t in tokens))
st = req("POST", "/api/auth/signout-all", token=tokens[1])[0]
T.check("signout-all is 204", st == 204, st)
T.check("... every session of the user is gone", [validate(t) for t in tokens] == [401] * 3,
        [validate(t) for t in tokens])
T.check("... another user's session is not", validate(other) == 200)
st, hd, _, _ = req("POST", "/api/auth/signout-all", token=tokens[0])
T.check("signout-all with a revoked token is 401", st == 401 and "www-authenticate" in hd, st)

# ---- 9. disable / enable ---------------------------------------------------------------------
signup("bad.actor@example.com", PW)
tokens = [signin("bad.actor@example.com", PW)[2].get("token") for _ in range(3)]
T.check("the user to disable holds three valid tokens", all(tokens) and all(validate(t) == 200 for t in tokens))
rc, out = S.ctl("user", "disable", "Bad.Actor@example.com")
T.check("latchkeyctl user disable succeeds", rc == 0, (rc, out))
T.check("... every token of the user stops validating at once",
        [validate(t) for t in tokens] == [401] * 3, [validate(t) for t in tokens])
st, _, b, _ = signin("bad.actor@example.com", PW)
T.check("... signin is 401 invalid_credentials", st == 401 and b.get("error") == "invalid_credentials", (st, b))
rc, out = S.ctl("user", "enable", "bad.actor@example.com")
st = signin("bad.actor@example.com", PW)[0]
T.check("latchkeyctl user enable: signin works again", rc == 0 and st == 200, (rc, out, st))
rc, out = S.ctl("user", "disable", "nobody.at.all@example.com")
T.check("disabling an unknown email is refused", rc == 1, (rc, out))

# ---- 9b. verification ceiling: a tampered row costlier than hash.max_mem fails, uncomputed
signup("tampered@example.com", PW)
S.psql("UPDATE users SET password_hash = regexp_replace(password_hash, 'm=[0-9]+', 'm=1048576') "
       "WHERE email = 'tampered@example.com'")
st, _, b, dt = signin("tampered@example.com", PW)
T.check("a stored hash over the ceiling (m = 1 GiB) is 401 invalid_credentials, quickly",
        st == 401 and b.get("error") == "invalid_credentials" and dt < 5, (st, b, dt))
T.check("... and logged", "exceeds hash.max_ops/hash.max_mem" in S.log_text())

# ---- 10. no token at rest --------------------------------------------------------------------
live = []
for i in range(5):
    t = signin("many@example.com", PW)[2].get("token")
    if t:
        live.append(t)
alltokens = live + [t for t in tokens if t]
dump = (S.psql("SELECT t::text FROM user_sessions t") + "\n" + S.psql("SELECT u::text FROM users u")).encode()
with open(os.path.join(S.var, "cache", "data.mdb"), "rb") as f:
    mdb = f.read()
found = []
blobs = (("postgres", dump, dump.lower()), ("lmdb", mdb, mdb.lower()))
for t in alltokens:
    rawt = base64.urlsafe_b64decode(t + "=")
    forms = [t.encode(), t.encode().hex().encode(), rawt, rawt.hex().encode(), rawt.hex().upper().encode(),
             base64.b64encode(rawt).rstrip(b"="), base64.urlsafe_b64encode(rawt).rstrip(b"="),
             base64.b64encode(t.encode()).rstrip(b"=")[:40]]
    for where, blob, low in blobs:
        for f_ in forms:
            if f_ in blob or f_.lower() in low:
                found.append((where, forms.index(f_)))
hashes_ok = all(hashlib.blake2b(t.encode(), digest_size=32).digest() in mdb for t in live)
T.check("the cache holds the hashes of the live tokens (the check reads the right file)", hashes_ok)
T.check("no token in Postgres or the LMDB file, in plaintext, hex or base64 (%d tokens)" % len(alltokens),
        not found, found[:5])

# ---- 11. rehash: restarted with another cost, a successful signin stores a new hash -------
before = S.psql("SELECT password_hash FROM users WHERE email = 'nfkc@example.com'")
S.stop()
S.env["LATCHKEY_HASH_MEM"] = "16M"
T.check("the stack restarts with hash.mem = 16M", S.start())
st = signin("nfkc@example.com", decomposed)[0]
after = S.psql("SELECT password_hash FROM users WHERE email = 'nfkc@example.com'")
T.check("a successful signin rehashes a hash of another cost (m=32768 -> m=16384)",
        st == 200 and "m=32768," in before and "m=16384," in after, (st, before[:30], after[:30]))
st = signin("nfkc@example.com", composed)[0]
T.check("... and the new hash verifies", st == 200, st)
st = signin("nfkc@example.com", "wrong password here")[0]
after2 = S.psql("SELECT password_hash FROM users WHERE email = 'nfkc@example.com'")
T.check("a failed signin rehashes nothing", st == 401 and after2 == after, st)

# ---- 12. the idle timeout: off by default; on, validate honours it without a write per request
st, _, b, _ = signin("nfkc@example.com", composed)
tok = b.get("token", "") if isinstance(b, dict) else ""
time.sleep(4)
T.check("idle timeout off (default): a session unused for 4 s still validates",
        st == 200 and validate(tok) == 200, st)
S.stop()
IDLE = 3
S.env["LATCHKEY_SESSION_IDLE_TIMEOUT"] = "%ds" % IDLE
T.check("the stack restarts with session.idle_timeout = %ds" % IDLE, S.start())


def touches():
    """latchkey_session_touches_total from /metrics (None when absent)."""
    st, _, text, _ = req("GET", "/metrics")
    if st != 200 or not isinstance(text, str):
        return None
    for line in text.splitlines():
        if line.startswith("latchkey_session_touches_total "):
            return float(line.split()[1])
    return None


st, _, b, _ = signin("nfkc@example.com", composed)
tok = b.get("token", "") if isinstance(b, dict) else ""
kept = []
for i in range(7):  # 7 s of use, each gap under the timeout: more than twice the timeout
    time.sleep(1)
    kept.append(validate(tok) if i % 2 == 0 else
                (200 if req("POST", "/api/auth/validate/batch", {"tokens": [tok]})[2]
                 .get("results", [{}])[0].get("valid") else 401))
T.check("a session in use (validate and validate/batch, 1 s apart) outlives the idle timeout",
        st == 200 and kept == [200] * 7, (st, kept))
# a burst: at most one recorded use per session per resolution (idle/10, >= 100 ms)
deadline = time.time() + 20
t0 = touches()
while t0 is None and time.time() < deadline:
    time.sleep(0.5)
    t0 = touches()
t_start = time.time()
burst = [validate(tok) for _ in range(100)]
burst_s = time.time() - t_start
time.sleep(2.5)  # the gateway writes within IDLE_FLUSH_MS, the collector hears it within 1 s
t1 = touches()
written = (t1 - t0) if t0 is not None and t1 is not None else None
bound = int(burst_s / 0.3) + 2
T.check("100 validates in %.2f s record at most %d uses (%s): no write per request" % (burst_s, bound, written),
        burst == [200] * 100 and written is not None and 1 <= written <= bound, (burst[:3], t0, t1))
time.sleep(IDLE + 1.5)
T.check("unused for longer than the idle timeout: validate is 401", validate(tok) == 401)
st, _, b, _ = req("POST", "/api/auth/validate/batch", {"tokens": [tok]})
T.check("... validate/batch says valid: false", st == 200 and b.get("results") == [{"valid": False}], (st, b))
T.check("... and signout with it is 401", req("POST", "/api/auth/signout", token=tok)[0] == 401)
T.check("a new signin gets a working session", validate(signin("nfkc@example.com", composed)[2].get("token", "")) == 200)

T.check("no sanitizer report from any process", S.sanitizer_reports() == "", S.sanitizer_reports()[:2000])
if T.bad:
    print("---- last lines of the stack log")
    print(S.tail(80))
S.stop()
sys.exit(T.done())
