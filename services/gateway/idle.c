/* idle.c: the session idle timeout (see idle.h). */
#include "idle.h"

#include "gateway.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#include <string.h>

/* Pending uses: open addressing on the token hash (uniformly random bytes already), at
 * most S_CAP - S_CAP / 4 entries before a forced write, so probes stay short. */
#define S_CAP 4096
#define S_HIGH (S_CAP - S_CAP / 4)

struct s_pending {
    uint8_t hash[32];
    int64_t used_ms; /* 0: empty slot */
};

static struct s_pending s_tab[S_CAP];
static size_t s_n;
static int64_t s_last_flush; /* gw.now (mono ms) of the last write */
static uint64_t s_written;
static lk_metric_t s_metric;
static int s_have_metric;

static int64_t s_resolution(int64_t idle);
static struct s_pending *s_find(const uint8_t hash[32], int insert);

static int64_t s_resolution(int64_t idle)
{
    int64_t r = idle / 10;
    return r < 100 ? 100 : r > 60000 ? 60000 : r;
}

static struct s_pending *s_find(const uint8_t hash[32], int insert)
{
    uint32_t h;
    memcpy(&h, hash, sizeof h);
    for (size_t i = 0; i < S_CAP; i++) {
        struct s_pending *p = &s_tab[(h + i) % S_CAP];
        if (p->used_ms == 0)
            return insert ? p : NULL;
        if (memcmp(p->hash, hash, 32) == 0)
            return p;
    }
    return NULL;
}

int idle_session_get(lk_cache_t *cache, const uint8_t hash[32], int64_t now_ms,
                     struct lk_session *out)
{
    int64_t idle = gw.cfg.session.idle_timeout_ms;
    if (idle <= 0)
        return lk_cache_session_get(cache, hash, now_ms, out);
    int64_t used;
    int rc = lk_cache_session_get_used(cache, hash, now_ms, out, &used);
    if (rc != 0)
        return rc;
    struct s_pending *p = s_n ? s_find(hash, 0) : NULL;
    if (p && p->used_ms > used)
        used = p->used_ms;
    if (now_ms - used >= idle)
        return LK_ENOTFOUND;
    if (now_ms - used >= s_resolution(idle)) {
        if (p == NULL && s_n >= S_HIGH)
            idle_flush(cache, 1);
        if (p == NULL && (p = s_find(hash, 1)) != NULL) {
            memcpy(p->hash, hash, 32);
            s_n++;
        }
        if (p)
            p->used_ms = now_ms;
    }
    return 0;
}

void idle_flush(lk_cache_t *cache, int force)
{
    static uint8_t hashes[S_CAP][32];
    static int64_t used[S_CAP];

    if (!s_have_metric && gw.cfg.session.idle_timeout_ms > 0) {
        /* registered at the first cron turn, so that rate() starts from a zero */
        s_metric = LK_METRIC0(LKM_SESSION_TOUCHES);
        s_have_metric = 1;
    }
    if (s_n == 0 || cache == NULL || (!force && gw.now - s_last_flush < IDLE_FLUSH_MS))
        return;
    size_t n = 0;
    for (size_t i = 0; i < S_CAP; i++) {
        if (s_tab[i].used_ms == 0)
            continue;
        memcpy(hashes[n], s_tab[i].hash, 32);
        used[n++] = s_tab[i].used_ms;
    }
    /* Emptied whatever the outcome: a use lost to a failed write can only end a session
     * early (its next use records again), never let one outlive its timeout. */
    memset(s_tab, 0, sizeof s_tab);
    s_n = 0;
    s_last_flush = gw.now;
    size_t w = 0;
    int rc = lk_cache_touch_many(cache, (const uint8_t(*)[32])hashes, used, n, &w);
    if (rc != 0)
        lk_warn("idle timeout: recording %zu session uses failed: %s", n, lk_strerror(rc));
    else {
        lk_counter_add(s_metric, w);
        s_written += w;
    }
}

uint64_t idle_touches_written(void)
{
    return s_written;
}
