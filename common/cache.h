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

/* Removes a token hash. Returns 0, LK_ENOTFOUND if it was absent, or LK_ECACHE. */
int lk_cache_session_del(lk_cache_t *self, const uint8_t hash[32]) LK_WUR;

/* Deletes up to max sessions that expired before before_ms, in one short write
 * transaction; *removed gets the count. Call again while *removed == max. */
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

/* Clears reader slots left by dead processes; *dead gets how many. Returns 0 or LK_ECACHE. */
int lk_cache_reader_check(lk_cache_t *self, int *dead) LK_WUR;

#endif
