#!/usr/bin/env python3
"""HTTP conformance test of the gateway, over raw sockets, against the real stack.

    tests/integration/http_test.py BUILD_DIR      (e.g. build/release or build/san)

Starts latchkeyd (embedded Postgres in a throwaway state directory, a free loopback port,
one worker per role, a cheap argon2id cost, short timeouts and CORS origins set for the
test), waits for /ready, then checks every status code of api.md's conventions and limits
table, the framing rules, keep-alive, pipelining, HTTP/1.0, chunked bodies, 100-continue,
CORS, request ids, the timeouts, slow readers, the connection limit and 1000 concurrent
connections. Prints one line per check and ends with "N passed, N failed"; exits non-zero
on any failure. The stack is stopped (SIGTERM) and its directory removed in every case.
Python 3 standard library only.
"""
import json
import os
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = sys.argv[1] if len(sys.argv) > 1 else "build/release"
BIN = os.path.join(ROOT, BUILD, "bin")

# The test stack's settings (see start()); the checks below rely on them.
HEADER_TIMEOUT = 1.0
IDLE_TIMEOUT = 4.0
BODY_GRACE = 1.0
BODY_MIN_RATE = 100
ROUTE_TIMEOUT = 2.0
MAX_CONNECTIONS = 1100
ORIGIN = "https://app.example.com"
ORIGIN2 = "http://localhost:3000"
RID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

passed = 0
failed = 0


def check(name, cond, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print("ok   " + name, flush=True)
    else:
        failed += 1
        print("FAIL " + name + (": " + detail if detail else ""), flush=True)
    return cond


# ---- a raw HTTP/1.1 client --------------------------------------------------------------


class Response:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (lower-case name, value)
        self.body = body

    def header(self, name):
        vals = [v for k, v in self.headers if k == name]
        return vals[-1] if vals else None

    def count(self, name):
        return sum(1 for k, _ in self.headers if k == name)

    def json(self):
        try:
            return json.loads(self.body.decode())
        except ValueError:
            return None

    def error(self):
        j = self.json()
        return j.get("error") if isinstance(j, dict) else None

    def __repr__(self):
        return "%d %r %r" % (self.status, self.headers, self.body[:200])


class Conn:
    def __init__(self, port, timeout=5.0, rcvbuf=None):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.settimeout(timeout)
        self.s.connect(("127.0.0.1", port))
        self.buf = b""

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.s.sendall(data)

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("timed out")
        self.s.settimeout(left)
        d = self.s.recv(65536)
        if not d:
            raise EOFError("connection closed")
        self.buf += d

    def response(self, timeout=5.0, head=False):
        """Reads one response (a 1xx included). head: the request was HEAD (no body)."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            self._fill(deadline)
        raw, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = raw.decode("latin-1").split("\r\n")
        m = re.match(r"^HTTP/1\.[01] (\d{3}) ?(.*)$", lines[0])
        if not m:
            raise ValueError("bad status line %r" % lines[0])
        status = int(m.group(1))
        headers = []
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers.append((k.strip().lower(), v.strip()))
        n = 0
        if status >= 200 and status not in (204, 304) and not head:
            cl = [v for k, v in headers if k == "content-length"]
            n = int(cl[-1]) if cl else 0
        while len(self.buf) < n:
            self._fill(deadline)
        body, self.buf = self.buf[:n], self.buf[n:]
        return Response(status, m.group(2), headers, body)

    def closed(self, timeout=3.0):
        """True when the server closes (FIN or RST) within timeout without sending more."""
        deadline = time.monotonic() + timeout
        if self.buf:
            return False
        try:
            while True:
                self._fill(deadline)
                return False
        except EOFError:
            return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def still_open(self, wait=0.2):
        """True when nothing (no byte, no close) arrives within wait."""
        try:
            self._fill(time.monotonic() + wait)
            return False
        except socket.timeout:
            return True
        except (EOFError, OSError):
            return False


def request(port, method, path, body=None, headers=None, ctype="application/json", timeout=10.0):
    """One request on a fresh connection; returns the Response."""
    c = Conn(port, timeout)
    try:
        hdrs = {"Host": "test"}
        if body is not None:
            if isinstance(body, str):
                body = body.encode()
            if ctype:
                hdrs["Content-Type"] = ctype
            hdrs["Content-Length"] = str(len(body))
        hdrs.update(headers or {})
        head = "%s %s HTTP/1.1\r\n" % (method, path)
        head += "".join("%s: %s\r\n" % kv for kv in hdrs.items()) + "\r\n"
        c.send(head.encode("latin-1") + (body or b""))
        return c.response(timeout, head=(method == "HEAD"))
    finally:
        c.close()


# ---- the stack --------------------------------------------------------------------------


class Stack:
    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="latchkey-http.", dir="/tmp")
        os.chmod(self.tmp, 0o755)  # the embedded Postgres may run as another user
        self.port = self._free_port()
        self.conf = os.path.join(self.tmp, "latchkey.conf")
        self.proc = None
        self.log = None

    @staticmethod
    def _free_port():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port

    def start(self):
        with open(self.conf, "w") as f:
            f.write(
                "# written by tests/integration/http_test.py\n"
                "[paths]\nvar = %s/var\n"
                "[gateway]\nlisten = 127.0.0.1:%d\n"
                "header_timeout = %dms\nidle_timeout = %dms\nbody_grace = %dms\n"
                "body_min_rate = %d\nroute_timeout = %dms\nmax_connections = %d\n"
                "drain_timeout = 2s\n"
                'cors_origins = "%s, %s"\n'
                "[signup]\ncount = 1\n[signin]\ncount = 1\n"
                "[hash]\n# the argon2id cost is lowered for test speed only\nops = 1\nmem = 64K\n"
                "[supervisor]\nrestart_delay = 1s\nstop_timeout = 10s\n"
                % (self.tmp, self.port, HEADER_TIMEOUT * 1000, IDLE_TIMEOUT * 1000,
                   BODY_GRACE * 1000, BODY_MIN_RATE, ROUTE_TIMEOUT * 1000, MAX_CONNECTIONS,
                   ORIGIN, ORIGIN2))
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("LATCHKEY_"):
                del env[k]
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "detect_leaks=1") + \
            ":log_path=%s/asan" % self.tmp
        env["UBSAN_OPTIONS"] = env.get("UBSAN_OPTIONS", "print_stacktrace=1") + \
            ":log_path=%s/ubsan" % self.tmp
        self.log = open(os.path.join(self.tmp, "stack.log"), "wb")
        self.proc = subprocess.Popen([os.path.join(BIN, "latchkeyd"), "-c", self.conf],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if request(self.port, "GET", "/ready", timeout=2).status == 200:
                    return True
            except (OSError, ValueError, EOFError):
                pass
            time.sleep(0.3)
        return False

    def ctl(self, *args):
        r = subprocess.run([os.path.join(BIN, "latchkeyctl"), "-c", self.conf] + list(args),
                           capture_output=True, text=True, timeout=20)
        return r.returncode, r.stdout + r.stderr

    def pids(self, role):
        _, out = self.ctl("status")
        pids = []
        for ln in out.splitlines():
            f = ln.split()
            if len(f) >= 3 and f[0] == role and f[2].isdigit() and int(f[2]) > 0:
                pids.append(int(f[2]))
        return pids

    def leftovers(self):
        """pids of processes still running from this stack's directory."""
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if self.tmp.encode() in cmd:
                out.append(int(d))
        return out

    def stop(self):
        """SIGTERM; returns latchkeyd's exit status (None if it had to be killed)."""
        rc = None
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        elif self.proc:
            rc = self.proc.returncode
        return rc

    def cleanup(self):
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.log:
            self.log.close()
        subprocess.run(["rm", "-rf", self.tmp])

    def sanitizer_reports(self):
        out = ""
        for n in os.listdir(self.tmp):
            if n.startswith("asan.") or n.startswith("ubsan."):
                with open(os.path.join(self.tmp, n), errors="replace") as f:
                    out += f.read()
        return out

    def log_text(self):
        with open(os.path.join(self.tmp, "stack.log"), errors="replace") as f:
            return f.read()


# ---- checks -----------------------------------------------------------------------------


def is_error(r, status, code):
    """status, JSON error body with that code and a message, X-Request-Id."""
    j = r.json()
    return (r.status == status and isinstance(j, dict) and j.get("error") == code and
            isinstance(j.get("message"), str) and
            (r.header("content-type") or "").startswith("application/json") and
            RID_RE.match(r.header("x-request-id") or "") is not None)


def raw_error(port, name, data, status, code, closes=True, timeout=5.0):
    """Sends data on a fresh connection and expects one error answer (then a close)."""
    c = Conn(port, timeout)
    try:
        c.send(data)
        r = c.response(timeout)
        ok = is_error(r, status, code)
        detail = "" if ok else repr(r)
        if ok and closes:
            ok = (r.header("connection") or "").lower() == "close" and c.closed()
            detail = "" if ok else "connection not closed after the answer"
        return check(name, ok, detail)
    except Exception as e:  # noqa: BLE001
        return check(name, False, "%s: %s" % (type(e).__name__, e))
    finally:
        c.close()


def t_basics(st):
    p = st.port
    r = request(p, "GET", "/health")
    check("GET /health is 200 ok", r.status == 200 and r.json() == {"status": "ok"}, repr(r))
    check("every response has a valid X-Request-Id",
          RID_RE.match(r.header("x-request-id") or "") is not None, repr(r))
    r = request(p, "HEAD", "/health")
    check("HEAD /health is 200 with the GET length and no body",
          r.status == 200 and int(r.header("content-length") or 0) > 0 and r.body == b"", repr(r))
    r = request(p, "GET", "/no/such/path")
    check("unknown path is 404 not_found", is_error(r, 404, "not_found"), repr(r))
    r = request(p, "GET", "/api/auth/nothing")
    check("unknown /api/auth/ path is 404 with Cache-Control: no-store",
          is_error(r, 404, "not_found") and r.header("cache-control") == "no-store", repr(r))
    r = request(p, "DELETE", "/api/auth/signup")
    check("wrong method is 405 method_not_allowed with Allow: POST",
          is_error(r, 405, "method_not_allowed") and r.header("allow") == "POST", repr(r))
    r = request(p, "POST", "/api/auth/validate")
    check("405 on validate has Allow: GET, HEAD",
          is_error(r, 405, "method_not_allowed") and r.header("allow") == "GET, HEAD", repr(r))
    r = request(p, "POST", "/api/auth/signup", '{"email":"a@b.co","password":"x"}',
                ctype="text/plain")
    check("text/plain body is 415 unsupported_media_type",
          is_error(r, 415, "unsupported_media_type"), repr(r))
    r = request(p, "POST", "/api/auth/signup", '{"email":"a@b.co","password":"x"}', ctype=None)
    check("a body without Content-Type is 415", is_error(r, 415, "unsupported_media_type"),
          repr(r))
    r = request(p, "POST", "/api/auth/validate/batch", '{"tokens":["x"]}',
                ctype="application/json; charset=utf-8")
    check("application/json; charset=utf-8 is accepted",
          r.status == 200 and r.json() == {"results": [{"valid": False}]}, repr(r))
    r = request(p, "POST", "/api/auth/validate/batch", '{"tokens":[]}')
    check("validate/batch with no token is 400 invalid_request",
          is_error(r, 400, "invalid_request"), repr(r))
    r = request(p, "POST", "/api/auth/signup", '{"email":"a@b.co",')
    check("malformed JSON is 400 invalid_request", is_error(r, 400, "invalid_request"), repr(r))
    r = request(p, "GET", "/api/auth/validate")
    check("validate without Authorization is 401 with WWW-Authenticate: Bearer",
          is_error(r, 401, "invalid_token") and r.header("www-authenticate") == "Bearer", repr(r))
    r = request(p, "GET", "/api/auth/validate", headers={"Authorization": "Bearer " + "A" * 43})
    check("validate of an unknown token is 401 with error=\"invalid_token\"",
          is_error(r, 401, "invalid_token") and
          r.header("www-authenticate") == 'Bearer error="invalid_token"', repr(r))
    check("/api/auth/ answers carry Cache-Control: no-store",
          r.header("cache-control") == "no-store", repr(r))
    r = request(p, "GET", "/health", headers={"X-Request-Id": "client-id.42_A"})
    check("a valid client X-Request-Id is echoed", r.header("x-request-id") == "client-id.42_A",
          repr(r))
    for bad in ("bad id!", "x" * 65, "a/b"):
        r = request(p, "GET", "/health", headers={"X-Request-Id": bad})
        rid = r.header("x-request-id") or ""
        check("an invalid X-Request-Id %r is replaced by a generated one" % bad[:12],
              rid != bad and RID_RE.match(rid) is not None, repr(r))
    r = request(p, "GET", "/health", headers={"X-Request-Id": "x" * 64})
    check("a 64-character X-Request-Id is echoed", r.header("x-request-id") == "x" * 64, repr(r))


def t_flow(st):
    """The worker routes once, so that the 5xx checks below start from a working stack."""
    p = st.port
    email, pw = "http.test@example.com", "correct horse battery staple"
    r = request(p, "POST", "/api/auth/signup", json.dumps({"email": email, "password": pw}))
    check("signup is 201 with Cache-Control: no-store",
          r.status == 201 and r.header("cache-control") == "no-store", repr(r))
    r = request(p, "POST", "/api/auth/signin", json.dumps({"email": email, "password": pw}))
    tok = (r.json() or {}).get("token", "")
    check("signin is 200 with a token", r.status == 200 and len(tok) == 43, repr(r))
    r = request(p, "GET", "/api/auth/validate", headers={"Authorization": "Bearer " + tok})
    check("validate of the token is 200", r.status == 200 and
          (r.json() or {}).get("email") == email, repr(r))
    # chunked validate/batch: the token and a bad one, in pieces
    body = json.dumps({"tokens": [tok, "nope"]}).encode()
    c = Conn(p)
    try:
        c.send("POST /api/auth/validate/batch HTTP/1.1\r\nHost: t\r\n"
               "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(body), 7):
            piece = body[i:i + 7]
            c.send(b"%x;ext=1\r\n%s\r\n" % (len(piece), piece))
            time.sleep(0.01)
        c.send(b"0\r\nX-Trailer: yes\r\n\r\n")
        r = c.response()
        res = (r.json() or {}).get("results", [])
        check("a chunked request body (extensions, trailer) is decoded",
              r.status == 200 and len(res) == 2 and res[0].get("valid") is True and
              res[1] == {"valid": False}, repr(r))
        c.send("GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        check("... and the connection stays usable", c.response().status == 200)
    finally:
        c.close()
    return tok


def t_keepalive_pipelining(st):
    p = st.port
    c = Conn(p)
    try:
        c.send("GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        r1 = c.response()
        c.send("GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        r2 = c.response()
        check("keep-alive: two requests on one HTTP/1.1 connection",
              r1.status == 200 and r2.status == 200 and r1.header("connection") is None, repr(r2))
        reqs = ("GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: p1\r\n\r\n"
                "GET /nope HTTP/1.1\r\nHost: t\r\nX-Request-Id: p2\r\n\r\n"
                "POST /api/auth/validate/batch HTTP/1.1\r\nHost: t\r\nX-Request-Id: p3\r\n"
                "Content-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"tokens\":[\"a\"]}"
                "HEAD /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: p4\r\n\r\n"
                "GET /api/auth/validate HTTP/1.1\r\nHost: t\r\nX-Request-Id: p5\r\n\r\n")
        c.send(reqs)
        rs = [c.response(head=(i == 3)) for i in range(5)]
        check("pipelining: five requests in one write answered in order",
              [r.status for r in rs] == [200, 404, 200, 200, 401] and
              [r.header("x-request-id") for r in rs] == ["p1", "p2", "p3", "p4", "p5"],
              repr([(r.status, r.header("x-request-id")) for r in rs]))
        check("... and the connection is still open", c.still_open())
        # a request answered by a worker holds back the ones pipelined after it
        c.send("POST /api/auth/signin HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
               "Content-Length: 53\r\n\r\n{\"email\":\"nobody@example.com\",\"password\":\"whatever!\"}"
               "GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        rs = [c.response(), c.response()]
        check("pipelining: a worker's answer comes before the next request's",
              [r.status for r in rs] == [401, 200] and rs[0].error() == "invalid_credentials",
              repr(rs))
        c.send("GET http://t/health?x=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        r = c.response()
        check("an absolute-form target with a query is routed", r.status == 200, repr(r))
        # a request split across many writes
        for ch in "GET /health HTTP/1.1\r\nHost: t\r\n\r\n":
            c.send(ch)
        check("a request sent byte by byte is answered", c.response().status == 200)
        c.send("GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        r = c.response()
        check("Connection: close is honoured", r.status == 200 and
              r.header("connection") == "close" and c.closed(), repr(r))
    finally:
        c.close()

    c = Conn(p)
    try:
        c.send("GET /health HTTP/1.0\r\n\r\n")
        r = c.response()
        check("HTTP/1.0 without Host works and closes after the answer",
              r.status == 200 and c.closed(), repr(r))
    finally:
        c.close()
    c = Conn(p)
    try:
        c.send("GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r1 = c.response()
        c.send("GET /health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        r2 = c.response()
        check("HTTP/1.0 with keep-alive keeps the connection",
              r1.status == 200 and r2.status == 200 and
              (r1.header("connection") or "").lower() == "keep-alive", repr(r1))
    finally:
        c.close()


def t_continue(st):
    p = st.port
    body = b'{"tokens":["abc"]}'
    c = Conn(p)
    try:
        c.send("POST /api/auth/validate/batch HTTP/1.1\r\nHost: t\r\n"
               "Content-Type: application/json\r\nExpect: 100-continue\r\n"
               "Content-Length: %d\r\n\r\n" % len(body))
        r1 = c.response()
        c.send(body)
        r2 = c.response()
        check("Expect: 100-continue gets 100 Continue, then the answer",
              r1.status == 100 and r2.status == 200, "%r / %r" % (r1, r2))
    finally:
        c.close()
    c = Conn(p)
    try:
        c.send("POST /api/auth/signup HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n"
               "Expect: 100-continue\r\nContent-Length: 1000\r\n\r\n")
        r = c.response()
        check("a refused request with Expect: 100-continue gets its error at once, no 100",
              is_error(r, 415, "unsupported_media_type") and c.closed(), repr(r))
    finally:
        c.close()


def t_framing(st):
    p = st.port
    post = "POST /api/auth/validate/batch HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    cases = [
        ("both Content-Length and Transfer-Encoding",
         post + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("differing Content-Lengths", post + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef"),
        ("equal repeated Content-Lengths", post + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nabcde"),
        ("Content-Length list", post + "Content-Length: 5, 5\r\n\r\nabcde"),
        ("Transfer-Encoding not ending in chunked",
         post + "Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
        ("Transfer-Encoding gzip, chunked", post + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("Transfer-Encoding twice", post + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("Transfer-Encoding on HTTP/1.0",
         "POST /api/auth/validate/batch HTTP/1.0\r\nContent-Type: application/json\r\n"
         "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("bad chunk size", post + "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("chunk size overflow", post + "Transfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n"),
        ("chunk without CRLF after data", post + "Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n"),
        ("obs-fold", "GET /health HTTP/1.1\r\nHost: t\r\nX-A: a\r\n  folded\r\n\r\n"),
        ("bare CR in a header", "GET /health HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n"),
        ("bare LF ending a header", "GET /health HTTP/1.1\r\nHost: t\nX-A: b\r\n\r\n"),
        ("NUL in a header value", "GET /health HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n"),
        ("NUL in a header name", "GET /health HTTP/1.1\r\nHost: t\r\nX-\x00A: a\r\n\r\n"),
        ("space before the colon", "GET /health HTTP/1.1\r\nHost : t\r\n\r\n"),
        ("space in the header name", "GET /health HTTP/1.1\r\nHost: t\r\nX A: a\r\n\r\n"),
        ("missing Host on HTTP/1.1", "GET /health HTTP/1.1\r\nX-A: a\r\n\r\n"),
        ("two Host headers", "GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("HTTP/2.0 request line", "GET /health HTTP/2.0\r\nHost: t\r\n\r\n"),
        ("garbage request line", "HELLO\r\n\r\n"),
        ("control character in the target", "GET /he\x01alth HTTP/1.1\r\nHost: t\r\n\r\n"),
        ("negative Content-Length", post + "Content-Length: -1\r\n\r\n"),
    ]
    for name, data in cases:
        raw_error(p, "400 invalid_request, then close: " + name, data, 400, "invalid_request")
    # the client's request id is echoed even by an answer to a head that failed
    for name, data in (
            ("obs-fold", "GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: bad-head.1\r\n"
                         "X-A: a\r\n  folded\r\n\r\n"),
            ("missing Host", "GET /health HTTP/1.1\r\nX-Request-Id: bad-head.1\r\n\r\n"),
            ("bad chunk size", post + "X-Request-Id: bad-head.1\r\nTransfer-Encoding: chunked\r\n"
                               "\r\nzz\r\n")):
        c = Conn(p)
        try:
            c.send(data)
            r = c.response()
            check("a 400 for %s echoes the client's X-Request-Id" % name,
                  r.status == 400 and r.header("x-request-id") == "bad-head.1", repr(r))
        finally:
            c.close()


def t_limits(st):
    p = st.port
    raw_error(p, "414 uri_too_long for a 5000-byte target, then close",
              "GET /" + "a" * 5000 + " HTTP/1.1\r\nHost: t\r\n\r\n", 414, "uri_too_long")
    raw_error(p, "431 headers_too_large for 9000 bytes of headers, then close",
              "GET /health HTTP/1.1\r\nHost: t\r\nX-Big: " + "b" * 9000 + "\r\n\r\n",
              431, "headers_too_large")
    raw_error(p, "431 for many small headers",
              "GET /health HTTP/1.1\r\nHost: t\r\n" + "X-A: aaaaaaaaaa\r\n" * 600 + "\r\n",
              431, "headers_too_large")
    raw_error(p, "413 payload_too_large from Content-Length, before the body",
              "POST /api/auth/signin HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
              "Content-Length: 70000\r\n\r\n", 413, "payload_too_large")
    # 413 while reading a chunked body
    c = Conn(p)
    try:
        c.send("POST /api/auth/signin HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
               "Transfer-Encoding: chunked\r\n\r\n")
        piece = b"x" * 8192
        r = None
        try:
            for _ in range(20):
                c.send(b"2000\r\n" + piece + b"\r\n")
        except OSError:
            pass
        r = c.response()
        check("413 payload_too_large while reading a chunked body, then close",
              is_error(r, 413, "payload_too_large") and c.closed(), repr(r))
    except Exception as e:  # noqa: BLE001
        check("413 payload_too_large while reading a chunked body, then close", False, repr(e))
    finally:
        c.close()
    # a batch body may be larger than a JSON body
    toks = ",".join('"%s"' % ("A" * 43) for _ in range(1000))
    r = request(p, "POST", "/api/auth/validate/batch", '{"tokens":[%s]}' % toks)
    res = (r.json() or {}).get("results", [])
    check("validate/batch with 1000 tokens (46 KB) is 200 with 1000 results",
          r.status == 200 and len(res) == 1000, repr(r)[:200])
    toks = ",".join('"%s"' % ("A" * 43) for _ in range(1001))
    r = request(p, "POST", "/api/auth/validate/batch", '{"tokens":[%s]}' % toks)
    check("validate/batch with 1001 tokens is 400", is_error(r, 400, "invalid_request"), repr(r))


def t_timeouts(st):
    p = st.port
    # 408 for a head that does not complete
    c = Conn(p)
    try:
        t0 = time.monotonic()
        c.send("GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: slow-head\r\n")
        r = c.response(HEADER_TIMEOUT + 3)
        dt = time.monotonic() - t0
        check("408 request_timeout when the headers take longer than header_timeout",
              is_error(r, 408, "request_timeout") and c.closed() and
              r.header("x-request-id") == "slow-head" and
              HEADER_TIMEOUT - 0.2 <= dt <= HEADER_TIMEOUT + 1.5, "%r after %.2fs" % (r, dt))
    except Exception as e:  # noqa: BLE001
        check("408 request_timeout when the headers take longer than header_timeout", False, repr(e))
    finally:
        c.close()
    # 408 for a body below body_min_rate after body_grace: 10 bytes, then nothing
    c = Conn(p)
    try:
        t0 = time.monotonic()
        c.send("POST /api/auth/validate/batch HTTP/1.1\r\nHost: t\r\n"
               "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"tokens\":")
        r = c.response(BODY_GRACE + 4)
        dt = time.monotonic() - t0
        check("408 request_timeout for a body below body_min_rate after body_grace",
              is_error(r, 408, "request_timeout") and c.closed() and
              BODY_GRACE <= dt <= BODY_GRACE + 2, "%r after %.2fs" % (r, dt))
    except Exception as e:  # noqa: BLE001
        check("408 request_timeout for a body below body_min_rate after body_grace", False, repr(e))
    finally:
        c.close()
    # a slow body above the minimum rate is fine (the rate, not the time, is limited)
    c = Conn(p)
    try:
        toks = ",".join('"t%03d"' % i for i in range(100))
        body = ('{"tokens":[%s]}' % toks).encode()  # 623 bytes over ~2.5 s: ~250 B/s
        c.send("POST /api/auth/validate/batch HTTP/1.1\r\nHost: t\r\n"
               "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        t0 = time.monotonic()
        for i in range(0, len(body), 50):
            c.send(body[i:i + 50])
            time.sleep(0.2)
        r = c.response()
        check("a body sent at 250 B/s for %.1f s (past the grace) is accepted" %
              (time.monotonic() - t0), r.status == 200, repr(r))
    except Exception as e:  # noqa: BLE001
        check("a body sent at 250 B/s (past the grace) is accepted", False, repr(e))
    finally:
        c.close()
    # idle keep-alive connections are closed silently
    c = Conn(p, timeout=IDLE_TIMEOUT + 5)
    c2 = Conn(p, timeout=IDLE_TIMEOUT + 5)
    try:
        c.send("GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        c.response()
        t0 = time.monotonic()
        ok = c.closed(IDLE_TIMEOUT + 3)
        dt = time.monotonic() - t0
        check("an idle keep-alive connection is closed silently after idle_timeout",
              ok and IDLE_TIMEOUT - 0.3 <= dt <= IDLE_TIMEOUT + 1.5, "closed=%s after %.2fs" % (ok, dt))
        check("a connection that never sent a byte is closed silently too", c2.closed(1.0))
    finally:
        c.close()
        c2.close()


def t_cors(st):
    p = st.port
    r = request(p, "OPTIONS", "/api/auth/signin",
                headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                         "Access-Control-Request-Headers": "content-type, x-request-id"})
    allow_h = [h.strip().lower() for h in (r.header("access-control-allow-headers") or "").split(",")]
    check("CORS preflight from a configured origin is 204 with the CORS headers",
          r.status == 204 and r.header("access-control-allow-origin") == ORIGIN and
          r.header("access-control-allow-methods") == "POST" and
          {"authorization", "content-type", "x-request-id"} <= set(allow_h) and
          int(r.header("access-control-max-age") or 0) > 0 and
          r.header("vary") == "Origin" and r.body == b"", repr(r))
    r = request(p, "OPTIONS", "/api/auth/validate",
                headers={"Origin": ORIGIN2, "Access-Control-Request-Method": "GET"})
    check("preflight for validate from the second origin allows GET, HEAD",
          r.status == 204 and r.header("access-control-allow-origin") == ORIGIN2 and
          r.header("access-control-allow-methods") == "GET, HEAD", repr(r))
    r = request(p, "GET", "/api/auth/validate", headers={"Origin": ORIGIN})
    check("an answer to a configured origin carries Allow-Origin, Expose-Headers, Vary",
          r.status == 401 and r.header("access-control-allow-origin") == ORIGIN and
          r.header("vary") == "Origin" and
          "x-request-id" in (r.header("access-control-expose-headers") or "").lower() and
          "retry-after" in (r.header("access-control-expose-headers") or "").lower(), repr(r))
    check("... and no Access-Control-Allow-Credentials",
          r.header("access-control-allow-credentials") is None, repr(r))
    r = request(p, "POST", "/api/auth/validate/batch", '{"tokens":["x"]}',
                headers={"Origin": ORIGIN})
    check("a POST answer to a configured origin carries Allow-Origin",
          r.status == 200 and r.header("access-control-allow-origin") == ORIGIN, repr(r))
    for origin in ("https://evil.example.com", "https://app.example.com.evil.com",
                   "HTTPS://APP.EXAMPLE.COM", "null"):
        r = request(p, "OPTIONS", "/api/auth/signin",
                    headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        check("preflight from %s is 405 with Allow and no CORS header" % origin,
              is_error(r, 405, "method_not_allowed") and r.header("allow") == "POST" and
              not any(k.startswith("access-control-") for k, _ in r.headers), repr(r))
    r = request(p, "GET", "/api/auth/validate", headers={"Origin": "https://evil.example.com"})
    check("an answer to an unknown origin has no CORS header",
          r.status == 401 and not any(k.startswith("access-control-") for k, _ in r.headers) and
          r.header("vary") is None, repr(r))
    r = request(p, "OPTIONS", "/api/auth/signin")
    check("OPTIONS without Origin is 405", is_error(r, 405, "method_not_allowed"), repr(r))
    c = Conn(p)
    try:
        c.send("GET /api/auth/validate HTTP/1.1\r\nHost: t\r\nOrigin: %s\r\nOrigin: %s\r\n\r\n"
               % (ORIGIN, ORIGIN))
        r = c.response()
        check("two Origin headers get no CORS header",
              r.header("access-control-allow-origin") is None, repr(r))
    finally:
        c.close()
    r = request(p, "OPTIONS", "/api/auth/nothing", headers={"Origin": ORIGIN})
    check("preflight of an unknown path is 404 (with CORS headers, readable by the page)",
          is_error(r, 404, "not_found") and
          r.header("access-control-allow-origin") == ORIGIN, repr(r))


def t_slow_reader(st):
    """A client that sends many pipelined requests and reads nothing is closed instead of
    making the gateway buffer its answers."""
    p = st.port
    gw = st.pids("gateway")
    rss0 = rss(gw[0]) if gw else 0
    c = Conn(p, rcvbuf=4096)
    n = 40000
    data = b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n" * n
    c.s.setblocking(False)
    sent, t0 = 0, time.monotonic()
    while sent < len(data) and time.monotonic() - t0 < 3:
        try:
            sent += c.s.send(data[sent:sent + 65536])
        except BlockingIOError:
            time.sleep(0.02)
    time.sleep(IDLE_TIMEOUT + 1.5)
    rss1 = rss(gw[0]) if gw else 0
    got, closed = 0, False
    c.s.settimeout(2)
    try:
        while True:
            d = c.s.recv(1 << 20)
            if not d:
                closed = True
                break
            got += d.count(b"HTTP/1.1 200 ")
    except (ConnectionResetError, BrokenPipeError):
        closed = True
    except socket.timeout:
        pass
    c.close()
    check("a client that does not read its answers is closed (answered %d of %d)" % (got, n),
          closed and got < n, "closed=%s sent=%d bytes" % (closed, sent))
    check("... without the gateway growing (RSS %d -> %d KiB)" % (rss0, rss1),
          rss1 - rss0 < 16 * 1024, "")


def rss(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1])
    except OSError:
        pass
    return 0


def t_many(st):
    """1000 concurrent connections; a new one is still answered; past max_connections a
    new connection gets 503 and is closed, while the others are still served."""
    p = st.port
    conns = []
    try:
        t0 = time.monotonic()
        for _ in range(1000):
            conns.append(Conn(p, timeout=10))
        t_open = time.monotonic() - t0
        t1 = time.monotonic()
        r = request(p, "GET", "/health", timeout=5)
        dt = time.monotonic() - t1
        check("1000 connections open (in %.2fs): a new one is answered in %.1f ms" %
              (t_open, dt * 1000), r.status == 200 and dt < 1.0, repr(r))
        # every one of the 1000 is served, all at once
        sel = selectors.DefaultSelector()
        for i, c in enumerate(conns):
            c.send("GET /health HTTP/1.1\r\nHost: t\r\nX-Request-Id: c%d\r\n\r\n" % i)
            c.s.setblocking(False)
            sel.register(c.s, selectors.EVENT_READ, c)
        done = 0
        deadline = time.monotonic() + 15
        while done < len(conns) and time.monotonic() < deadline:
            for key, _ in sel.select(0.5):
                c = key.data
                try:
                    d = c.s.recv(65536)
                except BlockingIOError:
                    continue
                c.buf += d
                if not d or b"\r\n\r\n" in c.buf and c.buf.endswith(b"}"):
                    sel.unregister(c.s)
                    done += 1
        sel.close()
        good = sum(1 for i, c in enumerate(conns)
                   if c.buf.startswith(b"HTTP/1.1 200 ") and (b"X-Request-Id: c%d\r\n" % i) in c.buf)
        check("1000 concurrent requests on 1000 connections all answered 200",
              good == 1000, "%d good" % good)
        for c in conns:
            c.buf = b""
            c.s.settimeout(10)
        # fill up to max_connections, then a few more: those get 503 and are closed
        extra = []
        for _ in range(MAX_CONNECTIONS - 1000 + 5):
            extra.append(Conn(p, timeout=10))
        # the 503 is sent at accept time: whatever has an answer within a moment is one
        over = []
        sel = selectors.DefaultSelector()
        for c in extra:
            sel.register(c.s, selectors.EVENT_READ, c)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for key, _ in sel.select(0.2):
                c = key.data
                sel.unregister(c.s)
                try:
                    over.append((c, c.response(2)))
                except (socket.timeout, EOFError, OSError):
                    pass
        sel.close()
        rs = [r for _, r in over]
        check("past max_connections a new connection gets 503 unavailable with Retry-After "
              "(%d of the last %d)" % (len(rs), len(extra)),
              len(rs) >= 5 and all(is_error(r, 503, "unavailable") and
                                   r.header("retry-after") == "1" and
                                   r.header("connection") == "close" for r in rs),
              repr(rs[:2]))
        check("... and is closed", all(c.closed(2) for c, _ in over))
        conns[0].send("GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        conns[999].send("GET /api/auth/validate HTTP/1.1\r\nHost: t\r\n\r\n")
        r0, r9 = conns[0].response(), conns[999].response()
        check("... while the existing connections are still served",
              r0.status == 200 and r9.status == 401, "%r %r" % (r0, r9))
        for c in extra:
            c.close()
    finally:
        for c in conns:
            c.close()
    time.sleep(0.5)
    r = request(p, "GET", "/health")
    check("after they close, new connections are accepted again", r.status == 200, repr(r))


def t_workers(st, tok):
    """504 when the worker does not answer in time; 503 when there is no worker."""
    p = st.port
    pids = st.pids("signup")
    if not check("latchkeyctl status lists the signup worker", len(pids) == 1, repr(pids)):
        return
    os.kill(pids[0], signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = request(p, "POST", "/api/auth/signup",
                    '{"email":"late@example.com","password":"long enough password"}',
                    timeout=ROUTE_TIMEOUT + 5)
        dt = time.monotonic() - t0
        check("504 timeout when the worker does not answer within route_timeout (%.1fs)" % dt,
              is_error(r, 504, "timeout") and r.header("cache-control") == "no-store" and
              ROUTE_TIMEOUT - 0.2 <= dt <= ROUTE_TIMEOUT + 1.5, repr(r))
    finally:
        os.kill(pids[0], signal.SIGCONT)
    r = request(p, "GET", "/api/auth/validate", headers={"Authorization": "Bearer " + tok})
    check("validate still answers from the cache meanwhile", r.status == 200, repr(r))
    rc, out = st.ctl("scale", "signup", "0")
    check("latchkeyctl scale signup 0", rc == 0, out)
    deadline = time.monotonic() + 15
    r = None
    while time.monotonic() < deadline:
        r = request(p, "POST", "/api/auth/signup",
                    '{"email":"none@example.com","password":"long enough password"}',
                    timeout=ROUTE_TIMEOUT + 5)
        if r.status == 503:
            break
        time.sleep(0.5)
    check("503 unavailable with Retry-After when no signup worker is connected",
          r is not None and is_error(r, 503, "unavailable") and
          int(r.header("retry-after") or 0) >= 1, repr(r))
    r = request(p, "GET", "/ready")
    check("/ready is 503 not_ready naming signup", r.status == 503 and
          "signup" in ((r.json() or {}).get("missing") or []), repr(r))
    r = request(p, "GET", "/api/auth/validate", headers={"Authorization": "Bearer " + tok})
    check("validate needs no worker", r.status == 200, repr(r))


def t_log(st, tok):
    text = st.log_text()
    access = [ln for ln in text.splitlines() if "role=gateway" in ln and 'msg="http ' in ln]
    check("the gateway wrote access log lines", len(access) > 100, "%d lines" % len(access))
    pat = re.compile(r'^time=\S+ level=info role=gateway pid=\d+ rid=[A-Za-z0-9._-]+ '
                     r'msg="http method=\S+ route=\S+ status=\d{3} us=\d+ bytes=\d+"$')
    bad = [ln for ln in access if not pat.match(ln)]
    check("access log lines hold time, id, method, route, status, duration, bytes",
          not bad, bad[0] if bad else "")
    check("an access line names the route of a request",
          any("method=POST route=/api/auth/validate/batch status=200" in ln for ln in access))
    check("no log line holds the token or an Authorization header",
          tok not in text and "Bearer " not in text and "authorization" not in text.lower())
    check("no log line holds a request body",
          "correct horse battery staple" not in text and '{"tokens"' not in text)


def main():
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass
    if not os.access(os.path.join(BIN, "latchkeyd"), os.X_OK):
        print("FAIL no latchkeyd in %s" % BIN)
        print("0 passed, 1 failed")
        return 1
    st = Stack()
    started = time.monotonic()
    try:
        if not check("stack became ready on 127.0.0.1:%d" % st.port, st.start()):
            print(st.log_text()[-4000:])
            return 1
        tok = ""
        for t in (t_basics, t_flow, t_keepalive_pipelining, t_continue, t_framing, t_limits,
                  t_cors, t_timeouts, t_slow_reader, t_many):
            try:
                r = t(st)
                if t is t_flow:
                    tok = r or ""
            except Exception:  # noqa: BLE001
                check(t.__name__ + " ran to the end", False, traceback.format_exc())
        try:
            t_workers(st, tok)
        except Exception:  # noqa: BLE001
            check("t_workers ran to the end", False, traceback.format_exc())
        t_log(st, tok)
        rc = st.stop()
        check("SIGTERM stops latchkeyd with status 0", rc == 0, "status %r" % rc)
        time.sleep(0.3)
        left = st.leftovers()
        check("no process is left behind", not left, repr(left))
        rep = st.sanitizer_reports()
        check("no sanitizer report from any process", not rep, rep[:3000])
        if failed:
            print("---- last lines of the stack log")
            print("\n".join(st.log_text().splitlines()[-60:]))
    finally:
        st.stop()
        st.cleanup()
    print("(%.1f s)" % (time.monotonic() - started))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
