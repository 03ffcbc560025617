/* fuzz_json.c: libFuzzer target for the gateway's JSON request decoding
 * (services/gateway/routes.c): the signup and signin bodies, the validate/batch body, the
 * Authorization header of validate, and the JSON string writer (gw_buf_str); and the
 * admin's NDJSON signup batch (services/gateway/batch.c): line splitting, per-line checks,
 * and the whole streamed answer with workers answering in any order. Built and run by
 * tests/fuzz/run.
 *
 * routes.c is included, so its handlers run for real on a fake connection; what they call
 * in gateway.c and broker.c is stubbed below and checks what it is given. The session
 * cache is a real LMDB environment in a temporary directory holding one session, for the
 * token of 43 'A's.
 *
 * Input: 1 byte of selector, then the body (or header value).
 *   selector >= 0xf0: POST /api/auth/signup/batch with the body as NDJSON; the low bits
 *   choose the order the fake workers answer in, whether the queue refuses each line
 *   once, and whether the client leaves before the end
 *   otherwise selector % 5: 0 signup, 1 signin, 2 validate/batch, 3 validate (the rest is
 *   the Authorization value), 4 gw_buf_str of the raw bytes only
 * Oracles, besides the sanitizers: every handler answers exactly once, with a status its
 * route may answer and, for errors, a JSON error body; a job handed to the broker holds a
 * normalized email and a password within the rules; a validate/batch answer has exactly
 * one result per token; gw_buf_str's output of any bytes is a JSON string, equal to the
 * input when the input is valid UTF-8; a signup batch's spans cover the body without
 * LFs, its answer is one JSON line per input line in input order with the status the
 * line deserves (400 for a line batch_line_check refuses, 409 for a repeated email, the
 * worker's answer otherwise), every line sent to a worker is a valid signup with batch=1,
 * the batch always ends (or, abandoned, frees everything: ASan's leak check).
 */
#include "services/gateway/routes.c"
#include "services/gateway/batch.c"

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

/* idle.c with session.idle_timeout off (the default, and this target's configuration) is
 * exactly the cache lookup. */
int idle_session_get(lk_cache_t *cache, const uint8_t hash[32], int64_t now_ms,
                     struct lk_session *out)
{
    CHECK(gw.cfg.session.idle_timeout_ms <= 0);
    return lk_cache_session_get(cache, hash, now_ms, out);
}

/* static.c (the web page) is not JSON decoding. Its route table entries take these
 * functions' addresses, which an unresolved symbol cannot give (the loader refuses the
 * binary): weak stubs, never called for the /api/ paths driven here. */
__attribute__((weak)) int static_match(const char *route, const char *path)
{
    (void)route;
    (void)path;
    return 0;
}

__attribute__((weak)) void static_serve(struct gw_conn *c)
{
    gw_reply_error(c, 404, "not_found", "no such resource", NULL, 0);
}

__attribute__((weak)) void static_init(void)
{
}

__attribute__((weak)) void static_fini(void)
{
}

/* ---- stubs for batch.c ---- */

#define FUZZ_KEY "fuzz-admin-key-0123456789"

static struct {
    int begun, ended;
    struct gw_buf out;                 /* the streamed body */
    uint32_t pending[GW_BATCH_MAX];    /* lines at the fake broker, not yet answered */
    size_t npending;
    size_t sent[GW_BATCH_MAX + 1];     /* times each line was handed over */
    int refuse_once;                   /* -EAGAIN for each line's first offer */
    struct gw_batch *batch;
} s_bt;

void gw_stream_begin(struct gw_conn *c, int status, const char *ctype)
{
    (void)c;
    CHECK(!s_bt.begun && status == 200 && strcmp(ctype, "application/x-ndjson") == 0);
    s_bt.begun = 1;
    s_replies++;
    s_status = status;
}

void gw_stream_write(struct gw_conn *c, const char *p, size_t n)
{
    (void)c;
    CHECK(s_bt.begun && !s_bt.ended && n > 0 && memchr(p, '\n', n) == p + n - 1);
    gw_buf_raw(&s_bt.out, p, n);
}

void gw_stream_end(struct gw_conn *c)
{
    CHECK(s_bt.begun && !s_bt.ended && c->batch == NULL);
    s_bt.ended = 1;
    c->state = C_READ;
}

void gw_conn_resume(struct gw_conn *c)
{
    (void)c;
}

void broker_stats(int role, int *connected, int *busy, size_t *queued)
{
    CHECK(role == GW_SIGNUP);
    *connected = 3;
    *busy = 0;
    *queued = 0;
}

int broker_submit_line(struct gw_batch *b, uint32_t line, struct lk_msg *m)
{
    const struct lk_msg_gw_signup_request *q = &m->u.gw_signup_request;
    char norm[LK_EMAIL_MAX + 1];
    if (!s_bt.batch)
        s_bt.batch = b; /* the first lines go out from within batch_request */
    CHECK(b == s_bt.batch && line < b->n && m->type == MSG_GW_SIGNUP_REQUEST && q->batch == 1);
    CHECK(lk_email_normalize(q->email, strlen(q->email), norm) == 0 && strcmp(norm, q->email) == 0);
    CHECK(lk_password_check(q->password, strlen(q->password), (size_t)gw.cfg.password.min_length,
                            1024, NULL) == 0);
    if (s_bt.refuse_once && s_bt.sent[line]++ == 0)
        return -EAGAIN;
    s_bt.sent[line]++;
    CHECK(s_bt.npending < GW_BATCH_MAX);
    s_bt.pending[s_bt.npending++] = line;
    return 0;
}

void broker_batch_gone(struct gw_batch *b)
{
    CHECK(b == s_bt.batch);
    s_bt.npending = 0; /* the fake broker forgets them: no answer reaches b again */
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
    if (lk_config_load_string(&gw.cfg,
                              "[ratelimit]\nclient_rate = 0\n[admin]\napi_key = " FUZZ_KEY "\n",
                              "fuzz", 0, err, sizeof err) != 0) {
        fprintf(stderr, "fuzz_json: %s\n", err);
        exit(1);
    }
    routes_init();
    batch_init();
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

/* The status a line of the batch deserves, computed apart from batch.c: 0 when it goes
 * to a worker. seen/nseen: the normalized emails of earlier lines that went (or would). */
static int s_line_expect(const char *line, size_t len, char (*seen)[LK_EMAIL_MAX + 1],
                         size_t *nseen)
{
    struct gw_credentials cr;
    char email[LK_EMAIL_MAX + 1];
    const char *code = NULL, *why = NULL;
    int st = batch_line_check(line, len, &cr, email, &code, &why);
    if (st != 0) {
        CHECK(st == 400 && code && why && cr.root == NULL);
        return 400;
    }
    CHECK(cr.root && strlen(email) >= 3);
    routes_json_free(&cr.root);
    for (size_t i = 0; i < *nseen; i++)
        if (strcmp(seen[i], email) == 0)
            return 409;
    memcpy(seen[(*nseen)++], email, sizeof email);
    return 0;
}

static void s_batch(int sel, const char *body, size_t n)
{
    static struct gw_span spans[GW_BATCH_MAX];
    static char seen[GW_BATCH_MAX][LK_EMAIL_MAX + 1];
    static int expect[GW_BATCH_MAX];
    static struct gw_conn c; /* large: not on the stack */
    size_t nseen = 0;

    /* the splitter alone */
    size_t nl = batch_split(body, n, spans, GW_BATCH_MAX);
    size_t nlf = 0;
    for (size_t i = 0; i < n; i++)
        nlf += body[i] == '\n';
    CHECK(nl == nlf + (n > 0 && body[n - 1] != '\n'));
    for (size_t i = 0; i < nl && i < GW_BATCH_MAX; i++) {
        CHECK(spans[i].off + spans[i].len <= n && !memchr(body + spans[i].off, '\n', spans[i].len));
        CHECK(i == 0 || spans[i].off > spans[i - 1].off + spans[i - 1].len);
        if (nl <= GW_BATCH_MAX)
            expect[i] = s_line_expect(body + spans[i].off, spans[i].len, seen, &nseen);
    }

    /* the whole request on a fake connection */
    memset(&c, 0, sizeof c);
    memset(&s_bt, 0, sizeof s_bt);
    s_bt.refuse_once = sel & 1;
    c.route = -1;
    struct http_request *r = &c.http.req;
    r->method = HTTP_POST;
    r->minor = 1;
    r->has_host = 1;
    strcpy(r->path, "/api/auth/signup/batch");
    r->path_len = strlen(r->path);
    r->has_auth = 1;
    strcpy(r->auth, "Bearer " FUZZ_KEY);
    r->auth_len = strlen(r->auth);
    r->ctype = HTTP_CT_NDJSON;
    r->has_body = n > 0;
    r->content_length = n;
    r->body = n ? body : "";
    r->body_len = n;
    s_replies = 0;
    s_status = -1;
    routes_head(&c);
    CHECK(s_replies == 0 && c.pend_status == 0 && c.route >= 0);
    routes_request(&c);
    CHECK(s_replies == 1);
    if (nl == 0 || nl > GW_BATCH_MAX) {
        CHECK(s_status == 400 && !s_bt.begun && c.batch == NULL);
        return;
    }
    CHECK(s_status == 200 && s_bt.begun);
    CHECK(!s_bt.batch || s_bt.batch == c.batch || !c.batch);
    s_bt.batch = c.batch;

    /* the fake workers answer, in an order chosen by sel; a client that leaves stops it */
    size_t answers = 0, leave_after = (sel & 2) ? nl / 2 : (size_t)-1;
    for (size_t guard = 0; c.batch && guard < 4 * GW_BATCH_MAX + 8; guard++) {
        if (answers >= leave_after) {
            batch_conn_gone(&c); /* frees the batch */
            CHECK(c.batch == NULL && !s_bt.ended);
            gw_buf_free(&s_bt.out);
            return;
        }
        if (s_bt.npending == 0) {
            gw.now += gw.cfg.gateway.route_timeout_ms / 2 + 1; /* queue-full retries */
            batch_cron();
            continue;
        }
        size_t k = (sel & 4) ? s_bt.npending - 1 : 0;
        uint32_t line = s_bt.pending[k];
        memmove(s_bt.pending + k, s_bt.pending + k + 1, (s_bt.npending - k - 1) * sizeof line);
        s_bt.npending--;
        answers++;
        struct lk_msg m;
        memset(&m, 0, sizeof m);
        m.type = MSG_SU_SIGNUP_REPLY;
        if (line % 3 == 2 && (sel & 8)) {
            batch_line_fail(s_bt.batch, line, line % 2 ? 504 : 503);
            expect[line] = line % 2 ? 504 : 503;
        } else if (line % 5 == 4) {
            m.u.su_signup_reply.status = 409;
            strcpy(m.u.su_signup_reply.error, "email_taken");
            strcpy(m.u.su_signup_reply.message, "email is \"already\" registered");
            batch_line_reply(s_bt.batch, line, &m);
            expect[line] = 409;
        } else {
            m.u.su_signup_reply.status = 201;
            snprintf(m.u.su_signup_reply.user_id, sizeof m.u.su_signup_reply.user_id,
                     "00000000-0000-0000-0000-%012u", line);
            batch_line_reply(s_bt.batch, line, &m);
            expect[line] = 201;
        }
    }
    CHECK(s_bt.ended && c.batch == NULL && s_bt.npending == 0);

    /* the answer: one line per input line, in order, with the status each deserves */
    const char *p = s_bt.out.p, *end = p + s_bt.out.len;
    for (size_t i = 0; i < nl; i++) {
        const char *e = memchr(p, '\n', (size_t)(end - p));
        CHECK(e);
        json_error_t je;
        json_t *j = json_loadb(p, (size_t)(e - p), 0, &je);
        CHECK(j && json_is_object(j));
        CHECK(json_integer_value(json_object_get(j, "line")) == (json_int_t)(i + 1));
        int st = (int)json_integer_value(json_object_get(j, "status"));
        CHECK(st == expect[i]);
        CHECK(st != 400 || s_bt.sent[i] == 0);
        if (st == 201)
            CHECK(json_is_string(json_object_get(j, "userId")));
        else
            CHECK(json_is_string(json_object_get(j, "error")) &&
                  json_is_string(json_object_get(j, "message")));
        json_decref(j);
        p = e + 1;
    }
    CHECK(p == end);
    gw_buf_free(&s_bt.out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] >= 0xf0) {
        s_batch(data[0], (const char *)data + 1, size - 1);
        return 0;
    }
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
