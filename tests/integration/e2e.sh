#!/usr/bin/env bash
# End-to-end test of the real architecture: latchkeyd starts its embedded Postgres
# (throwaway cluster in a temporary state directory), applies the migrations and starts
# every role; this script then drives the HTTP API with curl as api.md describes, runs the
# Postgres unit tests against the same server, stops the stack with SIGTERM and checks that
# no process is left behind.
#
#   tests/integration/e2e.sh BUILD_DIR      (e.g. build/release or build/san)
set -u
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
BUILD=${1:-build/release}
BIN=$ROOT/$BUILD/bin

TMP=$(mktemp -d /tmp/latchkey-e2e.XXXXXX)
chmod 755 "$TMP" # the embedded Postgres may run as another user: it must reach var/
VAR=$TMP/var
checks=0
bad=0
SUP=

ok() { checks=$((checks + 1)); echo "ok   $*"; }
nok() { checks=$((checks + 1)); bad=$((bad + 1)); echo "FAIL $*"; }
check() { # check DESCRIPTION COMMAND...
    local d=$1
    shift
    if "$@"; then ok "$d"; else nok "$d"; fi
}

cleanup() {
    if [ -n "$SUP" ] && kill -0 "$SUP" 2>/dev/null; then
        kill -TERM "$SUP"
        sleep 5
        kill -KILL "$SUP" 2>/dev/null
    fi
    pkill -KILL -f "$TMP" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

# A free loopback port of our own: never 8080, never another run's, and below the
# kernel's ephemeral range, so an outgoing connection cannot be holding it.
EPHEMERAL_LOW=$(awk '{print $1}' /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
[ "$EPHEMERAL_LOW" -gt 21000 ] 2>/dev/null || EPHEMERAL_LOW=32768
free_port() { echo $((20000 + RANDOM % (EPHEMERAL_LOW - 20000))); }
while :; do
    PORT=$(free_port)
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || break
done
BASE=http://127.0.0.1:$PORT

cat >"$TMP/latchkey.conf" <<CONF
# written by tests/integration/e2e.sh
[paths]
var = $VAR
[gateway]
listen = 127.0.0.1:$PORT
[signup]
count = 1
# the duplicate-signup check below wants 409, not the repeat window's 429
repeat_window = 0s
[signin]
count = 1
[ratelimit]
# bursts from 127.0.0.1 (the limit itself is tested in security_test.py)
client_rate = 0
[hash]
# the argon2id cost is lowered for test speed only
ops = 1
mem = 64K
[supervisor]
restart_delay = 1s
stop_timeout = 10s
CONF

# The sanitizer build writes any report to files we check at the end.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}:log_path=$TMP/asan"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}:log_path=$TMP/ubsan"

"$BIN/latchkeyd" -c "$TMP/latchkey.conf" >"$TMP/stack.log" 2>&1 &
SUP=$!

# ---- helpers -----------------------------------------------------------------------------
# req METHOD PATH [BODY] [curl args...]: sets STATUS, BODY, HDRS (lower-cased header names)
req() {
    local method=$1 path=$2 body=${3:-}
    shift 3 2>/dev/null || shift $#
    local args=(-s -o "$TMP/body" -D "$TMP/hdrs" -w '%{http_code}' -X "$method" --max-time 40)
    if [ -n "$body" ]; then
        args+=(-H 'Content-Type: application/json' --data-binary "$body")
    fi
    STATUS=$(curl "${args[@]}" "$@" "$BASE$path")
    BODY=$(cat "$TMP/body" 2>/dev/null)
    HDRS=$(tr -d '\r' <"$TMP/hdrs" 2>/dev/null | sed 's/^\([^:]*\):/\L\1:/')
}
field() { # field NAME: a string field of the JSON in BODY
    printf '%s' "$BODY" | sed -n "s/.*\"$1\"[[:space:]]*:[[:space:]]*\"\([^\"]*\)\".*/\1/p"
}
header() { printf '%s\n' "$HDRS" | sed -n "s/^$1:[[:space:]]*//p" | head -n 1; }
is() { [ "$1" = "$2" ] || { echo "     expected [$2], got [$1]"; return 1; }; }
matches() { printf '%s' "$1" | grep -Eq "$2" || { echo "     [$1] does not match /$2/"; return 1; }; }
expect() { # expect STATUS ERRORCODE: the response's status and error code
    is "$STATUS" "$1" && { [ -z "${2:-}" ] || is "$(field error)" "$2"; }
}

# ---- start-up ----------------------------------------------------------------------------
ready=0
for _ in $(seq 1 300); do
    if ! kill -0 "$SUP" 2>/dev/null; then break; fi
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$BASE/ready")" = 200 ]; then
        ready=1
        break
    fi
    sleep 0.3
done
if [ $ready = 0 ]; then
    nok "stack became ready on $BASE"
    tail -n 60 "$TMP/stack.log"
    exit 1
fi
ok "stack became ready on $BASE"

# ---- health and readiness ----------------------------------------------------------------
req GET /health
check "GET /health is 200 ok" is "$STATUS:$(field status)" "200:ok"
check "every response has X-Request-Id" matches "$(header x-request-id)" '^[A-Za-z0-9._-]{1,64}$'
req GET /ready
check "GET /ready is 200 ready" is "$STATUS:$(field status)" "200:ready"

# ---- signup ------------------------------------------------------------------------------
EMAIL="  Alice.E2E@Example.COM "
PASS="correct horse battery staple"
req POST /api/auth/signup "{\"email\":\"$EMAIL\",\"password\":\"$PASS\"}"
check "signup is 201" is "$STATUS" 201
check "signup returns a uuid userId" matches "$(field userId)" '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
USER_ID=$(field userId)
check "signup normalizes the email" is "$(field email)" "alice.e2e@example.com"
check "signup returns createdAt in RFC 3339 UTC" matches "$(field createdAt)" '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z$'
check "auth responses carry Cache-Control: no-store" is "$(header cache-control)" "no-store"
check "JSON responses are application/json" matches "$(header content-type)" '^application/json'

req POST /api/auth/signup "{\"email\":\"alice.e2e@example.com\",\"password\":\"another password\"}"
check "duplicate signup is 409 email_taken" expect 409 email_taken
req POST /api/auth/signup '{"email":"not-an-email","password":"long enough password"}'
check "bad email is 400 invalid_email" expect 400 invalid_email
req POST /api/auth/signup '{"email":"bob@example.com","password":"short"}'
check "short password is 400 weak_password" expect 400 weak_password
req POST /api/auth/signup '{"email":"bob@example.com",'
check "malformed JSON is 400 invalid_request" expect 400 invalid_request
req POST /api/auth/signup '{"email":"bob@example.com","password":12345678}'
check "mistyped field is 400 invalid_request" expect 400 invalid_request
req POST /api/auth/signup '{"email":"bob@example.com","email":"eve@example.com","password":"long enough password"}'
check "duplicate JSON key is 400 invalid_request" expect 400 invalid_request
req POST /api/auth/signup "" -H 'Content-Type: text/plain' --data-binary '{"email":"bob@example.com","password":"long enough password"}'
check "non-JSON content type is 415 unsupported_media_type" expect 415 unsupported_media_type
USERS=$(psql -h "$VAR/pg/run" -U latchkey -d latchkey -Atc "SELECT count(*) FROM users" 2>&1)
check "only the one good signup left a user row" is "$USERS" 1

# ---- signin ------------------------------------------------------------------------------
req POST /api/auth/signin "{\"email\":\"alice.e2e@example.com\",\"password\":\"wrong password!\"}"
check "wrong password is 401 invalid_credentials" expect 401 invalid_credentials
WRONG_BODY=$BODY
req POST /api/auth/signin '{"email":"nobody@example.com","password":"whatever password"}'
check "unknown email is 401 invalid_credentials" expect 401 invalid_credentials
check "unknown email and wrong password bodies are identical" is "$BODY" "$WRONG_BODY"
req POST /api/auth/signin "{\"email\":\"ALICE.e2e@example.com \",\"password\":\"$PASS\"}"
check "signin is 200" is "$STATUS" 200
TOKEN=$(field token)
check "token is 43 chars of base64url" matches "$TOKEN" '^[A-Za-z0-9_-]{43}$'
check "tokenType is Bearer" is "$(field tokenType)" "Bearer"
check "signin returns the userId" is "$(field userId)" "$USER_ID"
check "signin returns expiresAt" matches "$(field expiresAt)" '^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}(\.[0-9]+)?Z$'
STORED=$(psql -h "$VAR/pg/run" -U latchkey -d latchkey -Atc "SELECT count(*) FROM user_sessions WHERE octet_length(token_hash) = 32 AND expires_at > now()" 2>&1)
check "the session row holds a 32-byte hash" is "$STORED" 1
check "the token never appears in any log line" is "$(grep -c -- "$TOKEN" "$TMP/stack.log")" 0
check "the password never appears in any log line" is "$(grep -c -- "$PASS" "$TMP/stack.log")" 0

# ---- validate ----------------------------------------------------------------------------
req GET /api/auth/validate "" -H "Authorization: Bearer $TOKEN"
check "validate is 200" is "$STATUS" 200
check "validate returns the userId" is "$(field userId)" "$USER_ID"
check "validate returns the email" is "$(field email)" "alice.e2e@example.com"
req GET /api/auth/validate ""
check "validate without Authorization is 401 invalid_token" expect 401 invalid_token
check "... with a bare WWW-Authenticate: Bearer" is "$(header www-authenticate)" "Bearer"
req GET /api/auth/validate "" -H "Authorization: Bearer AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
check "validate of an unknown token is 401 invalid_token" expect 401 invalid_token
check '... with WWW-Authenticate: Bearer error="invalid_token"' is "$(header www-authenticate)" 'Bearer error="invalid_token"'
req GET /api/auth/validate "" -H "Authorization: Bearer not-a-token"
check "validate of a malformed token is 401 invalid_token" expect 401 invalid_token

# ---- signout -----------------------------------------------------------------------------
req POST /api/auth/signout "" -H "Authorization: Bearer $TOKEN"
check "signout is 204" is "$STATUS" 204
req GET /api/auth/validate "" -H "Authorization: Bearer $TOKEN"
check "validate after signout is 401 invalid_token" expect 401 invalid_token
req POST /api/auth/signout "" -H "Authorization: Bearer $TOKEN"
check "a second signout is 401 invalid_token" expect 401 invalid_token
req POST /api/auth/signout ""
check "signout without Authorization is 401" expect 401 invalid_token
SESSIONS=$(psql -h "$VAR/pg/run" -U latchkey -d latchkey -Atc "SELECT count(*) FROM user_sessions" 2>&1)
check "signout deleted the session row" is "$SESSIONS" 0

# ---- routing and request ids -------------------------------------------------------------
req GET /no/such/path
check "unknown path is 404 not_found" expect 404 not_found
req DELETE /api/auth/signup
check "wrong method is 405 method_not_allowed" expect 405 method_not_allowed
check "... with an Allow header" matches "$(header allow)" 'POST'
req GET /health "" -H "X-Request-Id: e2e-request.42"
check "a valid client X-Request-Id is echoed" is "$(header x-request-id)" "e2e-request.42"
req GET /health "" -H "X-Request-Id: bad id!"
check "an invalid client X-Request-Id is replaced" matches "$(header x-request-id)" '^[A-Za-z0-9._-]{1,64}$'
check "... by a generated one" is "$([ "$(header x-request-id)" != "bad id!" ] && echo y)" y

# ---- operator CLI ------------------------------------------------------------------------
STATUS_TEXT=$("$BIN/latchkeyctl" -c "$TMP/latchkey.conf" status 2>&1)
check "latchkeyctl status lists every role" matches "$(echo "$STATUS_TEXT" | awk '{print $1}' | sort -u | tr '\n' ' ')" 'gateway .*metrics .*postgres .*signin .*signup .*sweeper'

TOP=$("$BIN/latchkeyctl" -c "$TMP/latchkey.conf" top -n 2 2>&1)
check "latchkeyctl top prints plain frames from /metrics" matches "$TOP" 'ROUTE +REQ/S +P50 +P99'
check "... with the routes served so far" matches "$TOP" '/api/auth/validate'
check "... and the auth attempts by result" matches "$TOP" 'signin failure +[0-9.]+ +[1-9]'
check "... and the workers by role" matches "$TOP" 'signin +1 '
# On a terminal (a pty from script(1)): the screen is redrawn, and q quits, as does Ctrl-C.
TTY_OUT=$( (sleep 2.5; printf q; sleep 2) | timeout 20 script -qfec "exec $BIN/latchkeyctl -c $TMP/latchkey.conf top" /dev/null 2>&1)
check "latchkeyctl top on a terminal quits on q with status 0" is "$?" 0
check "... showing the key to quit" matches "$TTY_OUT" 'q quits'
check "... having drawn at least two frames" matches "$(printf '%s' "$TTY_OUT" | grep -c 'latchkey top')" '^([2-9]|[1-9][0-9])$'
check "... with screen control codes" matches "$(printf '%s' "$TTY_OUT" | od -c | head -n 3)" '033'
( (sleep 1.5; printf '\003'; sleep 2) | timeout 20 script -qfec "exec $BIN/latchkeyctl -c $TMP/latchkey.conf top" /dev/null >/dev/null 2>&1 )
check "... and quits on Ctrl-C" is "$?" 0

# ---- Postgres unit tests against this server ---------------------------------------------
psql -h "$VAR/pg/run" -U latchkey -d latchkey -qc "CREATE DATABASE unit_db" >/dev/null 2>&1
if [ -x "$ROOT/$BUILD/tests/db_test" ]; then
    if LATCHKEY_TEST_DATABASE_URL="host=$VAR/pg/run dbname=unit_db user=latchkey" "$ROOT/$BUILD/tests/db_test" >"$TMP/db_test.log" 2>&1; then
        ok "db unit tests against the real Postgres"
    else
        nok "db unit tests against the real Postgres"
        tail -n 30 "$TMP/db_test.log"
    fi
fi

# ---- configuration check mode ------------------------------------------------------------
printf '[gateway]\nlisten = 127.0.0.1:1\n\n[session]\nttl = 3 parsecs\n' >"$TMP/bad.conf"
OUT=$("$BIN/latchkeyd" -n -c "$TMP/bad.conf" 2>&1)
RC=$?
check "latchkeyd -n rejects a bad value" is "$RC" 1
check "... naming the file and line" matches "$OUT" "bad.conf:5"
OUT=$("$BIN/latchkeyd" -n -c "$TMP/latchkey.conf" 2>&1)
check "latchkeyd -n accepts a good file" is "$OUT" "configuration OK"
OUT=$(LATCHKEY_SESSION_TTL=forever "$BIN/latchkeyd" -n -c "$TMP/latchkey.conf" 2>&1)
check "a bad environment override is an error" matches "$OUT" "LATCHKEY_SESSION_TTL"

# ---- a second stack on an external Postgres (database.url) --------------------------------
# The first stack's server stands in for an external Postgres: a fresh database there gets
# the migrations, and users made through the second stack land in it. Stopped with SIGINT,
# as Ctrl-C would.
psql -h "$VAR/pg/run" -U latchkey -d latchkey -qc "CREATE DATABASE ext_db" >/dev/null 2>&1
while :; do
    PORT2=$(free_port)
    [ "$PORT2" != "$PORT" ] || continue
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT2") 2>/dev/null || break
done
mkdir -p "$TMP/ext"
LATCHKEY_DATABASE_URL="host=$VAR/pg/run dbname=ext_db user=latchkey" LATCHKEY_PATHS_VAR="$TMP/ext/var" \
    LATCHKEY_GATEWAY_LISTEN="127.0.0.1:$PORT2" LATCHKEY_SIGNUP_COUNT=1 LATCHKEY_SIGNIN_COUNT=1 \
    LATCHKEY_HASH_OPS=1 LATCHKEY_HASH_MEM=64K "$BIN/latchkeyd" >"$TMP/ext.log" 2>&1 &
SUP2=$!
ready=0
for _ in $(seq 1 200); do
    kill -0 "$SUP2" 2>/dev/null || break
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT2/ready")" = 200 ] && { ready=1; break; }
    sleep 0.3
done
check "a stack on an external database becomes ready" is "$ready" 1
check "... without an embedded Postgres of its own" is "$([ -e "$TMP/ext/var/pg" ] && echo yes || echo no)" no
TABLES=$(psql -h "$VAR/pg/run" -U latchkey -d ext_db -Atc "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'" 2>&1)
check "... which applied the migrations there" is "$TABLES" "schema_migrations,user_sessions,users"
SAVED_BASE=$BASE
BASE=http://127.0.0.1:$PORT2
req POST /api/auth/signup '{"email":"ext@example.com","password":"external database!"}'
check "signup through the second stack is 201" is "$STATUS" 201
req POST /api/auth/signin '{"email":"ext@example.com","password":"external database!"}'
check "signin through the second stack is 200" is "$STATUS" 200
req GET /api/auth/validate "" -H "Authorization: Bearer $(field token)"
check "validate through the second stack is 200" is "$STATUS" 200
BASE=$SAVED_BASE
EXT_USERS=$(psql -h "$VAR/pg/run" -U latchkey -d ext_db -Atc "SELECT count(*) FROM users WHERE email = 'ext@example.com'" 2>&1)
check "the user row is in the external database" is "$EXT_USERS" 1
kill -INT "$SUP2"
for _ in $(seq 1 200); do kill -0 "$SUP2" 2>/dev/null || break; sleep 0.2; done
wait "$SUP2" 2>/dev/null
check "SIGINT (Ctrl-C) stops the second stack with status 0" is "$?" 0
sleep 0.3
LEFT=$(pgrep -af "$TMP/ext" | grep -v -e pgrep || true)
check "... leaving no process behind" is "$LEFT" ""

# ---- graceful stop -----------------------------------------------------------------------
kill -TERM "$SUP"
stopped=0
for _ in $(seq 1 200); do
    if ! kill -0 "$SUP" 2>/dev/null; then stopped=1; break; fi
    sleep 0.2
done
wait "$SUP" 2>/dev/null
RC=$?
check "SIGTERM stops latchkeyd" is "$stopped" 1
check "latchkeyd exits 0" is "$RC" 0
SUP=
sleep 0.5
LEFT=$(pgrep -af "$TMP" | grep -v -e "pgrep" -e "e2e.sh" || true)
check "no process is left behind" is "$LEFT" ""
ASAN_REPORTS=$(cat "$TMP"/asan.* "$TMP"/ubsan.* 2>/dev/null | head -n 40)
check "no sanitizer report from any process" is "$ASAN_REPORTS" ""

if [ $bad -gt 0 ]; then
    echo "---- last lines of the stack log"
    tail -n 80 "$TMP/stack.log"
fi
echo "e2e: $((checks - bad)) passed, $bad failed"
[ $bad -eq 0 ]
