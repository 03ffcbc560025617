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

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SWEEP_BATCH 1000  /* rows or entries per transaction: no lock is held for long */
#define FIRST_RUN_MS 1000 /* after start: let the supervisor finish starting the rest */
#define DB_RETRY_MIN_MS 1000
#define DB_RETRY_MAX_MS 30000
#define WARM_PAGE 5000    /* rows per page of the warm-up (one cache transaction each) */
/* The warm-up's prune spares cache entries created less than this before the page was
 * read: a worker computes created_ms, then inserts the row (bounded by statement_timeout,
 * 30 s) and only then writes the cache, so a younger entry may belong to a row committed
 * after the page's snapshot. */
#define WARM_YOUNG_MS 35000

int sweeper_main(int argc, char **argv);
static int64_t sweeper_cron(void);
static int s_sweep_db(int64_t before_ms, long *deleted);
static int s_sweep_cache(int64_t before_ms, size_t *removed);
static int s_warm_up(void);
static int s_sweep_records(int (*sweep)(lk_cache_t *, int64_t, size_t, size_t *),
                           int64_t before_ms, enum lk_log_level level, const char *what);
static void s_analyze_cron(int64_t now, int64_t *next);
static void s_metrics_sample(void *arg);

/* A throttling record idle this long (and not locked) is forgotten: an email then starts
 * again from zero failures; locks and signup windows are kept while they run. */
#define THROTTLE_IDLE_MS (60 * 60 * 1000)

/* Revocation records guard a warm-up page for the milliseconds between its read and its
 * put; an hour is far beyond that. */
#define REVOKED_KEEP_MS (60 * 60 * 1000)

static struct lk_config s_cfg;
static lk_cache_t *s_cache;
static lk_db_t *s_db; /* NULL until the first successful connect */
static int64_t s_db_retry_ms = DB_RETRY_MIN_MS;
static int s_warm;               /* the warm-up of this start is done */
static uint8_t (*s_hashes)[32];  /* WARM_PAGE token hashes: warm-up pages, expiry batches */
static struct lk_session *s_rows; /* WARM_PAGE sessions of a warm-up page */
static int64_t s_analyze_next;   /* wall-clock ms of the next ANALYZE; 0 = none planned */
static char s_analyze_at[8];     /* the sweeper.analyze_at s_analyze_next was planned from */
static lk_metric_t s_m_analyze_ok, s_m_analyze_err;
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
    lk_cache_set_max_map(s_cache, s_cfg.cache.max_map_size);
    s_hashes = calloc(WARM_PAGE, sizeof *s_hashes);
    s_rows = calloc(WARM_PAGE, sizeof *s_rows);
    if (!s_hashes || !s_rows)
        lk_fatal("out of memory");
    s_m_analyze_ok = LK_METRIC(LKM_SWEEPER_ANALYZE, "ok");
    s_m_analyze_err = LK_METRIC(LKM_SWEEPER_ANALYZE, "error");
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
    free(s_hashes);
    free(s_rows);
    lk_info("stopped");
    return 0;
}

/* Duties, every sweeper.interval:
 * - delete the session rows expired for longer than sweeper.grace, SWEEP_BATCH per
 *   transaction; while Postgres fails, retry sooner (1 s doubling to 30 s);
 * - delete the cache entries already expired (readers treat them as absent; removing them
 *   frees map space), SWEEP_BATCH per write transaction;
 * - forget the throttling records (signin failures, signup windows) that are unlocked and
 *   untouched for THROTTLE_IDLE_MS, so that made-up emails cannot fill the map;
 * - clear the LMDB reader slots of dead processes (lmdb.h: mdb_reader_check).
 * Returns the delay until the next run in milliseconds. */
static int64_t sweeper_cron(void)
{
    int64_t next = s_cfg.sweeper.interval_ms;
    int64_t now = lk_now_ms();
    long rows = 0;
    size_t entries = 0;
    int readers = 0, rc;

    /* First duty of a start: the complete cache (the gateway is not ready before). */
    if (!s_warm) {
        if ((rc = s_warm_up()) != 0) {
            lk_warn("cache warm-up not done (%s); retrying in %lld ms", lk_strerror(rc),
                    (long long)s_db_retry_ms);
            next = s_db_retry_ms;
            s_db_retry_ms =
                s_db_retry_ms * 2 > DB_RETRY_MAX_MS ? DB_RETRY_MAX_MS : s_db_retry_ms * 2;
            return next;
        }
        s_db_retry_ms = DB_RETRY_MIN_MS;
        now = lk_now_ms();
    }
    s_analyze_cron(now, &next);
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
    /* Throttling records idle (and unlocked) for THROTTLE_IDLE_MS; last-use records older
     * than the idle timeout (they say no more than the session's creation time would; with
     * the timeout off, all of them); revocations older than REVOKED_KEEP_MS. */
    if ((rc = s_sweep_records(lk_cache_throttle_sweep, now - THROTTLE_IDLE_MS, LK_LOG_INFO,
                              "idle throttling records")) != 0)
        lk_error("throttle sweep: %s", lk_strerror(rc));
    if ((rc = s_sweep_records(lk_cache_touch_sweep, now - s_cfg.session.idle_timeout_ms,
                              LK_LOG_DEBUG, "last-use records")) != 0)
        lk_error("touch sweep: %s", lk_strerror(rc));
    if ((rc = s_sweep_records(lk_cache_revoked_sweep, now - REVOKED_KEEP_MS, LK_LOG_DEBUG,
                              "revocation records")) != 0)
        lk_error("revoked sweep: %s", lk_strerror(rc));
    if ((rc = lk_cache_reader_check(s_cache, &readers)) != 0)
        lk_error("cache reader check: %s", lk_strerror(rc));
    else
        lk_counter_add(s_m_stale, (uint64_t)readers);
    lk_log(rows || entries || readers ? LK_LOG_INFO : LK_LOG_DEBUG, NULL,
           "swept: %ld session rows, %zu cache entries, %d stale readers", rows, entries, readers);
    return next;
}

/* Runs one of the cache's record sweeps (throttle, touch, revoked: same signature) until a
 * pass removes less than a batch; logs the total as "swept N <what>" at level. An
 * environment without that database (-EPERM) has nothing to sweep. */
static int s_sweep_records(int (*sweep)(lk_cache_t *, int64_t, size_t, size_t *),
                           int64_t before_ms, enum lk_log_level level, const char *what)
{
    size_t removed = 0, total = 0;
    int rc;
    do {
        rc = sweep(s_cache, before_ms, SWEEP_BATCH, &removed);
        total += removed;
    } while (rc == 0 && removed == SWEEP_BATCH);
    if (total)
        lk_log(level, NULL, "swept %zu %s", total, what);
    return rc == -EPERM ? 0 : rc;
}

/* Deletes the rows that expired before before_ms, and exactly those rows' cache entries
 * (an entry whose row is gone must not outlive it, whatever its own expiry says); *deleted
 * counts them. Returns 0 or LK_EDB. */
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
        if ((rc = lk_db_sessions_expire_hashes(s_db, before_ms, SWEEP_BATCH, s_hashes, &n)) != 0)
            return rc;
        size_t gone;
        /* One cache transaction per batch. On failure the entries stay until their own
         * expiry sweep (below): they are expired anyway, so never served. */
        int crc = lk_cache_sessions_del_many(s_cache, (const uint8_t(*)[32])s_hashes, (size_t)n,
                                             &gone);
        if (crc != 0)
            lk_error("cache delete of %d swept sessions: %s", n, lk_strerror(crc));
        *deleted += n;
    } while (n == SWEEP_BATCH);
    return 0;
}

struct s_page {
    int n;
};

static int s_page_row(void *arg, const uint8_t hash[32], const struct lk_db_session *row)
{
    struct s_page *p = arg;
    if (p->n >= WARM_PAGE)
        return LK_ETOOBIG;
    memcpy(s_hashes[p->n], hash, 32);
    struct lk_session *s = &s_rows[p->n];
    memset(s, 0, sizeof *s);
    memcpy(s->user_id, row->user_id, sizeof s->user_id);
    s->created_ms = row->created_ms;
    s->expires_ms = row->expires_ms;
    snprintf(s->email, sizeof s->email, "%s", row->email);
    p->n++;
    return 0;
}

/* The complete cache (architecture.md): walks every live session of Postgres in token-hash
 * order, WARM_PAGE rows per page, puts those the cache lacks and deletes the cache entries
 * of the same key range that Postgres no longer has (revoked or swept while the cache was
 * lost or behind), then marks the cache warm, which the gateway's /ready waits for.
 * A revoke that deletes its row and entry between a page's read and its put is not undone:
 * the revocation is recorded in the cache ("revoked", cache.h) and put_many skips it.
 * Returns 0, LK_EDB (retry later) or LK_ECACHE. */
static int s_warm_up(void)
{
    uint8_t after[32] = {0};
    int64_t t0 = lk_now_ms();
    size_t added = 0, removed = 0;
    long rows = 0;
    int rc;
    struct s_page p;
    char mark[32];

    if (!s_db && lk_db_connect(s_cfg.database.url, &s_db) != 0)
        return LK_EDB;
    do {
        if (lk_role_stopping())
            return LK_EDB;
        int64_t read_ms = lk_now_ms();
        int n = 0;
        p.n = 0;
        rc = lk_db_sessions_live_page(s_db, after, read_ms, WARM_PAGE, s_page_row, &p, &n);
        if (rc != 0)
            return rc == LK_EDB ? LK_EDB : LK_ECACHE;
        size_t a, r;
        if ((rc = lk_cache_sessions_put_many(s_cache, (const uint8_t(*)[32])s_hashes, s_rows,
                                             (size_t)p.n, &a)) != 0)
            return rc;
        const uint8_t *upto = p.n == WARM_PAGE ? s_hashes[p.n - 1] : NULL;
        if ((rc = lk_cache_sessions_prune_range(s_cache, after, upto,
                                                (const uint8_t(*)[32])s_hashes, (size_t)p.n,
                                                read_ms - WARM_YOUNG_MS, &r)) != 0)
            return rc;
        added += a;
        removed += r;
        rows += p.n;
        if (upto)
            memcpy(after, upto, 32);
        else
            break;
    } while (1);
    snprintf(mark, sizeof mark, "%lld", (long long)lk_now_ms());
    if ((rc = lk_cache_meta_put(s_cache, LK_CACHE_META_WARM, mark)) != 0) {
        lk_error("cache warm marker: %s", lk_strerror(rc));
        return LK_ECACHE;
    }
    s_warm = 1;
    lk_info("cache warm-up done: %ld live sessions in Postgres, %zu added to the cache, %zu "
            "stale entries removed, %lld ms",
            rows, added, removed, (long long)(lk_now_ms() - t0));
    return 0;
}

/* The wall-clock ms of the next local time hh:mm after now (DST: mktime decides). */
static int64_t s_next_local(int64_t now, int hh, int mm)
{
    time_t t = (time_t)(now / 1000);
    struct tm tm;
    localtime_r(&t, &tm);
    tm.tm_hour = hh;
    tm.tm_min = mm;
    tm.tm_sec = 0;
    tm.tm_isdst = -1;
    time_t at = mktime(&tm);
    if ((int64_t)at * 1000 <= now) {
        tm.tm_mday += 1;
        tm.tm_hour = hh;
        tm.tm_min = mm;
        tm.tm_sec = 0;
        tm.tm_isdst = -1;
        at = mktime(&tm);
    }
    return (int64_t)at * 1000;
}

/* sweeper.analyze_at: plans the next run (again after a SIGHUP changed it), runs ANALYZE
 * when its time has come, and shortens *next so the run is not an interval late. */
static void s_analyze_cron(int64_t now, int64_t *next)
{
    if (strcmp(s_analyze_at, s_cfg.sweeper.analyze_at) != 0) {
        int hh, mm, end = 0;
        snprintf(s_analyze_at, sizeof s_analyze_at, "%s", s_cfg.sweeper.analyze_at);
        s_analyze_next = 0;
        if (s_analyze_at[0] == '\0') {
            lk_info("scheduled ANALYZE off (sweeper.analyze_at empty)");
        } else if (sscanf(s_analyze_at, "%2d:%2d%n", &hh, &mm, &end) != 2 || end != 5 ||
                   hh < 0 || hh > 23 || mm < 0 || mm > 59) {
            lk_error("sweeper.analyze_at \"%s\": not HH:MM; scheduled ANALYZE off", s_analyze_at);
        } else {
            s_analyze_next = s_next_local(now, hh, mm);
            lk_info("next ANALYZE of users, user_sessions in %lld s (daily at %s local time)",
                    (long long)((s_analyze_next - now) / 1000), s_analyze_at);
        }
    }
    if (s_analyze_next == 0)
        return;
    if (now >= s_analyze_next) {
        int64_t t0 = lk_now_ms();
        int rc = !s_db && lk_db_connect(s_cfg.database.url, &s_db) != 0 ? LK_EDB
                                                                           : lk_db_analyze(s_db);
        if (rc == 0) {
            lk_counter_inc(s_m_analyze_ok);
            lk_info("ANALYZE users, user_sessions: done in %lld ms", (long long)(lk_now_ms() - t0));
        } else {
            lk_counter_inc(s_m_analyze_err);
            lk_error("ANALYZE users, user_sessions failed: next try tomorrow at %s", s_analyze_at);
        }
        int hh = atoi(s_analyze_at), mm = atoi(s_analyze_at + 3);
        s_analyze_next = s_next_local(lk_now_ms(), hh, mm);
    }
    if (s_analyze_next - now < *next)
        *next = s_analyze_next - now > 0 ? s_analyze_next - now : 0;
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
