/* errors.h: the project's error codes.
 *
 * Fallible functions return int: 0 on success or a negative code. System errors are
 * -errno; project codes live in the reserved range below (-10000 and down), so the two
 * never collide. LMDB, libpq and libsodium codes are translated at the module boundary
 * and never leak upward. lk_strerror() names any of them.
 */
#ifndef LK_ERRORS_H
#define LK_ERRORS_H

#define LK_WUR __attribute__((warn_unused_result))

enum lk_err {
    LK_EBASE = -10000,
    LK_EMALFORMED = -10001,  /* input does not decode: wrong type, missing field, trailing bytes */
    LK_ETOOBIG = -10002,     /* input exceeds a configured or protocol limit */
    LK_ECONFIG = -10003,     /* configuration error (message in the config error buffer) */
    LK_ENOTFOUND = -10004,   /* no such key, row or session */
    LK_EEXISTS = -10005,     /* unique key taken (email) */
    LK_EDB = -10006,         /* Postgres failed or is unreachable */
    LK_ECACHE = -10007,      /* LMDB failed (map full, corrupted, reader table full...) */
    LK_ECRYPTO = -10008,     /* libsodium failed (out of memory for argon2, init) */
    LK_EVERSION = -10009,    /* protocol version mismatch */
    LK_EEXPIRED = -10010,    /* deadline passed or session expired */
    LK_EINVAL = -10011,      /* invalid argument value (bad email, weak password...) */
    LK_ELIMITED = -10012,    /* throttled or rate-limited: try again later */
    LK_ELAST = -10013
};

/* Returns a static string for a code from this file or a -errno. Never NULL. */
const char *lk_strerror(int code);

#endif
