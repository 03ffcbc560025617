#!/usr/bin/env python3
# Sessions, the sweeper and the complete cache (issue 6), on a real stack:
#
#   1. a session with a 2 s lifetime validates, gets 401 within a second of its expiry,
#      and its row and cache entry are gone after the next sweep (interval 1 s, grace 0);
#   2. restart with the cache kept: a row deleted behind the cache's back (psql) is gone
#      from the cache after the start-up reconcile, before /ready; valid tokens stay valid;
#   3. the LMDB files deleted while the stack is down: the next start rebuilds the cache
#      from Postgres (/ready only after it), a valid token is still valid, a revoked one
#      still 401;
#   4. Postgres down at start (database.url pointing at the Postgres of another stack,
#      stopped): latchkeyd waits, then becomes ready when that Postgres comes up.
#
#   tests/integration/sessions_test.py BUILD_DIR      (e.g. build/release or build/san)
import os
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in tests/integration: tests/run runs what is there
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lkstack  # noqa: E402
from lkstack import token_hash  # noqa: E402

T = lkstack.Checks("sessions")
BUILD = lkstack.build_dir()

BASE = """
[gateway]
listen = 127.0.0.1:@PORT@
[signup]
count = 1
[signin]
count = 1
[hash]
ops = 1
mem = 1M
[sweeper]
interval = 1s
grace = 0ms
"""
CONF_SHORT = BASE + "[session]\nttl = 2s\n"
CONF_LONG = BASE + "[session]\nttl = 1h\n"
PW = "correct horse battery"


def wait_for(pred, timeout, step=0.1):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def cache_keys(stack):
    """The token hashes (hex) in the stack's LMDB 'sessions' database (mdb_dump)."""
    r = subprocess.run(["mdb_dump", "-s", "sessions", os.path.join(stack.var, "cache")],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("mdb_dump: " + r.stderr.strip())
    lines = r.stdout.splitlines()
    data = lines[lines.index("HEADER=END") + 1:]
    data = [x.strip() for x in data if x.startswith(" ")]
    return set(data[0::2])


def rows(stack):
    return set(stack.psql("SELECT encode(token_hash, 'hex') FROM user_sessions").split())


def signin_token(stack, email):
    st, body = stack.signin(email, PW)
    if st != 200:
        raise RuntimeError("signin %s: %s %s" % (email, st, body))
    return body["token"]


def restart(stack, conf):
    T.check("stack stops cleanly", stack.stop() == 0)
    with open(stack.conf, "w") as f:
        f.write("[paths]\nvar = %s\n" % stack.var)
        f.write(conf.replace("@PORT@", str(stack.port)))


S = lkstack.Stack(BUILD, CONF_SHORT, name="sessions")
if not T.check("stack starts and is ready", S.start()):
    print(S.tail(80))
    sys.exit(T.done())
T.check("the sweeper warmed the cache up before /ready", "cache warm-up done" in S.log_text())

# ---- 1. a 2 s session: 401 within a second of expiry, then swept from both stores -------------
T.check("signup", S.signup("short@example.com", PW)[0] == 201)
tok = signin_token(S, "short@example.com")
h = token_hash(tok)
T.check("it validates at once", S.validate(tok)[0] == 200)
exp = float(S.psql("SELECT extract(epoch FROM expires_at) FROM user_sessions "
                   "WHERE token_hash = '\\x%s'" % h))
last_ok, first_401 = None, None
while time.time() < exp + 3:
    st, _ = S.validate(tok, timeout=2)
    now = time.time()
    if st == 200:
        last_ok = now
    elif st == 401:
        first_401 = now
        break
    time.sleep(0.05)
T.check("it validated until its expiry", last_ok is not None and last_ok <= exp + 0.05,
        (last_ok, exp))
T.check("401 within a second of its expiry", first_401 is not None and first_401 - exp <= 1.0,
        (first_401, exp))
T.check("its row is swept (grace 0, interval 1 s)", wait_for(lambda: h not in rows(S), 5))
T.check("... and its cache entry", wait_for(lambda: h not in cache_keys(S), 5))

# ---- 2. restart with the cache kept: reconcile ---------------------------------------------
restart(S, CONF_LONG)
T.check("stack starts again (ttl 1h)", S.start())
T.check("signup", S.signup("long@example.com", PW)[0] == 201)
t_ghost = time.time()
ghost = signin_token(S, "long@example.com")   # its row will be deleted behind the cache's back
keep = signin_token(S, "long@example.com")
revoked = signin_token(S, "long@example.com")
T.check("signout of one token: 204", S.http("POST", "/api/auth/signout", token=revoked)[0] == 204)
T.check("the revoked token is 401", S.validate(revoked)[0] == 401)
S.psql("DELETE FROM user_sessions WHERE token_hash = '\\x%s'" % token_hash(ghost))
T.check("a row deleted by hand: still valid in the cache (the cache is behind)",
        S.validate(ghost)[0] == 200)
# The reconcile spares entries younger than 35 s (their rows may still be committing).
time.sleep(max(0.0, t_ghost + 37 - time.time()))
restart(S, CONF_LONG)
T.check("stack starts again, cache kept", S.start())
T.check("the reconcile removed the entry of the deleted row", S.validate(ghost)[0] == 401)
T.check("... and its cache key", token_hash(ghost) not in cache_keys(S))
T.check("a valid token is still valid", S.validate(keep)[0] == 200)
T.check("the revoked token is still 401", S.validate(revoked)[0] == 401)

# ---- 3. LMDB files deleted: rebuilt from Postgres ----------------------------------------------
restart(S, CONF_LONG)
for n in os.listdir(os.path.join(S.var, "cache")):
    os.unlink(os.path.join(S.var, "cache", n))
T.check("stack starts with no cache files", S.start())
T.check("the cache was rebuilt from Postgres", cache_keys(S) == rows(S),
        (len(cache_keys(S)), len(rows(S))))
T.check("a valid token is still valid", S.validate(keep)[0] == 200)
T.check("the revoked token is still 401", S.validate(revoked)[0] == 401)
T.check("the deleted row's token is still 401", S.validate(ghost)[0] == 401)
T.check("signin works after the rebuild", S.validate(signin_token(S, "long@example.com"))[0] == 200)

# ---- 4. Postgres down at start: wait, then ready ---------------------------------------------
restart(S, CONF_LONG)  # S's Postgres is down now: it is B's external database
url = "host=%s dbname=latchkey user=latchkey" % os.path.join(S.var, "pg", "run")
B = lkstack.Stack(BUILD, CONF_LONG + "[database]\nurl = \"%s\"\n" % url, name="sessions-b")
B.logf = open(B.log, "ab")
B.proc = subprocess.Popen([os.path.join(B.bin, "latchkeyd"), "-c", B.conf], stdout=B.logf,
                          stderr=subprocess.STDOUT, env=B.env, cwd=B.tmp)
B.known.add(B.proc.pid)
time.sleep(4)
T.check("with its Postgres down, latchkeyd waits (alive, not ready)",
        B.proc.poll() is None and B.http("GET", "/ready", timeout=2)[0] != 200, B.tail(20))
T.check("... and says so in its log", "waiting for it" in B.log_text())
T.check("the other stack (and its Postgres) starts", S.start())
T.check("B becomes ready once Postgres is up", B.wait_ready(60), B.tail(40))
T.check("B serves: validate of a token made before", B.validate(keep)[0] == 200)
T.check("B serves: signin", B.validate(signin_token(B, "long@example.com"))[0] == 200)
T.check("B stops cleanly", B.stop() == 0)
T.check("stack stops cleanly", S.stop() == 0)

T.check("no sanitizer report from any process",
        S.sanitizer_reports() == "" and B.sanitizer_reports() == "",
        (S.sanitizer_reports() + B.sanitizer_reports())[:2000])
if T.bad:
    print("---- last lines of the stack log")
    print(S.tail(80))
    print("---- last lines of stack B's log")
    print(B.tail(40))
sys.exit(T.done())
