/* signup.c: the signup worker. Password policy, argon2id hashing, inserting users; the
 * gateway hands it one job at a time (common/worker.h). */
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

static const struct msg_handler handlers[] = {
    {MSG_GW_SIGNUP_REQUEST, s_signup},
};

int main(int argc, char **argv)
{
    return signup_main(argc, argv);
}

int signup_main(int argc, char **argv)
{
    lk_role_start("signup", argc, argv, &s_cfg);
    return lk_worker_run("signup", &s_cfg, handlers, sizeof handlers / sizeof handlers[0]);
}

static int s_signup(lk_db_t *db, struct lk_msg *req, struct lk_msg *reply)
{
    struct lk_msg_gw_signup_request *q = &req->u.gw_signup_request;
    struct lk_msg_su_signup_reply *r = &reply->u.su_signup_reply;
    int64_t t0 = lk_mono_ms();

    reply->type = MSG_SU_SIGNUP_REPLY;
    r->job = q->job;
    int rc = s_create(db, q, r);
    lk_log(LK_LOG_INFO, q->rid, "signup %u %s (%lld ms)", r->status,
           r->status == 201 ? r->user_id : r->error, (long long)(lk_mono_ms() - t0));
    return rc;
}

/* Fills r for one signup. Returns LK_EDB when Postgres failed, else 0. */
static int s_create(lk_db_t *db, struct lk_msg_gw_signup_request *q,
                    struct lk_msg_su_signup_reply *r)
{
    char email[LK_EMAIL_MAX + 1], hash[LK_PWHASH_MAX];
    const char *reason = NULL;
    size_t pwlen = strlen(q->password);
    uint8_t id[16];
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

    rc = lk_password_hash(q->password, pwlen, (uint64_t)s_cfg.hash.ops, s_cfg.hash.mem, hash);
    lk_wipe(q->password, sizeof q->password);
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
    r->status = 201;
    lk_uuid_format(id, r->user_id);
    return 0;
}
