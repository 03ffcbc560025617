/* fuzz_json.c: libFuzzer target for the gateway's JSON request decoding
 * (services/gateway/routes.c): the signup and signin bodies, the validate/batch body, the
 * Authorization header of validate, and the JSON string writer (gw_buf_str). Built and run
 * by tests/fuzz/run.
 *
 * routes.c is included, so its handlers run for real on a fake connection; what they call
 * in gateway.c and broker.c is stubbed below and checks what it is given. The session
 * cache is a real LMDB environment in a temporary directory holding one session, for the
 * token of 43 'A's.
 *
 * Input: 1 byte of selector, then the body (or header value).
 *   selector % 5: 0 signup, 1 signin, 2 validate/batch, 3 validate (the rest is the
 *   Authorization value), 4 gw_buf_str of the raw bytes only
 * Oracles, besides the sanitizers: every handler answers exactly once, with a status its
 * route may answer and, for errors, a JSON error body; a job handed to the broker holds a
 * normalized email and a password within the rules; a validate/batch answer has exactly
 * one result per token; gw_buf_str's output of any bytes is a JSON string, equal to the
 * input when the input is valid UTF-8.
 */
#include "services/gateway/routes.c"

#include <stdio.h>
#include <unistd.h>

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_json: invariant failed: %s (line %d)\n", #cond, __LINE__);       \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

struct gateway gw;

static int s_replies; /* answers given to the current request */
static int s_status;
static size_t s_results; /* results in a validate/batch answer */
static char s_dir[64];

/* ---- stubs of gateway.c and broker.c ---- */

void gw_reply(struct gw_conn *c, int status, const char *body, size_t len,
              const struct gw_hdr *hdrs, size_t nhdrs)
{
    (void)c;
    s_replies++;
    s_status = status;
    for (size_t i = 0; i < nhdrs; i++)
        CHECK(hdrs[i].name && hdrs[i].value && !strpbrk(hdrs[i].value, "\r\n"));
    s_results = 0;
    if (len) {
        json_error_t e;
        json_t *j = json_loadb(body, len, 0, &e);
        CHECK(j && json_is_object(j));
        json_t *res = json_object_get(j, "results");
        if (res) {
            CHECK(json_is_array(res));
            s_results = json_array_size(res);
        }
        if (status >= 400)
            CHECK(json_is_string(json_object_get(j, "error")) &&
                  json_is_string(json_object_get(j, "message")));
        json_decref(j);
    }
}

void gw_reply_error(struct gw_conn *c, int status, const char *code, const char *msg,
                    const struct gw_hdr *hdrs, size_t nhdrs)
{
    struct gw_buf b = {0};
    gw_buf_raw(&b, "{\"error\":", 9);
    gw_buf_str(&b, code, strlen(code));
    gw_buf_raw(&b, ",\"message\":", 11);
    gw_buf_str(&b, msg, strlen(msg));
    gw_buf_raw(&b, "}", 1);
    CHECK(!b.fail);
    gw_reply(c, status, b.p, b.len, hdrs, nhdrs);
    gw_buf_free(&b);
}

void gw_rid_new(char out[HTTP_RID_MAX + 1])
{
    strcpy(out, "fuzz");
}

int broker_submit(struct gw_conn *c, int role, int kind, struct lk_msg *m, const char *email)
{
    (void)c;
    (void)role;
    char norm[LK_EMAIL_MAX + 1];
    if (kind == GW_JOB_SIGNUP || kind == GW_JOB_SIGNIN) {
        const char *em =
            kind == GW_JOB_SIGNUP ? m->u.gw_signup_request.email : m->u.gw_signin_request.email;
        const char *pw = kind == GW_JOB_SIGNUP ? m->u.gw_signup_request.password
                                               : m->u.gw_signin_request.password;
        CHECK(lk_email_normalize(em, strlen(em), norm) == 0 && strcmp(norm, em) == 0);
        CHECK(strlen(pw) >= 1 && strlen(pw) <= 1024);
        if (kind == GW_JOB_SIGNUP) {
            CHECK(email && strcmp(email, em) == 0);
            CHECK(lk_password_check(pw, strlen(pw), (size_t)gw.cfg.password.min_length, 1024,
                                    NULL) == 0);
        }
    }
    return -EAGAIN; /* no worker: the handler answers 503 */
}

void broker_status(int counts[GW_NROLES], int *db_ok)
{
    counts[GW_SIGNUP] = counts[GW_SIGNIN] = 1;
    *db_ok = 1;
}

int broker_failed(const char **names, int n, int max)
{
    (void)names;
    (void)max;
    return n;
}

/* GET /metrics (gwmetrics.c): not a JSON route; answered 503 like a collector that is down. */
void gwm_serve(struct gw_conn *c)
{
    gw_reply_error(c, 503, "unavailable", "metrics unavailable", NULL, 0);
}

/* ---- set-up ---- */

static void s_cleanup(void)
{
    char p[128];
    lk_cache_destroy(&gw.cache);
    snprintf(p, sizeof p, "%s/data.mdb", s_dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/lock.mdb", s_dir);
    unlink(p);
    rmdir(s_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char err[256];
    (void)argc;
    (void)argv;
    lk_log_init("fuzz", LK_LOG_ERROR);
    /* The per-client rate limit is off: every input comes from the same fake client, and
     * the bucket is a limit on request rate, not on what the JSON decoding may answer. */
    if (lk_config_load_string(&gw.cfg, "[ratelimit]\nclient_rate = 0\n", "fuzz", 0, err,
                              sizeof err) != 0) {
        fprintf(stderr, "fuzz_json: %s\n", err);
        exit(1);
    }
    routes_init();
    strcpy(s_dir, "/tmp/latchkey-fuzz.XXXXXX");
    if (!mkdtemp(s_dir) || lk_cache_open(s_dir, 1u << 20, 0, &gw.cache) != 0) {
        fprintf(stderr, "fuzz_json: cannot make a session cache in /tmp\n");
        exit(1);
    }
    atexit(s_cleanup);
    char tok[44];
    uint8_t hash[LK_TOKEN_HASH_LEN];
    struct lk_session s = {.created_ms = lk_now_ms(), .expires_ms = lk_now_ms() + 86400000};
    memset(tok, 'A', 43);
    tok[43] = '\0';
    memset(s.user_id, 0x42, sizeof s.user_id);
    strcpy(s.email, "fuzz@example.com");
    if (lk_token_hash(tok, 43, hash) != 0 || lk_cache_session_put(gw.cache, hash, &s) != 0) {
        fprintf(stderr, "fuzz_json: cannot store the test session\n");
        exit(1);
    }
    return 0;
}

/* ---- the target ---- */

/* gw_buf_str(s) is a JSON string; equal to s when s is valid UTF-8. */
static void s_check_str(const char *s, size_t n)
{
    struct gw_buf b = {0};
    json_error_t e;
    gw_buf_raw(&b, "[", 1);
    gw_buf_str(&b, s, n);
    gw_buf_raw(&b, "]", 1);
    CHECK(!b.fail);
    json_t *j = json_loadb(b.p, b.len, JSON_ALLOW_NUL, &e);
    CHECK(j && json_array_size(j) == 1 && json_is_string(json_array_get(j, 0)));
    json_t *orig = json_stringn(s, n); /* NULL when s is not valid UTF-8 */
    if (orig) {
        json_t *got = json_array_get(j, 0);
        CHECK(json_string_length(got) == n && memcmp(json_string_value(got), s, n) == 0);
        json_decref(orig);
    }
    json_decref(j);
    gw_buf_free(&b);
}

static void s_decoders(const char *body, size_t n)
{
    struct gw_credentials cr;
    const char *why = NULL;
    json_t *root, *tokens;

    if (routes_json_credentials(body, n, &cr, &why) == 0) {
        char email[LK_EMAIL_MAX + 1];
        CHECK(cr.root && strlen(cr.email) == cr.email_len &&
              strlen(cr.password) == cr.password_len);
        if (lk_email_normalize(cr.email, cr.email_len, email) == 0)
            CHECK(strlen(email) >= 3 && strlen(email) <= LK_EMAIL_MAX && strchr(email, '@'));
        (void)lk_password_check(cr.password, cr.password_len, 8, 1024, &why);
        s_check_str(cr.email, cr.email_len);
        s_check_str(cr.password, cr.password_len);
        routes_json_free(&cr.root);
        CHECK(cr.root == NULL);
    } else {
        CHECK(why && cr.root == NULL);
    }
    why = NULL;
    if (routes_json_tokens(body, n, &root, &tokens, &why) == 0) {
        size_t k = json_array_size(tokens);
        CHECK(root && k >= 1 && k <= GW_BATCH_MAX);
        for (size_t i = 0; i < k; i++) {
            json_t *t = json_array_get(tokens, i);
            uint8_t hash[LK_TOKEN_HASH_LEN];
            CHECK(json_is_string(t));
            (void)lk_token_hash(json_string_value(t), json_string_length(t), hash);
        }
        routes_json_free(&root);
    } else {
        CHECK(why && root == NULL);
    }
}

/* Runs a route's handler on a fake connection and checks its answer. */
static void s_handler(int which, int sel, const char *body, size_t n)
{
    static const char *const paths[] = {"/api/auth/signup", "/api/auth/signin",
                                        "/api/auth/validate/batch", "/api/auth/validate"};
    static struct gw_conn c; /* large: not on the stack */
    memset(&c, 0, sizeof c);
    c.route = -1;
    struct http_request *r = &c.http.req;
    r->method = which == 3 ? HTTP_GET : HTTP_POST;
    r->minor = 1;
    r->has_host = 1;
    snprintf(r->path, sizeof r->path, "%s", paths[which]);
    r->path_len = strlen(r->path);
    if (which == 3) {
        /* the Authorization value as http.c stores it: no NUL, CR or LF, at most
         * HTTP_AUTH_MAX bytes, else auth_long */
        r->has_auth = n > 0 || (sel & 0x80); /* an empty Authorization, or none */
        r->auth_long = n > HTTP_AUTH_MAX || memchr(body, '\0', n) != NULL;
        r->auth_len = r->auth_long ? 0 : n;
        memcpy(r->auth, body, r->auth_len);
        r->auth[r->auth_len] = '\0';
        r->body = "";
    } else {
        r->ctype = HTTP_CT_JSON;
        r->has_body = 1;
        r->content_length = n;
        r->body = body;
        r->body_len = n;
    }
    s_replies = 0;
    s_status = -1;
    routes_head(&c);
    CHECK(s_replies == 0 && c.pend_status == 0 && c.route >= 0);
    routes_request(&c);
    CHECK(s_replies == 1);
    switch (which) {
    case 0: /* no worker here: a request that passes every check gets 503 */
        CHECK(s_status == 400 || s_status == 503);
        break;
    case 1:
        CHECK(s_status == 400 || s_status == 401 || s_status == 503);
        break;
    case 2: {
        json_t *root, *tokens;
        const char *why;
        if (routes_json_tokens(body, n, &root, &tokens, &why) == 0) {
            CHECK(s_status == 200 && s_results == json_array_size(tokens));
            routes_json_free(&root);
        } else {
            CHECK(s_status == 400);
        }
        break;
    }
    case 3:
        CHECK(s_status == 200 || s_status == 401);
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int which = data[0] % 5;
    const char *body = (const char *)data + 1;
    size_t n = size - 1;
    if (which == 4) {
        s_check_str(body, n);
        return 0;
    }
    if (which != 3)
        s_decoders(body, n);
    s_handler(which, data[0], body, n);
    return 0;
}
