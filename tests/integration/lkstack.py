# lkstack.py: the harness of the Python integration tests (python3 standard library only).
#
# Not a test itself (not executable: tests/run skips it). A Stack is one real latchkeyd
# with its embedded Postgres in a throwaway state directory on a free loopback port; the
# helpers drive it over HTTP, latchkeyctl and psql, and clean up every process they started,
# by pid, on any exit.
import atexit
import hashlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _ephemeral_low():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
        return low if low > 21000 else 32768
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(span=1):
    """A loopback port p such that p .. p+span-1 are all free (never 8080), below the
    kernel's ephemeral range so that no outgoing connection can take it meanwhile."""
    top = _ephemeral_low()
    for _ in range(200):
        p = random.randint(20000, top - 1 - span)
        ok = True
        for q in range(p, p + span):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", q))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            return p
    raise RuntimeError("no free port")


def token_hash(token):
    return hashlib.blake2b(token.encode(), digest_size=32).hexdigest()


class Checks:
    def __init__(self, name):
        self.name, self.n, self.bad = name, 0, 0

    def check(self, what, cond, detail=""):
        self.n += 1
        if cond:
            print("ok   " + what, flush=True)
        else:
            self.bad += 1
            print("FAIL " + what + (": " + str(detail) if detail != "" else ""), flush=True)
        return cond

    def done(self):
        print("%s: %d passed, %d failed" % (self.name, self.n - self.bad, self.bad), flush=True)
        return 0 if self.bad == 0 else 1


class Stack:
    def __init__(self, build, conf, name="stack", port=None):
        """conf: extra configuration text (sections and keys) appended to the basics."""
        self.bin = os.path.join(ROOT, build, "bin")
        self.tmp = tempfile.mkdtemp(prefix="latchkey-%s." % name)
        os.chmod(self.tmp, 0o755)  # the embedded Postgres may run as another user
        self.var = os.path.join(self.tmp, "var")
        self.port = port or free_port()
        self.base = "127.0.0.1:%d" % self.port
        self.conf = os.path.join(self.tmp, "latchkey.conf")
        self.log = os.path.join(self.tmp, "stack.log")
        self.proc = None
        self.known = set()  # every pid seen in status or started by hand: cleanup kills these
        self.pg_known = set()  # Postgres processes among them (they overwrite their environ)
        self.extra = []     # Popen objects started by hand
        with open(self.conf, "w") as f:
            f.write("[paths]\nvar = %s\n" % self.var)
            f.write(conf.replace("@PORT@", str(self.port)))
        self.env = dict(os.environ)
        # The tests send bursts from 127.0.0.1, repeat signups and wrong passwords: the
        # per-client rate limit, the repeat-signup window and per-account throttling are
        # off unless a test (security_test.py) sets these itself (env overrides the file).
        self.env.setdefault("LATCHKEY_RATELIMIT_CLIENT_RATE", "0")
        self.env.setdefault("LATCHKEY_SIGNUP_REPEAT_WINDOW", "0s")
        self.env.setdefault("LATCHKEY_THROTTLE_MAX_FAILURES", "0")
        self.env["ASAN_OPTIONS"] = self.env.get("ASAN_OPTIONS", "detect_leaks=1") + ":log_path=%s/asan" % self.tmp
        self.env["UBSAN_OPTIONS"] = self.env.get("UBSAN_OPTIONS", "print_stacktrace=1") + ":log_path=%s/ubsan" % self.tmp
        atexit.register(self.cleanup)

    # ---- life cycle ---------------------------------------------------------------------
    def start(self, timeout=90):
        self.logf = open(self.log, "ab")
        self.proc = subprocess.Popen([os.path.join(self.bin, "latchkeyd"), "-c", self.conf],
                                     stdout=self.logf, stderr=subprocess.STDOUT, env=self.env,
                                     cwd=self.tmp)
        self.known.add(self.proc.pid)
        return self.wait_ready(timeout)

    def wait_ready(self, timeout=60):
        end = time.time() + timeout
        while time.time() < end:
            if self.proc.poll() is not None:
                return False
            st, _ = self.http("GET", "/ready", timeout=2)
            if st == 200:
                self.status()  # remember the pids
                return True
            time.sleep(0.2)
        return False

    def stop(self, timeout=60):
        """SIGTERM to latchkeyd; its exit status (None when it had to be killed)."""
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def alive_pids(self, pids):
        """Those of pids that still run one of our processes (a reused pid is not ours)."""
        out = []
        for p in pids:
            try:
                with open("/proc/%d/stat" % p) as f:
                    # a zombie whose threads are all gone has exited (its reaper may be a
                    # container's pid 1 that never reaps)
                    if f.read().split(")")[-1].split()[0] == "Z" and \
                            len(os.listdir("/proc/%d/task" % p)) <= 1:
                        continue
                with open("/proc/%d/environ" % p, "rb") as f:
                    env = f.read()
                with open("/proc/%d/cmdline" % p, "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            # ours: our state directory is in its environment (ASAN_OPTIONS' log_path,
            # LATCHKEY_PATHS_VAR: every process of the stack, Postgres included, inherits it)
            if self.tmp.encode() in env or self.tmp.encode() in cmd or \
                    (p in self.pg_known and cmd.startswith(b"postgres")):
                out.append(p)
        return out

    def children_of(self, pid):
        """Direct children of pid (e.g. the postmaster's backends); remembered as ours."""
        kids = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % d) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    kids.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
        self.known.update(kids)
        if pid in self.pg_known:
            self.pg_known.update(kids)
        return kids

    def cleanup(self):
        for p in self.extra:
            if p.poll() is None:
                p.kill()
                p.wait()
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for _ in range(50):
            left = self.alive_pids(self.known)
            if not left:
                break
            time.sleep(0.2)
        for p in self.alive_pids(self.known):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        if os.environ.get("LK_KEEP_TMP"):
            print("state kept in " + self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def sanitizer_reports(self):
        out = ""
        for n in sorted(os.listdir(self.tmp)):
            if n.startswith("asan.") or n.startswith("ubsan."):
                with open(os.path.join(self.tmp, n), errors="replace") as f:
                    out += f.read()[:3000]
        return out

    def log_text(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def tail(self, n=60):
        return "\n".join(self.log_text().splitlines()[-n:])

    # ---- operator side ------------------------------------------------------------------
    def ctl(self, *args, timeout=15):
        r = subprocess.run([os.path.join(self.bin, "latchkeyctl"), "-c", self.conf] + list(args),
                           capture_output=True, text=True, timeout=timeout, env=self.env)
        return r.returncode, r.stdout + r.stderr

    def status(self):
        """latchkeyctl status as a list of dicts (role, slot, pid, state, uptime, restarts,
        jobs, busy)."""
        rc, out = self.ctl("status")
        rows = []
        if rc != 0:
            return rows
        lines = out.splitlines()
        keys = [k.lower() for k in lines[0].split()]
        for line in lines[1:]:
            f = line.split()
            if len(f) != len(keys):
                continue
            row = dict(zip(keys, f))
            row["pid"] = int(row["pid"])
            row["slot"] = int(row["slot"])
            row["restarts"] = int(row["restarts"])
            if row["pid"] > 0:
                self.known.add(row["pid"])
                if row["role"] == "postgres":
                    self.pg_known.add(row["pid"])
            rows.append(row)
        return rows

    def pids(self, role=None):
        return {(r["role"], r["slot"]): r["pid"] for r in self.status() if role in (None, r["role"])}

    def psql(self, sql, db="latchkey"):
        r = subprocess.run(["psql", "-h", os.path.join(self.var, "pg", "run"), "-U", "latchkey",
                            "-d", db, "-XAtqc", sql], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError("psql: " + r.stderr.strip())
        return r.stdout.strip()

    def pg_up(self):
        try:
            return self.psql("SELECT 1") == "1"
        except (RuntimeError, subprocess.TimeoutExpired):
            return False

    # ---- client side --------------------------------------------------------------------
    def http(self, method, path, body=None, token=None, timeout=20, host=None):
        """One request on a new connection: (status, parsed JSON or text); status is
        'timeout' or 'conn' when no answer came."""
        host = host or self.base
        h, p = host.rsplit(":", 1)
        c = http.client.HTTPConnection(h, int(p), timeout=timeout)
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if token:
            headers["Authorization"] = "Bearer " + token
        try:
            c.request(method, path, body=data, headers=headers)
            r = c.getresponse()
            raw = r.read()
            try:
                return r.status, json.loads(raw) if raw else {}
            except ValueError:
                return r.status, raw.decode(errors="replace")
        except socket.timeout:
            return "timeout", None
        except (OSError, http.client.HTTPException):
            return "conn", None
        finally:
            c.close()

    def signup(self, email, password="correct horse battery", **kw):
        return self.http("POST", "/api/auth/signup", {"email": email, "password": password}, **kw)

    def signin(self, email, password="correct horse battery", **kw):
        return self.http("POST", "/api/auth/signin", {"email": email, "password": password}, **kw)

    def validate(self, token, **kw):
        return self.http("GET", "/api/auth/validate", token=token, **kw)


class Load:
    """Background clients. Each thread loops over one kind of request; every request and its
    answer is recorded as (kind, key, status, body, t_sent, t_answered)."""

    def __init__(self, stack, signups=0, signins=0, validates=0, users=(), tokens=(), tag="u"):
        self.stack, self.users, self.tokens, self.tag = stack, list(users), list(tokens), tag
        self.results = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.seq = 0
        self.threads = [threading.Thread(target=self._run, args=(k,), daemon=True)
                        for k in ["signup"] * signups + ["signin"] * signins + ["validate"] * validates]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *a):
        self.stop()

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(60)
        return [t for t in self.threads if t.is_alive()]  # hung clients

    def _next(self):
        with self.lock:
            self.seq += 1
            return self.seq

    def _run(self, kind):
        while not self.stopping.is_set():
            n = self._next()
            t0 = time.time()
            if kind == "signup":
                key = "%s%d-%d@example.com" % (self.tag, os.getpid(), n)
                st, body = self.stack.signup(key)
            elif kind == "signin":
                key = random.choice(self.users)
                st, body = self.stack.signin(key)
            else:
                key = random.choice(self.tokens)
                st, body = self.stack.validate(key)
            with self.lock:
                self.results.append((kind, key, st, body, t0, time.time()))
            if st in ("conn",):
                time.sleep(0.05)

    def of(self, kind, since=0.0):
        with self.lock:
            return [r for r in self.results if r[0] == kind and r[4] >= since]


# ---- a raw ZMTP 3.0 peer (NULL mechanism), for the backend socket -------------------------
def zmtp_connect(endpoint, timeout=3):
    """Connects to an ipc:// or tcp:// ZeroMQ endpoint as a DEALER; returns the socket."""
    if endpoint.startswith("ipc://"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        s.connect(endpoint[6:])
    else:
        h, p = endpoint[6:].rsplit(":", 1)
        s = socket.create_connection((h, int(p)), timeout)
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\x00") + b"\x00" * 32
    s.sendall(greeting)
    got = b""
    while len(got) < 64:
        c = s.recv(64 - len(got))
        if not c:
            raise IOError("closed during the greeting")
        got += c
    body = bytes([5]) + b"READY" + bytes([11]) + b"Socket-Type" + struct.pack(">I", 6) + b"DEALER"
    s.sendall(bytes([0x04, len(body)]) + body)
    return s


def zmtp_frame(payload, more=False):
    if len(payload) < 256:
        return bytes([0x01 if more else 0x00, len(payload)]) + payload
    return bytes([0x03 if more else 0x02]) + struct.pack(">Q", len(payload)) + payload


def zmtp_closed_by_peer(s, wait=1.0):
    """True when the peer closed the connection within wait seconds (reading what it sent)."""
    s.settimeout(wait)
    try:
        while True:
            if s.recv(4096) == b"":
                return True
    except socket.timeout:
        return False
    except OSError:
        return True


def msg_ready(role, pid, version):
    """MSG_WK_READY as msgpack: [version, 1, role, version, pid]."""
    r = role.encode()
    return bytes([0x95, version, 0x01, 0xa0 | len(r)]) + r + bytes([version, 0xce]) + struct.pack(">I", pid)


def proto_version():
    with open(os.path.join(ROOT, "schemas", "messages.def")) as f:
        for line in f:
            if line.startswith("#define LK_PROTO_VERSION"):
                return int(line.split()[2])
    raise RuntimeError("no LK_PROTO_VERSION")


def build_dir():
    return sys.argv[1] if len(sys.argv) > 1 else "build/release"
