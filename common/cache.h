/* cache.h: the host's LMDB session cache.
 *
 * One LMDB environment per host holds a complete cache of live sessions, keyed by the
 * 32-byte BLAKE2b-256 hash of the token. "Complete" means a miss is an invalid token: the
 * signin worker writes through after committing to Postgres, the sweeper removes expired
 * entries, and every read checks expiry itself.
 *
 * Caveats (from lmdb.h, and why this module exists):
 * - Open the environment after fork/exec, in the process that uses it; never share an
 *   lk_cache_t across fork().
 * - Transactions are short; values are copied out before a read transaction ends.
 * - Readers (the gateway) open with readonly=1: they never take the writer lock.
 * - A process that dies inside a read transaction leaves a stale reader slot:
 *   lk_cache_reader_check() (the sweeper's cron) clears them.
 * - The environment must exist before a read-only open: lk_cache_open(readonly=0) creates
 *   it (the supervisor does so before starting any role).
 * - Not thread-safe: one lk_cache_t per thread (every role is single-threaded).
 * - Sync mode: read-write handles open with MDB_NOMETASYNC. Each commit still flushes its
 *   data pages, but the meta page is flushed with the next commit: an OS crash (not a
 *   process crash: the page cache survives those) may undo the last commit(s), and never
 *   corrupts the file. Losing a commit is acceptable because Postgres is the source of
 *   truth and the cache is rebuilt from it: latchkeyd clears the "warm" marker at every
 *   start, and the sweeper's warm-up then puts every live row and deletes every entry
 *   whose row is gone (so a revoke undone by a crash is redone) before the gateway's
 *   /ready answers 200. MDB_NOSYNC would be faster still but may corrupt the file on an
 *   OS crash with a file system that reorders writes; a corrupt map would need an
 *   operator to delete it, so NOMETASYNC is the trade-off taken.
 * - Map growth: on MDB_MAP_FULL a session put (single or bulk) or a throttle count doubles
 *   the map (up to the ceiling set with lk_cache_set_max_map, config cache.max_map_size)
 *   and retries; other processes adopt the new size on their next transaction
 *   (MDB_MAP_RESIZED). Deletes and sweeps do not grow it (they free pages).
 */
#ifndef LK_CACHE_H
#define LK_CACHE_H

#include "errors.h"

#include <stddef.h>
#include <stdint.h>

typedef struct lk_cache lk_cache_t;

struct lk_session {
    uint8_t user_id[16];
    int64_t created_ms;   /* wall-clock ms since the epoch */
    int64_t expires_ms;   /* invalid from this instant on */
    char email[255];      /* normalized, NUL-terminated */
};

/* Opens (readonly=0: creating if needed) the environment in directory path (created
 * mode 0700 if missing when readonly=0) with the given map size in bytes. On success *out
 * is owned by the caller: free with lk_cache_destroy. Returns 0, -errno, or LK_ECACHE. */
int lk_cache_open(const char *path, size_t map_size, int readonly, lk_cache_t **out) LK_WUR;

/* Closes the environment and sets *self_p to NULL. NULL-safe. */
void lk_cache_destroy(lk_cache_t **self_p);

/* Looks up the session of a token hash valid at now_ms and copies it into *out.
 * Returns 0, LK_ENOTFOUND (absent or expired: the same answer), or LK_ECACHE. */
int lk_cache_session_get(lk_cache_t *self, const uint8_t hash[32], int64_t now_ms,
                         struct lk_session *out) LK_WUR;

/* Stores (or replaces) the session of a token hash, durably committed on return.
 * Returns 0 or LK_ECACHE (map full included). Read-only handles get -EPERM. */
int lk_cache_session_put(lk_cache_t *self, const uint8_t hash[32], const struct lk_session *s) LK_WUR;

/* Removes a token hash (a revocation: signout, signout-all, user disable), and records
 * the revocation, present or not, in the named database "revoked" in the same write
 * transaction, so that a warm-up page read from Postgres before the row was deleted
 * cannot put the entry back (lk_cache_sessions_put_many skips revoked hashes). Returns 0,
 * LK_ENOTFOUND if it was absent, -EPERM (read-only) or LK_ECACHE. */
int lk_cache_session_del(lk_cache_t *self, const uint8_t hash[32]) LK_WUR;

/* Deletes up to max sessions that expired before before_ms; *removed gets the count. Call
 * again while *removed == max. A full scan (keys are hashes, not times), in write
 * transactions of at most 8192 entries each, so that the writer lock is held for
 * milliseconds at a time even over millions of entries. */
int lk_cache_sweep(lk_cache_t *self, int64_t before_ms, size_t max, size_t *removed) LK_WUR;

/* Counts live entries (for metrics and tests). Returns 0 or LK_ECACHE. */
int lk_cache_count(lk_cache_t *self, size_t *count) LK_WUR;

/* The environment's size and use, for metrics. */
struct lk_cache_stats {
    size_t map_size;     /* bytes the map may grow to */
    size_t used;         /* bytes of the pages up to the last one used */
    size_t sessions;     /* entries of the sessions database (as lk_cache_count) */
    unsigned readers;    /* reader slots in use (dead processes' included until cleared) */
    unsigned max_readers;
};

/* Fills *out. Returns 0 or LK_ECACHE. */
int lk_cache_stats(lk_cache_t *self, struct lk_cache_stats *out) LK_WUR;

/* Throttling counters (named database "throttle"), keyed by a 32-byte hash the caller
 * derives (e.g. BLAKE2b of a domain tag and the normalized email), shared by every process
 * of the host.
 *
 * lk_cache_throttle_acquire: one attempt is about to be made for key at now_ms. In one
 * write transaction (LMDB serializes writers across processes, so this is race-free): if
 * the key is locked, returns LK_ELIMITED with *retry_ms set to the time left; otherwise
 * counts the attempt, and when the count reaches limit (0: never) locks the key for
 * base_ms doubled per attempt beyond the limit, at most cap_ms; returns 0 (proceed).
 * An attempt is counted before it is made: call lk_cache_throttle_reset() after a success.
 * So with N attempts racing, exactly limit get through before the lock. Read-only handles
 * get -EPERM. */
int lk_cache_throttle_acquire(lk_cache_t *self, const uint8_t key[32], int64_t now_ms,
                              uint32_t limit, int64_t base_ms, int64_t cap_ms,
                              int64_t *retry_ms) LK_WUR;

/* Forgets key's count (after a success). Returns 0 (also when absent) or LK_ECACHE. */
int lk_cache_throttle_reset(lk_cache_t *self, const uint8_t key[32]) LK_WUR;

/* Deletes up to max records neither updated nor locked since before_ms (the sweeper).
 * *removed gets the count. Returns 0 or LK_ECACHE. */
int lk_cache_throttle_sweep(lk_cache_t *self, int64_t before_ms, size_t max, size_t *removed) LK_WUR;

/* The warm-up and reconcile of the sweeper (Postgres -> cache).
 *
 * lk_cache_sessions_put_many: stores the n sessions whose entries are absent (an entry
 * present is left alone: a worker wrote it through) and not revoked (lk_cache_session_del), in one write transaction, growing
 * the map when full. *added gets how many were stored. Read-only handles get -EPERM.
 *
 * lk_cache_sessions_prune_range: deletes the entries with key in (after, upto] (upto
 * NULL: to the end) that are not among keep (nkeep hashes in ascending byte order: the
 * rows Postgres holds in that range) and were created before created_before_ms (younger
 * entries may belong to rows committed after the page was read). Corrupt values go too.
 * *removed gets the count. Returns 0 or LK_ECACHE. */
int lk_cache_sessions_put_many(lk_cache_t *self, const uint8_t (*hashes)[32],
                               const struct lk_session *s, size_t n, size_t *added) LK_WUR;
/* Deletes the n token hashes present (absent ones are skipped) in one write transaction
 * (the sweeper: one commit per batch, not per entry); *removed gets how many were there.
 * Returns 0, -EPERM (read-only) or LK_ECACHE. */
int lk_cache_sessions_del_many(lk_cache_t *self, const uint8_t (*hashes)[32], size_t n,
                               size_t *removed) LK_WUR;
int lk_cache_sessions_prune_range(lk_cache_t *self, const uint8_t after[32],
                                  const uint8_t *upto, const uint8_t (*keep)[32], size_t nkeep,
                                  int64_t created_before_ms, size_t *removed) LK_WUR;

/* Small named values in the "meta" database (names and values up to 64 bytes), e.g.
 * LK_CACHE_META_WARM: set by the sweeper when the cache holds every live session of
 * Postgres, cleared by latchkeyd at start; the gateway's /ready requires it.
 * lk_cache_meta_get copies the value NUL-terminated into out (truncated to cap - 1);
 * returns 0, LK_ENOTFOUND or LK_ECACHE. lk_cache_meta_put stores value (NULL: deletes
 * the name); returns 0, -EINVAL, -EPERM (read-only) or LK_ECACHE. */
#define LK_CACHE_META_WARM "warm"
int lk_cache_meta_get(lk_cache_t *self, const char *name, char *out, size_t cap) LK_WUR;
int lk_cache_meta_put(lk_cache_t *self, const char *name, const char *value) LK_WUR;

/* The optional idle timeout (session.idle_timeout): the last use of a session is kept in
 * the named database "touch" (token hash -> wall-clock ms), written coarsely by the
 * gateways (at most once per resolution per session, batched into one write transaction),
 * so that validate does not write on every request.
 *
 * lk_cache_session_get_used: as lk_cache_session_get, and *used_ms gets the session's last
 * recorded use (its creation when no use was recorded), read in the same snapshot.
 * Returns 0, LK_ENOTFOUND (absent or expired) or LK_ECACHE.
 *
 * lk_cache_touch_many: records used_ms[i] as the last use of hashes[i] for each of the n
 * sessions that exist and whose recorded last use is earlier, in one write transaction
 * (growing the map when full); *written gets how many records changed. Returns 0, -EPERM
 * (read-only handle, or an environment without the "touch" database) or LK_ECACHE.
 *
 * lk_cache_touch_sweep: deletes up to max records older than before_ms (the sweeper: a
 * record older than the idle timeout says nothing the creation time would not). *removed
 * gets the count. Returns 0, -EPERM or LK_ECACHE. */
int lk_cache_session_get_used(lk_cache_t *self, const uint8_t hash[32], int64_t now_ms,
                              struct lk_session *out, int64_t *used_ms) LK_WUR;
int lk_cache_touch_many(lk_cache_t *self, const uint8_t (*hashes)[32], const int64_t *used_ms,
                        size_t n, size_t *written) LK_WUR;
int lk_cache_touch_sweep(lk_cache_t *self, int64_t before_ms, size_t max, size_t *removed) LK_WUR;

/* Deletes up to max revocation records made before before_ms (the sweeper: a record
 * only matters for the milliseconds between a warm-up page's read and its put; kept an
 * hour). *removed gets the count. Returns 0, -EPERM or LK_ECACHE. */
int lk_cache_revoked_sweep(lk_cache_t *self, int64_t before_ms, size_t max, size_t *removed) LK_WUR;

/* Sets the size up to which the map may grow on MDB_MAP_FULL (0: never grows). */
void lk_cache_set_max_map(lk_cache_t *self, size_t max_map);

/* Clears reader slots left by dead processes; *dead gets how many. Returns 0 or LK_ECACHE. */
int lk_cache_reader_check(lk_cache_t *self, int *dead) LK_WUR;

#endif
