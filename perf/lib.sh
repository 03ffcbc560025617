# shellcheck shell=bash
# perf/lib.sh: shared helpers of the perf/ benchmark scripts (sourced, not run).
#
# Every benchmark runs a throwaway latchkey stack: its own mkdtemp state directory, a free
# loopback port, a lowered argon2id cost (only signin's speed depends on it, never
# validate's), and stops everything it started from an EXIT trap (perf_cleanup), whatever
# happens. Nothing here talks to an address outside 127.0.0.1.
#
# Variables the caller may set before sourcing or before perf_stack_start:
#   PERF_BUILD     build variant directory under build/ (default: release)
#   PERF_NO_BUILD  1: do not run scons (use the binaries as they are)
#   PERF_LOG_LEVEL log.level of the stack (default: the stack's default, info)

PERF_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PERF_BUILD=${PERF_BUILD:-release}
PERF_BIN=$PERF_ROOT/build/$PERF_BUILD/bin
PERF_TMP=
PERF_SUP=      # latchkeyd pid of the stack started last
PERF_SUPS=     # every latchkeyd pid started (perf_stack_start may be called more than once)
PERF_NGINX=    # nginx master pid
PERF_NGINX_WORKERS=
PERF_WATCHDOG=
PERF_EXTRA_PIDS=  # other background pids of ours (load generators)

perf_log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
perf_die() { perf_log "error: $*"; exit 1; }

# perf_setup NAME MAX_SECONDS: temp dir, EXIT/INT/TERM traps, a watchdog that ends the
# whole run after MAX_SECONDS whatever it is doing.
perf_setup() {
    local name=$1 max=$2
    PERF_TMP=$(mktemp -d "/tmp/latchkey-perf-$name.XXXXXX") || perf_die "mktemp"
    chmod 755 "$PERF_TMP" # the embedded Postgres may run as another user: it must reach var/
    trap perf_cleanup EXIT
    trap 'perf_log "interrupted"; exit 130' INT
    trap 'perf_log "terminated (watchdog or signal)"; exit 143' TERM
    # The watchdog holds none of our output streams (a pipe reader would wait for it) and
    # takes its sleep down with it when it is stopped.
    (
        trap 'kill "$s" 2>/dev/null; exit 0' TERM
        sleep "$max" &
        s=$!
        wait "$s" && kill -TERM $$
    ) </dev/null >/dev/null 2>&1 &
    PERF_WATCHDOG=$!
}

# Pids of live processes whose command line mentions our temp dir (ours only: the path
# comes from mkdtemp). Used as the last resort of the cleanup, killed by pid.
perf_tmp_pids() {
    [ -n "$PERF_TMP" ] || return 0
    local f pid
    for f in /proc/[0-9]*/cmdline; do
        pid=${f#/proc/}
        pid=${pid%/cmdline}
        [ "$pid" = $$ ] && continue
        if tr '\0' ' ' 2>/dev/null <"$f" | grep -qF -- "$PERF_TMP"; then
            echo "$pid"
        fi
    done
}

perf_alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# perf_wait_gone PID TENTHS: waits up to TENTHS/10 s for PID to exit.
perf_wait_gone() {
    local i
    for ((i = 0; i < $2; i++)); do
        perf_alive "$1" || return 0
        sleep 0.1
    done
    ! perf_alive "$1"
}

perf_nginx_stop() {
    if perf_alive "$PERF_NGINX"; then
        kill -TERM "$PERF_NGINX" 2>/dev/null
        perf_wait_gone "$PERF_NGINX" 50 || kill -KILL "$PERF_NGINX" 2>/dev/null
    fi
    local p
    for p in $PERF_NGINX_WORKERS; do
        perf_wait_gone "$p" 20 || kill -KILL "$p" 2>/dev/null
    done
    PERF_NGINX=
    PERF_NGINX_WORKERS=
}

perf_stack_stop() { # stops every stack started
    local p
    for p in $PERF_SUPS $PERF_SUP; do
        perf_alive "$p" && kill -TERM "$p" 2>/dev/null
    done
    for p in $PERF_SUPS $PERF_SUP; do
        # the gateway drains for up to gateway.drain_timeout (2s here), Postgres stops last
        perf_wait_gone "$p" 200 || kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    PERF_SUP=
    PERF_SUPS=
}

perf_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local p
    for p in $PERF_EXTRA_PIDS; do
        perf_alive "$p" && kill -TERM "$p" 2>/dev/null
    done
    perf_nginx_stop
    perf_stack_stop
    # Children of latchkeyd die with it (PR_SET_PDEATHSIG); anything still holding our
    # temp dir in its command line is ours and is killed by pid.
    sleep 0.3
    local left
    left=$(perf_tmp_pids)
    if [ -n "$left" ]; then
        perf_log "killing leftover processes: $left"
        kill -KILL $left 2>/dev/null
    fi
    perf_alive "$PERF_WATCHDOG" && kill -TERM "$PERF_WATCHDOG" 2>/dev/null
    if [ -n "$PERF_TMP" ] && [ -z "${PERF_KEEP_TMP:-}" ]; then
        rm -rf "$PERF_TMP"
    elif [ -n "$PERF_TMP" ]; then
        perf_log "kept $PERF_TMP"
    fi
    exit "$rc"
}

# A free loopback port (never 8080), below the kernel's ephemeral range
# (net.ipv4.ip_local_port_range starts at 32768 by default): a port in that range may be
# the local end of some other program's client connection, and bind() then fails even
# though nothing listens. Free = a bind() without SO_REUSEADDR succeeds now.
perf_free_port() {
    local lo port
    read -r lo _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || lo=32768
    [ "${lo:-0}" -gt 21000 ] || lo=32768
    while :; do
        port=$((20000 + RANDOM % (lo - 20000)))
        [ "$port" = 8080 ] && continue
        case " ${PERF_PORTS_TAKEN:-} " in *" $port "*) continue ;; esac
        python3 -c 'import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))' "$port" 2>/dev/null && break
    done
    PERF_PORTS_TAKEN="${PERF_PORTS_TAKEN:-} $port"
    echo "$port"
}

# perf_need_root_pkg CMD PKG...: installs the Debian packages when CMD is missing.
perf_need_pkg() {
    local cmd=$1
    shift
    command -v "$cmd" >/dev/null 2>&1 && return 0
    [ -x "/usr/sbin/$cmd" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        perf_die "$cmd is missing: run as root: apt-get install -y $*"
    fi
    perf_log "installing $*"
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@" >"$PERF_TMP/apt.log" 2>&1 ||
        { apt-get -o DPkg::Lock::Timeout=600 update -qq >>"$PERF_TMP/apt.log" 2>&1 &&
            apt-get -o DPkg::Lock::Timeout=600 install -y -qq "$@" >>"$PERF_TMP/apt.log" 2>&1; } ||
        { tail -n 20 "$PERF_TMP/apt.log" >&2; return 1; }
}

# The source the binaries were built from: HEAD, and a hash of the uncommitted changes of
# the code (other people may be editing the tree while a benchmark runs).
perf_source() {
    local dirty head
    head=$(cd "$PERF_ROOT" && git rev-parse --short HEAD 2>/dev/null)
    if (cd "$PERF_ROOT" && git diff --quiet HEAD -- services common supervisor SConstruct SConscript 2>/dev/null); then
        echo "$head"
    else
        dirty=$(cd "$PERF_ROOT" && git diff HEAD -- services common supervisor SConstruct SConscript 2>/dev/null | sha256sum | cut -c1-12)
        echo "$head + uncommitted changes in services/, common/ or supervisor/ (diff sha256 $dirty)"
    fi
}

# Builds the release binaries unless PERF_NO_BUILD=1 (scons is a no-op when up to date).
perf_build() {
    PERF_SOURCE="$(perf_source)$([ "${PERF_NO_BUILD:-0}" = 1 ] && echo ', binaries not rebuilt (PERF_NO_BUILD=1)')"
    if [ "${PERF_NO_BUILD:-0}" != 1 ]; then
        perf_log "building ($PERF_BUILD)"
        if [ "$PERF_BUILD" = release ]; then
            (cd "$PERF_ROOT" && scons -Q -j2) >"$PERF_TMP/build.log" 2>&1
        else
            (cd "$PERF_ROOT" && scons -Q -j2 build="$PERF_BUILD") >"$PERF_TMP/build.log" 2>&1
        fi || { tail -n 30 "$PERF_TMP/build.log" >&2; perf_die "build failed"; }
    fi
    [ -x "$PERF_BIN/latchkeyd" ] && [ -x "$PERF_BIN/latchkey-gateway" ] ||
        perf_die "no binaries in $PERF_BIN"
}

# Raises this shell's open-file limit (inherited by wrk, latchkeyd and the gateway, which
# sets its soft limit to the hard one) to N, or as high as allowed.
perf_raise_nofile() {
    local want=$1
    ulimit -Hn "$want" 2>/dev/null # root may raise the hard limit
    ulimit -Sn "$want" 2>/dev/null || ulimit -Sn "$(ulimit -Hn)"
}

# perf_stack_start [VAR=VALUE...]: starts latchkeyd on a free port with a config of its
# own; extra LATCHKEY_* overrides come as arguments. Sets PERF_PORT, PERF_CONF, PERF_BASE,
# PERF_VAR, PERF_STACK_LOG, PERF_SUP. With PERF_STACK_ID set, its files get that suffix,
# so that several stacks can run side by side (each is stopped by the cleanup).
# Should the port be taken between the check and the gateway's bind (another program's
# test), the stack is stopped and started again on another port, up to 3 times.
perf_stack_start() {
    local _try
    for _try in 1 2 3; do
        perf_stack_try "$@" && return 0
        if grep -q 'cannot listen on' "$PERF_STACK_LOG" 2>/dev/null; then
            perf_log "port $PERF_PORT was taken meanwhile; trying another"
            kill -TERM "$PERF_SUP" 2>/dev/null
            perf_wait_gone "$PERF_SUP" 200 || kill -KILL "$PERF_SUP" 2>/dev/null
            wait "$PERF_SUP" 2>/dev/null
            PERF_SUP=
            rm -rf "$PERF_VAR"
            continue
        fi
        break
    done
    tail -n 40 "$PERF_STACK_LOG" >&2
    perf_die "the stack did not become ready on $PERF_BASE"
}

perf_stack_try() {
    local sfx=${PERF_STACK_ID:+-$PERF_STACK_ID}
    PERF_PORT=$(perf_free_port)
    PERF_BASE=http://127.0.0.1:$PERF_PORT
    PERF_CONF=$PERF_TMP/latchkey$sfx.conf
    PERF_VAR=$PERF_TMP/var$sfx
    PERF_STACK_LOG=$PERF_TMP/stack$sfx.log
    cat >"$PERF_CONF" <<CONF
# written by perf/lib.sh
[paths]
var = $PERF_VAR
[gateway]
listen = 127.0.0.1:$PERF_PORT
drain_timeout = 2s
[signup]
count = 1
[signin]
count = 1
[hash]
# lowered for setup speed only: validate never hashes a password
ops = 1
mem = 64K
[supervisor]
stop_timeout = 5s
CONF
    if [ -n "${PERF_LOG_LEVEL:-}" ]; then
        printf '[log]\nlevel = %s\n' "$PERF_LOG_LEVEL" >>"$PERF_CONF"
    fi
    perf_log "starting latchkeyd on $PERF_BASE (state $PERF_VAR, log.level ${PERF_LOG_LEVEL:-default})"
    env "$@" "$PERF_BIN/latchkeyd" -c "$PERF_CONF" >"$PERF_STACK_LOG" 2>&1 &
    PERF_SUP=$!
    PERF_SUPS="$PERF_SUPS $PERF_SUP"
    local i
    for i in $(seq 1 300); do
        perf_alive "$PERF_SUP" || return 1
        grep -q 'cannot listen on' "$PERF_STACK_LOG" 2>/dev/null && return 1
        if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$PERF_BASE/ready")" = 200 ]; then
            return 0
        fi
        sleep 0.3
    done
    return 1
}

# The gateways' pids from latchkeyctl status (rows whose role is gateway; one per
# gateway.count), space-separated; perf_gateway_pid: the first.
perf_gateway_pids() {
    "$PERF_BIN/latchkeyctl" -c "$PERF_CONF" status 2>/dev/null |
        awk '$1 == "gateway" { for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/ && $i > 1) { printf "%s ", $i; break } }'
}
perf_gateway_pid() { perf_gateway_pids | awk '{ print $1 }'; }

# Signs up a user and signs in: prints the token.
perf_token() {
    local email="perf-$$-$RANDOM@example.com" pass="perf benchmark password"
    local code
    code=$(curl -s -o "$PERF_TMP/signup.json" -w '%{http_code}' --max-time 30 -XPOST \
        "$PERF_BASE/api/auth/signup" -H 'Content-Type: application/json' \
        -d "{\"email\":\"$email\",\"password\":\"$pass\"}")
    [ "$code" = 201 ] || perf_die "signup answered $code: $(cat "$PERF_TMP/signup.json")"
    curl -s --max-time 30 -XPOST "$PERF_BASE/api/auth/signin" -H 'Content-Type: application/json' \
        -d "{\"email\":\"$email\",\"password\":\"$pass\"}" >"$PERF_TMP/signin.json"
    local token
    token=$(sed -n 's/.*"token":"\([^"]*\)".*/\1/p' "$PERF_TMP/signin.json")
    [ ${#token} = 43 ] || perf_die "signin gave no token: $(cat "$PERF_TMP/signin.json")"
    echo "$token"
}

# CPU time (utime+stime, in clock ticks) used so far by the given pids, summed.
perf_cpu_ticks() {
    local p sum=0 t
    for p in "$@"; do
        # fields after the ")" of comm: state is $1, utime $12, stime $13
        t=$(sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')
        sum=$((sum + ${t:-0}))
    done
    echo "$sum"
}

# Percent of the machine's CPU time idle over the next $1 seconds (from /proc/stat).
perf_idle_pct() {
    local a b
    a=$(awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print $5 + $6, t }' /proc/stat)
    sleep "$1"
    b=$(awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print $5 + $6, t }' /proc/stat)
    echo "$a $b" | awk '{ d = $4 - $2; printf "%.0f", d ? 100 * ($3 - $1) / d : 0 }'
}

# With PERF_WAIT_QUIET=N: waits up to N seconds for a machine at least 90% idle (other
# people's builds, tests or fuzzers running on the same cores would skew every number),
# then goes on anyway. Reports what it saw.
perf_wait_quiet() {
    local max=${PERF_WAIT_QUIET:-0} waited=0 idle
    idle=$(perf_idle_pct 1)
    while [ "$idle" -lt 90 ] && [ "$waited" -lt "$max" ]; do
        [ $((waited % 30)) = 0 ] && perf_log "machine only ${idle}% idle; waiting for quiet (up to ${max}s)"
        sleep 4
        waited=$((waited + 5))
        idle=$(perf_idle_pct 1)
    done
    PERF_IDLE_AT_START=$idle
}

# Other processes using CPU right now (not ours), for the record.
perf_others() {
    ps -eo pid=,pcpu=,comm= --sort=-pcpu | awk -v me=$$ '$2 > 5 && $1 != me { printf "%s(%s%%) ", $3, $2 }' | head -c 300
}

# The machine, one "key: value" per line.
perf_machine() {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: ${PERF_SOURCE:-$(perf_source)} (working tree at build time)"
    echo "nproc: $(nproc)"
    echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)"
    echo "memory: $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "kernel: $(uname -r)"
    echo "os: $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
    echo "load: loadavg $(cut -d' ' -f1-3 /proc/loadavg); machine ${PERF_IDLE_AT_START:-?}% idle just before the runs; busy processes at the end: $(perf_others)"
}
