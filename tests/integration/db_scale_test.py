#!/usr/bin/env python3
# The schema at scale (issue 6): 100,000 users and 100,000 sessions loaded with SQL
# (generate_series), ANALYZE, then the generic plan (plan_cache_mode = force_generic_plan,
# what a statement prepared once per connection ends up using) of every statement of
# common/db.c that reads or writes users or user_sessions by a key: each must use an index,
# never a Seq Scan. The SQL is read from common/db.c's s_stmts table itself, so the test
# follows the code. Also: pg_stat_statements is enabled (sql/002_indexes.sql).
#
#   tests/integration/db_scale_test.py BUILD_DIR      (e.g. build/release or build/san)
import os
import re
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in tests/integration: tests/run runs what is there
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lkstack  # noqa: E402

T = lkstack.Checks("db_scale")
BUILD = lkstack.build_dir()
N = 100000

CONF = """
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
interval = 2s
"""

# statement name -> (parameter values for EXPLAIN EXECUTE, index expected in the plan)
CHECKED = {
    "lk_user_by_email": ("'u777@example.com'", "users_email"),
    "lk_user_set_active": ("'u777@example.com', true", "users_email"),
    "lk_user_set_hash": ("'00000000-0000-0000-0000-000000000000', 'x', 'y'", "users_pkey"),
    "lk_session_delete": ("'\\x00'::bytea", "user_sessions_pkey"),
    "lk_session_user": ("'\\x00'::bytea", "user_sessions_pkey"),
    "lk_sessions_expire": ("0, 1000", "user_sessions_expires_at_idx"),
    "lk_sessions_expire_returning": ("0, 1000", "user_sessions_expires_at_idx"),
    "lk_user_sessions_delete": ("'00000000-0000-0000-0000-000000000000'",
                                "user_sessions_user_id_expires_at_idx"),
    "lk_sessions_live_page": ("'\\x00'::bytea, 0, 5000", "user_sessions_pkey"),
}


def statements():
    """{name: sql} from common/db.c's s_stmts table (adjacent C string literals joined)."""
    with open(os.path.join(lkstack.ROOT, "common", "db.c")) as f:
        src = f.read()
    table = src[src.index("s_stmts[S_NSTMT] = {"):]
    table = table[:table.index("\n};")]
    out = {}
    for m in re.finditer(r'\[S_\w+\]\s*=\s*\{\s*"(\w+)",((?:\s*"(?:[^"\\]|\\.)*")+)\s*,\s*\d+\s*\}',
                         table):
        out[m.group(1)] = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(2)))
    return out


def psql_script(stack, script):
    r = subprocess.run(["psql", "-h", os.path.join(stack.var, "pg", "run"), "-U", "latchkey",
                        "-d", "latchkey", "-XAtq", "-v", "ON_ERROR_STOP=1", "-f", "-"],
                       input=script, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError("psql: " + r.stderr.strip())
    return r.stdout


S = lkstack.Stack(BUILD, CONF, name="dbscale")
if not T.check("stack starts and is ready", S.start()):
    print(S.tail(80))
    sys.exit(T.done())

T.check("pg_stat_statements is installed (002)",
        S.psql("SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'") == "1")
T.check("... and collecting", S.psql("SELECT count(*) > 0 FROM pg_stat_statements") == "t")
T.check("the hash index on users.email exists",
        S.psql("SELECT indexdef FROM pg_indexes WHERE indexname = 'users_email_hash_idx'")
        .lower().find("using hash (email)") >= 0)

t0 = time.time()
psql_script(S, """
INSERT INTO users (email, password_hash)
  SELECT 'u' || i || '@example.com', '$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g'
  FROM generate_series(1, %d) i;
INSERT INTO user_sessions (token_hash, user_id, created_at, expires_at)
  SELECT sha256(u.id::text::bytea), u.id, now(), now() + (random() * interval '48 hours') - interval '12 hours'
  FROM users u;
ANALYZE users, user_sessions;
""" % N)
print("   loaded %d users and %d sessions in %.1f s" % (N, N, time.time() - t0))
T.check("100,000 users", S.psql("SELECT count(*) FROM users") == str(N))
T.check("100,000 sessions", S.psql("SELECT count(*) FROM user_sessions") == str(N))

stmts = statements()
T.check("common/db.c's statements found (%d)" % len(stmts), set(CHECKED) <= set(stmts),
        sorted(set(CHECKED) - set(stmts)))
for name, (args, index) in sorted(CHECKED.items()):
    if name not in stmts:
        continue
    try:
        plan = psql_script(S, "SET plan_cache_mode = force_generic_plan;\n"
                              "PREPARE %s AS %s;\nEXPLAIN EXECUTE %s(%s);\n"
                           % (name, stmts[name], name, args))
    except RuntimeError as e:
        T.check("%s: EXPLAIN" % name, False, e)
        continue
    ok = "Seq Scan" not in plan and "Index" in plan and index in plan
    T.check("%s: generic plan uses %s, no Seq Scan" % (name, index), ok, "\n" + plan)

# The scheduled ANALYZE (sweeper.analyze_at, reloadable): planned for the next local
# minute at least 10 s away, set by SIGHUP, then logged and counted.
now = time.time()
at = now + 60 - (now % 60)
if at - now < 10:
    at += 60
hhmm = time.strftime("%H:%M", time.localtime(at))
with open(S.conf, "a") as f:
    f.write("[sweeper]\nanalyze_at = %s\n" % hhmm)
S.proc.send_signal(signal.SIGHUP)
done = re.compile(r"role=sweeper .*ANALYZE users, user_sessions: done")
end = at + 15
while time.time() < end and not done.search(S.log_text()):
    time.sleep(0.5)
T.check("the ANALYZE scheduled at %s ran and was logged" % hhmm, done.search(S.log_text()),
        S.tail(20))
T.check("... not before its time", time.time() >= at - 1)
ok_re = re.compile(r'latchkey_sweeper_analyze_total\{result="ok"\} 1\b')
for _ in range(20):  # the sweeper ships its counters once a second
    st, body = S.http("GET", "/metrics")
    if st == 200 and ok_re.search(str(body)):
        break
    time.sleep(0.25)
T.check("... and counted (latchkey_sweeper_analyze_total{result=\"ok\"} 1)",
        st == 200 and ok_re.search(str(body)),
        (st, [x for x in str(body).splitlines() if "analyze" in x]))

# The warm-up of 100,000 sessions: a restart must be ready, with every live one cached.
t0 = time.time()
T.check("stack stops", S.stop() == 0)
T.check("stack restarts with 100,000 sessions (warm-up before /ready)", S.start())
print("   restart to ready: %.1f s" % (time.time() - t0))
live = int(S.psql("SELECT count(*) FROM user_sessions WHERE expires_at > now()"))
m = re.findall(r"cache warm-up done: (\d+) live sessions in Postgres, (\d+) added", S.log_text())
T.check("the warm-up put every live session into the cache", m and int(m[-1][1]) >= live - 50,
        (m, live))
T.check("stack stops cleanly", S.stop() == 0)
T.check("no sanitizer report from any process", S.sanitizer_reports() == "",
        S.sanitizer_reports()[:2000])
if T.bad:
    print("---- last lines of the stack log")
    print(S.tail(60))
sys.exit(T.done())
