/* metrics.h: every process's metrics, their shipping to the collector, and the collector's
 * store (aggregation across processes and their restarts, Prometheus text exposition).
 *
 * Three parts:
 * - the families (LK_METRIC_FAMILIES below): every series latchkey exports is declared
 *   once, with its kind, unit, label names and HELP text. The processes, the report
 *   parser and the renderer all follow from that table;
 * - the registry of one process: series are registered once (a family and one value per
 *   label, fixed from then on) and get a handle; counting through a handle is a plain
 *   increment of process memory, no call, no lock, no system call (the validate path
 *   counts on it). lk_metrics_start connects the process to the collector and
 *   lk_metrics_tick ships every series' cumulative value once a second;
 * - the collector's store (lk_mstore_*): reports in, one exposition out.
 *
 * Values are integers: counters are monotonic uint64 counts; gauges int64; durations are
 * counted in microseconds (unit LK_MU_US) and exposed in seconds. A histogram has the
 * fixed buckets lk_metric_bounds_us (50 us .. 10 s: a microsecond validate and a 100 ms
 * signin both land in a bucket of their own) plus +Inf, and a sum.
 *
 * Report wire format (the samples field of MSG_RO_METRICS_REPORT): text lines, each
 *     name{label="value",...} v            counter (uint64) or gauge (int64)
 *     name{label="value",...} sum b0 ... b17    histogram: sum in the family's unit, then
 *                                                the count of each bucket (not cumulative)
 * ending in '\n'; the braces are absent for a family without labels. Label names are the
 * family's, in its order; values are 1..64 bytes of [A-Za-z0-9_.:/+-] (nothing to escape
 * anywhere). Numbers are canonical decimal (no sign but a gauge's '-', no leading zero).
 * Every value is cumulative since the process started, so a lost report costs nothing
 * but freshness, and a report may be split over several messages at line boundaries.
 *
 * Caveats:
 * - The registry is per process and single-threaded: register and count from the thread
 *   that calls lk_metrics_tick.
 * - lk_metrics_start creates a ZeroMQ context of its own (one more I/O thread), so that
 *   the final report can leave from an atexit handler after the role has terminated its
 *   own context. The PUSH socket never blocks and holds at most a few reports (ZMQ_SNDHWM,
 *   ZMQ_IMMEDIATE): with the collector down, reports are dropped, nothing grows.
 * - A full registry (LK_METRIC_SERIES_MAX series or LK_METRIC_SLOTS_MAX slots) hands out
 *   handle 0, a sink that is counted into but never shipped (logged once).
 */
#ifndef LK_METRICS_H
#define LK_METRICS_H

#include "codec.h"
#include "errors.h"

#include <stddef.h>
#include <stdint.h>

#define LK_VERSION "0.1.0"

enum lk_metric_kind { LK_MK_COUNTER = 0, LK_MK_GAUGE, LK_MK_HISTOGRAM };

/* Units: LK_MU_ONE values are exposed as they are; LK_MU_US values are microseconds,
 * exposed as seconds. */
enum lk_metric_unit { LK_MU_ONE = 0, LK_MU_US };

/* X(ID, name, kind, unit, labels, who, help)
 * labels: comma-separated label names ("" for none). who: which process ships it ("local":
 * the collector makes it itself; a report naming it is malformed). */
#define LK_METRIC_FAMILIES(X)                                                                      \
    X(LKM_AUTH_ATTEMPTS, "auth_attempts_total", LK_MK_COUNTER, LK_MU_ONE, "type,result",           \
      "gateway",                                                                                   \
      "Signup and signin requests answered (POST), by result: success is a 2xx answer, "           \
      "failure any other")                                                                         \
    X(LKM_HTTP_REQUESTS, "http_requests_total", LK_MK_COUNTER, LK_MU_ONE, "method,route,status",   \
      "gateway", "HTTP requests answered, by method, route (unmatched: no route) and status")      \
    X(LKM_REQUEST_DURATION, "request_duration_seconds", LK_MK_HISTOGRAM, LK_MU_US, "route",        \
      "gateway", "Time from a request's complete head to its answer, by route")                    \
    X(LKM_ACTIVE_SESSIONS, "active_sessions", LK_MK_GAUGE, LK_MU_ONE, "", "sweeper",               \
      "Sessions in the host's cache (expired ones are counted until the sweeper removes them)")    \
    X(LKM_WORKERS_CONNECTED, "latchkey_workers_connected", LK_MK_GAUGE, LK_MU_ONE, "role",         \
      "gateway", "Workers registered with the gateway, by role")                                   \
    X(LKM_WORKERS_BUSY, "latchkey_workers_busy", LK_MK_GAUGE, LK_MU_ONE, "role", "gateway",        \
      "Workers running a job, by role")                                                            \
    X(LKM_QUEUE_DEPTH, "latchkey_queue_depth", LK_MK_GAUGE, LK_MU_ONE, "role", "gateway",          \
      "Jobs waiting in the gateway for a free worker, by role")                                    \
    X(LKM_QUEUE_REJECTIONS, "latchkey_queue_rejections_total", LK_MK_COUNTER, LK_MU_ONE, "role",   \
      "gateway",                                                                                   \
      "Jobs refused with 503 because no worker of the role was connected or its "                  \
      "queue was full")                                                                            \
    X(LKM_RESTARTS, "latchkey_restarts_total", LK_MK_COUNTER, LK_MU_ONE, "role", "supervisor",     \
      "Processes restarted by latchkeyd after they exited, by role")                               \
    X(LKM_PROCESSES, "latchkey_processes", LK_MK_GAUGE, LK_MU_ONE, "role", "supervisor",           \
      "Processes latchkeyd runs now, by role")                                                     \
    X(LKM_ROLE_FAILED, "latchkey_role_failed", LK_MK_GAUGE, LK_MU_ONE, "role", "supervisor",       \
      "1 while latchkeyd has given up restarting a process of the role")                           \
    X(LKM_PG_QUERY_DURATION, "latchkey_pg_query_duration_seconds", LK_MK_HISTOGRAM, LK_MU_US,      \
      "role", "workers, sweeper, supervisor",                                                      \
      "Postgres statement round trips, by role of the caller")                                     \
    X(LKM_PG_QUERY_ERRORS, "latchkey_pg_query_errors_total", LK_MK_COUNTER, LK_MU_ONE, "role",     \
      "workers, sweeper, supervisor",                                                              \
      "Postgres statements that failed (a taken unique key included)")                             \
    X(LKM_PG_CONNECTIONS, "latchkey_pg_connections", LK_MK_GAUGE, LK_MU_ONE, "role",               \
      "workers, sweeper, supervisor", "Postgres connections held, by role")                        \
    X(LKM_CACHE_MAP_SIZE, "latchkey_cache_map_size_bytes", LK_MK_GAUGE, LK_MU_ONE, "", "sweeper",  \
      "LMDB map size of the session cache: the most it can hold")                                  \
    X(LKM_CACHE_USED, "latchkey_cache_used_bytes", LK_MK_GAUGE, LK_MU_ONE, "", "sweeper",          \
      "Bytes of the session cache's map in use (pages up to the last one written)")                \
    X(LKM_CACHE_READERS, "latchkey_cache_readers", LK_MK_GAUGE, LK_MU_ONE, "", "sweeper",          \
      "Reader slots of the session cache in use")                                                  \
    X(LKM_CACHE_STALE_READERS, "latchkey_cache_stale_readers_cleared_total", LK_MK_COUNTER,        \
      LK_MU_ONE, "", "sweeper", "Reader slots of dead processes cleared by the sweeper")           \
    X(LKM_SWEEPER_ANALYZE, "latchkey_sweeper_analyze_total", LK_MK_COUNTER, LK_MU_ONE, "result",   \
      "sweeper", "Scheduled ANALYZE runs of users and user_sessions, by result (ok, error)")        \
    X(LKM_ARGON2_DURATION, "latchkey_argon2_duration_seconds", LK_MK_HISTOGRAM, LK_MU_US,          \
      "role,op", "workers", "argon2id password hashing (op=hash) and verification (op=verify)")    \
    X(LKM_RESIDENT_MEMORY, "latchkey_resident_memory_bytes", LK_MK_GAUGE, LK_MU_ONE, "role",       \
      "every process", "Resident memory of the processes of a role")                               \
    X(LKM_CPU_SECONDS, "latchkey_cpu_seconds_total", LK_MK_COUNTER, LK_MU_US, "role",              \
      "every process", "User and system CPU time of the processes of a role")                      \
    X(LKM_BUILD_INFO, "latchkey_build_info", LK_MK_GAUGE, LK_MU_ONE, "version,protocol", "local",  \
      "Always 1: the version and message protocol of the collector's build")                       \
    X(LKM_METRICS_SOURCES, "latchkey_metrics_sources", LK_MK_GAUGE, LK_MU_ONE, "role", "local",    \
      "Processes whose reports reach the collector (heard within the last 5 s), by role")          \
    X(LKM_METRICS_REPORTS, "latchkey_metrics_reports_total", LK_MK_COUNTER, LK_MU_ONE, "",         \
      "local", "Report messages the collector accepted")                                           \
    X(LKM_METRICS_MALFORMED, "latchkey_metrics_reports_malformed_total", LK_MK_COUNTER, LK_MU_ONE, \
      "", "local", "Report messages the collector dropped: malformed, or its tables full")  \
    X(LKM_SESSION_TOUCHES, "latchkey_session_touches_total", LK_MK_COUNTER, LK_MU_ONE, "",         \
      "gateway", "Last uses of sessions recorded for the idle timeout (session.idle_timeout)")

enum lk_metric_family {
#define LK_X_(ID, name, kind, unit, labels, who, help) ID,
    LK_METRIC_FAMILIES(LK_X_)
#undef LK_X_
        LKM_NFAMILIES
};

struct lk_metric_family_def {
    const char *name;
    enum lk_metric_kind kind;
    enum lk_metric_unit unit;
    const char *labels; /* comma-separated label names, "" for none */
    const char *who;    /* the processes that ship it; "local": the collector itself */
    const char *help;
};

/* The family table, indexed by enum lk_metric_family. */
extern const struct lk_metric_family_def lk_metric_families[LKM_NFAMILIES];

/* ---- one process's registry --------------------------------------------------------- */

#define LK_METRIC_BUCKETS 17       /* finite histogram buckets; +Inf is bucket 17 */
#define LK_METRIC_SERIES_MAX 512   /* series one process can register */
#define LK_METRIC_SLOTS_MAX 8192   /* uint64 slots: 1 per counter or gauge, 19 per histogram */
#define LK_METRIC_LABEL_MAX 64     /* bytes of a label value */
#define LK_METRIC_REPORT_MAX 3600  /* bytes of samples per report message */
#define LK_METRIC_INTERVAL_MS 1000 /* how often a process ships its values */

/* A registered series: an index into lk_metric_slots. 0 is the sink (see Caveats). */
typedef uint32_t lk_metric_t;

/* Upper bounds of the finite buckets, in microseconds (le="5e-05" ... le="10"). */
extern const uint64_t lk_metric_bounds_us[LK_METRIC_BUCKETS];

/* The values of every series of this process (a counter or gauge is one slot; a histogram
 * is its sum, then LK_METRIC_BUCKETS + 1 bucket counts). Written through the inline
 * functions below only. */
extern uint64_t lk_metric_slots[LK_METRIC_SLOTS_MAX];

/* Registers (or finds, when already registered) the series of family f with the label
 * values values[0..n) (values: a NULL-terminated array, or NULL for a family without
 * labels; n must be the family's label count, each value 1..64 bytes of
 * [A-Za-z0-9_.:/+-]). Not for a hot path: cache the handle. Returns the handle, or 0 (the
 * sink) when the values do not fit the family or the registry is full (logged once). */
lk_metric_t lk_metric_get(enum lk_metric_family f, const char *const *values);

#define LK_METRIC0(f) lk_metric_get((f), NULL)
#define LK_METRIC(f, ...) lk_metric_get((f), (const char *const[]){__VA_ARGS__, NULL})

static inline void lk_counter_inc(lk_metric_t m)
{
    lk_metric_slots[m]++;
}

static inline void lk_counter_add(lk_metric_t m, uint64_t n)
{
    lk_metric_slots[m] += n;
}

static inline void lk_gauge_set(lk_metric_t m, int64_t v)
{
    lk_metric_slots[m] = (uint64_t)v;
}

static inline void lk_gauge_add(lk_metric_t m, int64_t d)
{
    lk_metric_slots[m] += (uint64_t)d; /* two's complement: a negative d subtracts */
}

/* Counts one observation of us microseconds (a LK_MU_US histogram). */
static inline void lk_histogram_observe_us(lk_metric_t m, uint64_t us)
{
    unsigned b = 0;
    while (b < LK_METRIC_BUCKETS && us > lk_metric_bounds_us[b])
        b++;
    lk_metric_slots[m] += us;
    lk_metric_slots[m + 1 + b]++;
}

/* Monotonic microseconds (CLOCK_MONOTONIC, a vDSO call: no system call), for timing. */
uint64_t lk_metrics_now_us(void);

/* The role given to lk_metrics_start ("unknown" before), for "role" label values. */
const char *lk_metrics_role(void);

/* Starts shipping: remembers role (borrowed: a string literal), makes a random instance
 * id, registers the process series (resident memory, CPU time), creates a context and a
 * PUSH socket connected to endpoint (ipc:// directories are not created: the collector
 * binds) and registers an atexit handler that ships a final report (and closes them).
 * A socket failure is logged and leaves the process without shipping; never fatal. Call
 * once, after signals are blocked (the context's thread inherits the mask). */
void lk_metrics_start(const char *role, const char *endpoint);

/* Adds fn(arg) to the functions called right before each report is built (up to 8):
 * where a role sets its gauges from state it owns (queue depths, cache sizes). */
void lk_metrics_sampler(void (*fn)(void *arg), void *arg);

/* Ships a report when one is due (every LK_METRIC_INTERVAL_MS). Never blocks. Returns the
 * milliseconds until the next one is due (0..LK_METRIC_INTERVAL_MS), for a caller's poll
 * timeout. Without lk_metrics_start it does nothing and returns LK_METRIC_INTERVAL_MS. */
int64_t lk_metrics_tick(void);

/* Ships a final report (the collector stops counting this process's gauges at once) and
 * closes the socket and context. Runs from atexit in the process that called
 * lk_metrics_start (never in a forked child); safe to call earlier, and more than once. */
void lk_metrics_stop(void);

/* ---- the collector's store ---------------------------------------------------------- */

#define LK_MSTORE_SERIES_MAX 4096 /* distinct series across every process */
#define LK_MSTORE_SLOTS_MAX 32768
#define LK_MSTORE_SOURCES_MAX 256        /* process instances remembered (live or gone) */
#define LK_MSTORE_STALE_MS 5000          /* a source silent this long is gone */
#define LK_MSTORE_TEXT_MAX (900u * 1024) /* bound of one exposition */

/* The store of the collector. Every source (a process instance: role, pid, instance id)
 * has its latest cumulative values. The exposition sums, per series: counters and
 * histograms over every source ever seen (live or gone) plus a retired base, gauges over
 * live sources only. A source is gone after its final report or LK_MSTORE_STALE_MS of
 * silence; its counters stay counted, so a process that restarts (a new instance) never
 * makes a counter go backwards. When LK_MSTORE_SOURCES_MAX sources are remembered, the
 * gone source heard from longest ago is folded into the retired base to make room. */
typedef struct lk_mstore lk_mstore_t;

/* Returns a caller-owned store (lk_mstore_destroy), or NULL when out of memory. */
lk_mstore_t *lk_mstore_new(void);

/* Frees the store and sets *self_p to NULL. NULL-safe. */
void lk_mstore_destroy(lk_mstore_t **self_p);

/* Applies one report received at now_ms (monotonic). The whole message is checked before
 * anything is applied: an unknown or local family, wrong label names or values, a
 * malformed number, a wrong number of values, a missing final newline, a role that
 * changed for an instance id: LK_EMALFORMED. A series or source that does not fit the
 * tables: LK_ETOOBIG (what fitted is not applied either). Either way the report is
 * dropped and counted (latchkey_metrics_reports_malformed_total). Returns 0 or those. */
int lk_mstore_ingest(lk_mstore_t *self, const struct lk_msg_ro_metrics_report *r,
                     int64_t now_ms) LK_WUR;

/* Counts a report that never reached lk_mstore_ingest (it did not decode) as dropped. */
void lk_mstore_dropped(lk_mstore_t *self);

/* Renders the Prometheus text exposition (version 0.0.4) at now_ms (monotonic: sources
 * silent for LK_MSTORE_STALE_MS are gone first): # HELP and # TYPE for every family, then
 * its series. On success *out is a caller-owned NUL-terminated buffer (free()) of *len
 * bytes. Returns 0, -ENOMEM or LK_ETOOBIG (past LK_MSTORE_TEXT_MAX). */
int lk_mstore_render(lk_mstore_t *self, int64_t now_ms, char **out, size_t *len) LK_WUR;

#endif
