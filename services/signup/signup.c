/* signup.c: the signup worker. Password policy, argon2id hashing, inserting users; the
 * gateway hands it one job at a time (common/worker.h). */
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

int signup_main(int argc, char **argv);
static int s_signup(lk_db_t *db, struct lk_msg *req, struct lk_msg *reply);
static int s_create(lk_db_t *db, struct lk_msg_gw_signup_request *q,
                    struct lk_msg_su_signup_reply *r);

static struct lk_config s_cfg;
static lk_cache_t *s_cache; /* the repeat-signup window's records (cache.h throttling) */

/* NFKC may lengthen a password (api.md caps the raw form at 1024 bytes): room for it. */
#define S_NFKC_MAX 4096

static const struct msg_handler handlers[] = {
    {MSG_GW_SIGNUP_REQUEST, s_signup},
};

int main(int argc, char **argv)
{
    return signup_main(argc, argv);
}

int signup_main(int argc, char **argv)
{
    int rc;

    lk_role_start("signup", argc, argv, &s_cfg);
    if ((rc = lk_no_core_dumps()) != 0)
        lk_warn("core dumps not disabled: %s", lk_strerror(rc));
    /* Only the repeat-signup window needs the cache: a signup worker on a host without
     * one (cluster_test's remote worker) still serves, without the window. */
    if ((rc = lk_cache_open(s_cfg.cache.path, s_cfg.cache.map_size, 0, &s_cache)) != 0)
        lk_warn("cache %s: %s; signup.repeat_window not enforced by this worker",
                s_cfg.cache.path, lk_strerror(rc));
    else
        lk_cache_set_max_map(s_cache, s_cfg.cache.max_map_size);
    rc = lk_worker_run("signup", &s_cfg, handlers, sizeof handlers / sizeof handlers[0]);
    lk_cache_destroy(&s_cache);
    return rc;
}

static int s_signup(lk_db_t *db, struct lk_msg *req, struct lk_msg *reply)
{
    struct lk_msg_gw_signup_request *q = &req->u.gw_signup_request;
    struct lk_msg_su_signup_reply *r = &reply->u.su_signup_reply;
    int64_t t0 = lk_mono_ms();

    reply->type = MSG_SU_SIGNUP_REPLY;
    r->job = q->job;
    int rc = s_create(db, q, r);
    lk_log(LK_LOG_INFO, q->rid, "signup%s %u %s (%lld ms)", q->batch ? " (batch line)" : "",
           r->status, r->status == 201 ? r->user_id : r->error, (long long)(lk_mono_ms() - t0));
    return rc;
}

/* Fills r for one signup. Returns LK_EDB when Postgres failed, else 0. */
static int s_create(lk_db_t *db, struct lk_msg_gw_signup_request *q,
                    struct lk_msg_su_signup_reply *r)
{
    char email[LK_EMAIL_MAX + 1], hash[LK_PWHASH_MAX];
    static char nf[S_NFKC_MAX];
    const char *reason = NULL;
    size_t pwlen = strlen(q->password), nflen = 0;
    uint8_t id[16], key[32];
    int64_t retry_ms = 0;
    int rc;

    /* The gateway normalized already. A change here means the two disagree on the rules:
     * refuse rather than store an address the gateway did not show the client. */
    rc = lk_email_normalize(q->email, strlen(q->email), email);
    if (rc == 0 && strcmp(email, q->email) != 0) {
        lk_log(LK_LOG_WARN, q->rid, "email not normalized by the gateway");
        rc = LK_EINVAL;
    }
    if (rc != 0) {
        LK_REPLY_ERROR(r, 400, "invalid_email", "email is not a valid address");
        return 0;
    }
    rc = lk_password_check(q->password, pwlen, (size_t)s_cfg.password.min_length,
                           s_cfg.password.max_bytes, &reason);
    if (rc == LK_EMALFORMED) {
        LK_REPLY_ERROR(r, 400, "invalid_request", "password is not valid UTF-8");
        return 0;
    }
    if (rc != 0) {
        LK_REPLY_ERROR(r, 400, "weak_password",
                       reason ? reason : "password does not meet the policy");
        return 0;
    }
    /* Length rules on the raw input (above), then NFKC, so that composed and decomposed
     * forms of the same text hash alike; the policy judges the normalized form. */
    rc = lk_password_nfkc(q->password, pwlen, nf, sizeof nf, &nflen);
    lk_wipe(q->password, sizeof q->password);
    if (rc != 0) {
        lk_wipe(nf, sizeof nf);
        if (rc == LK_ETOOBIG)
            LK_REPLY_ERROR(r, 400, "weak_password", "password is too long once normalized");
        else
            LK_REPLY_ERROR(r, 400, "invalid_request", "password is not valid UTF-8");
        return 0;
    }
    if (lk_password_policy(nf, nflen, email, &reason) != 0) {
        lk_wipe(nf, sizeof nf);
        LK_REPLY_ERROR(r, 400, "weak_password",
                       reason ? reason : "password does not meet the policy");
        return 0;
    }
    /* The repeat window, before the costly hash: only a check here (limit 0 never locks);
     * a 201 below starts the window. Not checked for a line of the admin's signup batch
     * (api.md); its 201 still starts the window, as any signup's does. */
    lk_throttle_key("signup:", email, key);
    if (s_cache && s_cfg.signup.repeat_window_ms > 0 && !q->batch) {
        rc = lk_cache_throttle_acquire(s_cache, key, lk_now_ms(), 0, 0, 0, &retry_ms);
        if (rc == LK_ELIMITED) {
            lk_wipe(nf, sizeof nf);
            LK_REPLY_ERROR(r, 429, "too_many_attempts",
                           "too many signups for this email; try again later");
            r->retry_after = (uint32_t)((retry_ms + 999) / 1000);
            if (r->retry_after < 1)
                r->retry_after = 1;
            return 0;
        }
        if (rc != 0)
            lk_log(LK_LOG_WARN, q->rid, "repeat window check: %s", lk_strerror(rc));
    }

    rc = lk_password_hash(nf, nflen, (uint64_t)s_cfg.hash.ops, s_cfg.hash.mem, hash);
    lk_wipe(nf, sizeof nf);
    if (rc != 0) {
        lk_log(LK_LOG_ERROR, q->rid, "password hashing failed: %s", lk_strerror(rc));
        LK_REPLY_UNAVAILABLE(r);
        return 0;
    }
    rc = lk_db_user_insert(db, email, hash, id, &r->created_ms);
    lk_wipe(hash, sizeof hash);
    if (rc == LK_EEXISTS) {
        LK_REPLY_ERROR(r, 409, "email_taken", "email is already registered");
        return 0;
    }
    if (rc != 0) {
        LK_REPLY_UNAVAILABLE(r);
        return LK_EDB;
    }
    if (s_cache && s_cfg.signup.repeat_window_ms > 0) {
        int64_t w = s_cfg.signup.repeat_window_ms;
        rc = lk_cache_throttle_acquire(s_cache, key, lk_now_ms(), 1, w, w, &retry_ms);
        if (rc != 0)
            lk_log(LK_LOG_WARN, q->rid, "repeat window start: %s", lk_strerror(rc));
    }

    r->status = 201;
    lk_uuid_format(id, r->user_id);
    return 0;
}
