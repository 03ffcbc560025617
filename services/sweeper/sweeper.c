/* sweeper.c: expiry of sessions, in Postgres and in the host's cache.
 *
 * Nothing depends on it for correctness (every read checks expiry itself): it keeps the
 * sessions table and the LMDB map from growing without bound. So it never crashes on a
 * Postgres outage; it retries sooner instead. */
#include "cache.h"
#include "config.h"
#include "db.h"
#include "errors.h"
#include "log.h"
#include "metrics.h"
#include "util.h"
#include "worker.h"

#include <stddef.h>
#include <stdint.h>

#define SWEEP_BATCH 1000  /* rows or entries per transaction: no lock is held for long */
#define FIRST_RUN_MS 1000 /* after start: let the supervisor finish starting the rest */
#define DB_RETRY_MIN_MS 1000
#define DB_RETRY_MAX_MS 30000

int sweeper_main(int argc, char **argv);
static int64_t sweeper_cron(void);
static int s_sweep_db(int64_t before_ms, long *deleted);
static int s_sweep_cache(int64_t before_ms, size_t *removed);
static void s_metrics_sample(void *arg);

static struct lk_config s_cfg;
static lk_cache_t *s_cache;
static lk_db_t *s_db; /* NULL until the first successful connect */
static int64_t s_db_retry_ms = DB_RETRY_MIN_MS;
/* the host's cache, which only the sweeper reports (one per host: no double count) */
static lk_metric_t s_m_sessions, s_m_map, s_m_used, s_m_readers, s_m_stale;

int main(int argc, char **argv)
{
    return sweeper_main(argc, argv);
}

int sweeper_main(int argc, char **argv)
{
    int rc;

    lk_role_start("sweeper", argc, argv, &s_cfg);
    if ((rc = lk_cache_open(s_cfg.cache.path, s_cfg.cache.map_size, 0, &s_cache)) != 0)
        lk_fatal("cache %s: %s", s_cfg.cache.path, lk_strerror(rc));
    s_m_sessions = LK_METRIC0(LKM_ACTIVE_SESSIONS);
    s_m_map = LK_METRIC0(LKM_CACHE_MAP_SIZE);
    s_m_used = LK_METRIC0(LKM_CACHE_USED);
    s_m_readers = LK_METRIC0(LKM_CACHE_READERS);
    s_m_stale = LK_METRIC0(LKM_CACHE_STALE_READERS);
    lk_metrics_sampler(s_metrics_sample, NULL);
    for (int64_t wait = FIRST_RUN_MS; !lk_role_sleep(wait);)
        wait = sweeper_cron();
    lk_db_destroy(&s_db);
    lk_cache_destroy(&s_cache);
    lk_info("stopped");
    return 0;
}

/* Duties, every sweeper.interval:
 * - delete the session rows expired for longer than sweeper.grace, SWEEP_BATCH per
 *   transaction; while Postgres fails, retry sooner (1 s doubling to 30 s);
 * - delete the cache entries already expired (readers treat them as absent; removing them
 *   frees map space), SWEEP_BATCH per write transaction;
 * - clear the LMDB reader slots of dead processes (lmdb.h: mdb_reader_check).
 * Returns the delay until the next run in milliseconds. */
static int64_t sweeper_cron(void)
{
    int64_t next = s_cfg.sweeper.interval_ms;
    int64_t now = lk_now_ms();
    long rows = 0;
    size_t entries = 0;
    int readers = 0, rc;

    if (s_sweep_db(now - s_cfg.sweeper.grace_ms, &rows) == 0) {
        s_db_retry_ms = DB_RETRY_MIN_MS;
    } else {
        lk_warn("Postgres unreachable; sweeping it again in %lld ms", (long long)s_db_retry_ms);
        if (s_db_retry_ms < next)
            next = s_db_retry_ms;
        s_db_retry_ms = s_db_retry_ms * 2 > DB_RETRY_MAX_MS ? DB_RETRY_MAX_MS : s_db_retry_ms * 2;
    }
    if ((rc = s_sweep_cache(now, &entries)) != 0)
        lk_error("cache sweep: %s", lk_strerror(rc));
    if ((rc = lk_cache_reader_check(s_cache, &readers)) != 0)
        lk_error("cache reader check: %s", lk_strerror(rc));
    else
        lk_counter_add(s_m_stale, (uint64_t)readers);
    lk_log(rows || entries || readers ? LK_LOG_INFO : LK_LOG_DEBUG, NULL,
           "swept: %ld session rows, %zu cache entries, %d stale readers", rows, entries, readers);
    return next;
}

/* Deletes the rows that expired before before_ms; *deleted counts them. Returns 0 or LK_EDB. */
static int s_sweep_db(int64_t before_ms, long *deleted)
{
    int n, rc;

    if (!s_db && lk_db_connect(s_cfg.database.url, &s_db) != 0)
        return LK_EDB;
    do {
        /* A stop finishes the current batch, not the whole backlog. */
        if (lk_role_stopping())
            return 0;
        /* The handle stays: db.c reconnects on the next call after a connection loss. */
        if ((rc = lk_db_sessions_expire(s_db, before_ms, SWEEP_BATCH, &n)) != 0)
            return rc;
        *deleted += n;
    } while (n == SWEEP_BATCH);
    return 0;
}

/* Deletes the cache entries that expired before before_ms; *removed counts them.
 * Returns 0 or LK_ECACHE. */
static int s_sweep_cache(int64_t before_ms, size_t *removed)
{
    size_t n;
    int rc;

    do {
        if (lk_role_stopping())
            return 0;
        if ((rc = lk_cache_sweep(s_cache, before_ms, SWEEP_BATCH, &n)) != 0)
            return rc;
        *removed += n;
    } while (n == SWEEP_BATCH);
    return 0;
}

/* Before each metrics report (lk_role_sleep ships them, once a second): the cache's size
 * and sessions, O(1) reads of the LMDB header. */
static void s_metrics_sample(void *arg)
{
    struct lk_cache_stats st;

    (void)arg;
    if (lk_cache_stats(s_cache, &st) != 0)
        return;
    lk_gauge_set(s_m_sessions, (int64_t)st.sessions);
    lk_gauge_set(s_m_map, (int64_t)st.map_size);
    lk_gauge_set(s_m_used, (int64_t)st.used);
    lk_gauge_set(s_m_readers, (int64_t)st.readers);
}
