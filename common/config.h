/* config.h: the one configuration of a deployment.
 *
 * The file is INI-shaped:
 *
 *     # comment
 *     [gateway]
 *     listen = 127.0.0.1:8080
 *
 * Every key is a row of one table in config.c: {section, key, type, default, reloadable,
 * bounds, doc}. Defaults go through the same parser as file values. After the file, the
 * environment overrides any key as LATCHKEY_<SECTION>_<KEY> (upper case, e.g.
 * LATCHKEY_SESSION_TTL=3s, LATCHKEY_DATABASE_URL=postgres://...). An unknown section or
 * key, a malformed or out-of-range value, a duplicate key: all are errors naming the
 * file and line (or the environment variable). Never a silent default.
 *
 * Types: string; int (decimal, bounded); size (bytes, suffixes K/M/G or KiB/MiB/GiB,
 * powers of 1024); duration (a number with ms, s, m or h; stored in milliseconds);
 * bool (true/false/yes/no/on/off/1/0); level (debug/info/warn/error).
 *
 * After parsing, lk_config_load() resolves derived values: paths.var is made absolute,
 * and empty endpoints get their defaults under <var>/run/.
 */
#ifndef LK_CONFIG_H
#define LK_CONFIG_H

#include "errors.h"
#include "log.h"

#include <stddef.h>
#include <stdint.h>

#define LK_PATH_MAX 512
#define LK_ENDPOINT_MAX 600

struct lk_config {
    struct {
        char var[LK_PATH_MAX];          /* state directory: Postgres cluster, cache, sockets */
    } paths;
    struct {
        char listen[128];               /* host:port of the HTTP listener */
        char backend[LK_ENDPOINT_MAX];  /* ZeroMQ ROUTER endpoint workers connect to */
        int count;                      /* gateway processes sharing the port (SO_REUSEPORT) */
        int max_connections;
        size_t max_uri;                 /* bytes; 414 past it */
        size_t max_header;              /* bytes of request line + headers; 431 past it */
        size_t max_body;                /* bytes of a JSON body; 413 past it */
        size_t max_batch_body;          /* bytes of a batch body; 413 past it */
        int64_t header_timeout_ms;      /* 408 when the headers take longer */
        size_t body_min_rate;           /* bytes/s a body must average once body_grace is
                                           over (408 below it); 0 = no minimum */
        int64_t body_grace_ms;          /* time a body may take before body_min_rate applies */
        char cors_origins[2048];        /* comma-separated exact origins allowed by CORS;
                                           empty = CORS off */
        int64_t idle_timeout_ms;        /* idle keep-alive connections closed after this */
        int64_t route_timeout_ms;       /* 504 when no worker answered in time */
        int64_t drain_timeout_ms;       /* SIGTERM: time to finish in-flight requests */
        int64_t heartbeat_ms;           /* worker heartbeat interval (both ways) */
        char web_dir[LK_PATH_MAX];      /* the built web page (GET /); empty = <exe>/../../web */
    } gateway;
    struct {
        int count;                      /* signup worker processes; 0 = number of cores */
        int64_t repeat_window_ms;       /* 429 for a repeat signup of an email within this */
    } signup;
    struct {
        int count;                      /* signin worker processes; 0 = number of cores */
    } signin;
    struct {
        int64_t ttl_ms;                 /* session lifetime */
        int64_t idle_timeout_ms;        /* unused this long: invalid (0 = off) */
    } session;
    struct {
        int min_length;                 /* minimum password length in Unicode code points */
        size_t max_bytes;               /* maximum password length in bytes */
    } password;
    struct {
        int ops;                        /* argon2id iterations (t) */
        size_t mem;                     /* argon2id memory in bytes (m) */
        int max_ops;                    /* ceiling of a stored hash's t: above it, a failed
                                           verification (a tampered row) */
        size_t max_mem;                 /* ceiling of a stored hash's m, bytes */
    } hash;
    struct {
        int max_failures;               /* signin attempts per email before the lock */
        int64_t base_delay_ms;          /* first lock; doubles per further attempt */
        int64_t max_delay_ms;           /* longest lock */
    } throttle;
    struct {
        int client_rate;                /* signup+signin requests/s per client IP; 0 = off */
        int client_burst;               /* token bucket size */
        char trusted_proxies[1024];     /* comma-separated IPs whose X-Forwarded-For is
                                           believed; empty = none */
    } ratelimit;
    struct {
        char api_key[200];              /* Bearer key of the admin endpoints (signup/batch);
                                           empty = those endpoints answer 404. A secret:
                                           never logged, compared in constant time */
    } admin;
    struct {
        char url[1024];                 /* libpq conninfo or URL; empty = embedded Postgres */
    } database;
    struct {
        char user[64];                  /* unprivileged system user running the embedded
                                           Postgres when latchkeyd runs as root */
        char bindir[LK_PATH_MAX];       /* Postgres binaries; empty = newest under
                                           /usr/lib/postgresql */
    } postgres;
    struct {
        char path[LK_PATH_MAX];         /* LMDB environment directory; empty = <var>/cache */
        size_t map_size;                /* bytes */
        size_t max_map_size;            /* bytes the map may grow to when full */
    } cache;
    struct {
        int64_t interval_ms;            /* how often expired sessions are deleted */
        int64_t grace_ms;               /* how long after expiry a session row is kept */
        char analyze_at[8];             /* "HH:MM" local time of the daily ANALYZE; "" = never */
    } sweeper;
    struct {
        char endpoint[LK_ENDPOINT_MAX]; /* ZeroMQ PULL endpoint of the metrics collector */
        char query_endpoint[LK_ENDPOINT_MAX]; /* its ROUTER: the gateways' GET /metrics */
    } metrics;
    struct {
        char control[LK_ENDPOINT_MAX];  /* ZeroMQ REP endpoint of the supervisor */
        int64_t restart_delay_ms;       /* first restart delay; doubles on each failure */
        int restart_max;                /* restarts allowed within restart_window */
        int64_t restart_window_ms;
        int64_t stop_timeout_ms;        /* SIGTERM -> SIGKILL grace at shutdown */
    } supervisor;
    struct {
        enum lk_log_level level;
        char file[LK_PATH_MAX];         /* log file besides stderr; empty = stderr only */
    } log;
};

/* Fills cfg with every default, then reads path (NULL: defaults only), then applies the
 * environment overrides, then resolves derived values. On error returns LK_ECONFIG and
 * writes "FILE:LINE: message" (or "LATCHKEY_X_Y: message") into err. */
int lk_config_load(struct lk_config *cfg, const char *path, char *err, size_t errlen) LK_WUR;

/* Same as lk_config_load but parses text held in memory; name is used in messages.
 * Environment overrides are applied only when use_env is non-zero. */
int lk_config_load_string(struct lk_config *cfg, const char *text, const char *name, int use_env,
                          char *err, size_t errlen) LK_WUR;

/* Parses a duration ("250ms", "3s", "5m", "24h") into milliseconds. Returns 0 or LK_EINVAL. */
int lk_parse_duration(const char *s, int64_t *ms_out) LK_WUR;

/* Parses a size ("65536", "64K", "64KiB", "10M", "1G") into bytes. Returns 0 or LK_EINVAL. */
int lk_parse_size(const char *s, size_t *bytes_out) LK_WUR;

/* For SIGHUP: compares a freshly loaded configuration (next) with the running one (cur),
 * both from lk_config_load. Returns 0 when they differ only in reloadable keys (each is
 * marked in docs/configuration.md); otherwise LK_ECONFIG, naming the first changed key
 * that needs a restart in err ("section.key: changed; needs a restart"). */
int lk_config_check_reload(const struct lk_config *cur, const struct lk_config *next, char *err,
                           size_t errlen) LK_WUR;

/* Writes every key as "section.key = default  # doc" lines to out (for docs and -p). */
void lk_config_print_defaults(void *file /* FILE* */);

#endif
