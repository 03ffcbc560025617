/* routes.c: the gateway's HTTP routes (api.md) and their handlers.
 *
 * A request reaches routes_head when its head is parsed: the route, method and media type
 * are decided there, before any body byte is read, so that a request that will be refused
 * never makes us buffer its body. routes_request runs the handler once the body is in.
 * Handlers either answer at once (health, ready, validate: inside the gateway) or hand a
 * job to the broker (signup, signin, signout) and answer in routes_job_reply.
 *
 * CORS (gateway.cors_origins): a request whose Origin is a configured origin gets
 * Access-Control-Allow-Origin (that origin), Vary: Origin and Access-Control-Expose-Headers
 * on its answer, whatever the answer (gw_reply adds them), so that a page can read our
 * errors too. OPTIONS on an /api/auth/ route from such an origin is a preflight, answered
 * 204 with the route's methods. Any other OPTIONS (no Origin, an origin not configured,
 * CORS off) is what api.md says of a known path with a wrong method: 405 with Allow, and
 * no CORS header, which a browser reports as a failed preflight. Credentials mode is not
 * offered: tokens travel in Authorization, never in cookies.
 */
#include "gateway.h"
#include "idle.h"
#include "gwmetrics.h"
#include "static.h"

#include "check.h"
#include "crypto.h"
#include "errors.h"
#include "log.h"
#include "ratelimit.h"
#include "util.h"

#include <errno.h>
#include <jansson.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* BODY_NDJSON: the admin's signup batch (batch.c): application/x-ndjson, the batch body
 * limit, and the admin key checked at the head, before any body byte is read. */
enum { BODY_NONE = 0, BODY_JSON, BODY_BATCH, BODY_NDJSON };

#define M(m) (UINT64_C(1) << (m))
#define CORS_MAX 32    /* configured origins */
#define CORS_ALLOW_HEADERS "Authorization, Content-Type, X-Request-Id"
#define CORS_MAX_AGE "600" /* s a browser may cache a preflight (Chromium caps it at 7200) */

struct route {
    const char *path;
    uint64_t methods;  /* M(HTTP_*) */
    const char *allow; /* the Allow header of a 405 */
    int body;          /* BODY_JSON/BATCH: application/json required, body limit */
    void (*handler)(struct gw_conn *c);
};

static void s_health(struct gw_conn *c);
static void s_ready(struct gw_conn *c);
static void s_signup(struct gw_conn *c);
static void s_signin(struct gw_conn *c);
static void s_validate(struct gw_conn *c);
static void s_validate_batch(struct gw_conn *c);
static int s_live_token(struct gw_conn *c, uint8_t hash[LK_TOKEN_HASH_LEN]);
static void s_signout(struct gw_conn *c);
static void s_signout_all(struct gw_conn *c);

static void s_cors_parse(void);
static int s_origin_ok(const char *o);
static void s_preflight(struct gw_conn *c);
static void s_reply_pending(struct gw_conn *c);
static void s_reply_unavailable(struct gw_conn *c, const char *msg);
static void s_reply_bad(struct gw_conn *c, const char *msg);
static void s_reply_bad_credentials(struct gw_conn *c);
static void s_reply_token(struct gw_conn *c, int missing);
static void s_reply_worker_error(struct gw_conn *c, uint32_t status, const char *error,
                                 const char *message, uint32_t retry_after);
static int s_bearer_hash(struct gw_conn *c, uint8_t hash[LK_TOKEN_HASH_LEN]);
static int s_credentials(struct gw_conn *c, struct gw_credentials *cr);
static void s_session_json(struct gw_buf *b, const struct lk_session *s);
static void s_json_free(void *p);
static size_t s_utf8_len(const unsigned char *s, size_t n);
static size_t s_pw_max(void);

static const struct route routes[] = {
    {"/health", M(HTTP_GET) | M(HTTP_HEAD), "GET, HEAD", BODY_NONE, s_health},
    {"/ready", M(HTTP_GET) | M(HTTP_HEAD), "GET, HEAD", BODY_NONE, s_ready},
    {"/metrics", M(HTTP_GET) | M(HTTP_HEAD), "GET, HEAD", BODY_NONE, gwm_serve}, /* gwmetrics.c */
    {"/api/auth/signup", M(HTTP_POST), "POST", BODY_JSON, s_signup},
    {"/api/auth/signin", M(HTTP_POST), "POST", BODY_JSON, s_signin},
    {"/api/auth/validate", M(HTTP_GET) | M(HTTP_HEAD), "GET, HEAD", BODY_NONE, s_validate},
    {"/api/auth/validate/batch", M(HTTP_POST), "POST", BODY_BATCH, s_validate_batch},
    {"/api/auth/signup/batch", M(HTTP_POST), "POST", BODY_NDJSON, batch_request},
    {"/api/auth/signout", M(HTTP_POST), "POST", BODY_NONE, s_signout},
    {"/api/auth/signout-all", M(HTTP_POST), "POST", BODY_NONE, s_signout_all},
    /* the web page (static.c): "/" and every file under /assets/, matched by static_match */
    {"/", M(HTTP_GET) | M(HTTP_HEAD), "GET, HEAD", BODY_NONE, static_serve},
    {"/assets", M(HTTP_GET) | M(HTTP_HEAD), "GET, HEAD", BODY_NONE, static_serve},
};
#define NROUTES (sizeof routes / sizeof routes[0])

static const char *const s_role_names[GW_NROLES] = {"signup", "signin"};
static struct gw_buf s_big; /* reused for large answers (validate/batch) */
static char s_cors_buf[sizeof gw.cfg.gateway.cors_origins]; /* s_cors points into it */
static const char *s_cors[CORS_MAX];
static size_t s_ncors;

/* The per-client token bucket over signup and signin (ratelimit.*), one per gateway
 * process; fixed size, no system call per request (common/ratelimit.h). */
static lk_ratelimit_t s_rl;
static struct lk_ip_list s_trusted;

void routes_init(void)
{
    json_set_alloc_funcs(malloc, s_json_free);
    s_cors_parse();
    static_init();
    lk_rl_init(&s_rl);
    /* config.c refused a bad list already */
    if (lk_ip_list_parse(gw.cfg.ratelimit.trusted_proxies, &s_trusted) != 0)
        s_trusted.n = 0;
}

/* Answers 429 too_many_attempts with Retry-After and returns -1 when the client (its
 * address, or behind a trusted proxy the X-Forwarded-For one) is over its rate. */
static int s_ratelimited(struct gw_conn *c)
{
    uint8_t client[16];
    int64_t retry_ms;
    if (gw.cfg.ratelimit.client_rate <= 0)
        return 0;
    lk_client_addr(c->peer, c->http.req.xff_len ? c->http.req.xff : NULL, &s_trusted, client);
    if (lk_rl_take(&s_rl, client, gw.now > 0 ? gw.now : 1, (uint32_t)gw.cfg.ratelimit.client_rate,
                   (uint32_t)gw.cfg.ratelimit.client_burst, &retry_ms) == 0)
        return 0;
    char ra[24];
    struct gw_hdr h = {"Retry-After", ra};
    snprintf(ra, sizeof ra, "%lld", (long long)((retry_ms + 999) / 1000));
    gw_reply_error(c, 429, "too_many_attempts", "too many requests from this client; slow down",
                   &h, 1);
    return -1;
}

/* gateway.cors_origins: "o1, o2,..." */
static void s_cors_parse(void)
{
    char *save = NULL;
    memcpy(s_cors_buf, gw.cfg.gateway.cors_origins, sizeof s_cors_buf);
    s_cors_buf[sizeof s_cors_buf - 1] = '\0';
    s_ncors = 0;
    for (char *t = strtok_r(s_cors_buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        while (*t == ' ' || *t == '\t')
            t++;
        size_t n = strlen(t);
        while (n && (t[n - 1] == ' ' || t[n - 1] == '\t'))
            t[--n] = '\0';
        if (!n)
            continue;
        if (!s_origin_ok(t))
            lk_fatal("gateway.cors_origins: '%.80s' is not an origin as browsers send it: "
                     "scheme://host[:port] in lower case, without a path or a trailing slash",
                     t);
        if (s_ncors == CORS_MAX)
            lk_fatal("gateway.cors_origins: more than %d origins", CORS_MAX);
        s_cors[s_ncors++] = t;
    }
    if (s_ncors)
        lk_info("CORS allowed for %zu origin%s", s_ncors, s_ncors > 1 ? "s" : "");
}

/* The serialization of a tuple origin (RFC 6454 6.2): scheme "://" host [":" port], scheme
 * and host in lower case. Anything else would never equal what a browser sends. */
static int s_origin_ok(const char *o)
{
    const char *p = o;
    if (!(*p >= 'a' && *p <= 'z'))
        return 0;
    while ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '+' || *p == '-' ||
           *p == '.')
        p++;
    if (strncmp(p, "://", 3) != 0)
        return 0;
    p += 3;
    const char *host = p;
    if (*p == '[') {
        p++;
        while ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') || *p == ':' || *p == '.')
            p++;
        if (*p++ != ']' || p - host < 4)
            return 0;
    } else {
        while ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-' || *p == '.')
            p++;
        if (p == host)
            return 0;
    }
    if (*p == ':') {
        const char *port = ++p;
        while (*p >= '0' && *p <= '9')
            p++;
        if (p == port || p - port > 5)
            return 0;
    }
    return *p == '\0';
}

const char *routes_cors_origin(const char *origin)
{
    for (size_t i = 0; i < s_ncors; i++)
        if (strcmp(origin, s_cors[i]) == 0)
            return s_cors[i];
    return NULL;
}

void routes_fini(void)
{
    gw_buf_free(&s_big);
    static_fini();
}

/* jansson's copies of a parsed body (strings, parser buffers) may hold a password: wipe
 * every block it frees. */
static void s_json_free(void *p)
{
    if (p) {
        explicit_bzero(p, malloc_usable_size(p));
        free(p);
    }
}

void routes_head(struct gw_conn *c)
{
    struct http_request *r = &c->http.req;
    const struct route *rt = NULL;
    size_t max = gw.cfg.gateway.max_body;

    c->method = r->method;
    if (r->has_rid)
        memcpy(c->rid, r->rid, sizeof c->rid);
    else
        gw_rid_new(c->rid);
    c->pend_status = 0;
    c->preflight = 0;
    c->cors = r->has_origin ? routes_cors_origin(r->origin) : NULL;
    for (size_t i = 0; !r->path_long && i < NROUTES; i++)
        if (routes[i].handler == static_serve ? static_match(routes[i].path, r->path)
                                              : strcmp(r->path, routes[i].path) == 0) {
            rt = &routes[i];
            c->route = (int)i;
            c->route_name = rt->path;
            break;
        }
    if (rt && rt->body == BODY_NDJSON && !batch_enabled()) {
        rt = NULL; /* no admin key configured: exactly an unknown path */
        c->route = -1;
        c->route_name = NULL;
    }
    if (!rt) {
        c->pend_status = 404;
        c->pend_code = "not_found";
        c->pend_msg = "no such resource";
    } else if (r->method == HTTP_OPTIONS && c->cors && strncmp(rt->path, "/api/auth/", 10) == 0) {
        c->preflight = 1;
        max = 0; /* a preflight has no body */
    } else if (!(rt->methods & M(r->method))) {
        c->pend_status = 405;
        c->pend_code = "method_not_allowed";
        c->pend_msg = "method not allowed";
        c->pend_allow = rt->allow;
    } else if (rt->body == BODY_NDJSON) {
        if (batch_auth(c) == 0 && r->ctype != HTTP_CT_NDJSON) { /* else pend is 401 */
            c->pend_status = 415;
            c->pend_code = "unsupported_media_type";
            c->pend_msg = "Content-Type must be application/x-ndjson";
        }
    } else if (rt->body != BODY_NONE && r->ctype != HTTP_CT_JSON) {
        c->pend_status = 415;
        c->pend_code = "unsupported_media_type";
        c->pend_msg = "Content-Type must be application/json";
    }
    /* A refused signup batch reads no more than a JSON body: a client without the admin
     * key cannot make us buffer megabytes. */
    if (rt && !c->preflight &&
        (rt->body == BODY_BATCH || (rt->body == BODY_NDJSON && !c->pend_status)))
        max = gw.cfg.gateway.max_batch_body;
    if (c->pend_status && r->has_body &&
        (r->expect_continue || r->chunked || r->content_length > max)) {
        /* Refused anyway: answer without reading a body that may be large or held back
         * for a 100 Continue that will not come, and close. */
        c->close_after = 1;
        s_reply_pending(c);
        return;
    }
    (void)http_body_begin(&c->http, max); /* a 413 comes back from the next http_next */
}

void routes_request(struct gw_conn *c)
{
    if (c->pend_status || c->route < 0)
        s_reply_pending(c);
    else if (c->preflight)
        s_preflight(c);
    else
        routes[c->route].handler(c);
}

/* A CORS preflight from a configured origin (gw_reply adds Access-Control-Allow-Origin). */
static void s_preflight(struct gw_conn *c)
{
    const struct gw_hdr h[] = {
        {"Access-Control-Allow-Methods", routes[c->route].allow},
        {"Access-Control-Allow-Headers", CORS_ALLOW_HEADERS},
        {"Access-Control-Max-Age", CORS_MAX_AGE},
    };
    gw_reply(c, 204, NULL, 0, h, sizeof h / sizeof h[0]);
}

static void s_reply_pending(struct gw_conn *c)
{
    struct gw_hdr allow = {"Allow", c->pend_allow};
    if (!c->pend_status) {
        c->pend_status = 404;
        c->pend_code = "not_found";
        c->pend_msg = "no such resource";
    }
    if (c->pend_status == 401) /* the admin key of the signup batch (batch_auth) */
        allow = (struct gw_hdr){"WWW-Authenticate", c->pend_auth};
    gw_reply_error(c, c->pend_status, c->pend_code, c->pend_msg, &allow,
                   c->pend_status == 405 || c->pend_status == 401 ? 1 : 0);
}

static void s_reply_unavailable(struct gw_conn *c, const char *msg)
{
    struct gw_hdr h = {"Retry-After", "1"};
    gw_reply_error(c, 503, "unavailable", msg, &h, 1);
}

static void s_reply_bad(struct gw_conn *c, const char *msg)
{
    gw_reply_error(c, 400, "invalid_request", msg, NULL, 0);
}

static void s_reply_bad_credentials(struct gw_conn *c)
{
    gw_reply_error(c, 401, "invalid_credentials", "invalid email or password", NULL, 0);
}

static void s_reply_token(struct gw_conn *c, int missing)
{
    struct gw_hdr h = {"WWW-Authenticate", missing ? "Bearer" : "Bearer error=\"invalid_token\""};
    gw_reply_error(c, 401, "invalid_token", missing ? "missing bearer token" : "invalid or expired token",
                   &h, 1);
}

/* ---- handlers answered inside the gateway ---- */

static void s_health(struct gw_conn *c)
{
    static const char body[] = "{\"status\":\"ok\"}";
    gw_reply(c, 200, body, sizeof body - 1, NULL, 0);
}

static void s_ready(struct gw_conn *c)
{
    int counts[GW_NROLES], db_ok;
    char body[256];
    struct gw_buf b = {.p = body, .cap = sizeof body, .fixed = 1};
    const char *missing[12];
    size_t nmissing = 0;

    broker_status(counts, &db_ok);
    for (int i = 0; i < GW_NROLES; i++)
        if (counts[i] == 0)
            missing[nmissing++] = s_role_names[i];
    if (!gw.cache) {
        missing[nmissing++] = "cache";
    } else {
        /* Complete cache: the sweeper's warm-up from Postgres of this start is done. */
        char mark[32];
        if (lk_cache_meta_get(gw.cache, LK_CACHE_META_WARM, mark, sizeof mark) != 0)
            missing[nmissing++] = "cache_warmup";
    }
    if (!db_ok)
        missing[nmissing++] = "postgres";
    nmissing = (size_t)broker_failed(missing, (int)nmissing, 12); /* roles latchkeyd gave up */

    if (nmissing == 0) {
        gw_buf_raw(&b, "{\"status\":\"ready\"", 17);
    } else {
        gw_buf_raw(&b, "{\"status\":\"not_ready\",\"missing\":[", 33);
        for (size_t i = 0; i < nmissing; i++) {
            if (i)
                gw_buf_raw(&b, ",", 1);
            gw_buf_str(&b, missing[i], strlen(missing[i]));
        }
        gw_buf_raw(&b, "]", 1);
    }
    char w[96];
    int n = snprintf(w, sizeof w, ",\"workers\":{\"signup\":%d,\"signin\":%d}}", counts[GW_SIGNUP],
                     counts[GW_SIGNIN]);
    gw_buf_raw(&b, w, (size_t)n);
    gw_reply(c, nmissing ? 503 : 200, b.p, b.len, NULL, 0);
}

/* The hot path: a token hash and one read-only LMDB lookup, no allocation. */
static void s_validate(struct gw_conn *c)
{
    uint8_t hash[LK_TOKEN_HASH_LEN];
    struct lk_session s;
    char body[1024];
    struct gw_buf b = {.p = body, .cap = sizeof body, .fixed = 1};

    if (s_bearer_hash(c, hash) != 0)
        return;
    if (!gw.cache) {
        s_reply_unavailable(c, "session cache unavailable");
        return;
    }
    int rc = idle_session_get(gw.cache, hash, lk_now_ms(), &s);
    if (rc == LK_ENOTFOUND) {
        s_reply_token(c, 0);
        return;
    }
    if (rc != 0) {
        lk_log(LK_LOG_WARN, c->rid, "session cache read failed: %s", lk_strerror(rc));
        s_reply_unavailable(c, "session cache unavailable");
        return;
    }
    s_session_json(&b, &s);
    gw_buf_raw(&b, "}", 1);
    if (b.fail) {
        s_reply_unavailable(c, "session cache unavailable");
        return;
    }
    gw_reply(c, 200, b.p, b.len, NULL, 0);
}

/* Writes {"userId":..,"email":..,"expiresAt":.. without the closing brace. */
static void s_session_json(struct gw_buf *b, const struct lk_session *s)
{
    char uuid[37], ts[32];
    lk_uuid_format(s->user_id, uuid);
    lk_time_format_s(s->expires_ms, ts, sizeof ts);
    gw_buf_raw(b, "{\"userId\":\"", 11);
    gw_buf_raw(b, uuid, 36);
    gw_buf_raw(b, "\",\"email\":", 10);
    gw_buf_str(b, s->email, strnlen(s->email, sizeof s->email));
    gw_buf_raw(b, ",\"expiresAt\":\"", 14);
    gw_buf_raw(b, ts, strlen(ts));
    gw_buf_raw(b, "\"", 1);
}

static void s_validate_batch(struct gw_conn *c)
{
    struct http_request *r = &c->http.req;
    json_t *root, *tokens;
    const char *why;

    if (routes_json_tokens(r->body, r->body_len, &root, &tokens, &why) != 0) {
        s_reply_bad(c, why);
        return;
    }
    size_t n = json_array_size(tokens);
    if (!gw.cache) {
        json_decref(root);
        s_reply_unavailable(c, "session cache unavailable");
        return;
    }
    int64_t now = lk_now_ms();
    s_big.len = 0;
    s_big.fail = 0;
    gw_buf_raw(&s_big, "{\"results\":[", 12);
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(tokens, i);
        uint8_t hash[LK_TOKEN_HASH_LEN];
        struct lk_session s;
        int rc = lk_token_hash(json_string_value(t), json_string_length(t), hash);
        if (rc == 0)
            rc = idle_session_get(gw.cache, hash, now, &s);
        if (i)
            gw_buf_raw(&s_big, ",", 1);
        if (rc == 0) {
            s_session_json(&s_big, &s);
            gw_buf_raw(&s_big, ",\"valid\":true}", 14);
        } else if (rc == LK_EMALFORMED || rc == LK_ENOTFOUND) {
            gw_buf_raw(&s_big, "{\"valid\":false}", 15);
        } else {
            json_decref(root);
            lk_log(LK_LOG_WARN, c->rid, "session cache read failed: %s", lk_strerror(rc));
            s_reply_unavailable(c, "session cache unavailable");
            return;
        }
    }
    json_decref(root);
    gw_buf_raw(&s_big, "]}", 2);
    if (s_big.fail) {
        s_reply_unavailable(c, "out of memory");
        return;
    }
    gw_reply(c, 200, s_big.p, s_big.len, NULL, 0);
}

/* Authorization: Bearer <token> (scheme in any case, one or more blanks). Answers 401 and
 * returns -1 when the header is missing or the token malformed. */
static int s_bearer_hash(struct gw_conn *c, uint8_t hash[LK_TOKEN_HASH_LEN])
{
    struct http_request *r = &c->http.req;
    if (!r->has_auth) {
        s_reply_token(c, 1);
        return -1;
    }
    const char *a = r->auth;
    size_t n = r->auth_len, i = 6;
    if (r->auth_long || n < 8 || strncasecmp(a, "bearer", 6) != 0 || (a[6] != ' ' && a[6] != '\t')) {
        s_reply_token(c, 0);
        return -1;
    }
    while (i < n && (a[i] == ' ' || a[i] == '\t'))
        i++;
    if (lk_token_hash(a + i, n - i, hash) != 0) {
        s_reply_token(c, 0);
        return -1;
    }
    return 0;
}

/* ---- handlers answered by a worker ---- */

/* ---- JSON request decoding (see gateway.h) ---- */

int routes_json_credentials(const char *body, size_t len, struct gw_credentials *out,
                            const char **why)
{
    json_error_t jerr;
    memset(out, 0, sizeof *out);
    /* jansson rejects invalid UTF-8, and \u0000 without JSON_ALLOW_NUL */
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        *why = "body must be a JSON object";
        return LK_EMALFORMED;
    }
    json_t *e = json_object_get(root, "email"), *p = json_object_get(root, "password");
    if (!json_is_string(e) || !json_is_string(p)) {
        json_decref(root);
        *why = "email and password must be strings";
        return LK_EMALFORMED;
    }
    out->root = root;
    out->email = json_string_value(e);
    out->email_len = json_string_length(e);
    out->password = json_string_value(p);
    out->password_len = json_string_length(p);
    return 0;
}

int routes_json_tokens(const char *body, size_t len, json_t **root, json_t **tokens,
                       const char **why)
{
    json_error_t jerr;
    *tokens = NULL;
    *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    json_t *t = *root && json_is_object(*root) ? json_object_get(*root, "tokens") : NULL;
    size_t n = json_is_array(t) ? json_array_size(t) : 0;
    if (n < 1 || n > GW_BATCH_MAX) {
        routes_json_free(root);
        *why = "body must be {\"tokens\": [...]} with 1 to 1000 tokens";
        return LK_EMALFORMED;
    }
    for (size_t i = 0; i < n; i++)
        if (!json_is_string(json_array_get(t, i))) {
            routes_json_free(root);
            *why = "every token must be a string";
            return LK_EMALFORMED;
        }
    *tokens = t;
    return 0;
}

void routes_json_free(json_t **root)
{
    json_decref(*root);
    *root = NULL;
}

/* Decodes the credentials of c's body. Answers 400 and returns -1 on anything else. */
static int s_credentials(struct gw_conn *c, struct gw_credentials *cr)
{
    const char *why;
    if (routes_json_credentials(c->http.req.body, c->http.req.body_len, cr, &why) != 0) {
        s_reply_bad(c, why);
        return -1;
    }
    return 0;
}

static size_t s_pw_max(void)
{
    size_t max = gw.cfg.password.max_bytes;
    size_t cap = sizeof(((struct lk_msg_gw_signup_request *)0)->password) - 1;
    return max < cap ? max : cap;
}

int routes_signup_check(const struct gw_credentials *cr, char email[LK_EMAIL_MAX + 1],
                        const char **code, const char **why)
{
    const char *reason = NULL;

    if (lk_email_normalize(cr->email, cr->email_len, email) != 0) {
        *code = "invalid_email";
        *why = "invalid email address";
        return 400;
    }
    int rc = lk_password_check(cr->password, cr->password_len, (size_t)gw.cfg.password.min_length,
                               s_pw_max(), &reason);
    if (rc == LK_EMALFORMED) {
        *code = "invalid_request";
        *why = "password must be valid UTF-8";
        return 400;
    }
    if (rc != 0) {
        *code = "weak_password";
        *why = reason ? reason : "password rejected";
        return 400;
    }
    return 0;
}

void routes_signup_message(struct lk_msg *m, const char *rid, const char *email,
                           const struct gw_credentials *cr)
{
    memset(m, 0, sizeof *m);
    m->type = MSG_GW_SIGNUP_REQUEST;
    struct lk_msg_gw_signup_request *q = &m->u.gw_signup_request;
    memcpy(q->rid, rid, sizeof q->rid);
    q->deadline_ms = lk_now_ms() + gw.cfg.gateway.route_timeout_ms;
    memcpy(q->email, email, sizeof q->email);
    memcpy(q->password, cr->password, cr->password_len);
}

static void s_signup(struct gw_conn *c)
{
    struct gw_credentials cr;
    char email[LK_EMAIL_MAX + 1];
    const char *code, *why;
    struct lk_msg m;

    if (s_ratelimited(c) != 0 || s_credentials(c, &cr) != 0)
        return;
    int st = routes_signup_check(&cr, email, &code, &why);
    if (st != 0) {
        routes_json_free(&cr.root);
        gw_reply_error(c, st, code, why, NULL, 0);
        return;
    }
    routes_signup_message(&m, c->rid, email, &cr);
    routes_json_free(&cr.root);
    if (broker_submit(c, GW_SIGNUP, GW_JOB_SIGNUP, &m, email) != 0)
        s_reply_unavailable(c, "no signup worker available");
    lk_wipe(&m, sizeof m);
}

static void s_signin(struct gw_conn *c)
{
    struct gw_credentials cr;
    char email[LK_EMAIL_MAX + 1];
    struct lk_msg m;

    if (s_ratelimited(c) != 0 || s_credentials(c, &cr) != 0)
        return;
    const char *pw = cr.password;
    size_t pwlen = cr.password_len;
    /* Rejected here without a hop, with the very answer a wrong password gets: these can
     * never match a stored account. */
    if (lk_email_normalize(cr.email, cr.email_len, email) != 0 || pwlen == 0 ||
        pwlen > s_pw_max()) {
        routes_json_free(&cr.root);
        s_reply_bad_credentials(c);
        return;
    }
    memset(&m, 0, sizeof m);
    m.type = MSG_GW_SIGNIN_REQUEST;
    struct lk_msg_gw_signin_request *q = &m.u.gw_signin_request;
    memcpy(q->rid, c->rid, sizeof q->rid);
    q->deadline_ms = lk_now_ms() + gw.cfg.gateway.route_timeout_ms;
    memcpy(q->email, email, sizeof q->email);
    memcpy(q->password, pw, pwlen);
    routes_json_free(&cr.root);
    if (broker_submit(c, GW_SIGNIN, GW_JOB_SIGNIN, &m, NULL) != 0)
        s_reply_unavailable(c, "no signin worker available");
    lk_wipe(&m, sizeof m);
}

/* Reads the bearer token and checks that it names a live session in the cache: the cache
 * is complete, so a token it does not know is not a session to revoke (401 without a hop).
 * Returns 0 with hash set, or -1 when the answer has already been given. */
static int s_live_token(struct gw_conn *c, uint8_t hash[LK_TOKEN_HASH_LEN])
{
    struct lk_session s;

    if (s_bearer_hash(c, hash) != 0)
        return -1;
    if (!gw.cache) {
        s_reply_unavailable(c, "session cache unavailable");
        return -1;
    }
    int rc = idle_session_get(gw.cache, hash, lk_now_ms(), &s);
    if (rc == LK_ENOTFOUND) {
        s_reply_token(c, 0);
        return -1;
    }
    if (rc != 0) {
        lk_log(LK_LOG_WARN, c->rid, "session cache read failed: %s", lk_strerror(rc));
        s_reply_unavailable(c, "session cache unavailable");
        return -1;
    }
    return 0;
}

static void s_signout(struct gw_conn *c)
{
    uint8_t hash[LK_TOKEN_HASH_LEN];
    struct lk_msg m;

    if (s_live_token(c, hash) != 0)
        return;
    memset(&m, 0, sizeof m);
    m.type = MSG_GW_SIGNOUT_REQUEST;
    struct lk_msg_gw_signout_request *q = &m.u.gw_signout_request;
    memcpy(q->rid, c->rid, sizeof q->rid);
    q->deadline_ms = lk_now_ms() + gw.cfg.gateway.route_timeout_ms;
    memcpy(q->token_hash, hash, sizeof q->token_hash);
    if (broker_submit(c, GW_SIGNIN, GW_JOB_SIGNOUT, &m, NULL) != 0)
        s_reply_unavailable(c, "no signin worker available");
}

/* Every session of the token's user: checked in the cache like signout, then a signin
 * worker deletes them all. */
static void s_signout_all(struct gw_conn *c)
{
    uint8_t hash[LK_TOKEN_HASH_LEN];
    struct lk_msg m;

    if (s_live_token(c, hash) != 0)
        return;
    memset(&m, 0, sizeof m);
    m.type = MSG_GW_SIGNOUT_ALL_REQUEST;
    struct lk_msg_gw_signout_all_request *q = &m.u.gw_signout_all_request;
    memcpy(q->rid, c->rid, sizeof q->rid);
    q->deadline_ms = lk_now_ms() + gw.cfg.gateway.route_timeout_ms;
    memcpy(q->token_hash, hash, sizeof q->token_hash);
    if (broker_submit(c, GW_SIGNIN, GW_JOB_SIGNOUT_ALL, &m, NULL) != 0)
        s_reply_unavailable(c, "no signin worker available");
}

void routes_job_reply(struct gw_conn *c, int kind, const char *email, const struct lk_msg *reply)
{
    char body[1024], uuid_ts[32];
    struct gw_buf b = {.p = body, .cap = sizeof body, .fixed = 1};

    if (kind == GW_JOB_SIGNUP) {
        const struct lk_msg_su_signup_reply *r = &reply->u.su_signup_reply;
        if (r->status != 201) {
            s_reply_worker_error(c, r->status, r->error, r->message, r->retry_after);
            return;
        }
        gw_buf_raw(&b, "{\"userId\":", 10);
        gw_buf_str(&b, r->user_id, strlen(r->user_id));
        gw_buf_raw(&b, ",\"email\":", 9);
        gw_buf_str(&b, email, strlen(email));
        gw_buf_raw(&b, ",\"createdAt\":\"", 14);
        lk_time_format_s(r->created_ms, uuid_ts, sizeof uuid_ts);
        gw_buf_raw(&b, uuid_ts, strlen(uuid_ts));
        gw_buf_raw(&b, "\"}", 2);
        gw_reply(c, 201, b.p, b.len, NULL, 0);
    } else if (kind == GW_JOB_SIGNIN) {
        const struct lk_msg_si_signin_reply *r = &reply->u.si_signin_reply;
        if (r->status != 200) {
            s_reply_worker_error(c, r->status, r->error, r->message, r->retry_after);
            return;
        }
        gw_buf_raw(&b, "{\"token\":", 9);
        gw_buf_str(&b, r->token, strlen(r->token));
        gw_buf_raw(&b, ",\"tokenType\":\"Bearer\",\"expiresAt\":\"", 35);
        lk_time_format_s(r->expires_ms, uuid_ts, sizeof uuid_ts);
        gw_buf_raw(&b, uuid_ts, strlen(uuid_ts));
        gw_buf_raw(&b, "\",\"userId\":", 11);
        gw_buf_str(&b, r->user_id, strlen(r->user_id));
        gw_buf_raw(&b, "}", 1);
        gw_reply(c, 200, b.p, b.len, NULL, 0);
        lk_wipe(body, sizeof body); /* the token leaves only through the socket */
    } else if (kind == GW_JOB_SIGNOUT_ALL) {
        const struct lk_msg_si_signout_all_reply *r = &reply->u.si_signout_all_reply;
        if (r->status == 204)
            gw_reply(c, 204, NULL, 0, NULL, 0);
        else
            s_reply_worker_error(c, r->status, r->error, r->message, 0);
    } else {
        const struct lk_msg_si_signout_reply *r = &reply->u.si_signout_reply;
        if (r->status == 200 || r->status == 204)
            gw_reply(c, 204, NULL, 0, NULL, 0);
        else
            s_reply_worker_error(c, r->status, r->error, r->message, 0);
    }
}

void routes_job_fail(struct gw_conn *c, int status)
{
    if (status == 504)
        gw_reply_error(c, 504, "timeout", "the request timed out", NULL, 0);
    else
        s_reply_unavailable(c, "the service is temporarily unavailable");
}

/* A worker's error answer: its status and body, checked (a worker is trusted, but an
 * answer that is not an HTTP error becomes a 500 rather than a strange response). */
static void s_reply_worker_error(struct gw_conn *c, uint32_t status, const char *error,
                                 const char *message, uint32_t retry_after)
{
    char ra[16];
    struct gw_hdr h = {"Retry-After", ra};
    if (status < 400 || status > 599 || !error[0]) {
        lk_log(LK_LOG_WARN, c->rid, "worker answered status %u error \"%s\"", status, error);
        gw_reply_error(c, 500, "internal", "internal error", NULL, 0);
        return;
    }
    snprintf(ra, sizeof ra, "%u", retry_after > 1 ? retry_after : 1);
    gw_reply_error(c, (int)status, error, message[0] ? message : http_reason((int)status), &h,
                   status == 429 || status == 503 ? 1 : 0);
}

/* ---- JSON output ---- */

void gw_buf_raw(struct gw_buf *b, const char *s, size_t n)
{
    if (b->fail)
        return;
    if (b->len + n > b->cap) {
        if (b->fixed) {
            b->fail = 1;
            return;
        }
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->fail = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

void gw_buf_str(struct gw_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;

    gw_buf_raw(b, "\"", 1);
    while (i < n) {
        unsigned char ch = u[i];
        if (ch >= 0x20 && ch < 0x80 && ch != '"' && ch != '\\') {
            i++;
            continue;
        }
        size_t k = ch >= 0x80 ? s_utf8_len(u + i, n - i) : 0;
        if (k) {
            i += k; /* valid UTF-8 is copied as it is */
            continue;
        }
        gw_buf_raw(b, s + run, i - run);
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            gw_buf_raw(b, e, 2);
        } else if (ch < 0x20) {
            char e[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
            gw_buf_raw(b, e, 6);
        } else {
            gw_buf_raw(b, "\\ufffd", 6);
        }
        run = ++i;
    }
    gw_buf_raw(b, s + run, n - run);
    gw_buf_raw(b, "\"", 1);
}

void gw_buf_free(struct gw_buf *b)
{
    if (!b->fixed)
        free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* Length of the valid UTF-8 sequence at s (lead byte >= 0x80), or 0 if invalid
 * (overlong forms, surrogates and code points past U+10FFFF are invalid). */
static size_t s_utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t k;
    unsigned char lo = 0x80, hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf)
        k = 2;
    else if (c >= 0xe0 && c <= 0xef)
        k = 3;
    else if (c >= 0xf0 && c <= 0xf4)
        k = 4;
    else
        return 0;
    if (n < k)
        return 0;
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < k; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return k;
}
