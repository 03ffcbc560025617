/* idle.h: the optional session idle timeout, as the gateway applies it (config
 * session.idle_timeout; 0 = off, the default).
 *
 * A validate must stay a read: the last use of a session is recorded at most once per
 * resolution (idle_timeout / 10, clamped to 100 ms .. 60 s) per session, in the shared
 * cache's "touch" database (cache.h), and those records are written in batches, one LMDB
 * write transaction per IDLE_FLUSH_MS at most, from the gateway's cron. Until a batch is
 * written its uses are kept here and count for this gateway's own lookups, so the
 * timeout a client sees is exact to the resolution; another gateway of the host sees them
 * at most IDLE_FLUSH_MS (+ one cron tick) late.
 *
 * Consequence: a session is refused once no use has been recorded for idle_timeout, which
 * is between idle_timeout - resolution and idle_timeout after its real last use.
 *
 * Single-threaded like the rest of the gateway. */
#ifndef LK_GW_IDLE_H
#define LK_GW_IDLE_H

#include "cache.h"

#include <stdint.h>

#define IDLE_FLUSH_MS 500

/* Looks up the live session of a token hash at wall-clock now_ms, honouring the idle
 * timeout, and records the use when the resolution has passed. Same returns as
 * lk_cache_session_get: 0, LK_ENOTFOUND (absent, expired or idle) or LK_ECACHE. */
int idle_session_get(lk_cache_t *cache, const uint8_t hash[32], int64_t now_ms,
                     struct lk_session *out);

/* Writes the recorded uses (cron: when IDLE_FLUSH_MS has passed since the last write, or
 * at once when force is set or the table is filling up). */
void idle_flush(lk_cache_t *cache, int force);

/* Uses written to the cache since start (metrics and tests). */
uint64_t idle_touches_written(void);

#endif
