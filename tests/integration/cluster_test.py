#!/usr/bin/env python3
# Several gateways, workers across hosts, and the supervisor's operator side (issue 4, and
# issue 3 item 5):
#
#   - gateway.count = 2 on one HTTP port (SO_REUSEPORT): each gateway binds its own backend
#     (tcp port + index), every worker serves both, both answer signup/signin/validate, one
#     signup worker serves two gateways without a lost or late job, and a killed gateway is
#     restarted while the other keeps serving;
#   - across hosts: a signup worker started by hand in another network namespace (a veth
#     pair; 127.0.0.1 when namespaces are unavailable) with LATCHKEY_GATEWAY_BACKEND =
#     tcp://... joins both gateways and serves;
#   - latchkeyctl: status columns, scale (nothing else restarts), restart ROLE, stop;
#   - SIGHUP: worker counts reload, a non-reloadable change is refused;
#   - the restart policy: a role failing past supervisor.restart_max is marked failed, in
#     latchkeyctl status and in GET /ready, until latchkeyctl restart.
#
#   tests/integration/cluster_test.py BUILD_DIR      (e.g. build/release or build/san)
import os
import re
import signal
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in tests/integration: tests/run runs what is there
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lkstack  # noqa: E402

T = lkstack.Checks("cluster")
BUILD = lkstack.build_dir()


def wait_for(pred, timeout, step=0.2):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return None


# ---- a second "host": a network namespace joined by a veth pair -----------------------------
NS = "lkt%d" % (os.getpid() % 100000)
VA, VB = "lkv%da" % (os.getpid() % 100000), "lkv%db" % (os.getpid() % 100000)
NET = "10.213.%d" % (os.getpid() % 250)
netns = False


def sh(*args):
    # A missing tool (no iproute2) is a failed step: the test falls back to 127.0.0.1.
    try:
        return subprocess.run(list(args), capture_output=True, text=True).returncode == 0
    except OSError:
        return False


# `ip netns add` makes /run/netns a mount point of its own when it is not one yet; put it
# back as found when no other namespace lives there (a chroot's /run stays removable).
def mounted(path):
    # os.path.ismount misses a bind mount of a directory onto itself (same device), which is
    # what ip netns makes: read the mount table instead.
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == path for line in f if len(line.split()) > 4)
    except OSError:
        return False


RUN_NETNS_MOUNTED = mounted("/run/netns")


def netns_down():
    sh("ip", "link", "del", VA)
    sh("ip", "netns", "del", NS)
    try:
        if not RUN_NETNS_MOUNTED and mounted("/run/netns") and not os.listdir("/run/netns"):
            sh("umount", "/run/netns")
    except OSError:
        pass


if os.geteuid() == 0 and sh("ip", "netns", "add", NS):
    netns = (sh("ip", "link", "add", VA, "type", "veth", "peer", "name", VB) and
             sh("ip", "link", "set", VB, "netns", NS) and
             sh("ip", "addr", "add", NET + ".1/30", "dev", VA) and
             sh("ip", "link", "set", VA, "up") and
             sh("ip", "netns", "exec", NS, "ip", "addr", "add", NET + ".2/30", "dev", VB) and
             sh("ip", "netns", "exec", NS, "ip", "link", "set", VB, "up") and
             sh("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up"))
    if not netns:
        netns_down()
GW_ADDR = NET + ".1" if netns else "127.0.0.1"
BP = lkstack.free_port(2)

CONF = """
[gateway]
listen = 127.0.0.1:@PORT@
backend = tcp://%s:%d
count = 2
heartbeat = 300ms
drain_timeout = 2s
[signup]
count = 1
[signin]
count = 2
[hash]
ops = 1
mem = 64K
[supervisor]
restart_delay = 300ms
restart_max = 2
restart_window = 1m
""" % (GW_ADDR, BP)

S = lkstack.Stack(BUILD, CONF, name="cluster")
if netns:
    import atexit
    atexit.register(netns_down)
print("   the other host: %s" % ("network namespace %s at %s.2, gateways at %s" % (NS, NET, GW_ADDR)
                               if netns else "127.0.0.1 (no network namespaces here)"))

if not T.check("stack with two gateways became ready on " + S.base, S.start(120), S.tail()):
    sys.exit(T.done())


def gw_pids():
    p = S.pids("gateway")
    return p.get(("gateway", 0)), p.get(("gateway", 1))


def others(before, after, skip):
    """Keys of before whose pid changed in after, roles in skip excepted."""
    return [k for k in before if k[0] not in skip and after.get(k) != before[k]]


def ready():
    st, body = S.http("GET", "/ready")
    return st, body if isinstance(body, dict) else {}


def status_map():
    return {(r["role"], r["slot"]): r for r in S.status()}


# ---- several gateways ------------------------------------------------------------------------
log = S.log_text()
T.check("gateway 0 binds tcp://%s:%d and gateway 1 port %d" % (GW_ADDR, BP, BP + 1),
        "gateway 0 of 2: backend tcp://%s:%d" % (GW_ADDR, BP) in log and
        "gateway 1 of 2: backend tcp://%s:%d" % (GW_ADDR, BP + 1) in log)
g0, g1 = gw_pids()
workers = [pid for (role, _), pid in S.pids().items() if role in ("signup", "signin")]


def registered_with(pid):
    """Gateway pids that logged "worker ready" for worker pid."""
    return set(re.findall(r"role=gateway pid=(\d+) msg=\"worker ready: role=\w+ pid=%d " % pid, S.log_text()))


T.check("every worker registered with both gateways",
        wait_for(lambda: all(registered_with(p) == {str(g0), str(g1)} for p in workers), 10),
        {p: registered_with(p) for p in workers})

tokens, statuses = [], []
for i in range(40):
    e = "multi%d@example.com" % i
    st1, _ = S.signup(e)
    st2, body = S.signin(e)
    st3, _ = S.validate(body.get("token", "") if isinstance(body, dict) else "")
    statuses.append((st1, st2, st3))
T.check("40 signup/signin/validate rounds on new connections all succeed",
        all(s == (201, 200, 200) for s in statuses), [s for s in statuses if s != (201, 200, 200)][:5])


def served(route, status):
    return set(re.findall(r"role=gateway pid=(\d+) rid=\S+ msg=\"http method=\w+ route=%s status=%d "
                          % (re.escape(route), status), S.log_text()))


for route, st in (("/api/auth/signup", 201), ("/api/auth/signin", 200), ("/api/auth/validate", 200)):
    T.check("both gateways answered %s %d" % (route, st), served(route, st) >= {str(g0), str(g1)},
            served(route, st))
time.sleep(1.3)
sm = status_map()
T.check("latchkeyctl status shows jobs brokered by each gateway",
        sm[("gateway", 0)]["jobs"] not in ("-", "0") and sm[("gateway", 1)]["jobs"] not in ("-", "0"),
        (sm[("gateway", 0)], sm[("gateway", 1)]))
T.check("... and jobs done by the workers",
        all(sm[k]["jobs"] not in ("-",) and int(sm[k]["jobs"]) > 0 for k in sm if k[0] in ("signup", "signin")),
        [(k, v["jobs"]) for k, v in sm.items()])

# One signup worker, two gateways, 8 concurrent clients: the worker takes one job at a time
# from either gateway; none may be lost, timed out, or refused.
res = []
lock = threading.Lock()


def client(n):
    for i in range(12):
        st, _ = S.signup("conc%d-%d@example.com" % (n, i), timeout=30)
        with lock:
            res.append(st)


threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join(120)
T.check("one signup worker serves two gateways under 8 concurrent clients: 96 x 201",
        res.count(201) == 96, {s: res.count(s) for s in set(res)})

# A gateway killed: the other keeps serving meanwhile, latchkeyd restarts it, no worker
# restarts.
before = S.pids()
os.kill(g1, signal.SIGKILL)
# Gone means its listening socket is closed: a connection queued on it before that is
# reset (SO_REUSEPORT has no hand-over), one made after goes to gateway 0.
def exited(pid):
    """Reaped by latchkeyd: every thread is gone, so are its descriptors. (A zombie leader
    is not enough: the ZeroMQ threads may still hold the listening socket.)"""
    return not os.path.exists("/proc/%d" % pid)


wait_for(lambda: exited(g1), 5, 0.01)
down = [S.signup("while-down%d@example.com" % i)[0] for i in range(20)]
T.check("while gateway 1 is down, gateway 0 serves every new connection", down.count(201) == 20,
        {s: down.count(s) for s in set(down)})
T.check("gateway 1 restarted", wait_for(lambda: S.pids().get(("gateway", 1), g1) not in (g1, 0), 10))
g1 = gw_pids()[1]
T.check("... and registered every worker again",
        wait_for(lambda: all(str(g1) in registered_with(p) for p in workers), 15),
        {p: registered_with(p) for p in workers})
T.check("... which were not restarted", not others(before, S.pids(), ("gateway",)), (before, S.pids()))

# ---- a worker on another host ---------------------------------------------------------------
rc, out = S.ctl("scale", "signup", "0")
T.check("latchkeyctl scale signup 0", rc == 0, out)
r = wait_for(lambda: (lambda s, b: s == 503 and "signup" in b.get("missing", []))(*ready()), 10)
T.check("/ready says signup is missing", bool(r))
remote_env = {k: v for k, v in S.env.items() if not k.startswith("LATCHKEY_")}
remote_env["LATCHKEY_GATEWAY_BACKEND"] = "tcp://%s:%d" % (GW_ADDR, BP)
remote_env["LATCHKEY_GATEWAY_COUNT"] = "2"
remote_env["LATCHKEY_DATABASE_URL"] = "host=%s/pg/run dbname=latchkey user=latchkey" % S.var
remote_env["LATCHKEY_PATHS_VAR"] = S.var + "-remote"  # a host of its own
cmd = [os.path.join(S.bin, "latchkey-signup")]
if netns:
    cmd = ["ip", "netns", "exec", NS] + cmd
rlog = open(os.path.join(S.tmp, "remote.log"), "wb")
remote = subprocess.Popen(cmd, stdout=rlog, stderr=subprocess.STDOUT, env=remote_env)
S.extra.append(remote)
S.known.add(remote.pid)
ok = wait_for(lambda: all(S.http("GET", "/ready")[0] == 200 for _ in range(6)), 20)
T.check("a signup worker started by hand %s joins: /ready 200 on both gateways"
        % ("in another network namespace" if netns else "on tcp://127.0.0.1"), bool(ok),
        open(os.path.join(S.tmp, "remote.log")).read()[-1500:])
rem = [S.signup("remote%d@example.com" % i)[0] for i in range(20)]
T.check("... and serves signups", rem.count(201) == 20, {s: rem.count(s) for s in set(rem)})
T.check("... for both gateways", registered_with(remote.pid) == {str(g0), str(g1)}, registered_with(remote.pid))
remote.send_signal(signal.SIGTERM)
T.check("... and stops on SIGTERM (exit 0)", remote.wait(10) == 0)
rc, out = S.ctl("scale", "signup", "1")
T.check("latchkeyctl scale signup 1", rc == 0 and wait_for(lambda: S.http("GET", "/ready")[0] == 200, 15), out)

# ---- scale, restart ---------------------------------------------------------------------------
before = S.pids()
rc, out = S.ctl("scale", "signin", "4")
T.check("latchkeyctl scale signin 4", rc == 0, out)
ok = wait_for(lambda: [r for r in S.status() if r["role"] == "signin" and r["state"] == "running"], 5)
time.sleep(1.0)
st = S.status()
print("\n".join("   " + line for line in S.ctl("status")[1].splitlines()))
T.check("status shows four live signin workers", len([r for r in st if r["role"] == "signin" and r["state"] == "running"]) == 4)
T.check("... the status columns", S.ctl("status")[1].split("\n")[0].split() ==
        ["ROLE", "SLOT", "PID", "STATE", "UPTIME", "RESTARTS", "JOBS", "BUSY"])
after = S.pids()
T.check("... and no other process restarted", not others(before, after, ()), (before, after))
T.check("... the gateways count four signin workers",
        wait_for(lambda: all(ready()[1].get("workers", {}).get("signin") == 4 for _ in range(6)), 10))
T.check("latchkeyd logs the new memory bound", "memory bound of password hashing: 5 workers" in S.log_text())

before = S.pids()
rc, out = S.ctl("restart", "signin")
T.check("latchkeyctl restart signin", rc == 0, out)
T.check("... every signin worker has a new pid",
        wait_for(lambda: all(S.pids().get(k) not in (before[k], 0) for k in before if k[0] == "signin"), 15))
T.check("... nothing else restarted", not others(before, S.pids(), ("signin",)))
T.check("... a restart asked for is no failure: restarts counted, none failed",
        all(r["state"] == "running" for r in S.status()))

# ---- SIGHUP -------------------------------------------------------------------------------------
before = S.pids()
conf = open(S.conf).read()
with open(S.conf, "w") as f:
    f.write(conf.replace("[signin]\ncount = 2", "[signin]\ncount = 3"))
S.proc.send_signal(signal.SIGHUP)
T.check("SIGHUP with signin.count = 3: three signin workers",
        wait_for(lambda: len([r for r in S.status() if r["role"] == "signin" and r["state"] == "running"]) == 3, 10),
        S.ctl("status")[1])
time.sleep(0.5)
after = S.pids()
T.check("... scaled down from four, nothing else restarted",
        not others(before, after, ("signin",)) and all(after.get(k) == before[k] for k in after if k[0] == "signin"),
        (before, after))
T.check("... every process reloaded", S.log_text().count("SIGHUP: configuration reloaded") >= 8)
with open(S.conf, "w") as f:
    f.write(conf.replace("[signin]\ncount = 2", "[signin]\ncount = 3").replace("count = 2\nheartbeat", "count = 2\nmax_connections = 100\nheartbeat"))
mark = len(S.log_text())
S.proc.send_signal(signal.SIGHUP)
T.check("a SIGHUP changing a key that needs a restart is refused and logged",
        wait_for(lambda: "gateway.max_connections: changed; needs a restart" in S.log_text()[mark:], 5))
T.check("... and nothing changed", S.pids() == after)
with open(S.conf, "w") as f:
    f.write(conf.replace("[signin]\ncount = 2", "[signin]\ncount = 3"))

# ---- scaling down under load fails no request ---------------------------------------------------
# A retiring worker tells every gateway it is busy, runs what was already sent to it, then
# exits: no job is caught by its exit.
with lkstack.Load(S, signins=4, users=["multi%d@example.com" % i for i in range(40)]) as load:
    time.sleep(1.0)
    rc, out = S.ctl("scale", "signin", "1")
    wait_for(lambda: len([r for r in S.status() if r["role"] == "signin"]) == 1, 10)
    time.sleep(1.0)
    load.stop()
got = {}
for r in load.results:
    got[r[2]] = got.get(r[2], 0) + 1
T.check("scale signin 3 -> 1 under load: every signin answered 200", set(got) == {200}, got)

# ---- the restart policy: a failed role, in status and in /ready --------------------------------
for i in range(3):  # restart_max = 2: the third failure within the window marks it failed
    pid = wait_for(lambda: (lambda r: r["pid"] if r["state"] == "running" and r["pid"] > 0 else None)(
        status_map()[("sweeper", 0)]), 10)
    if pid:
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: status_map()[("sweeper", 0)]["pid"] != pid, 5)
T.check("a sweeper killed three times is marked failed",
        wait_for(lambda: status_map()[("sweeper", 0)]["state"] == "failed", 10), S.ctl("status")[1])
rd = wait_for(lambda: (lambda s, b: (s, b) if s == 503 else None)(*ready()), 5)
T.check("/ready says so: 503 with sweeper missing", rd and "sweeper" in rd[1].get("missing", []), rd)
T.check("... on both gateways", wait_for(lambda: all(S.http("GET", "/ready")[0] == 503 for _ in range(8)), 5))
rc, out = S.ctl("restart", "sweeper")
T.check("latchkeyctl restart sweeper brings it back",
        rc == 0 and wait_for(lambda: status_map()[("sweeper", 0)]["state"] == "running", 10), out)
T.check("... and /ready is 200 again", wait_for(lambda: all(S.http("GET", "/ready")[0] == 200 for _ in range(8)), 5))

# ---- stop ---------------------------------------------------------------------------------------
pids = [r["pid"] for r in S.status() if r["pid"] > 0]
pids += S.children_of(S.pids()[("postgres", 0)])
rc, out = S.ctl("stop")
T.check("latchkeyctl stop", rc == 0, out)
try:
    code = S.proc.wait(60)
except subprocess.TimeoutExpired:
    code = None
T.check("latchkeyd exits 0", code == 0, code)
T.check("no process left behind", wait_for(lambda: not S.alive_pids(pids), 5), S.alive_pids(pids))
T.check("the failed-roles file is gone with it", not os.path.exists(os.path.join(S.var, "run", "failed-roles")))
T.check("no sanitizer report from any process", S.sanitizer_reports() == "", S.sanitizer_reports()[:2000])
if T.bad:
    print("---- last lines of the stack log")
    print(S.tail(80))
sys.exit(T.done())
