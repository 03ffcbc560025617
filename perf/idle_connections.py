#!/usr/bin/env python3
"""perf/idle_connections.py: holds N idle keep-alive connections to the gateway, each
having sent one validate request, then measures the gateway's memory and the latency of
new validate requests meanwhile. Run it through perf/idle-connections, which starts the
stack; alone:

    idle_connections.py --port P --token T --gateway-pid PID [--conns 10000] [--samples 25]

Loopback only (the host is fixed to 127.0.0.1). Bounded in time: --deadline seconds for
the whole run. Prints "key=value" lines on stdout (one "sample" line per latency sample,
one "result" line at the end); progress goes to stderr.
"""
import argparse
import errno
import resource
import selectors
import socket
import statistics
import sys
import time

HOST = "127.0.0.1"


def log(msg):
    print(f"[idle] {msg}", file=sys.stderr, flush=True)


def proc_status(pid):
    """VmRSS, VmHWM, RssAnon, RssFile, RssShmem of pid, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                out[k] = int(v.split()[0])
    return out


def cpu_seconds(pid):
    """utime + stime of pid so far, in seconds."""
    import os
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu_pct(pid, seconds=3.0):
    """The share of one core pid uses over `seconds` while nobody sends it anything."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def fd_count(pid):
    import os
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def request_bytes(token):
    return (f"GET /api/auth/validate HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Authorization: Bearer {token}\r\n\r\n").encode()


def response_complete(buf):
    """Returns (status, total length) once buf holds a whole response, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1").split("\r\n")
    status = int(head[0].split()[1])
    length = 0
    for h in head[1:]:
        k, _, v = h.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    total = end + 4 + length
    return (status, total) if len(buf) >= total else None


def open_idle(port, req, n, in_flight, deadline):
    """Opens n connections, at most in_flight being set up at once; each sends one request
    and reads the whole answer. Returns (sockets, statuses count, failures)."""
    sel = selectors.DefaultSelector()
    done, failed, statuses = [], 0, {}
    started, next_log = 0, 2000
    pending = {}  # sock -> [state, bytearray]
    while len(done) + failed < n:
        if time.monotonic() > deadline:
            raise SystemExit("deadline reached while opening connections")
        while started < n and len(pending) < in_flight:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rc = s.connect_ex((HOST, port))
            if rc not in (0, errno.EINPROGRESS):
                s.close()
                failed += 1
                started += 1
                continue
            pending[s] = ["connect", bytearray()]
            sel.register(s, selectors.EVENT_WRITE)
            started += 1
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            st = pending[s]
            if st[0] == "connect":
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    sel.unregister(s)
                    del pending[s]
                    s.close()
                    failed += 1
                    continue
                s.send(req)  # far below the socket buffer: one send
                st[0] = "read"
                sel.modify(s, selectors.EVENT_READ)
            else:
                try:
                    chunk = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(s)
                    del pending[s]
                    s.close()
                    failed += 1
                    continue
                st[1] += chunk
                r = response_complete(st[1])
                if r:
                    statuses[r[0]] = statuses.get(r[0], 0) + 1
                    sel.unregister(s)
                    del pending[s]
                    done.append(s)
        if len(done) >= next_log:
            log(f"{len(done)} open")
            next_log += 2000
    sel.close()
    return done, statuses, failed


def one_request(port, req, sock=None, timeout=5.0):
    """Times one validate request: on a new connection (connect included) when sock is
    None, else on sock. Returns (seconds, status)."""
    t0 = time.perf_counter()
    own = sock is None
    if own:
        sock = socket.create_connection((HOST, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        sock.setblocking(True)
        sock.settimeout(timeout)
    try:
        sock.sendall(req)
        buf = bytearray()
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before the answer")
            buf += chunk
            r = response_complete(buf)
            if r:
                return time.perf_counter() - t0, r[0]
    finally:
        if own:
            sock.close()
        else:
            sock.setblocking(False)


def still_open(socks):
    """Counts connections the server has not closed (no EOF, no error pending)."""
    alive = 0
    for s in socks:
        try:
            data = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if data:
                alive += 1  # unexpected bytes, but open
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    return alive


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--gateway-pid", type=int, required=True)
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--samples", type=int, default=25)
    ap.add_argument("--in-flight", type=int, default=256)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds idle before measuring")
    ap.add_argument("--deadline", type=float, default=240.0)
    a = ap.parse_args()
    deadline = time.monotonic() + a.deadline

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.conns + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(want, soft)), hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < want:
        raise SystemExit(f"open file limit {soft} is below {want}: raise it (ulimit -n)")

    req = request_bytes(a.token)
    gpid = a.gateway_pid
    base = proc_status(gpid)
    base_cpu = idle_cpu_pct(gpid)
    print(f"before rss_kib={base['VmRSS']} anon_kib={base['RssAnon']} file_kib={base['RssFile']} "
          f"shmem_kib={base['RssShmem']} fds={fd_count(gpid)}")
    # a few requests first, so the baseline latency is not a cold start
    for _ in range(5):
        one_request(a.port, req)
    warm = []
    for _ in range(a.samples):
        dt, st = one_request(a.port, req)
        warm.append(dt)
        time.sleep(0.02)
    print(f"baseline new_conn_median_ms={statistics.median(warm)*1e3:.3f} "
          f"new_conn_max_ms={max(warm)*1e3:.3f}")

    t0 = time.monotonic()
    socks, statuses, failed = open_idle(a.port, req, a.conns, a.in_flight, deadline)
    t_open = time.monotonic() - t0
    log(f"{len(socks)} connections open in {t_open:.1f}s, statuses {statuses}, {failed} failed")
    time.sleep(a.settle)
    held = proc_status(gpid)
    fds = fd_count(gpid)
    held_cpu = idle_cpu_pct(gpid)
    print(f"held conns={len(socks)} failed={failed} statuses={','.join(f'{k}:{v}' for k, v in sorted(statuses.items()))} "
          f"open_s={t_open:.2f} rss_kib={held['VmRSS']} hwm_kib={held['VmHWM']} anon_kib={held['RssAnon']} "
          f"file_kib={held['RssFile']} shmem_kib={held['RssShmem']} fds={fds}")

    new_lat, old_lat, bad = [], [], 0
    step = max(1, len(socks) // max(1, a.samples))
    for i in range(a.samples):
        if time.monotonic() > deadline:
            break
        dt, st = one_request(a.port, req)
        new_lat.append(dt)
        bad += st != 200
        print(f"sample kind=new_connection ms={dt*1e3:.3f} status={st}")
        if socks:
            dt, st = one_request(a.port, req, sock=socks[(i * step) % len(socks)])
            old_lat.append(dt)
            bad += st != 200
            print(f"sample kind=idle_connection ms={dt*1e3:.3f} status={st}")
        time.sleep(0.05)
    after = proc_status(gpid)
    alive = still_open(socks)
    res = {
        "conns_requested": a.conns,
        "conns_held": len(socks),
        "conns_still_open_at_end": alive,
        "connect_failures": failed,
        "rss_before_kib": base["VmRSS"],
        "rss_held_kib": held["VmRSS"],
        "rss_after_samples_kib": after["VmRSS"],
        "hwm_kib": after["VmHWM"],
        "anon_held_kib": held["RssAnon"],
        "file_held_kib": held["RssFile"],
        "idle_cpu_pct_before": round(base_cpu, 2),
        "idle_cpu_pct_holding": round(held_cpu, 2),
        "per_conn_bytes": round((held["VmRSS"] - base["VmRSS"]) * 1024 / max(1, len(socks))),
        "new_conn_median_ms": round(statistics.median(new_lat) * 1e3, 3) if new_lat else -1,
        "new_conn_max_ms": round(max(new_lat) * 1e3, 3) if new_lat else -1,
        "idle_conn_median_ms": round(statistics.median(old_lat) * 1e3, 3) if old_lat else -1,
        "idle_conn_max_ms": round(max(old_lat) * 1e3, 3) if old_lat else -1,
        "baseline_new_conn_median_ms": round(statistics.median(warm) * 1e3, 3),
        "samples": len(new_lat),
        "non200_samples": bad,
    }
    print("result " + " ".join(f"{k}={v}" for k, v in res.items()), flush=True)
    for s in socks:
        s.close()
    ok = len(socks) == a.conns and bad == 0 and alive == len(socks)
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
