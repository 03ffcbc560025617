/* config.c: the key table, the INI parser, environment overrides and derived values.
 *
 * Everything about a key lives in its row of s_keys[]: the parser, the environment
 * overrides, lk_config_print_defaults(), docs/configuration.md and latchkey.conf.example
 * all follow from it (the unit test checks the last two against the table).
 */
#include "config.h"

#include "ratelimit.h"
#include "util.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

enum s_type { S_STR, S_INT, S_SIZE, S_DUR, S_BOOL, S_LEVEL };

struct s_key {
    const char *section;
    const char *key;
    enum s_type type;
    const char *def;    /* parsed by s_set like any file value */
    int reloadable;     /* SIGHUP may change it without a restart */
    int64_t min, max;   /* inclusive; S_DUR in ms, S_SIZE in bytes, S_STR: min length */
    size_t off, size;   /* where the value lives in struct lk_config */
    const char *doc;
};

#define S_KIB ((int64_t)1024)
#define S_MIB (1024 * S_KIB)
#define S_GIB (1024 * S_MIB)
#define S_TIB (1024 * S_GIB)
#define S_SEC ((int64_t)1000)
#define S_MIN (60 * S_SEC)
#define S_HOUR (60 * S_MIN)

#define S_ROW(sec, key, field, type, def, rel, min, max, doc)                                  \
    {#sec, #key, type, def, rel, min, max, offsetof(struct lk_config, sec.field),             \
     sizeof(((struct lk_config *)0)->sec.field), doc}

/* Bounds are where a value stops making sense, not taste: each maximum keeps the
 * arithmetic that uses the value (timers, doubling delays, mmap sizes) far from overflow. */
static const struct s_key s_keys[] = {
    S_ROW(paths, var, var, S_STR, "var", 0, 1, 0,
          "state directory (Postgres cluster, cache, sockets); relative to the working "
          "directory of latchkeyd, made absolute at load"),

    S_ROW(gateway, listen, listen, S_STR, "127.0.0.1:8080", 0, 1, 0,
          "host:port of the HTTP listener"),
    S_ROW(gateway, backend, backend, S_STR, "", 0, 0, 0,
          "ZeroMQ ROUTER endpoint workers connect to; empty = ipc://<paths.var>/run/backend.ipc"),
    S_ROW(gateway, count, count, S_INT, "1", 0, 1, 64,
          "gateway processes sharing the HTTP port (SO_REUSEPORT)"),
    S_ROW(gateway, max_connections, max_connections, S_INT, "4096", 0, 1, 1000000,
          "open client connections per gateway; past it: 503 and close"),
    S_ROW(gateway, max_uri, max_uri, S_SIZE, "4K", 0, 256, S_MIB,
          "longest request target; past it: 414"),
    S_ROW(gateway, max_header, max_header, S_SIZE, "8K", 0, S_KIB, S_MIB,
          "longest request line plus headers; past it: 431"),
    S_ROW(gateway, max_body, max_body, S_SIZE, "64K", 0, S_KIB, S_GIB,
          "largest body of a JSON endpoint; past it: 413"),
    S_ROW(gateway, max_batch_body, max_batch_body, S_SIZE, "10M", 0, S_KIB, S_GIB,
          "largest body of a batch endpoint; past it: 413"),
    S_ROW(gateway, header_timeout, header_timeout_ms, S_DUR, "10s", 1, 100, S_HOUR,
          "time allowed to receive the request headers; past it: 408"),
    S_ROW(gateway, body_min_rate, body_min_rate, S_SIZE, "100", 0, 0, S_GIB,
          "bytes per second a request body must average once body_grace is over; below "
          "it: 408 (0 = no minimum)"),
    S_ROW(gateway, body_grace, body_grace_ms, S_DUR, "10s", 0, 0, S_HOUR,
          "time a request body may take before body_min_rate applies"),
    S_ROW(gateway, cors_origins, cors_origins, S_STR, "", 0, 0, 0,
          "comma-separated origins (scheme://host[:port]) allowed by CORS; empty = CORS off"),
    S_ROW(gateway, idle_timeout, idle_timeout_ms, S_DUR, "60s", 1, 100, 24 * S_HOUR,
          "idle keep-alive connections are closed after this"),
    S_ROW(gateway, route_timeout, route_timeout_ms, S_DUR, "30s", 1, 100, S_HOUR,
          "time allowed for a worker's answer; past it: 504"),
    S_ROW(gateway, drain_timeout, drain_timeout_ms, S_DUR, "10s", 1, 0, S_HOUR,
          "on SIGTERM, time allowed to finish in-flight requests"),
    S_ROW(gateway, heartbeat, heartbeat_ms, S_DUR, "1s", 0, 10, S_MIN,
          "heartbeat interval between gateway and workers (both ways); dead after 3 missed"),
    S_ROW(gateway, web_dir, web_dir, S_STR, "", 0, 0, 0,
          "directory of the built web page served at GET / (read once at start); empty = "
          "web/ beside the gateway binary's bin/ directory; missing: GET / answers 404"),

    S_ROW(signup, count, count, S_INT, "0", 1, 0, 256,
          "signup worker processes; 0 = number of online CPU cores"),
    S_ROW(signup, repeat_window, repeat_window_ms, S_DUR, "300s", 1, 0, 24 * S_HOUR,
          "a repeat signup of an email that signed up within this gets 429 (0 = off)"),
    S_ROW(signin, count, count, S_INT, "0", 1, 0, 256,
          "signin worker processes; 0 = number of online CPU cores"),

    S_ROW(session, ttl, ttl_ms, S_DUR, "24h", 1, S_SEC, 365 * 24 * S_HOUR,
          "session lifetime"),
    S_ROW(session, idle_timeout, idle_timeout_ms, S_DUR, "0s", 0, 0, 365 * 24 * S_HOUR,
          "a session unused for this long stops validating (0 = off); recorded at most "
          "once per idle_timeout/10 (at least 100ms, at most 60s) per session"),

    S_ROW(password, min_length, min_length, S_INT, "8", 0, 1, 1024,
          "shortest accepted password, in Unicode code points"),
    /* 1024 is also the password field of the signup/signin messages (schemas/). */
    S_ROW(password, max_bytes, max_bytes, S_SIZE, "1024", 0, 1, 1024,
          "longest accepted password, in bytes (at most 1024)"),

    S_ROW(hash, ops, ops, S_INT, "2", 0, 1, 10, "argon2id iterations (t)"),
    S_ROW(hash, mem, mem, S_SIZE, "19MiB", 0, crypto_pwhash_MEMLIMIT_MIN, 4 * S_GIB,
          "argon2id memory per hash (m)"),
    S_ROW(hash, max_ops, max_ops, S_INT, "10", 0, 1, 100,
          "ceiling of a stored hash's iterations: a costlier stored hash fails verification"),
    S_ROW(hash, max_mem, max_mem, S_SIZE, "256MiB", 0, crypto_pwhash_MEMLIMIT_MIN, 4 * S_GIB,
          "ceiling of a stored hash's memory: a costlier stored hash fails verification"),

    S_ROW(throttle, max_failures, max_failures, S_INT, "5", 1, 0, 1000,
          "signin attempts per email (existing or not) before it is locked; a success "
          "resets the count (0 = no per-account throttling)"),
    S_ROW(throttle, base_delay, base_delay_ms, S_DUR, "1s", 1, 0, S_HOUR,
          "first lock after max_failures; doubles with each further failure"),
    S_ROW(throttle, max_delay, max_delay_ms, S_DUR, "15m", 1, 0, 24 * S_HOUR,
          "longest lock of an email"),

    S_ROW(ratelimit, client_rate, client_rate, S_INT, "10", 1, 0, 1000000,
          "signup and signin requests per second per client IP (token bucket); 0 = off"),
    S_ROW(ratelimit, client_burst, client_burst, S_INT, "60", 1, 1, 1000000,
          "token bucket size per client IP"),
    S_ROW(ratelimit, trusted_proxies, trusted_proxies, S_STR, "", 0, 0, 0,
          "comma-separated proxy IPs; only from these is X-Forwarded-For believed (its "
          "rightmost address not in the list is the client)"),

    S_ROW(admin, api_key, api_key, S_STR, "", 0, 0, 0,
          "Bearer key of the admin endpoint POST /api/auth/signup/batch; empty = the endpoint "
          "answers 404 (a secret: prefer LATCHKEY_ADMIN_API_KEY)"),

    S_ROW(database, url, url, S_STR, "", 0, 0, 0,
          "libpq connection URL or conninfo; empty = the embedded Postgres under paths.var"),

    S_ROW(postgres, user, user, S_STR, "latchkey", 0, 1, 0,
          "system user running the embedded Postgres when latchkeyd runs as root"),
    S_ROW(postgres, bindir, bindir, S_STR, "", 0, 0, 0,
          "Postgres binaries of the embedded cluster; empty = newest under /usr/lib/postgresql"),

    S_ROW(cache, path, path, S_STR, "", 0, 0, 0,
          "LMDB environment directory; empty = <paths.var>/cache"),
    S_ROW(cache, map_size, map_size, S_SIZE, "1GiB", 0, S_MIB, S_TIB,
          "LMDB map size: the most the session cache can hold"),
    S_ROW(cache, max_map_size, max_map_size, S_SIZE, "16GiB", 0, S_MIB, S_TIB,
          "when the map is full it doubles, up to this size, instead of failing writes"),

    S_ROW(sweeper, interval, interval_ms, S_DUR, "60s", 1, S_SEC, 24 * S_HOUR,
          "how often expired sessions are deleted"),
    S_ROW(sweeper, grace, grace_ms, S_DUR, "1h", 1, 0, 30 * 24 * S_HOUR,
          "how long an expired session row is kept before deletion (0 allowed)"),
    S_ROW(sweeper, analyze_at, analyze_at, S_STR, "02:00", 1, 0, 0,
          "local time HH:MM of the daily ANALYZE of users and user_sessions; empty = never"),

    S_ROW(metrics, endpoint, endpoint, S_STR, "", 0, 0, 0,
          "ZeroMQ PULL endpoint of the metrics collector; empty = "
          "ipc://<paths.var>/run/metrics.ipc"),
    S_ROW(metrics, query_endpoint, query_endpoint, S_STR, "", 0, 0, 0,
          "ZeroMQ ROUTER endpoint of the metrics collector the gateways ask for GET /metrics; "
          "empty = ipc://<paths.var>/run/metrics-query.ipc"),

    S_ROW(supervisor, control, control, S_STR, "", 0, 0, 0,
          "ZeroMQ REP endpoint of latchkeyd for latchkeyctl; empty = "
          "ipc://<paths.var>/run/control.ipc"),
    S_ROW(supervisor, restart_delay, restart_delay_ms, S_DUR, "5s", 0, 100, S_HOUR,
          "first restart delay of a failed process; doubles on each failure"),
    S_ROW(supervisor, restart_max, restart_max, S_INT, "5", 0, 0, 1000,
          "restarts allowed within restart_window before the service is marked failed"),
    S_ROW(supervisor, restart_window, restart_window_ms, S_DUR, "5m", 0, S_SEC, 24 * S_HOUR,
          "window over which restarts are counted"),
    S_ROW(supervisor, stop_timeout, stop_timeout_ms, S_DUR, "10s", 0, 100, S_HOUR,
          "at shutdown, time between SIGTERM and SIGKILL"),

    S_ROW(log, level, level, S_LEVEL, "info", 1, 0, 0,
          "least severe level logged: debug, info, warn or error"),
    S_ROW(log, file, file, S_STR, "", 0, 0, 0,
          "file every process appends its log lines to, besides stderr; reopened after "
          "logrotate (SIGUSR1 to latchkeyd; the others within a second); empty = stderr only"),
};

#define S_NKEYS (sizeof s_keys / sizeof s_keys[0])

/* A config file is a few KiB; the caps only keep hostile input from costing memory. */
#define S_LINE_MAX 4096
#define S_FILE_MAX (1024 * 1024)

struct s_parser {
    struct lk_config *cfg;
    const char *name;                   /* file name or "LATCHKEY_X_Y" for messages */
    int line;                           /* 0 outside the file */
    const char *section;                /* current [section] (points into s_keys) */
    int seen[S_NKEYS];                  /* line where the file set each key; 0 = not set */
    char *err;
    size_t errlen;
};

static int s_fail(struct s_parser *self, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int s_set(const struct s_key *k, const char *value, struct lk_config *cfg, char *msg,
                 size_t msglen);
static int s_parse_text(struct s_parser *self, const char *text, size_t len);
static int s_parse_line(struct s_parser *self, char *line);
static int s_apply_env(struct s_parser *self);
static int s_resolve(struct s_parser *self);
static int s_load(struct lk_config *cfg, const char *text, size_t len, const char *name,
                  int use_env, char *err, size_t errlen);

/* Writes "NAME:LINE: message" (or "NAME: message" outside the file) into the caller's
 * buffer and returns LK_ECONFIG, so every error path is one `return s_fail(...)`. */
static int s_fail(struct s_parser *self, const char *fmt, ...)
{
    if (self->err && self->errlen) {
        int n = self->line > 0
                    ? snprintf(self->err, self->errlen, "%s:%d: ", self->name, self->line)
                    : snprintf(self->err, self->errlen, "%s: ", self->name);
        if (n >= 0 && (size_t)n < self->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(self->err + n, self->errlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return LK_ECONFIG;
}

/* Reads a run of decimal digits (at least one) into *out; advances *p past them.
 * Returns 0, or -1 for no digit or a value that does not fit 64 bits. */
static int s_digits(const char **p, uint64_t *out)
{
    const char *s = *p;
    uint64_t v = 0;
    if (!isdigit((unsigned char)*s))
        return -1;
    for (; isdigit((unsigned char)*s); s++) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *p = s;
    *out = v;
    return 0;
}

int lk_parse_duration(const char *s, int64_t *ms_out)
{
    static const struct {
        const char *unit;
        int64_t ms;
    } units[] = {{"ms", 1}, {"s", S_SEC}, {"m", S_MIN}, {"h", S_HOUR}};
    uint64_t n;
    if (!s || s_digits(&s, &n) != 0)
        return LK_EINVAL;
    /* A bare number is refused: "30" could mean seconds or milliseconds, and a wrong guess
     * silently changes a timeout by a factor of 1000. */
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(s, units[i].unit) != 0)
            continue;
        if (n > (uint64_t)(INT64_MAX / units[i].ms))
            return LK_EINVAL;
        *ms_out = (int64_t)n * units[i].ms;
        return 0;
    }
    return LK_EINVAL;
}

int lk_parse_size(const char *s, size_t *bytes_out)
{
    static const struct {
        const char *unit;
        uint64_t mult;
    } units[] = {{"", 1},           {"K", 1024},           {"KiB", 1024},
                 {"M", 1024 * 1024}, {"MiB", 1024 * 1024}, {"G", 1024 * 1024 * 1024},
                 {"GiB", 1024 * 1024 * 1024}};
    uint64_t n;
    if (!s || s_digits(&s, &n) != 0)
        return LK_EINVAL;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcmp(s, units[i].unit) != 0)
            continue;
        if (n > SIZE_MAX / units[i].mult)
            return LK_EINVAL;
        *bytes_out = (size_t)(n * units[i].mult);
        return 0;
    }
    return LK_EINVAL;
}

/* Decimal integer with an optional minus sign; the range check is the caller's. */
static int s_parse_int(const char *s, int64_t *out)
{
    int neg = *s == '-';
    uint64_t n;
    s += neg;
    if (s_digits(&s, &n) != 0 || *s != '\0')
        return LK_EINVAL;
    if (n > (uint64_t)INT64_MAX)
        return LK_EINVAL;
    *out = neg ? -(int64_t)n : (int64_t)n;
    return 0;
}

static int s_parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcmp(s, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcmp(s, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return LK_EINVAL;
}

/* Formats a bound for a message: the largest unit that divides it exactly. */
static const char *s_fmt(enum s_type type, int64_t v, char *buf, size_t len)
{
    static const struct {
        const char *unit;
        int64_t mult;
    } dur[] = {{"h", S_HOUR}, {"m", S_MIN}, {"s", S_SEC}},
      size[] = {{"TiB", S_TIB}, {"GiB", S_GIB}, {"MiB", S_MIB}, {"KiB", S_KIB}};
    if (type == S_DUR || type == S_SIZE) {
        size_t n = type == S_DUR ? sizeof dur / sizeof dur[0] : sizeof size / sizeof size[0];
        for (size_t i = 0; i < n && v != 0; i++) {
            int64_t m = type == S_DUR ? dur[i].mult : size[i].mult;
            if (v % m == 0) {
                snprintf(buf, len, "%" PRId64 "%s", v / m,
                         type == S_DUR ? dur[i].unit : size[i].unit);
                return buf;
            }
        }
        snprintf(buf, len, "%" PRId64 "%s", v, type == S_DUR ? "ms" : "");
        return buf;
    }
    snprintf(buf, len, "%" PRId64, v);
    return buf;
}

/* Parses value for key k into cfg. On error writes a message (without position) into msg
 * and returns LK_ECONFIG. String values are never echoed back: database.url may hold a
 * password, and errors end up in logs. Typed values are echoed, truncated. */
static int s_set(const struct s_key *k, const char *value, struct lk_config *cfg, char *msg,
                 size_t msglen)
{
    char *dst = (char *)cfg + k->off;
    char lo[32], hi[32];
    int64_t v = 0;

    for (const unsigned char *p = (const unsigned char *)value; *p; p++)
        if (*p < 0x20 || *p == 0x7f) {
            snprintf(msg, msglen, "%s.%s: control character in value", k->section, k->key);
            return LK_ECONFIG;
        }

    switch (k->type) {
    case S_STR: {
        size_t n = strlen(value);
        if (n >= k->size) {
            snprintf(msg, msglen, "%s.%s: value too long (%zu bytes, at most %zu)", k->section,
                     k->key, n, k->size - 1);
            return LK_ECONFIG;
        }
        if ((int64_t)n < k->min) {
            snprintf(msg, msglen, "%s.%s: value must not be empty", k->section, k->key);
            return LK_ECONFIG;
        }
        memcpy(dst, value, n + 1);
        return 0;
    }
    case S_INT:
        if (s_parse_int(value, &v) != 0) {
            snprintf(msg, msglen, "%s.%s: invalid integer '%.40s'", k->section, k->key, value);
            return LK_ECONFIG;
        }
        break;
    case S_SIZE: {
        size_t b;
        if (lk_parse_size(value, &b) != 0) {
            snprintf(msg, msglen,
                     "%s.%s: invalid size '%.40s' (bytes, or a whole number with K, M, G, KiB, "
                     "MiB or GiB)",
                     k->section, k->key, value);
            return LK_ECONFIG;
        }
        /* Past INT64_MAX is past every bound; saturate so the range check says so. */
        v = b > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)b;
        break;
    }
    case S_DUR:
        if (lk_parse_duration(value, &v) != 0) {
            snprintf(msg, msglen,
                     "%s.%s: invalid duration '%.40s' (a whole number with ms, s, m or h, "
                     "e.g. 30s)",
                     k->section, k->key, value);
            return LK_ECONFIG;
        }
        break;
    case S_BOOL: {
        int b;
        if (s_parse_bool(value, &b) != 0) {
            snprintf(msg, msglen,
                     "%s.%s: invalid boolean '%.40s' (true, false, yes, no, on, off, 1 or 0)",
                     k->section, k->key, value);
            return LK_ECONFIG;
        }
        *(int *)dst = b;
        return 0;
    }
    case S_LEVEL: {
        enum lk_log_level l;
        if (lk_log_level_parse(value, &l) != 0) {
            snprintf(msg, msglen, "%s.%s: invalid level '%.40s' (debug, info, warn or error)",
                     k->section, k->key, value);
            return LK_ECONFIG;
        }
        *(enum lk_log_level *)dst = l;
        return 0;
    }
    }

    if (v < k->min || v > k->max) {
        snprintf(msg, msglen, "%s.%s: value '%.40s' out of range %s..%s", k->section, k->key,
                 value, s_fmt(k->type, k->min, lo, sizeof lo), s_fmt(k->type, k->max, hi, sizeof hi));
        return LK_ECONFIG;
    }
    if (k->type == S_INT)
        *(int *)dst = (int)v;
    else if (k->type == S_SIZE)
        *(size_t *)dst = (size_t)v;
    else
        *(int64_t *)dst = v;
    return 0;
}

static const struct s_key *s_find(const char *section, const char *key)
{
    for (size_t i = 0; i < S_NKEYS; i++)
        if (strcmp(s_keys[i].section, section) == 0 && strcmp(s_keys[i].key, key) == 0)
            return &s_keys[i];
    return NULL;
}

static const char *s_find_section(const char *section)
{
    for (size_t i = 0; i < S_NKEYS; i++)
        if (strcmp(s_keys[i].section, section) == 0)
            return s_keys[i].section;
    return NULL;
}

/* Names are [a-z0-9_]+: anything else cannot be a key, and refusing it early keeps
 * binary junk out of the error message. */
static int s_is_name(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!(islower((unsigned char)*s) || isdigit((unsigned char)*s) || *s == '_'))
            return 0;
    return 1;
}

static int s_is_blank(char c)
{
    return c == ' ' || c == '\t';
}

static char *s_trim(char *s)
{
    while (s_is_blank(*s))
        s++;
    size_t n = strlen(s);
    while (n > 0 && s_is_blank(s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* After a closing ']' or '"': nothing, or a '#' comment (';' only starts whole-line
 * comments, as in unquoted values, where it is ordinary text). */
static int s_rest_ok(const char *s)
{
    while (s_is_blank(*s))
        s++;
    return *s == '\0' || *s == '#';
}

static int s_parse_text(struct s_parser *self, const char *text, size_t len)
{
    char line[S_LINE_MAX + 1];
    size_t pos = 0;
    self->line = 0;
    while (pos < len) {
        const char *start = text + pos;
        const char *nl = memchr(start, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - start) : len - pos;
        pos += n + (nl != NULL);
        self->line++;
        if (n > 0 && start[n - 1] == '\r')
            n--; /* CRLF files */
        if (n > S_LINE_MAX)
            return s_fail(self, "line too long (more than %d bytes)", S_LINE_MAX);
        if (memchr(start, '\0', n))
            return s_fail(self, "NUL byte in line");
        for (size_t i = 0; i < n; i++)
            if (((unsigned char)start[i] < 0x20 && start[i] != '\t') || start[i] == 0x7f)
                return s_fail(self, "control character in line");
        memcpy(line, start, n);
        line[n] = '\0';
        int rc = s_parse_line(self, line);
        if (rc != 0)
            return rc;
    }
    self->line = 0;
    return 0;
}

static int s_parse_line(struct s_parser *self, char *line)
{
    char *s = s_trim(line);
    if (*s == '\0' || *s == '#' || *s == ';')
        return 0;

    if (*s == '[') {
        char *close = strchr(s, ']');
        if (!close || !s_rest_ok(close + 1))
            return s_fail(self, "malformed section header");
        *close = '\0';
        char *name = s_trim(s + 1);
        if (!s_is_name(name))
            return s_fail(self, "malformed section header");
        self->section = s_find_section(name);
        if (!self->section)
            return s_fail(self, "unknown section [%s]", name);
        return 0;
    }

    char *eq = strchr(s, '=');
    if (!eq)
        return s_fail(self, "malformed line (expected [section], key = value or a comment)");
    *eq = '\0';
    char *key = s_trim(s);
    if (!s_is_name(key))
        return s_fail(self, "malformed key");
    if (!self->section)
        return s_fail(self, "key '%s' outside any [section]", key);
    const struct s_key *k = s_find(self->section, key);
    if (!k)
        return s_fail(self, "unknown key '%s' in section [%s]", key, self->section);
    size_t idx = (size_t)(k - s_keys);
    if (self->seen[idx])
        return s_fail(self, "duplicate key %s.%s (first set on line %d)", k->section, k->key,
                      self->seen[idx]);
    self->seen[idx] = self->line;

    char *value = s_trim(eq + 1);
    if (*value == '"') {
        /* Quoted: keeps spaces and '#'; \" and \\ are the only escapes. Unquoting happens
         * in place: the output never runs ahead of the input. */
        char *in = value + 1, *out = value;
        for (;; in++) {
            if (*in == '\0')
                return s_fail(self, "unterminated quoted value");
            if (*in == '"')
                break;
            if (*in == '\\') {
                in++;
                if (*in != '"' && *in != '\\')
                    return s_fail(self, "invalid escape in quoted value (only \\\" and \\\\)");
            }
            *out++ = *in;
        }
        if (!s_rest_ok(in + 1))
            return s_fail(self, "unexpected text after quoted value");
        *out = '\0';
    } else {
        /* Unquoted: a '#' at the start or after a blank begins a comment, so
         * "k = v # note" works while "postgres://h/db#x" keeps its '#'. */
        for (char *p = value; *p; p++) {
            if (*p == '#' && (p == value || s_is_blank(p[-1]))) {
                *p = '\0';
                break;
            }
            if (*p == '"')
                return s_fail(self, "unexpected '\"' in unquoted value");
        }
        value = s_trim(value);
    }

    char msg[256];
    if (s_set(k, value, self->cfg, msg, sizeof msg) != 0)
        return s_fail(self, "%s", msg);
    return 0;
}

/* The environment beats the file so that secrets (database.url) and per-host tweaks need
 * no edited file. Only names of known keys are looked up: other LATCHKEY_* variables
 * (LATCHKEY_SUPERVISOR_PID) are not configuration. */
static int s_apply_env(struct s_parser *self)
{
    for (size_t i = 0; i < S_NKEYS; i++) {
        const struct s_key *k = &s_keys[i];
        char name[96], msg[256];
        int n = snprintf(name, sizeof name, "LATCHKEY_%s_%s", k->section, k->key);
        for (int j = 0; j < n; j++)
            name[j] = (char)toupper((unsigned char)name[j]);
        const char *value = getenv(name);
        if (!value)
            continue;
        if (s_set(k, value, self->cfg, msg, sizeof msg) != 0) {
            const char *file = self->name;
            self->name = name; /* the message names the variable, not the file */
            self->line = 0;
            int rc = s_fail(self, "%s", msg);
            self->name = file;
            return rc;
        }
    }
    return 0;
}

/* Writes fmt into dst (capacity cap); an overflow is a configuration error for key. */
static int s_derive(struct s_parser *self, char *dst, size_t cap, const char *key,
                    const char *fmt, const char *arg)
{
    int n = snprintf(dst, cap, fmt, arg);
    if (n < 0 || (size_t)n >= cap)
        return s_fail(self, "%s: derived value too long (shorten paths.var)", key);
    return 0;
}

/* An ipc:// path longer than sun_path makes zmq_bind fail with a bare ENAMETOOLONG at
 * start-up; say so here, naming the key. */
static int s_check_ipc(struct s_parser *self, const char *endpoint, const char *key)
{
    if (strncmp(endpoint, "ipc://", 6) == 0 &&
        strlen(endpoint + 6) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return s_fail(self, "%s: ipc path longer than %zu bytes (shorten paths.var or set it)",
                      key, sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
    return 0;
}

static int s_resolve(struct s_parser *self)
{
    struct lk_config *c = self->cfg;
    char var[LK_PATH_MAX];

    /* sweeper.analyze_at: empty, or HH:MM (00:00 to 23:59). */
    const char *at = c->sweeper.analyze_at;
    if (at[0] && !(strlen(at) == 5 && isdigit((unsigned char)at[0]) &&
                   isdigit((unsigned char)at[1]) && at[2] == ':' &&
                   isdigit((unsigned char)at[3]) && isdigit((unsigned char)at[4]) &&
                   (at[0] - '0') * 10 + (at[1] - '0') < 24 && at[3] < '6'))
        return s_fail(self, "sweeper.analyze_at: '%s' is not a local time HH:MM (or empty)", at);

    /* Roles are exec'd by latchkeyd and may chdir; one absolute state directory keeps
     * every process pointing at the same place. */
    const char *rel = c->paths.var;
    while (rel[0] == '.' && rel[1] == '/')
        rel += 2;
    if (rel[0] == '/') {
        (void)lk_strlcpy(var, rel, sizeof var); /* rel is shorter than paths.var's buffer */
    } else {
        char cwd[PATH_MAX];
        if (!getcwd(cwd, sizeof cwd))
            return s_fail(self, "paths.var: cannot read the working directory: %s",
                          strerror(errno));
        int n = strcmp(rel, ".") == 0 || *rel == '\0'
                    ? snprintf(var, sizeof var, "%s", cwd)
                    : snprintf(var, sizeof var, "%s%s%s", cwd,
                               strcmp(cwd, "/") == 0 ? "" : "/", rel);
        if (n < 0 || (size_t)n >= sizeof var)
            return s_fail(self, "paths.var: absolute path too long (at most %d bytes)",
                          LK_PATH_MAX - 1);
    }
    size_t vn = strlen(var);
    while (vn > 1 && var[vn - 1] == '/')
        var[--vn] = '\0';
    memcpy(c->paths.var, var, vn + 1);

    if (!c->gateway.backend[0] &&
        s_derive(self, c->gateway.backend, sizeof c->gateway.backend, "gateway.backend",
                 "ipc://%s/run/backend.ipc", var) != 0)
        return LK_ECONFIG;
    if (!c->metrics.endpoint[0] &&
        s_derive(self, c->metrics.endpoint, sizeof c->metrics.endpoint, "metrics.endpoint",
                 "ipc://%s/run/metrics.ipc", var) != 0)
        return LK_ECONFIG;
    if (!c->metrics.query_endpoint[0] &&
        s_derive(self, c->metrics.query_endpoint, sizeof c->metrics.query_endpoint,
                 "metrics.query_endpoint", "ipc://%s/run/metrics-query.ipc", var) != 0)
        return LK_ECONFIG;
    if (!c->supervisor.control[0] &&
        s_derive(self, c->supervisor.control, sizeof c->supervisor.control,
                 "supervisor.control", "ipc://%s/run/control.ipc", var) != 0)
        return LK_ECONFIG;
    if (!c->cache.path[0] &&
        s_derive(self, c->cache.path, sizeof c->cache.path, "cache.path", "%s/cache", var) != 0)
        return LK_ECONFIG;
    if (s_check_ipc(self, c->gateway.backend, "gateway.backend") != 0 ||
        s_check_ipc(self, c->metrics.endpoint, "metrics.endpoint") != 0 ||
        s_check_ipc(self, c->metrics.query_endpoint, "metrics.query_endpoint") != 0 ||
        s_check_ipc(self, c->supervisor.control, "supervisor.control") != 0)
        return LK_ECONFIG;

    /* 0 workers means "one per core": the table keeps 0 so the default reads naturally. */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (ncpu < 1)
        ncpu = 1;
    if (ncpu > 256)
        ncpu = 256;
    if (c->signup.count == 0)
        c->signup.count = (int)ncpu;
    if (c->signin.count == 0)
        c->signin.count = (int)ncpu;

    /* Each code point takes at least one byte: past this no password could be accepted. */
    if ((size_t)c->password.min_length > c->password.max_bytes)
        return s_fail(self, "password.min_length (%d) exceeds password.max_bytes (%zu)",
                      c->password.min_length, c->password.max_bytes);
    struct lk_ip_list proxies;
    if (lk_ip_list_parse(c->ratelimit.trusted_proxies, &proxies) != 0)
        return s_fail(self, "ratelimit.trusted_proxies: not a comma-separated list of at most "
                      "%d IP addresses", LK_RL_TRUSTED_MAX);
    /* A ceiling below the configured cost would refuse every hash the service makes. */
    if (c->hash.ops > c->hash.max_ops || c->hash.mem > c->hash.max_mem)
        return s_fail(self, "hash.ops/hash.mem (%d, %zu) exceed hash.max_ops/hash.max_mem "
                      "(%d, %zu)", c->hash.ops, c->hash.mem, c->hash.max_ops, c->hash.max_mem);
    return 0;
}

/* Builds the whole configuration in a private copy and publishes it only on success, so
 * a failed SIGHUP reload leaves the running configuration untouched. */
static int s_load(struct lk_config *cfg, const char *text, size_t len, const char *name,
                  int use_env, char *err, size_t errlen)
{
    struct lk_config tmp;
    struct s_parser p;
    memset(&tmp, 0, sizeof tmp);
    memset(&p, 0, sizeof p);
    p.cfg = &tmp;
    p.name = name ? name : "(config)";
    p.err = err;
    p.errlen = errlen;
    if (err && errlen)
        err[0] = '\0';

    for (size_t i = 0; i < S_NKEYS; i++) {
        char msg[256];
        if (s_set(&s_keys[i], s_keys[i].def, &tmp, msg, sizeof msg) != 0)
            return s_fail(&p, "built-in default: %s", msg); /* a bug in s_keys[] */
    }
    int rc = s_parse_text(&p, text, len);
    if (rc == 0 && use_env)
        rc = s_apply_env(&p);
    if (rc == 0)
        rc = s_resolve(&p);
    if (rc != 0)
        return rc;
    *cfg = tmp;
    return 0;
}

int lk_config_load_string(struct lk_config *cfg, const char *text, const char *name, int use_env,
                          char *err, size_t errlen)
{
    if (!text)
        text = "";
    return s_load(cfg, text, strlen(text), name, use_env, err, errlen);
}

int lk_config_load(struct lk_config *cfg, const char *path, char *err, size_t errlen)
{
    if (!path)
        return s_load(cfg, "", 0, "(defaults)", 1, err, errlen);

    FILE *f = fopen(path, "rb");
    if (!f) {
        if (err && errlen)
            snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return LK_ECONFIG;
    }
    char *text = malloc(S_FILE_MAX + 1);
    if (!text) {
        fclose(f);
        if (err && errlen)
            snprintf(err, errlen, "%s: out of memory", path);
        return LK_ECONFIG;
    }
    /* Read one byte past the cap to tell "exactly the cap" from "too large". */
    size_t len = fread(text, 1, S_FILE_MAX + 1, f);
    int ioerr = ferror(f);
    fclose(f);
    int rc;
    if (ioerr) {
        if (err && errlen)
            snprintf(err, errlen, "%s: read error", path);
        rc = LK_ECONFIG;
    } else if (len > S_FILE_MAX) {
        if (err && errlen)
            snprintf(err, errlen, "%s: file too large (more than %d bytes)", path, S_FILE_MAX);
        rc = LK_ECONFIG;
    } else {
        rc = s_load(cfg, text, len, path, 1, err, errlen);
    }
    free(text);
    return rc;
}

void lk_config_print_defaults(void *file)
{
    FILE *out = file ? file : stdout;
    for (size_t i = 0; i < S_NKEYS; i++) {
        const struct s_key *k = &s_keys[i];
        /* Quote empty strings so every printed line parses back to the same value. */
        fprintf(out, "%s.%s = %s%s%s  # %s%s\n", k->section, k->key, *k->def ? "" : "\"",
                k->def, *k->def ? "" : "\"", k->doc, k->reloadable ? " (reloadable)" : "");
    }
}

int lk_config_check_reload(const struct lk_config *cur, const struct lk_config *next, char *err,
                           size_t errlen)
{
    for (size_t i = 0; i < S_NKEYS; i++) {
        const struct s_key *k = &s_keys[i];
        const char *a = (const char *)cur + k->off, *b = (const char *)next + k->off;
        /* Strings compare as strings: bytes after the NUL carry no meaning. */
        int same = k->type == S_STR ? strncmp(a, b, k->size) == 0 : memcmp(a, b, k->size) == 0;
        if (same || k->reloadable)
            continue;
        if (err && errlen)
            snprintf(err, errlen, "%s.%s: changed; needs a restart", k->section, k->key);
        return LK_ECONFIG;
    }
    return 0;
}
