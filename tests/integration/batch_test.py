#!/usr/bin/env python3
# POST /api/auth/signup/batch (api.md; issue 6 item 5, issue 5 item 6) on a real stack:
#
#   1. without admin.api_key the path is unknown: 404 not_found, as any unknown path;
#   2. with the key (LATCHKEY_ADMIN_API_KEY): 401 invalid_token for a missing header, a
#      wrong key, a prefix of the key, the key plus a byte, another scheme; 415 for a body
#      that is not application/x-ndjson; the key never appears in the log or in -n output;
#   3. a mixed batch: exact per-line statuses in input order (201, repeated email 409,
#      email already in the database 409 even with the repeat-signup window on, invalid
#      JSON 400, blank line 400, invalid email 400, weak passwords 400 from the gateway
#      and from the worker, a CRLF line), the users really exist (signin works), the
#      answer is chunked NDJSON, one chunk per line, with one access-log line;
#   4. 1001 lines: 400 and nothing done; a body over gateway.max_batch_body: 413;
#   5. a keep-alive request (and a pipelined one) after a batch on the same connection; a
#      single signup sent during a long batch is answered before the batch ends;
#   6. a client that closes mid-batch: the gateway stays up (same pid), /health 200, a
#      later batch works;
#   7. a signup worker killed mid-batch: its line 503/504, every line answered in order;
#   8. SIGTERM to the gateway mid-batch: it drains, the batch completes; the whole stack
#      stopped mid-batch: the gateway is stopped first and drains, every line 201; no
#      sanitizer report.
#
#   tests/integration/batch_test.py BUILD_DIR      (e.g. build/release or build/san)
import json
import os
import signal
import socket
import threading
import subprocess
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ in tests/integration: tests/run runs what is there
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lkstack  # noqa: E402

T = lkstack.Checks("batch")
BUILD = lkstack.build_dir()
PATH = "/api/auth/signup/batch"
KEY = "k3y-0f-the-adm1n-" + "x" * 24
PW = "correct horse battery"

CONF = """
[gateway]
listen = 127.0.0.1:@PORT@
max_batch_body = 256K
[signup]
count = 2
[signin]
count = 1
[hash]
ops = 1
mem = 8M
"""


def connect(stack, timeout=20):
    s = socket.create_connection(("127.0.0.1", stack.port), timeout=timeout)
    return s, s.makefile("rb")


def send(s, method, path, body=b"", ctype="application/x-ndjson", key=KEY, auth=None,
         extra=""):
    head = "%s %s HTTP/1.1\r\nHost: t\r\n" % (method, path)
    if auth is not None:
        head += "Authorization: %s\r\n" % auth
    elif key is not None:
        head += "Authorization: Bearer %s\r\n" % key
    if ctype:
        head += "Content-Type: %s\r\n" % ctype
    if method == "POST":
        head += "Content-Length: %d\r\n" % len(body)
    head += extra + "\r\n"
    s.sendall(head.encode() + body)


def read_response(f, first_chunk_only=False):
    """(status, headers (lower-case names), body bytes, chunks: list of chunk payloads)."""
    line = f.readline()
    if not line:
        return None, {}, b"", []
    status = int(line.split()[1])
    hdrs = {}
    while True:
        line = f.readline().decode("latin-1").rstrip("\r\n")
        if not line:
            break
        k, v = line.split(":", 1)
        hdrs[k.strip().lower()] = v.strip()
    chunks = []
    if hdrs.get("transfer-encoding") == "chunked":
        while True:
            size = int(f.readline().split(b";")[0], 16)
            data = f.read(size)
            f.readline()
            if size == 0:
                break
            chunks.append(data)
            if first_chunk_only:
                return status, hdrs, data, chunks
        return status, hdrs, b"".join(chunks), chunks
    n = int(hdrs.get("content-length", "0"))
    return status, hdrs, f.read(n), chunks


def read_response_rest(f):
    """The remaining chunks of a chunked body read with first_chunk_only, up to the zero
    chunk: their bytes, or None when the connection ended before it."""
    out = b""
    try:
        while True:
            line = f.readline()
            if not line:
                return None
            size = int(line.split(b";")[0], 16)
            out += f.read(size)
            f.readline()
            if size == 0:
                return out
    except (OSError, ValueError):
        return None


def request(stack, *a, **kw):
    s, f = connect(stack)
    try:
        send(s, *a, **kw)
        return read_response(f)
    finally:
        f.close()
        s.close()


def ndjson(lines):
    return "".join(l + "\n" for l in lines).encode()


def cred(email, pw=PW):
    return json.dumps({"email": email, "password": pw})


def results(body):
    return [json.loads(l) for l in body.decode().splitlines()]


def main():
    if not os.path.exists(os.path.join(BUILD, "bin", "latchkeyd")):
        print("batch: no build in %s" % BUILD)
        return 1
    st = lkstack.Stack(BUILD, CONF, name="batch")
    st.env.pop("LATCHKEY_ADMIN_API_KEY", None)
    if not T.check("stack without admin key ready", st.start(), st.tail()):
        return T.done()

    # 1. no key configured: exactly an unknown path
    a = request(st, "POST", PATH, ndjson([cred("n@example.com")]))
    u = request(st, "POST", "/api/auth/nope", ndjson([cred("n@example.com")]))
    T.check("no key: 404 not_found", a[0] == 404 and json.loads(a[2])["error"] == "not_found", a)
    T.check("no key: same answer as an unknown path", a[0] == u[0] and a[2] == u[2], (a, u))
    g = request(st, "GET", PATH, key=None, ctype=None)
    T.check("no key: GET is 404 too (not 405)", g[0] == 404, g)

    # 2. the key, from the environment
    T.check("stack stops", st.stop() == 0)
    st.env["LATCHKEY_ADMIN_API_KEY"] = KEY
    st.env["LATCHKEY_SIGNUP_REPEAT_WINDOW"] = "300s"  # must not apply inside a batch
    if not T.check("stack with admin key ready", st.start(), st.tail()):
        return T.done()
    r = subprocess.run([os.path.join(st.bin, "latchkeyd"), "-n", "-c", st.conf],
                       capture_output=True, text=True, env=st.env, timeout=30)
    T.check("latchkeyd -n: OK, key not printed", r.returncode == 0 and KEY not in r.stdout + r.stderr,
            r.stdout + r.stderr)

    body = ndjson([cred("auth@example.com")])
    a = request(st, "POST", PATH, body, key=None)
    T.check("missing Authorization: 401 invalid_token, WWW-Authenticate: Bearer",
            a[0] == 401 and json.loads(a[2])["error"] == "invalid_token" and
            a[1].get("www-authenticate") == "Bearer", a)
    for what, auth in (("wrong key", "Bearer wrong-key-of-the-same-length-xxxxxxxxxxx"),
                       ("key prefix", "Bearer " + KEY[:-1]),
                       ("key plus a byte", "Bearer " + KEY + "x"),
                       ("empty bearer", "Bearer "),
                       ("Basic scheme", "Basic " + KEY)):
        a = request(st, "POST", PATH, body, auth=auth)
        T.check("%s: 401 invalid_token" % what,
                a[0] == 401 and json.loads(a[2])["error"] == "invalid_token" and
                "invalid_token" in a[1].get("www-authenticate", ""), a)
    a = request(st, "POST", PATH, body, auth="bearer\t" + KEY, ctype="application/json")
    T.check("right key, application/json: 415", a[0] == 415, a)
    a = request(st, "POST", PATH, body, ctype=None)
    T.check("right key, no Content-Type: 415", a[0] == 415, a)
    a = request(st, "GET", PATH, ctype=None)
    T.check("right key, GET: 405 with Allow: POST", a[0] == 405 and a[1].get("allow") == "POST", a)
    T.check("nothing done by refused requests",
            st.psql("SELECT count(*) FROM users WHERE email = 'auth@example.com'") == "0")

    # 3. the mixed batch
    s0, b0 = st.signup("existing@example.com", PW)
    T.check("single signup of existing@ 201", s0 == 201, b0)
    lines = [
        cred("a1@example.com"),                       # 1 201
        cred("  A1@Example.COM "),                    # 2 409 repeated (normalized)
        cred("existing@example.com"),                 # 3 409 in the database (window off here)
        '{"email": "x@example.com", "password": ',    # 4 400 invalid JSON
        "",                                           # 5 400 blank line
        cred("not-an-email"),                         # 6 400 invalid_email
        cred("a2@example.com", "short"),              # 7 400 weak_password (gateway)
        cred("a3@example.com"),                       # 8 201
        cred("a4@example.com", "password"),           # 9 400 weak_password (worker: common)
        cred("a5@example.com") + "\r",                # 10 201 (CRLF line)
        "   ",                                        # 11 400 blank line
        '{"email": "a6@example.com"}',                # 12 400 missing password
    ]
    want = [(201, None), (409, "email_taken"), (409, "email_taken"), (400, "invalid_request"),
            (400, "invalid_request"), (400, "invalid_email"), (400, "weak_password"), (201, None),
            (400, "weak_password"), (201, None), (400, "invalid_request"), (400, "invalid_request")]
    s, f = connect(st)
    send(s, "POST", PATH, ndjson(lines), extra="X-Request-Id: batch-mixed-1\r\n")
    status, hdrs, raw, chunks = read_response(f)
    f.close()
    s.close()
    T.check("mixed batch: 200", status == 200, (status, raw))
    T.check("mixed batch: chunked application/x-ndjson, no-store, request id",
            hdrs.get("transfer-encoding") == "chunked" and
            hdrs.get("content-type", "").startswith("application/x-ndjson") and
            hdrs.get("cache-control") == "no-store" and hdrs.get("x-request-id") == "batch-mixed-1"
            and "content-length" not in hdrs, hdrs)
    try:
        res = results(raw)
    except ValueError:
        res = []
    T.check("mixed batch: one result line per input line", len(res) == len(lines), raw)
    T.check("mixed batch: one chunk per result line (streamed as they come)",
            len(chunks) == len(lines) and all(c.endswith(b"\n") and c.count(b"\n") == 1
                                              for c in chunks), chunks)
    got = [(r.get("status"), r.get("error")) for r in res]
    T.check("mixed batch: exact statuses and codes in input order", got == want, got)
    T.check("mixed batch: line numbers 1..n in order",
            [r.get("line") for r in res] == list(range(1, len(lines) + 1)), res)
    ok = [r for r in res if r.get("status") == 201]
    T.check("mixed batch: every 201 carries a userId", all(len(r.get("userId", "")) == 36 for r in ok), ok)
    T.check("mixed batch: weak_password lines say why", all(r.get("message") for r in res
                                                            if r.get("error") == "weak_password"), res)
    for e in ("a1@example.com", "a3@example.com", "a5@example.com"):
        s1, b1 = st.signin(e, PW)
        T.check("user %s of the batch signs in" % e, s1 == 200 and "token" in b1, (s1, b1))
    T.check("refused lines created no user",
            st.psql("SELECT count(*) FROM users WHERE email IN "
                    "('a2@example.com','a4@example.com','a6@example.com','x@example.com')") == "0")
    ids = st.psql("SELECT id FROM users WHERE email = 'a1@example.com'")
    T.check("userId of line 1 is the row's id", res and res[0].get("userId") == ids, (res[:1], ids))
    s2, b2 = st.signup("single@example.com", PW)
    s3, b3 = st.signup("single@example.com", PW)
    T.check("the repeat window still applies to single signups (429)", s2 == 201 and s3 == 429,
            (s2, b2, s3, b3))
    time.sleep(0.3)
    log = st.log_text()
    acc = [l for l in log.splitlines() if "batch-mixed-1" in l and "http method=POST" in l]
    T.check("one access-log line for the batch", len(acc) == 1 and "route=%s" % PATH in acc[0]
            and "status=200" in acc[0], acc)

    # 4. limits
    many = ndjson([cred("m%d@example.com" % i) for i in range(1001)])
    a = request(st, "POST", PATH, many)
    T.check("1001 lines: 400 invalid_request", a[0] == 400 and json.loads(a[2])["error"] ==
            "invalid_request", a)
    T.check("1001 lines: nothing done", st.psql("SELECT count(*) FROM users WHERE email LIKE 'm%@example.com'") == "0")
    a = request(st, "POST", PATH, b"")
    T.check("empty body: 400 invalid_request", a[0] == 400, a)
    big = ndjson([cred("b%d@example.com" % i) for i in range(10)]) + b" " * (256 * 1024)
    a = request(st, "POST", PATH, big)
    T.check("body over gateway.max_batch_body: 413", a[0] == 413, a[:3])
    # announced too large: answered before the body is sent
    s, f = connect(st)
    s.sendall(("POST %s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nContent-Type: "
               "application/x-ndjson\r\nContent-Length: %d\r\n\r\n" % (PATH, KEY, 10 << 20)).encode())
    a = read_response(f)
    f.close()
    s.close()
    T.check("Content-Length over the limit: 413 before the body", a[0] == 413, a[:3])

    # 5. keep-alive and pipelining after a batch
    s, f = connect(st)
    send(s, "POST", PATH, ndjson([cred("k1@example.com"), cred("k2@example.com")]))
    a = read_response(f)
    send(s, "GET", "/health", key=None, ctype=None)
    h = read_response(f)
    T.check("keep-alive: batch then /health on one connection", a[0] == 200 and
            [r["status"] for r in results(a[2])] == [201, 201] and h[0] == 200, (a, h))
    # pipelined: a batch and a signin sent at once
    body = ndjson([cred("k3@example.com")])
    req = ("POST %s HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\nContent-Type: "
           "application/x-ndjson\r\nContent-Length: %d\r\n\r\n" % (PATH, KEY, len(body))).encode() + body
    sb = json.dumps({"email": "k1@example.com", "password": PW}).encode()
    req += ("POST /api/auth/signin HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            "Content-Length: %d\r\n\r\n" % len(sb)).encode() + sb
    s.sendall(req)
    a = read_response(f)
    b = read_response(f)
    T.check("pipelined: batch answered, then the signin after it", a[0] == 200 and
            [r["status"] for r in results(a[2])] == [201] and b[0] == 200, (a, b))
    f.close()
    s.close()

    # single signups are not starved by a running batch: one sent after the batch's first
    # result is answered while the batch still runs, and the batch then completes
    s, f = connect(st)
    send(s, "POST", PATH, ndjson([cred("s%d@example.com" % i) for i in range(200)]))
    a = read_response(f, first_chunk_only=True)
    s1, b1 = st.signup("single-during@example.com", PW)
    done_then = int(st.psql("SELECT count(*) FROM users WHERE email LIKE 's%@example.com' "
                            "AND email <> 'single@example.com' AND email <> 'single-during@example.com'"))
    rest = read_response_rest(f)
    f.close()
    s.close()
    res = results(a[2] + rest) if a[0] == 200 and rest is not None else []
    T.check("a single signup during a batch: 201 while the batch runs (%d of 200 done)" % done_then,
            s1 == 201 and done_then < 200, (s1, b1, done_then))
    T.check("... and the batch completes, all 201",
            len(res) == 200 and all(r["status"] == 201 for r in res), res[-3:])

    # 6. the client leaves mid-batch
    gw_before = st.pids("gateway")
    s, f = connect(st)
    send(s, "POST", PATH, ndjson([cred("d%d@example.com" % i) for i in range(200)]))
    a = read_response(f, first_chunk_only=True)
    T.check("long batch: first chunk arrives before the end", a[0] == 200 and len(a[3]) == 1 and
            results(a[2])[0]["line"] == 1, a[:3])
    f.close()
    s.close()
    time.sleep(1.0)
    T.check("after the disconnect: /health 200", st.http("GET", "/health")[0] == 200)
    a = request(st, "POST", PATH, ndjson([cred("after@example.com"), cred("after@example.com")]))
    T.check("after the disconnect: a later batch works", a[0] == 200 and
            [r["status"] for r in results(a[2])] == [201, 409], a)
    n = int(st.psql("SELECT count(*) FROM users WHERE email LIKE 'd%@example.com'"))
    T.check("the abandoned batch stopped early (%d of 200 users)" % n, n < 200, n)
    T.check("gateway still the same process", st.pids("gateway") == gw_before,
            (gw_before, st.pids("gateway")))
    ok200 = st.http("GET", "/ready")[0] == 200
    T.check("stack still ready", ok200)

    # the metrics count the batch as one request of its route
    def batch_series():
        stt, text = st.http("GET", "/metrics")
        if stt != 200 or not isinstance(text, str):
            return ""
        return "\n".join(l for l in text.splitlines() if l.startswith("http_requests_total")
                         and 'route="%s"' % PATH in l)
    end = time.time() + 10
    series = ""
    while time.time() < end and 'status="200"' not in series:
        series = batch_series()
        time.sleep(0.5)
    T.check("http_requests_total has the batch route", 'status="200"' in series, series)

    # a signup worker killed mid-batch: its line gets 503 (or finished first), the batch
    # goes on with the other worker and ends with every line answered
    s, f = connect(st)
    send(s, "POST", PATH, ndjson([cred("w%d@example.com" % i) for i in range(40)]))
    a = read_response(f, first_chunk_only=True)
    victim = st.pids("signup").get(("signup", 0))
    if victim:
        os.kill(victim, signal.SIGKILL)
    rest = read_response_rest(f)
    f.close()
    s.close()
    res = results(a[2] + rest) if a[0] == 200 and rest is not None else []
    T.check("worker killed mid-batch: every line answered, in order",
            [r["line"] for r in res] == list(range(1, 41)), (a[:3], rest))
    T.check("worker killed mid-batch: each line 201 or 503/504 (%d not 201)"
            % sum(1 for r in res if r["status"] != 201),
            res and all(r["status"] in (201, 503, 504) for r in res), res)
    created = set(st.psql("SELECT email FROM users WHERE email LIKE 'w%@example.com'").split())
    T.check("every 201 line of it is a user", all("w%d@example.com" % (r["line"] - 1) in created
                                                   for r in res if r["status"] == 201), created)
    T.check("stack ready again after the worker's restart", st.wait_ready(60))

    log = st.log_text()
    T.check("the admin key never appears in the log", KEY not in log)

    # SIGTERM to the gateway during a batch: it drains, the batch completes before it exits
    # (latchkeyd restarts the gateway afterwards)
    gw_pid = st.pids("gateway").get(("gateway", 0))
    s, f = connect(st)
    send(s, "POST", PATH, ndjson([cred("t%d@example.com" % i) for i in range(30)]))
    a = read_response(f, first_chunk_only=True)
    if gw_pid:
        os.kill(gw_pid, signal.SIGTERM)
    rest = read_response_rest(f)
    try:
        eof = f.read(1) == b""
    except OSError:
        eof = True
    f.close()
    s.close()
    res = results(a[2] + rest) if a[0] == 200 and rest is not None else []
    T.check("SIGTERM mid-batch: the gateway closes the connection after the batch", eof)
    T.check("SIGTERM mid-batch: the batch completes (30 lines, zero chunk)",
            [r["line"] for r in res] == list(range(1, 31)), (a[:3], rest))
    T.check("SIGTERM mid-batch: its lines all 201", res and all(r["status"] == 201 for r in res), res)
    T.check("the gateway is restarted by latchkeyd and ready", st.wait_ready(60))

    # The whole stack stopped (SIGTERM to latchkeyd) during a batch: latchkeyd stops the
    # gateways first, so they drain with the workers still there: every line is 201.
    s, f = connect(st)
    send(s, "POST", PATH, ndjson([cred("z%d@example.com" % i) for i in range(200)]))
    a = read_response(f, first_chunk_only=True)
    stop_rc = []
    stopper = threading.Thread(target=lambda: stop_rc.append(st.stop()))
    stopper.start()
    rest = read_response_rest(f)
    f.close()
    s.close()
    stopper.join(120)
    res = results(a[2] + rest) if a[0] == 200 and rest is not None else []
    T.check("stack stopped mid-batch: the batch completes, every line 201",
            [r["line"] for r in res] == list(range(1, 201)) and
            all(r["status"] == 201 for r in res),
            (a[0], len(res), sorted(set((r["status"], r.get("message", "")) for r in res))))
    T.check("stack stops cleanly", stop_rc == [0], stop_rc)
    rep = st.sanitizer_reports()
    T.check("no sanitizer report", rep == "", rep[:3000])
    return T.done()


if __name__ == "__main__":
    sys.exit(main())
