/* signin.c: the signin worker. Password verification, creating sessions (Postgres, then
 * the host's cache) and revoking them; the gateway hands it one job at a time
 * (common/worker.h). */
#include "cache.h"
#include "check.h"
#include "codec.h"
#include "config.h"
#include "crypto.h"
#include "db.h"
#include "errors.h"
#include "log.h"
#include "util.h"
#include "worker.h"

#include <string.h>

int signin_main(int argc, char **argv);
static int s_dummy_init(void);
static int s_signin(lk_db_t *db, struct lk_msg *req, struct lk_msg *reply);
static int s_authenticate(lk_db_t *db, struct lk_msg_gw_signin_request *q,
                          struct lk_msg_si_signin_reply *r, const char **why);
static int s_session_open(lk_db_t *db, const struct lk_db_user *u, const char *rid,
                          struct lk_msg_si_signin_reply *r);
static int s_signout(lk_db_t *db, struct lk_msg *req, struct lk_msg *reply);
static int s_signout_all(lk_db_t *db, struct lk_msg *req, struct lk_msg *reply);
static int s_throttle(const uint8_t key[32], const char *rid, struct lk_msg_si_signin_reply *r);
static void s_rehash(lk_db_t *db, const struct lk_db_user *u, const char *pw, size_t len,
                     const char *rid);
static void s_withdraw_add(const uint8_t hash[LK_TOKEN_HASH_LEN], const char *rid);
static int s_withdraw_run(lk_db_t *db);

/* Sessions whose INSERT may have committed although the client got a 503 (the connection
 * to Postgres died before its answer came: the outcome is unknown). They are deleted as
 * soon as Postgres answers again, before any other job, so that no session outlives an
 * answer that was not 200. Past WITHDRAW_MAX the oldest is forgotten (logged). */
#define WITHDRAW_MAX 256
static uint8_t s_withdraw[WITHDRAW_MAX][LK_TOKEN_HASH_LEN];
static int s_nwithdraw;

static struct lk_config s_cfg;
static lk_cache_t *s_cache;
/* An argon2id hash of a random password at the configured cost: unknown emails are
 * verified against it so that they take as long as known ones. */
static char s_dummy_hash[LK_PWHASH_MAX];

static const struct msg_handler handlers[] = {
    {MSG_GW_SIGNIN_REQUEST, s_signin},
    {MSG_GW_SIGNOUT_REQUEST, s_signout},
    {MSG_GW_SIGNOUT_ALL_REQUEST, s_signout_all},
};

int main(int argc, char **argv)
{
    return signin_main(argc, argv);
}

int signin_main(int argc, char **argv)
{
    int rc;

    lk_role_start("signin", argc, argv, &s_cfg);
    if ((rc = lk_no_core_dumps()) != 0)
        lk_warn("core dumps not disabled: %s", lk_strerror(rc));
    if ((rc = lk_cache_open(s_cfg.cache.path, s_cfg.cache.map_size, 0, &s_cache)) != 0)
        lk_fatal("cache %s: %s", s_cfg.cache.path, lk_strerror(rc));
    lk_cache_set_max_map(s_cache, s_cfg.cache.max_map_size);
    if ((rc = s_dummy_init()) != 0)
        lk_fatal("dummy password hash: %s", lk_strerror(rc));
    lk_worker_set_idle(s_withdraw_run);
    rc = lk_worker_run("signin", &s_cfg, handlers, sizeof handlers / sizeof handlers[0]);
    lk_cache_destroy(&s_cache);
    return rc;
}

static int s_dummy_init(void)
{
    char pw[LK_TOKEN_LEN + 1];
    int rc = lk_token_new(pw);

    if (rc == 0)
        rc = lk_password_hash(pw, LK_TOKEN_LEN, (uint64_t)s_cfg.hash.ops, s_cfg.hash.mem,
                              s_dummy_hash);
    lk_wipe(pw, sizeof pw);
    return rc;
}

static int s_signin(lk_db_t *db, struct lk_msg *req, struct lk_msg *reply)
{
    struct lk_msg_gw_signin_request *q = &req->u.gw_signin_request;
    struct lk_msg_si_signin_reply *r = &reply->u.si_signin_reply;
    const char *why = NULL;
    int64_t t0 = lk_mono_ms();

    reply->type = MSG_SI_SIGNIN_REPLY;
    r->job = q->job;
    if (s_withdraw_run(db) != 0) {
        lk_wipe(q->password, sizeof q->password);
        LK_REPLY_UNAVAILABLE(r);
        return LK_EDB;
    }
    int rc = s_authenticate(db, q, r, &why);
    lk_log(LK_LOG_INFO, q->rid, "signin %u %s%s%s (%lld ms)", r->status,
           r->status == 200 ? r->user_id : r->error, why ? ": " : "", why ? why : "",
           (long long)(lk_mono_ms() - t0));
    return rc;
}

/* NFKC may lengthen a password (api.md caps the raw form at 1024 bytes): room for it. */
#define S_NFKC_MAX 4096

/* Per-account throttling (cache.h: one write transaction checks and counts, shared by
 * every worker of the host), before the user lookup, keyed by the normalized email
 * whether or not it exists, so a 429 tells nothing either. Returns 0 to proceed, or 1
 * with r filled (429, or 503 when the cache failed: fail closed). */
static int s_throttle(const uint8_t key[32], const char *rid, struct lk_msg_si_signin_reply *r)
{
    int64_t retry_ms = 0;
    if (s_cfg.throttle.max_failures <= 0)
        return 0;
    int rc = lk_cache_throttle_acquire(s_cache, key, lk_now_ms(),
                                       (uint32_t)s_cfg.throttle.max_failures,
                                       s_cfg.throttle.base_delay_ms, s_cfg.throttle.max_delay_ms,
                                       &retry_ms);
    if (rc == 0)
        return 0;
    if (rc == LK_ELIMITED) {
        LK_REPLY_ERROR(r, 429, "too_many_attempts", "too many failed attempts; try again later");
        int64_t s = (retry_ms + 999) / 1000;
        r->retry_after = s < 1 ? 1 : s > UINT32_MAX ? UINT32_MAX : (uint32_t)s;
        return 1;
    }
    lk_log(LK_LOG_ERROR, rid, "throttle: %s", lk_strerror(rc));
    LK_REPLY_UNAVAILABLE(r);
    return 1;
}

/* After a successful verification: stores a new hash at the configured cost when the
 * stored one was made with another (failures are logged; the signin succeeds anyway). */
static void s_rehash(lk_db_t *db, const struct lk_db_user *u, const char *pw, size_t len,
                     const char *rid)
{
    char hash[LK_PWHASH_MAX];
    if (lk_password_needs_rehash(u->password_hash, (uint64_t)s_cfg.hash.ops, s_cfg.hash.mem) != 1)
        return;
    int rc = lk_password_hash(pw, len, (uint64_t)s_cfg.hash.ops, s_cfg.hash.mem, hash);
    if (rc == 0)
        rc = lk_db_user_set_password_hash(db, u->id, u->password_hash, hash);
    lk_wipe(hash, sizeof hash);
    lk_log(rc == 0 ? LK_LOG_INFO : LK_LOG_WARN, rid,
           "password rehashed at the configured cost: %s", rc == 0 ? "done" : lk_strerror(rc));
}

/* Fills r for one signin; *why gets the reason of a 401 for the log (the client gets the
 * same answer whatever it is). Returns LK_EDB when Postgres failed, else 0. */
static int s_authenticate(lk_db_t *db, struct lk_msg_gw_signin_request *q,
                          struct lk_msg_si_signin_reply *r, const char **why)
{
    static char nf[S_NFKC_MAX];
    struct lk_db_user u;
    char email[LK_EMAIL_MAX + 1];
    uint8_t key[32];
    size_t nflen = 0;

    if (lk_email_normalize(q->email, strlen(q->email), email) != 0)
        (void)lk_strlcpy(email, q->email, sizeof email);
    lk_throttle_key("signin:", email, key);
    if (s_throttle(key, q->rid, r)) {
        lk_wipe(q->password, sizeof q->password);
        *why = r->status == 429 ? "throttled" : NULL;
        return 0;
    }
    /* The same NFKC as signup, so composed and decomposed forms verify alike. A password
     * that cannot be normalized cannot have been stored: it still costs a verification. */
    int nrc = lk_password_nfkc(q->password, strlen(q->password), nf, sizeof nf, &nflen);
    lk_wipe(q->password, sizeof q->password);
    if (nrc != 0)
        nflen = 0;

    int rc = lk_db_user_by_email(db, email, &u);
    if (rc != 0 && rc != LK_ENOTFOUND) {
        lk_wipe(nf, sizeof nf);
        LK_REPLY_UNAVAILABLE(r);
        return LK_EDB;
    }
    /* Verify in every case, so that unknown, disabled and known users take the same time.
     * A stored hash costlier than the ceiling (a tampered row) is a failure, not a job. */
    int vrc = lk_password_verify_capped(rc == 0 ? u.password_hash : s_dummy_hash, nf, nflen,
                                        (uint64_t)s_cfg.hash.max_ops, s_cfg.hash.max_mem);
    int match = vrc == 0 && nrc == 0;
    if (vrc == LK_ETOOBIG)
        lk_log(LK_LOG_ERROR, q->rid, "stored password hash exceeds hash.max_ops/hash.max_mem: "
               "not verified");
    if (rc != 0 || !match || !u.is_active) {
        lk_wipe(nf, sizeof nf);
        if (rc == 0)
            lk_wipe(u.password_hash, sizeof u.password_hash);
        *why = rc != 0 ? "unknown email" : vrc == LK_ETOOBIG ? "stored hash over the ceiling"
               : !match ? "wrong password" : "disabled user";
        LK_REPLY_ERROR(r, 401, "invalid_credentials", "invalid email or password");
        return 0;
    }
    if (s_cfg.throttle.max_failures > 0) {
        int trc = lk_cache_throttle_reset(s_cache, key);
        if (trc != 0)
            lk_log(LK_LOG_WARN, q->rid, "throttle reset: %s", lk_strerror(trc));
    }
    s_rehash(db, &u, nf, nflen, q->rid);
    lk_wipe(nf, sizeof nf);
    lk_wipe(u.password_hash, sizeof u.password_hash);
    return s_session_open(db, &u, q->rid, r);
}

/* Creates the session of u: the row first (Postgres is the source of truth), then the cache
 * entry, so that the token is valid everywhere before the client holds it. Fills r.
 * Returns LK_EDB when Postgres failed, else 0. */
static int s_session_open(lk_db_t *db, const struct lk_db_user *u, const char *rid,
                          struct lk_msg_si_signin_reply *r)
{
    uint8_t hash[LK_TOKEN_HASH_LEN];
    int64_t now = lk_now_ms();
    struct lk_session s = {.created_ms = now, .expires_ms = now + s_cfg.session.ttl_ms};
    int rc;

    memcpy(s.user_id, u->id, sizeof s.user_id);
    (void)lk_strlcpy(s.email, u->email, sizeof s.email);
    if ((rc = lk_token_new(r->token)) == 0)
        rc = lk_token_hash(r->token, LK_TOKEN_LEN, hash);
    if (rc != 0) {
        lk_log(LK_LOG_ERROR, rid, "token: %s", lk_strerror(rc));
        lk_wipe(r->token, sizeof r->token);
        LK_REPLY_UNAVAILABLE(r);
        return 0;
    }

    if ((rc = lk_db_session_insert(db, hash, u->id, s.created_ms, s.expires_ms)) != 0) {
        s_withdraw_add(hash, rid);
        rc = LK_EDB;
    } else if ((rc = lk_cache_session_put(s_cache, hash, &s)) != 0) {
        /* The client will never hold this token: take the row back too, so that Postgres and
         * the cache (warmed from Postgres) keep agreeing. */
        lk_log(LK_LOG_ERROR, rid, "cache write failed: %s; session withdrawn", lk_strerror(rc));
        rc = lk_db_session_delete(db, hash) == LK_EDB ? LK_EDB : 0;
        if (rc == LK_EDB)
            s_withdraw_add(hash, rid);
    } else {
        r->status = 200;
        lk_uuid_format(u->id, r->user_id);
        r->expires_ms = s.expires_ms;
    }
    lk_wipe(hash, sizeof hash);
    if (r->status != 200) {
        lk_wipe(r->token, sizeof r->token);
        LK_REPLY_UNAVAILABLE(r);
    }
    return rc;
}

/* Revokes one session: the row, then the cache entry, both before the answer, so that the
 * very next validate of the token fails. */
static int s_signout(lk_db_t *db, struct lk_msg *req, struct lk_msg *reply)
{
    struct lk_msg_gw_signout_request *q = &req->u.gw_signout_request;
    struct lk_msg_si_signout_reply *r = &reply->u.si_signout_reply;
    struct lk_session s;
    int64_t t0 = lk_mono_ms();

    reply->type = MSG_SI_SIGNOUT_REPLY;
    r->job = q->job;
    if (s_withdraw_run(db) != 0) {
        LK_REPLY_UNAVAILABLE(r);
        return LK_EDB;
    }
    /* Validity as validate sees it: a row the sweeper has not reached yet may outlive its
     * expiry, and signing out an expired token is a 401 like validating it. */
    int live = lk_cache_session_get(s_cache, q->token_hash, lk_now_ms(), &s);
    int rc = lk_db_session_delete(db, q->token_hash);
    if (rc != 0 && rc != LK_ENOTFOUND) {
        LK_REPLY_UNAVAILABLE(r);
        rc = LK_EDB;
    } else {
        /* Even without a row: an entry left by a signout whose cache delete failed would
         * keep the token valid until its expiry. */
        int crc = lk_cache_session_del(s_cache, q->token_hash);
        if (crc != 0 && crc != LK_ENOTFOUND) {
            lk_log(LK_LOG_ERROR, q->rid, "cache delete failed: %s", lk_strerror(crc));
            LK_REPLY_UNAVAILABLE(r);
        } else if (rc == 0 && live != LK_ENOTFOUND) {
            r->status = 204;
        } else {
            LK_REPLY_ERROR(r, 401, "invalid_token", "token is not valid");
        }
        rc = 0;
    }
    lk_log(LK_LOG_INFO, q->rid, "signout %u%s%s (%lld ms)", r->status, *r->error ? " " : "",
           r->error, (long long)(lk_mono_ms() - t0));
    return rc;
}

/* The most sessions one user may hold that signout-all revokes in one go (one row per
 * signin within session.ttl); past it the rows are gone and the cache entries are
 * removed by a walk of the cache (lk_db_user_sessions_delete says LK_ETOOBIG). */
#define S_SIGNOUT_ALL_MAX 4096

/* Revokes every session of the token's user: the rows (one DELETE), then each returned
 * hash from the cache, all before the answer. */
static int s_signout_all(lk_db_t *db, struct lk_msg *req, struct lk_msg *reply)
{
    struct lk_msg_gw_signout_all_request *q = &req->u.gw_signout_all_request;
    struct lk_msg_si_signout_all_reply *r = &reply->u.si_signout_all_reply;
    static uint8_t hashes[S_SIGNOUT_ALL_MAX][LK_TOKEN_HASH_LEN];
    struct lk_session s;
    char uid[37];
    int n = 0, gone = 0, rc;
    int64_t t0 = lk_mono_ms();

    reply->type = MSG_SI_SIGNOUT_ALL_REPLY;
    r->job = q->job;
    if (s_withdraw_run(db) != 0) {
        LK_REPLY_UNAVAILABLE(r);
        return LK_EDB;
    }
    int live = lk_cache_session_get(s_cache, q->token_hash, lk_now_ms(), &s);
    rc = lk_db_session_user(db, q->token_hash, uid);
    if (rc == LK_EDB) {
        LK_REPLY_UNAVAILABLE(r);
        return LK_EDB;
    }
    if (rc == LK_ENOTFOUND || live != 0) {
        LK_REPLY_ERROR(r, 401, "invalid_token", "token is not valid");
    } else {
        rc = lk_db_user_sessions_delete(db, uid, hashes, S_SIGNOUT_ALL_MAX, &n);
        if (rc == LK_EDB) {
            LK_REPLY_UNAVAILABLE(r);
            return LK_EDB;
        }
        int bad = 0;
        for (int i = 0; i < n; i++) {
            int crc = lk_cache_session_del(s_cache, hashes[i]);
            gone += crc == 0;
            bad |= crc != 0 && crc != LK_ENOTFOUND;
        }
        if (rc == LK_ETOOBIG || bad) {
            lk_log(LK_LOG_ERROR, q->rid, "signout-all: cache entries left (%s)",
                   rc == LK_ETOOBIG ? "too many sessions" : "cache delete failed");
            LK_REPLY_UNAVAILABLE(r);
        } else {
            r->status = 204;
        }
        lk_wipe(hashes, (size_t)n * LK_TOKEN_HASH_LEN);
    }
    lk_log(LK_LOG_INFO, q->rid, "signout-all %u%s%s: %d sessions, %d cache entries (%lld ms)",
           r->status, *r->error ? " " : "", r->error, n, gone,
           (long long)(lk_mono_ms() - t0));
    return 0;
}

static void s_withdraw_add(const uint8_t hash[LK_TOKEN_HASH_LEN], const char *rid)
{
    if (s_nwithdraw == WITHDRAW_MAX) {
        lk_log(LK_LOG_ERROR, rid, "%d sessions of unknown outcome pending: the oldest is kept",
               WITHDRAW_MAX);
        memmove(s_withdraw[0], s_withdraw[1], sizeof s_withdraw - sizeof s_withdraw[0]);
        s_nwithdraw--;
    }
    memcpy(s_withdraw[s_nwithdraw++], hash, LK_TOKEN_HASH_LEN);
    lk_log(LK_LOG_WARN, rid, "session insert of unknown outcome: withdrawn when Postgres is back");
}

/* Deletes the sessions of unknown outcome. Returns 0 when none is left, LK_EDB when
 * Postgres still fails (the rest stays for the next job). */
static int s_withdraw_run(lk_db_t *db)
{
    while (s_nwithdraw > 0) {
        int rc = lk_db_session_delete(db, s_withdraw[s_nwithdraw - 1]);
        if (rc != 0 && rc != LK_ENOTFOUND)
            return LK_EDB;
        /* the cache never had it: the worker writes the cache only after the commit */
        lk_log(LK_LOG_INFO, NULL, "session of unknown outcome withdrawn (%s)",
               rc == 0 ? "it had committed" : "it had not committed");
        lk_wipe(s_withdraw[--s_nwithdraw], LK_TOKEN_HASH_LEN);
    }
    return 0;
}
