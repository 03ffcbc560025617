/* cache.c: the LMDB session cache (see cache.h for the contract and its Caveats).
 *
 * LMDB's own codes stop here: system errors from opening become -errno, everything else is
 * logged with mdb_strerror() and becomes LK_ECACHE. */
#include "cache.h"

#include "log.h"
#include "util.h"

#include <errno.h>
#include <lmdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

#define S_DB_NAME "sessions"
#define S_TDB_NAME "throttle"
#define S_MDB_NAME "meta"
#define S_UDB_NAME "touch"
#define S_RDB_NAME "revoked" /* token hash -> revocation time (int64 ms): see cache.h */
#define S_ULEN 8 /* a touch value: last use, wall-clock ms, int64 little-endian */
#define S_META_MAX 64
#define S_KEY_LEN 32

/* Value layout, little-endian whatever the host, so a cache file means the same thing to
 * every build that maps it:
 *   [0]       format version (S_FORMAT)
 *   [1..16]   user id
 *   [17..24]  created_ms, int64
 *   [25..32]  expires_ms, int64
 *   [33]      email length n, 1..254
 *   [34..]    n email bytes, no NUL
 * The version byte lets a later layout coexist with this one during a rolling restart:
 * an unknown version reads as absent instead of as garbage. */
#define S_FORMAT 1
#define S_HDR_LEN 34
#define S_EMAIL_MAX 254
#define S_VALUE_MAX (S_HDR_LEN + S_EMAIL_MAX)

struct lk_cache {
    MDB_env *env;
    MDB_dbi dbi;
    MDB_dbi tdbi;     /* "throttle": counters keyed by a 32-byte hash (see cache.h) */
    int has_tdbi;
    MDB_dbi mdbi;     /* "meta": small named values (the warm-up marker, see cache.h) */
    int has_mdbi;
    MDB_dbi udbi;     /* "touch": last use of a session, for the idle timeout (see cache.h) */
    int has_udbi;
    MDB_dbi rdbi;     /* "revoked": recent revocations, so a warm-up cannot undo them */
    int has_rdbi;
    size_t max_map;   /* growth ceiling on MDB_MAP_FULL; 0 = never grow */
    /* The one read transaction of this handle, kept reset between lookups: renew costs a
     * few loads and stores on the reader slot it already owns, where begin/abort would
     * allocate and search the reader table on every validate. NULL until first needed or
     * after an error ended it. */
    MDB_txn *rtxn;
    int readonly;
};

static int s_open_dbi(lk_cache_t *self, const char *path);
static int s_read_begin(lk_cache_t *self, MDB_txn **txn);
static void s_read_end(lk_cache_t *self);
static int s_write_begin(lk_cache_t *self, MDB_txn **txn);
static int s_commit(MDB_txn *txn, const char *what);
static int s_grow(lk_cache_t *self);
static size_t s_encode(const struct lk_session *s, uint8_t buf[S_VALUE_MAX]);
static int s_decode(const MDB_val *v, struct lk_session *out);
static int s_session_get(lk_cache_t *self, const uint8_t hash[32], int64_t now_ms,
                         struct lk_session *out, int64_t *used_ms);

static void s_put_i64(uint8_t *p, int64_t v)
{
    uint64_t u = (uint64_t)v;
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(u >> (8 * i));
}

static int64_t s_get_i64(const uint8_t *p)
{
    uint64_t u = 0;
    for (int i = 0; i < 8; i++)
        u |= (uint64_t)p[i] << (8 * i);
    return (int64_t)u;
}

/* Open-time errors: positive codes are errno values (a missing directory must read as
 * -ENOENT to the caller), LMDB's negative ones are ours to hide. */
static int s_open_err(int rc)
{
    return rc > 0 ? -rc : LK_ECACHE;
}

int lk_cache_open(const char *path, size_t map_size, int readonly, lk_cache_t **out)
{
    if (path == NULL || *path == '\0' || out == NULL)
        return -EINVAL;
    *out = NULL;
    if (!readonly && mkdir(path, 0700) != 0 && errno != EEXIST) {
        int e = errno;
        lk_error("cache: mkdir %s: %s", path, strerror(e));
        return -e;
    }
    lk_cache_t *self = calloc(1, sizeof *self);
    if (self == NULL)
        return -ENOMEM;
    self->readonly = readonly ? 1 : 0;
    int rc = mdb_env_create(&self->env);
    if (rc != 0) {
        lk_error("cache: mdb_env_create: %s", mdb_strerror(rc));
        free(self);
        return s_open_err(rc);
    }
    /* "sessions", "throttle", "meta", "touch", and room to grow. */
    rc = mdb_env_set_maxdbs(self->env, 8);
    /* Every gateway, worker and sweeper process of the host holds one slot for its life;
     * LMDB's default of 126 would cap a scaled-out host. */
    if (rc == 0)
        rc = mdb_env_set_maxreaders(self->env, 512);
    /* 0 keeps the size already recorded in the environment (readers need not know it). */
    if (rc == 0 && map_size > 0)
        rc = mdb_env_set_mapsize(self->env, map_size);
    /* MDB_NOTLS ties the reader slot to our MDB_txn object instead of to the thread.
     * Every role is single-threaded, so thread-local storage buys nothing; without NOTLS a
     * reset rtxn gives its slot back to "this thread" and renew must look it up again, and
     * any other read transaction begun meanwhile would take that slot and make our renew
     * fail with MDB_BAD_RSLOT. With NOTLS the kept-reset rtxn owns its slot for the life of
     * the handle, which is exactly the model the hot path relies on. */
    /* MDB_NOMETASYNC: see cache.h's Caveats (an OS crash may lose the last commits;
     * the sweeper's start-up reconcile against Postgres repairs that before /ready). */
    unsigned flags = MDB_NOTLS | (self->readonly ? MDB_RDONLY : MDB_NOMETASYNC);
    if (rc == 0)
        rc = mdb_env_open(self->env, path, flags, 0600);
    if (rc != 0) {
        if (self->readonly && rc == ENOENT)
            lk_error("cache: no environment at %s: it must be created read-write first", path);
        else
            lk_error("cache: open %s: %s", path, mdb_strerror(rc));
        mdb_env_close(self->env);
        free(self);
        return s_open_err(rc);
    }
    rc = s_open_dbi(self, path);
    if (rc == 0) {
        /* Take our reader slot now: a full reader table is a start-up failure (the role
         * exits and is restarted), not a validate that fails later. */
        MDB_txn *txn;
        rc = s_read_begin(self, &txn);
        if (rc == 0)
            s_read_end(self);
    }
    if (rc != 0) {
        lk_cache_destroy(&self);
        return rc;
    }
    *out = self;
    return 0;
}

/* Opens the "sessions" handle. A read-write open creates it in a write transaction; a
 * read-only one must find it, in a read transaction that is committed (not aborted) because
 * only a commit keeps the handle for later transactions. */
static int s_open_dbi(lk_cache_t *self, const char *path)
{
    MDB_txn *txn;
    int rc = mdb_txn_begin(self->env, NULL, self->readonly ? MDB_RDONLY : 0, &txn);
    if (rc != 0) {
        lk_error("cache: begin in %s: %s", path, mdb_strerror(rc));
        return s_open_err(rc);
    }
    rc = mdb_dbi_open(txn, S_DB_NAME, self->readonly ? 0 : MDB_CREATE, &self->dbi);
    if (rc != 0) {
        mdb_txn_abort(txn);
        if (rc == MDB_NOTFOUND) {
            lk_error("cache: no '" S_DB_NAME "' database in %s: open it read-write first", path);
            return -ENOENT;
        }
        lk_error("cache: open database '" S_DB_NAME "' in %s: %s", path, mdb_strerror(rc));
        return s_open_err(rc);
    }
    /* The other databases: created with the environment; a reader that finds one missing
     * (an environment made by an older build) simply has no handle for it. */
    struct {
        const char *name;
        MDB_dbi *dbi;
        int *has;
    } more[] = {
        {S_TDB_NAME, &self->tdbi, &self->has_tdbi},
        {S_MDB_NAME, &self->mdbi, &self->has_mdbi},
        {S_UDB_NAME, &self->udbi, &self->has_udbi},
        {S_RDB_NAME, &self->rdbi, &self->has_rdbi},
    };
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++) {
        rc = mdb_dbi_open(txn, more[i].name, self->readonly ? 0 : MDB_CREATE, more[i].dbi);
        if (rc == 0)
            *more[i].has = 1;
        else if (!(rc == MDB_NOTFOUND && self->readonly)) {
            mdb_txn_abort(txn);
            lk_error("cache: open database '%s' in %s: %s", more[i].name, path, mdb_strerror(rc));
            return s_open_err(rc);
        }
    }
    rc = mdb_txn_commit(txn);
    if (rc != 0) {
        lk_error("cache: commit database '" S_DB_NAME "' in %s: %s", path, mdb_strerror(rc));
        return s_open_err(rc);
    }
    return 0;
}

void lk_cache_destroy(lk_cache_t **self_p)
{
    if (self_p == NULL || *self_p == NULL)
        return;
    lk_cache_t *self = *self_p;
    /* Aborting (not just resetting) releases the reader slot before the env goes. */
    if (self->rtxn)
        mdb_txn_abort(self->rtxn);
    mdb_env_close(self->env);
    free(self);
    *self_p = NULL;
}

static int s_read_begin(lk_cache_t *self, MDB_txn **txn)
{
    int rc;
    if (self->rtxn) {
        rc = mdb_txn_renew(self->rtxn);
        if (rc == 0) {
            *txn = self->rtxn;
            return 0;
        }
        mdb_txn_abort(self->rtxn);
        self->rtxn = NULL;
    } else {
        rc = mdb_txn_begin(self->env, NULL, MDB_RDONLY, &self->rtxn);
        if (rc == 0) {
            *txn = self->rtxn;
            return 0;
        }
        self->rtxn = NULL;
    }
    if (rc == MDB_MAP_RESIZED) {
        /* Another process grew the map past ours: adopt its size (legal now, since this
         * process has no live transaction) and try once more. */
        rc = mdb_env_set_mapsize(self->env, 0);
        if (rc == 0)
            rc = mdb_txn_begin(self->env, NULL, MDB_RDONLY, &self->rtxn);
        if (rc == 0) {
            *txn = self->rtxn;
            return 0;
        }
        self->rtxn = NULL;
    }
    lk_error("cache: read transaction: %s", mdb_strerror(rc));
    return LK_ECACHE;
}

static void s_read_end(lk_cache_t *self)
{
    /* Reset, not abort: the snapshot is released (writers may reuse its pages) but the
     * handle and its reader slot stay ours for the next renew. */
    mdb_txn_reset(self->rtxn);
}

static int s_write_begin(lk_cache_t *self, MDB_txn **txn)
{
    if (self->readonly)
        return -EPERM;
    int rc = mdb_txn_begin(self->env, NULL, 0, txn);
    if (rc == MDB_MAP_RESIZED) {
        /* As in s_read_begin: our rtxn is reset, so no transaction of ours is live. */
        rc = mdb_env_set_mapsize(self->env, 0);
        if (rc == 0)
            rc = mdb_txn_begin(self->env, NULL, 0, txn);
    }
    if (rc != 0) {
        lk_error("cache: write transaction: %s", mdb_strerror(rc));
        return LK_ECACHE;
    }
    return 0;
}

/* Any LMDB failure inside a write path: the transaction is gone either way, and the map
 * being full gets a line of its own because its fix is an operator's (a bigger map). */
static int s_write_fail(MDB_txn *txn, int rc, const char *what)
{
    if (txn)
        mdb_txn_abort(txn);
    if (rc == MDB_MAP_FULL)
        lk_error("cache: %s: map full: raise the cache map size", what);
    else
        lk_error("cache: %s: %s", what, mdb_strerror(rc));
    return LK_ECACHE;
}

static int s_commit(MDB_txn *txn, const char *what)
{
    /* mdb_txn_commit frees txn even when it fails. */
    int rc = mdb_txn_commit(txn);
    return rc == 0 ? 0 : s_write_fail(NULL, rc, what);
}

static size_t s_encode(const struct lk_session *s, uint8_t buf[S_VALUE_MAX])
{
    size_t n = strnlen(s->email, sizeof s->email);
    if (n == 0 || n > S_EMAIL_MAX)
        return 0;
    buf[0] = S_FORMAT;
    memcpy(buf + 1, s->user_id, 16);
    s_put_i64(buf + 17, s->created_ms);
    s_put_i64(buf + 25, s->expires_ms);
    buf[33] = (uint8_t)n;
    memcpy(buf + S_HDR_LEN, s->email, n);
    return S_HDR_LEN + n;
}

/* Every byte of the value is checked before it is trusted: the file is shared by several
 * processes and may outlive the build that wrote it. Returns 0 or -1 (treat as absent). */
static int s_decode(const MDB_val *v, struct lk_session *out)
{
    const uint8_t *p = v->mv_data;
    if (v->mv_size < S_HDR_LEN || p[0] != S_FORMAT)
        return -1;
    size_t n = p[33];
    if (n == 0 || n > S_EMAIL_MAX || v->mv_size != S_HDR_LEN + n ||
        memchr(p + S_HDR_LEN, '\0', n) != NULL)
        return -1;
    memcpy(out->user_id, p + 1, 16);
    out->created_ms = s_get_i64(p + 17);
    out->expires_ms = s_get_i64(p + 25);
    memcpy(out->email, p + S_HDR_LEN, n);
    out->email[n] = '\0';
    return 0;
}

/* The lookup of lk_cache_session_get and lk_cache_session_get_used: used_ms NULL skips
 * the "touch" read (validate with the idle timeout off reads one database, not two). */
static int s_session_get(lk_cache_t *self, const uint8_t hash[32], int64_t now_ms,
                         struct lk_session *out, int64_t *used_ms)
{
    MDB_txn *txn;
    int rc = s_read_begin(self, &txn);
    if (rc != 0)
        return rc;
    MDB_val k = {.mv_size = S_KEY_LEN, .mv_data = (void *)hash}, v;
    struct lk_session s;
    int64_t touched = INT64_MIN;
    rc = mdb_get(txn, self->dbi, &k, &v);
    int bad = rc == 0 ? s_decode(&v, &s) : 0;
    size_t vsize = rc == 0 ? v.mv_size : 0;
    if (rc == 0 && !bad && used_ms && self->has_udbi) {
        /* The same snapshot as the session's. */
        MDB_val u;
        int urc = mdb_get(txn, self->udbi, &k, &u);
        if (urc == 0 && u.mv_size == S_ULEN)
            touched = s_get_i64(u.mv_data);
        else if (urc != 0 && urc != MDB_NOTFOUND)
            rc = urc;
    }
    /* v points into the map: everything needed was copied out above. */
    s_read_end(self);
    if (rc == MDB_NOTFOUND)
        return LK_ENOTFOUND;
    if (rc != 0) {
        lk_error("cache: get: %s", mdb_strerror(rc));
        return LK_ECACHE;
    }
    if (bad) {
        /* No key in the line: it is a token hash. The sweeper deletes the entry. */
        lk_warn("cache: corrupt session value (%zu bytes) treated as absent", vsize);
        return LK_ENOTFOUND;
    }
    /* Checked here, not left to the sweeper: a token is invalid from the ms it expires. */
    if (now_ms >= s.expires_ms)
        return LK_ENOTFOUND;
    *out = s;
    if (used_ms)
        *used_ms = touched > s.created_ms ? touched : s.created_ms;
    return 0;
}

int lk_cache_session_get(lk_cache_t *self, const uint8_t hash[32], int64_t now_ms,
                         struct lk_session *out)
{
    return s_session_get(self, hash, now_ms, out, NULL);
}

int lk_cache_session_put(lk_cache_t *self, const uint8_t hash[32], const struct lk_session *s)
{
    if (self->readonly)
        return -EPERM;
    uint8_t buf[S_VALUE_MAX];
    size_t n = s_encode(s, buf);
    if (n == 0)
        return -EINVAL; /* empty or unterminated email: a caller bug, not a cache failure */
    for (;;) {
        MDB_txn *txn;
        int rc = s_write_begin(self, &txn);
        if (rc != 0)
            return rc;
        MDB_val k = {.mv_size = S_KEY_LEN, .mv_data = (void *)hash};
        MDB_val v = {.mv_size = n, .mv_data = buf};
        rc = mdb_put(txn, self->dbi, &k, &v, 0);
        if (rc == 0)
            rc = mdb_txn_commit(txn); /* frees txn either way */
        else
            mdb_txn_abort(txn);
        if (rc == 0)
            return 0;
        if (rc != MDB_MAP_FULL || s_grow(self) != 0)
            return s_write_fail(NULL, rc, "put");
    }
}

int lk_cache_sessions_put_many(lk_cache_t *self, const uint8_t (*hashes)[32],
                               const struct lk_session *s, size_t n, size_t *added)
{
    *added = 0;
    if (self->readonly)
        return -EPERM;
    for (;;) {
        MDB_txn *txn;
        size_t a = 0;
        int rc = s_write_begin(self, &txn);
        if (rc != 0)
            return rc;
        for (size_t i = 0; i < n && rc == 0; i++) {
            uint8_t buf[S_VALUE_MAX];
            size_t len = s_encode(&s[i], buf);
            if (len == 0)
                continue; /* no valid email: never servable, skip */
            MDB_val k = {.mv_size = S_KEY_LEN, .mv_data = (void *)hashes[i]};
            MDB_val v = {.mv_size = len, .mv_data = buf};
            if (self->has_rdbi) {
                /* Revoked after the page was read from Postgres: putting it back would
                 * undo the revoke. */
                MDB_val r;
                rc = mdb_get(txn, self->rdbi, &k, &r);
                if (rc == 0)
                    continue;
                if (rc != MDB_NOTFOUND)
                    break;
            }
            /* NOOVERWRITE: an entry already there was written through by a worker, at
             * least as fresh as the page read from Postgres. */
            rc = mdb_put(txn, self->dbi, &k, &v, MDB_NOOVERWRITE);
            if (rc == MDB_KEYEXIST)
                rc = 0;
            else if (rc == 0)
                a++;
        }
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        if (rc == 0) {
            *added = a;
            return 0;
        }
        if (rc != MDB_MAP_FULL || s_grow(self) != 0)
            return s_write_fail(NULL, rc, "put many");
    }
}

int lk_cache_sessions_del_many(lk_cache_t *self, const uint8_t (*hashes)[32], size_t n,
                               size_t *removed)
{
    *removed = 0;
    MDB_txn *txn;
    int rc = s_write_begin(self, &txn);
    if (rc != 0)
        return rc;
    size_t d = 0;
    for (size_t i = 0; i < n; i++) {
        MDB_val k = {.mv_size = S_KEY_LEN, .mv_data = (void *)hashes[i]};
        rc = mdb_del(txn, self->dbi, &k, NULL);
        if (rc == 0)
            d++;
        else if (rc != MDB_NOTFOUND)
            return s_write_fail(txn, rc, "del many");
    }
    rc = s_commit(txn, "del many commit");
    if (rc == 0)
        *removed = d;
    return rc;
}

int lk_cache_sessions_prune_range(lk_cache_t *self, const uint8_t after[32], const uint8_t *upto,
                                  const uint8_t (*keep)[32], size_t nkeep,
                                  int64_t created_before_ms, size_t *removed)
{
    *removed = 0;
    MDB_txn *txn;
    int rc = s_write_begin(self, &txn);
    if (rc != 0)
        return rc;
    MDB_cursor *cur;
    rc = mdb_cursor_open(txn, self->dbi, &cur);
    if (rc != 0)
        return s_write_fail(txn, rc, "prune cursor");
    size_t n = 0, j = 0;
    MDB_val k = {.mv_size = S_KEY_LEN, .mv_data = (void *)after}, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    /* Both sides are in key order: a merge. An entry equal to `after` was judged by the
     * previous range. */
    if (rc == 0 && k.mv_size == S_KEY_LEN && memcmp(k.mv_data, after, S_KEY_LEN) == 0)
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    while (rc == 0) {
        if (k.mv_size != S_KEY_LEN) {
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
            continue;
        }
        if (upto && memcmp(k.mv_data, upto, S_KEY_LEN) > 0)
            break;
        while (j < nkeep && memcmp(keep[j], k.mv_data, S_KEY_LEN) < 0)
            j++;
        int kept = j < nkeep && memcmp(keep[j], k.mv_data, S_KEY_LEN) == 0;
        struct lk_session s;
        int corrupt = s_decode(&v, &s) != 0;
        /* Young entries are spared: their row may have committed after the page was read. */
        if (!kept && (corrupt || s.created_ms < created_before_ms)) {
            rc = mdb_cursor_del(cur, 0);
            if (rc != 0)
                break;
            n++;
        }
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return s_write_fail(txn, rc, "prune");
    rc = s_commit(txn, "prune commit");
    if (rc == 0)
        *removed = n;
    return rc;
}

int lk_cache_meta_get(lk_cache_t *self, const char *name, char *out, size_t cap)
{
    if (!self->has_mdbi)
        return LK_ENOTFOUND;
    MDB_txn *txn;
    int rc = s_read_begin(self, &txn);
    if (rc != 0)
        return rc;
    MDB_val k = {.mv_size = strlen(name), .mv_data = (void *)name}, v;
    rc = mdb_get(txn, self->mdbi, &k, &v);
    if (rc == 0 && cap > 0) {
        size_t n = v.mv_size < cap - 1 ? v.mv_size : cap - 1;
        memcpy(out, v.mv_data, n);
        out[n] = '\0';
    }
    s_read_end(self);
    if (rc == MDB_NOTFOUND)
        return LK_ENOTFOUND;
    if (rc != 0) {
        lk_error("cache: meta get: %s", mdb_strerror(rc));
        return LK_ECACHE;
    }
    return 0;
}

int lk_cache_meta_put(lk_cache_t *self, const char *name, const char *value)
{
    if (self->readonly || !self->has_mdbi)
        return -EPERM;
    size_t nlen = strlen(name), vlen = value ? strlen(value) : 0;
    if (nlen == 0 || nlen > S_META_MAX || vlen > S_META_MAX)
        return -EINVAL;
    MDB_txn *txn;
    int rc = s_write_begin(self, &txn);
    if (rc != 0)
        return rc;
    MDB_val k = {.mv_size = nlen, .mv_data = (void *)name};
    if (value == NULL) {
        rc = mdb_del(txn, self->mdbi, &k, NULL);
        if (rc == MDB_NOTFOUND) {
            mdb_txn_abort(txn);
            return 0;
        }
    } else {
        MDB_val v = {.mv_size = vlen, .mv_data = (void *)value};
        rc = mdb_put(txn, self->mdbi, &k, &v, 0);
    }
    if (rc != 0)
        return s_write_fail(txn, rc, "meta put");
    return s_commit(txn, "meta commit");
}

void lk_cache_set_max_map(lk_cache_t *self, size_t max_map)
{
    self->max_map = max_map;
}

/* MDB_MAP_FULL: doubles the map (at most max_map) so the caller can retry the whole
 * transaction. Legal here: the failed write transaction is gone and our read transaction
 * is reset. Other processes adopt the new size on their next begin (MDB_MAP_RESIZED).
 * Returns 0 (grown) or -1 (at the ceiling, or LMDB refused). */
static int s_grow(lk_cache_t *self)
{
    MDB_envinfo info;
    if (self->max_map == 0 || mdb_env_info(self->env, &info) != 0 ||
        info.me_mapsize >= self->max_map)
        return -1;
    size_t next = info.me_mapsize > self->max_map / 2 ? self->max_map : info.me_mapsize * 2;
    int rc = mdb_env_set_mapsize(self->env, next);
    if (rc != 0) {
        lk_error("cache: grow map to %zu bytes: %s", next, mdb_strerror(rc));
        return -1;
    }
    lk_warn("cache: map full: grown from %zu to %zu bytes (cache.max_map_size %zu)",
            (size_t)info.me_mapsize, next, self->max_map);
    return 0;
}

int lk_cache_session_del(lk_cache_t *self, const uint8_t hash[32])
{
    if (self->readonly)
        return -EPERM;
    uint8_t when[S_ULEN];
    s_put_i64(when, lk_now_ms());
    for (;;) {
        MDB_txn *txn;
        int rc = s_write_begin(self, &txn);
        if (rc != 0)
            return rc;
        MDB_val k = {.mv_size = S_KEY_LEN, .mv_data = (void *)hash};
        int found = 1;
        rc = mdb_del(txn, self->dbi, &k, NULL);
        if (rc == MDB_NOTFOUND) {
            found = 0;
            rc = 0;
        }
        /* The revocation is recorded even when the entry is absent: a warm-up page read
         * from Postgres before the row was deleted may be about to put it. */
        if (rc == 0 && self->has_rdbi) {
            MDB_val v = {.mv_size = S_ULEN, .mv_data = when};
            rc = mdb_put(txn, self->rdbi, &k, &v, 0);
        }
        if (rc == 0 && !found && !self->has_rdbi) {
            mdb_txn_abort(txn);
            return LK_ENOTFOUND;
        }
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        if (rc == 0)
            return found ? 0 : LK_ENOTFOUND;
        if (rc != MDB_MAP_FULL || s_grow(self) != 0)
            return s_write_fail(NULL, rc, "del");
    }
}

/* A session entry the sweep collects: expired before before_ms, or corrupt (get reads a
 * corrupt value as absent, so it can never be served: it is garbage like an expired
 * session, and the sweep is the one place that collects garbage). */
static int s_session_garbage(const MDB_val *v, int64_t before_ms)
{
    struct lk_session s;
    if (s_decode(v, &s) != 0) {
        lk_warn("cache: sweep deletes a corrupt session value (%zu bytes)", v->mv_size);
        return 1;
    }
    return s.expires_ms < before_ms;
}

/* Deletes up to max entries of dbi for which garbage() says so; *removed gets the count.
 * what names the sweep in log lines. Keys are hashes, so age order is not key order: this
 * is a full scan, done in write transactions of at most s_scan_chunk entries each, every
 * one resuming at the key where the last stopped, so that the writer lock (which signin
 * workers need for every new session) is never held for a whole pass over a million
 * entries. */
static size_t s_scan_chunk = 8192; /* a variable so that the unit tests can shrink it */
#define S_KEY_MAX 511 /* LMDB's default maximum key size */

static int s_sweep_dbi(lk_cache_t *self, MDB_dbi dbi, int64_t before_ms, size_t max,
                       int (*garbage)(const MDB_val *v, int64_t before_ms), const char *what,
                       size_t *removed)
{
    uint8_t resume[S_KEY_MAX];
    size_t resume_len = 0; /* 0: from the first key */
    size_t n = 0;

    for (;;) {
        MDB_txn *txn;
        int rc = s_write_begin(self, &txn);
        if (rc != 0)
            return rc;
        MDB_cursor *cur;
        rc = mdb_cursor_open(txn, dbi, &cur);
        if (rc != 0)
            return s_write_fail(txn, rc, what);
        MDB_val k = {.mv_size = resume_len, .mv_data = resume}, v;
        rc = mdb_cursor_get(cur, &k, &v, resume_len ? MDB_SET_RANGE : MDB_FIRST);
        size_t scanned = 0;
        while (rc == 0 && n < max && scanned < s_scan_chunk) {
            if (garbage(&v, before_ms)) {
                rc = mdb_cursor_del(cur, 0);
                if (rc != 0)
                    break;
                n++;
            }
            scanned++;
            /* After a delete the cursor already sits on the next entry; MDB_NEXT knows. */
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        int more = rc == 0 && n < max; /* stopped at the chunk's end, on an unexamined key */
        if (more) {
            if (k.mv_size == 0 || k.mv_size > sizeof resume) {
                rc = MDB_BAD_VALSIZE;
                more = 0;
            } else {
                /* k points into the map: copy it before the transaction ends */
                memcpy(resume, k.mv_data, k.mv_size);
                resume_len = k.mv_size;
            }
        }
        mdb_cursor_close(cur);
        if (rc != 0 && rc != MDB_NOTFOUND && !more)
            return s_write_fail(txn, rc, what);
        rc = s_commit(txn, what);
        if (rc != 0)
            return rc;
        *removed = n;
        if (!more)
            return 0;
    }
}

int lk_cache_sweep(lk_cache_t *self, int64_t before_ms, size_t max, size_t *removed)
{
    *removed = 0;
    if (max == 0)
        return self->readonly ? -EPERM : 0;
    return s_sweep_dbi(self, self->dbi, before_ms, max, s_session_garbage, "sweep", removed);
}

int lk_cache_count(lk_cache_t *self, size_t *count)
{
    MDB_txn *txn;
    int rc = s_read_begin(self, &txn);
    if (rc != 0)
        return rc;
    MDB_stat st;
    /* O(1) from the B-tree header: entries stored, so sessions that expired but were not
     * swept yet are included. */
    rc = mdb_stat(txn, self->dbi, &st);
    s_read_end(self);
    if (rc != 0) {
        lk_error("cache: stat: %s", mdb_strerror(rc));
        return LK_ECACHE;
    }
    *count = st.ms_entries;
    return 0;
}

/* mdb_reader_list's callback: one line per reader slot in use, after a header line. */
static int s_count_reader(const char *msg, void *ctx)
{
    while (*msg == ' ')
        msg++;
    if (*msg >= '0' && *msg <= '9')
        ++*(unsigned *)ctx;
    return 0;
}

int lk_cache_stats(lk_cache_t *self, struct lk_cache_stats *out)
{
    MDB_envinfo info;
    MDB_stat st;
    int rc = mdb_env_info(self->env, &info);
    if (rc == 0)
        rc = mdb_env_stat(self->env, &st);
    if (rc != 0) {
        lk_error("cache: env info: %s", mdb_strerror(rc));
        return LK_ECACHE;
    }
    out->map_size = info.me_mapsize;
    out->used = (info.me_last_pgno + 1) * (size_t)st.ms_psize;
    out->readers = 0; /* me_numreaders is a high-water mark: count the slots in use */
    (void)mdb_reader_list(self->env, s_count_reader, &out->readers);
    out->max_readers = info.me_maxreaders;
    return lk_cache_count(self, &out->sessions);
}

int lk_cache_reader_check(lk_cache_t *self, int *dead)
{
    int rc = mdb_reader_check(self->env, dead);
    if (rc != 0) {
        lk_error("cache: reader check: %s", mdb_strerror(rc));
        return LK_ECACHE;
    }
    return 0;
}

/* Throttle record, little-endian:
 *   [0]      format version (S_TFORMAT)
 *   [1..4]   attempts counted since the last reset, uint32
 *   [5..12]  locked_until_ms, int64 (0: not locked)
 *   [13..20] updated_ms, int64 (for the sweep of stale records) */
#define S_TFORMAT 1
#define S_TLEN 21

int lk_cache_throttle_acquire(lk_cache_t *self, const uint8_t key[32], int64_t now_ms,
                              uint32_t limit, int64_t base_ms, int64_t cap_ms, int64_t *retry_ms)
{
    if (!self->has_tdbi)
        return -EPERM;
retry:;
    MDB_txn *txn;
    int rc = s_write_begin(self, &txn);
    if (rc != 0)
        return rc;
    MDB_val k = {.mv_size = S_KEY_LEN, .mv_data = (void *)key}, v;
    uint32_t attempts = 0;
    int64_t locked_until = 0;
    rc = mdb_get(txn, self->tdbi, &k, &v);
    if (rc == 0 && v.mv_size == S_TLEN && ((const uint8_t *)v.mv_data)[0] == S_TFORMAT) {
        const uint8_t *p = v.mv_data;
        attempts = (uint32_t)p[1] | (uint32_t)p[2] << 8 | (uint32_t)p[3] << 16 | (uint32_t)p[4] << 24;
        locked_until = s_get_i64(p + 5);
    } else if (rc != 0 && rc != MDB_NOTFOUND) {
        return s_write_fail(txn, rc, "throttle get");
    }
    /* The check and the count are one write transaction: LMDB serializes writers across
     * every process of the host, so N workers racing on one email cannot all pass the
     * check before any of them counts. */
    if (now_ms < locked_until) {
        mdb_txn_abort(txn);
        *retry_ms = locked_until - now_ms;
        return LK_ELIMITED;
    }
    if (attempts < UINT32_MAX)
        attempts++;
    if (limit > 0 && attempts >= limit) {
        uint32_t shift = attempts - limit;
        int64_t lock = shift >= 30 ? cap_ms : base_ms << shift;
        locked_until = now_ms + (lock > cap_ms ? cap_ms : lock);
    }
    uint8_t buf[S_TLEN];
    buf[0] = S_TFORMAT;
    for (int i = 0; i < 4; i++)
        buf[1 + i] = (uint8_t)(attempts >> (8 * i));
    s_put_i64(buf + 5, locked_until);
    s_put_i64(buf + 13, now_ms);
    v.mv_size = S_TLEN;
    v.mv_data = buf;
    rc = mdb_put(txn, self->tdbi, &k, &v, 0);
    if (rc == 0)
        rc = mdb_txn_commit(txn); /* frees txn either way */
    else
        mdb_txn_abort(txn);
    /* Map full: grow and run the whole check-and-count again (nothing was counted). */
    if (rc == MDB_MAP_FULL && s_grow(self) == 0)
        goto retry;
    if (rc != 0)
        return s_write_fail(NULL, rc, "throttle put");
    *retry_ms = 0;
    return 0;
}

int lk_cache_throttle_reset(lk_cache_t *self, const uint8_t key[32])
{
    if (!self->has_tdbi)
        return -EPERM;
    MDB_txn *txn;
    int rc = s_write_begin(self, &txn);
    if (rc != 0)
        return rc;
    MDB_val k = {.mv_size = S_KEY_LEN, .mv_data = (void *)key};
    rc = mdb_del(txn, self->tdbi, &k, NULL);
    if (rc == MDB_NOTFOUND) {
        mdb_txn_abort(txn);
        return 0;
    }
    if (rc != 0)
        return s_write_fail(txn, rc, "throttle del");
    return s_commit(txn, "throttle commit");
}

/* A throttle record neither updated nor locked since before_ms, or one of an unknown
 * format. */
static int s_throttle_garbage(const MDB_val *v, int64_t before_ms)
{
    const uint8_t *p = v->mv_data;
    return v->mv_size != S_TLEN || p[0] != S_TFORMAT ||
           (s_get_i64(p + 13) < before_ms && s_get_i64(p + 5) < before_ms);
}

int lk_cache_throttle_sweep(lk_cache_t *self, int64_t before_ms, size_t max, size_t *removed)
{
    *removed = 0;
    if (!self->has_tdbi)
        return -EPERM;
    return s_sweep_dbi(self, self->tdbi, before_ms, max, s_throttle_garbage, "throttle sweep",
                       removed);
}

/* The idle timeout's last-use records ("touch"). */

int lk_cache_session_get_used(lk_cache_t *self, const uint8_t hash[32], int64_t now_ms,
                              struct lk_session *out, int64_t *used_ms)
{
    return s_session_get(self, hash, now_ms, out, used_ms);
}

int lk_cache_touch_many(lk_cache_t *self, const uint8_t (*hashes)[32], const int64_t *used_ms,
                        size_t n, size_t *written)
{
    *written = 0;
    if (self->readonly || !self->has_udbi)
        return -EPERM;
    for (;;) {
        MDB_txn *txn;
        size_t w = 0;
        int rc = s_write_begin(self, &txn);
        if (rc != 0)
            return rc;
        for (size_t i = 0; i < n && rc == 0; i++) {
            MDB_val k = {.mv_size = S_KEY_LEN, .mv_data = (void *)hashes[i]}, v;
            /* A touch for a session that is gone (revoked, swept) would only be garbage
             * for the sweep: skip it. */
            rc = mdb_get(txn, self->dbi, &k, &v);
            if (rc == MDB_NOTFOUND) {
                rc = 0;
                continue;
            }
            if (rc != 0)
                break;
            rc = mdb_get(txn, self->udbi, &k, &v);
            if (rc == 0 && v.mv_size == S_ULEN && s_get_i64(v.mv_data) >= used_ms[i])
                continue; /* another gateway recorded a later use already */
            if (rc != 0 && rc != MDB_NOTFOUND)
                break;
            uint8_t buf[S_ULEN];
            s_put_i64(buf, used_ms[i]);
            v.mv_size = S_ULEN;
            v.mv_data = buf;
            rc = mdb_put(txn, self->udbi, &k, &v, 0);
            if (rc == 0)
                w++;
        }
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        if (rc == 0) {
            *written = w;
            return 0;
        }
        if (rc != MDB_MAP_FULL || s_grow(self) != 0)
            return s_write_fail(NULL, rc, "touch");
    }
}

/* A record that is one int64 time (a last use, a revocation) older than before_ms, or one
 * of an unknown format. */
static int s_time_garbage(const MDB_val *v, int64_t before_ms)
{
    return v->mv_size != S_ULEN || s_get_i64(v->mv_data) < before_ms;
}

int lk_cache_touch_sweep(lk_cache_t *self, int64_t before_ms, size_t max, size_t *removed)
{
    *removed = 0;
    if (self->readonly || !self->has_udbi)
        return -EPERM;
    if (max == 0)
        return 0;
    return s_sweep_dbi(self, self->udbi, before_ms, max, s_time_garbage, "touch sweep", removed);
}

int lk_cache_revoked_sweep(lk_cache_t *self, int64_t before_ms, size_t max, size_t *removed)
{
    *removed = 0;
    if (self->readonly || !self->has_rdbi)
        return -EPERM;
    if (max == 0)
        return 0;
    return s_sweep_dbi(self, self->rdbi, before_ms, max, s_time_garbage, "revoked sweep",
                       removed);
}
