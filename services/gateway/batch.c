/* batch.c: the admin's POST /api/auth/signup/batch (api.md): NDJSON in, NDJSON streamed out.
 *
 * The key (admin.api_key) is checked at the head, before any body byte is read; no key
 * configured and the route is an unknown path (404). Both sides of the comparison are
 * hashed with BLAKE2b-256 and compared with sodium_memcmp (lk_equal): the time taken says
 * nothing about how much of a guess matched, nor about the key's length.
 *
 * Once the body is in, every line is checked at once as POST /api/auth/signup checks its
 * body (JSON, email, password length and UTF-8) and a repeated normalized email is marked
 * 409 email_taken (the first occurrence that passes these checks is the one attempted).
 * The 200 then starts (chunked) and the remaining lines go to the signup workers through
 * the broker, at most BATCH_INFLIGHT_MAX at a time and never more than there are signup
 * workers: the bounded job queue cannot overflow because of a batch, and single signups
 * queue behind at most one batch line per worker. A line the full queue refuses waits
 * (cron, or the next answer) and is offered again; only after route_timeout of refusals
 * does it get 503. Each line has its own deadline (the route timeout, from when it is
 * handed over), and a worker failure answers that line 503 or 504, never the batch.
 * Results are written in input order as soon as the line and all before it are known.
 *
 * Re-entrancy: handing a line to the broker can make the broker answer other lines of the
 * same batch at once (a worker found dead while dispatching). Such answers are recorded
 * and the dispatch loop, not a nested one, acts on them (in_pump).
 *
 * Lifetime: a batch belongs to its connection (c->batch). It ends when its last line is
 * written (the connection goes on with its next request) or when the connection closes
 * (batch_conn_gone): queued jobs are dropped, sent ones forget the batch (their late
 * replies are discarded by the broker), so no job ever points at freed memory.
 *
 * The body (c->http.req.body) stays valid while the connection is C_BUSY: http_next,
 * which reuses it, runs only in C_READ.
 */
#include "gateway.h"

#include "check.h"
#include "crypto.h"
#include "errors.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define BATCH_INFLIGHT_MAX 16 /* lines of one batch handed to the broker at once */
#define BATCH_KEY_MIN 16      /* shorter admin keys are accepted with a warning */
#define DEDUP_SLOTS 2048      /* open addressing over normalized emails: > 2 x GW_BATCH_MAX */

enum { L_WAIT = 0, L_SENT, L_DONE };

struct batch_line {
    size_t off, len; /* in the request body */
    int state;       /* L_* */
    char *out;       /* L_DONE: the result line, NDJSON, newline included */
    size_t out_len;
};

struct gw_batch {
    struct gw_batch *next, *prev; /* every batch (cron) */
    struct gw_conn *conn;
    struct batch_line *lines;
    size_t n;
    size_t next_send; /* first line not yet handed over (or answered) */
    size_t next_emit; /* first line not yet written */
    size_t inflight;  /* lines at the broker */
    int64_t blocked;  /* mono ms of the first refusal of line next_send (queue full), 0 */
    int in_pump;
    int gone;      /* the connection closed during s_pump: free at its end */
    uint64_t tick; /* batch_cron's pass that last pumped it */
    char rid[HTTP_RID_MAX + 1];
};

static void s_pump(struct gw_batch *b);
static void s_dispatch(struct gw_batch *b);
static int s_send_line(struct gw_batch *b, size_t i);
static void s_result(struct gw_batch *b, size_t i, int status, const char *code, const char *msg,
                     const char *user_id);
static void s_free(struct gw_batch *b);
static size_t s_limit(void);

static uint8_t s_key_hash[LK_TOKEN_HASH_LEN];
static int s_key_set;
static struct gw_batch *s_batches;
static uint64_t s_tick;

void batch_init(void)
{
    size_t n = strlen(gw.cfg.admin.api_key);
    s_key_set = n > 0;
    if (!s_key_set)
        return;
    /* both sides hashed to a fixed length: lk_equal then reveals nothing of the length */
    lk_tagged_hash("admin-key:", gw.cfg.admin.api_key, s_key_hash);
    if (n < BATCH_KEY_MIN)
        lk_warn("admin.api_key is shorter than %d bytes: use a long random key", BATCH_KEY_MIN);
    lk_info("admin endpoint POST /api/auth/signup/batch enabled");
}

void batch_fini(void)
{
    lk_wipe(s_key_hash, sizeof s_key_hash);
    s_key_set = 0;
}

int batch_enabled(void)
{
    return s_key_set;
}

int batch_auth(struct gw_conn *c)
{
    struct http_request *r = &c->http.req;
    uint8_t got[LK_TOKEN_HASH_LEN];
    const char *a = r->auth;
    size_t n = r->auth_len, i = 6;

    c->pend_status = 401;
    c->pend_code = "invalid_token";
    if (!r->has_auth) {
        c->pend_msg = "missing bearer token";
        c->pend_auth = "Bearer";
        return -1;
    }
    c->pend_msg = "invalid admin key";
    c->pend_auth = "Bearer error=\"invalid_token\"";
    if (r->auth_long || n < 8 || strncasecmp(a, "bearer", 6) != 0 || (a[6] != ' ' && a[6] != '\t'))
        return -1;
    while (i < n && (a[i] == ' ' || a[i] == '\t'))
        i++;
    /* r->auth is NUL-terminated (http.c), and a header value holds no NUL */
    lk_tagged_hash("admin-key:", a + i, got);
    int ok = lk_equal(got, s_key_hash, sizeof got);
    lk_wipe(got, sizeof got);
    if (!ok)
        return -1;
    c->pend_status = 0;
    c->pend_code = c->pend_msg = c->pend_auth = NULL;
    return 0;
}

/* ---- pure parts (fuzzed) ---- */

size_t batch_split(const char *body, size_t len, struct gw_span *lines, size_t max)
{
    size_t n = 0, start = 0;
    while (start < len) {
        const char *nl = memchr(body + start, '\n', len - start);
        size_t end = nl ? (size_t)(nl - body) : len;
        size_t l = end - start;
        if (l && body[start + l - 1] == '\r')
            l--;
        if (n < max) {
            lines[n].off = start;
            lines[n].len = l;
        }
        n++;
        start = end + 1; /* past the LF; the body's final LF begins nothing */
    }
    return n;
}

int batch_line_check(const char *line, size_t len, struct gw_credentials *cr,
                     char email[LK_EMAIL_MAX + 1], const char **code, const char **why)
{
    size_t k = 0;

    memset(cr, 0, sizeof *cr);
    *code = "invalid_request";
    while (k < len && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r'))
        k++;
    if (k == len) {
        *why = "blank line";
        return 400;
    }
    if (routes_json_credentials(line, len, cr, why) != 0)
        return 400;
    int st = routes_signup_check(cr, email, code, why);
    if (st != 0)
        routes_json_free(&cr->root);
    return st;
}

/* ---- the request ---- */

/* FNV-1a: spreads the emails of one batch over the dedup table (not a security boundary:
 * the key holder chose them). */
static uint32_t s_fnv(const char *s)
{
    uint32_t h = 2166136261u;
    while (*s)
        h = (h ^ (uint8_t)*s++) * 16777619u;
    return h;
}

void batch_request(struct gw_conn *c)
{
    struct http_request *r = &c->http.req;
    struct gw_span *spans = NULL;
    char(*emails)[LK_EMAIL_MAX + 1] = NULL;
    int16_t *slots = NULL;
    struct gw_batch *b = NULL;
    int connected, busy;
    size_t queued;

    size_t n = batch_split(r->body, r->body_len, NULL, 0);
    if (n == 0 || n > GW_BATCH_MAX) {
        char msg[96];
        snprintf(msg, sizeof msg, "a batch has 1 to %d lines (this one has %zu)", GW_BATCH_MAX, n);
        gw_reply_error(c, 400, "invalid_request", msg, NULL, 0);
        return;
    }
    broker_stats(GW_SIGNUP, &connected, &busy, &queued);
    if (connected == 0) {
        struct gw_hdr h = {"Retry-After", "1"};
        gw_reply_error(c, 503, "unavailable", "no signup worker available", &h, 1);
        return;
    }
    spans = calloc(n, sizeof *spans);
    emails = calloc(n, sizeof *emails);
    slots = malloc(DEDUP_SLOTS * sizeof *slots);
    b = calloc(1, sizeof *b);
    if (b)
        b->lines = calloc(n, sizeof *b->lines);
    if (!spans || !emails || !slots || !b || !b->lines) {
        struct gw_hdr h = {"Retry-After", "1"};
        gw_reply_error(c, 503, "unavailable", "out of memory", &h, 1);
        goto out;
    }
    (void)batch_split(r->body, r->body_len, spans, n);
    for (size_t i = 0; i < DEDUP_SLOTS; i++)
        slots[i] = -1;
    b->n = n;
    b->conn = c;
    memcpy(b->rid, c->rid, sizeof b->rid);

    /* Every line is judged now: the ones the gateway refuses, and the repeats, are answered
     * without a worker; the others wait their turn (L_WAIT). */
    for (size_t i = 0; i < n; i++) {
        struct gw_credentials cr;
        const char *code, *why;
        b->lines[i].off = spans[i].off;
        b->lines[i].len = spans[i].len;
        int st =
            batch_line_check(r->body + spans[i].off, spans[i].len, &cr, emails[i], &code, &why);
        if (st != 0) {
            s_result(b, i, st, code, why, NULL);
            continue;
        }
        routes_json_free(&cr.root);
        uint32_t h = s_fnv(emails[i]) & (DEDUP_SLOTS - 1);
        int dup = 0;
        while (slots[h] >= 0) {
            if (strcmp(emails[slots[h]], emails[i]) == 0) {
                dup = 1;
                break;
            }
            h = (h + 1) & (DEDUP_SLOTS - 1);
        }
        if (dup) {
            s_result(b, i, 409, "email_taken", "email is repeated earlier in this batch", NULL);
            continue;
        }
        slots[h] = (int16_t)i;
    }

    b->next = s_batches;
    if (s_batches)
        s_batches->prev = b;
    s_batches = b;
    c->batch = b;
    c->state = C_BUSY;
    gw_stream_begin(c, 200, "application/x-ndjson");
    b = NULL;
    s_pump(c->batch); /* resumes c; c may be closed on return */
out:
    free(spans);
    if (emails)
        lk_wipe(emails, n * sizeof *emails);
    free(emails);
    free(slots);
    if (b) {
        free(b->lines);
        free(b);
    }
}

/* The lines of one batch at the broker at once: one per connected signup worker, at
 * least one, at most BATCH_INFLIGHT_MAX. */
static size_t s_limit(void)
{
    int connected, busy;
    size_t queued;
    broker_stats(GW_SIGNUP, &connected, &busy, &queued);
    if (connected < 1)
        return 1;
    return (size_t)connected < BATCH_INFLIGHT_MAX ? (size_t)connected : BATCH_INFLIGHT_MAX;
}

/* Hands lines over while there is room, then writes what is known in order; ends the
 * batch after its last line. Resumes the connection (which may close it). */
static void s_pump(struct gw_batch *b)
{
    if (b->in_pump)
        return; /* re-entered from the broker: the outer loop acts on what changed */
    b->in_pump = 1;
    s_dispatch(b);
    b->in_pump = 0;
    if (b->gone) {
        s_free(b);
        return;
    }
    struct gw_conn *c = b->conn;
    while (b->next_emit < b->n && b->lines[b->next_emit].state == L_DONE) {
        struct batch_line *l = &b->lines[b->next_emit++];
        gw_stream_write(c, l->out, l->out_len);
        free(l->out);
        l->out = NULL;
    }
    if (b->next_emit == b->n) {
        c->batch = NULL;
        s_free(b);
        gw_stream_end(c);
    }
    gw_conn_resume(c);
}

static void s_dispatch(struct gw_batch *b)
{
    size_t lim = s_limit();
    while (!b->gone && b->next_send < b->n && b->inflight < lim) {
        size_t i = b->next_send;
        if (b->lines[i].state != L_WAIT) {
            b->next_send++;
            continue;
        }
        int rc = s_send_line(b, i);
        if (rc > 0) {
            /* answered without the broker */
        } else if (rc == -EAGAIN) {
            /* the queue is full: offered again by the next answer or batch_cron */
            if (!b->blocked) {
                b->blocked = gw.now > 0 ? gw.now : 1;
                break;
            }
            if (gw.now - b->blocked < gw.cfg.gateway.route_timeout_ms)
                break;
            s_result(b, i, 503, "unavailable", "the signup queue stayed full", NULL);
        } else if (rc != 0) {
            s_result(b, i, 503, "unavailable", "no signup worker available", NULL);
        } else {
            b->lines[i].state = L_SENT;
            b->inflight++;
        }
        b->blocked = 0;
        b->next_send++;
    }
}

/* Builds line i's signup request and hands it to the broker. Returns its answer, or 1
 * when the line was answered here. */
static int s_send_line(struct gw_batch *b, size_t i)
{
    struct http_request *r = &b->conn->http.req;
    struct gw_credentials cr;
    char email[LK_EMAIL_MAX + 1];
    const char *code, *why;
    struct lk_msg m;

    /* it passed when the batch began; checked again rather than kept (passwords are not
     * copied out of the body) */
    if (batch_line_check(r->body + b->lines[i].off, b->lines[i].len, &cr, email, &code, &why) !=
        0) {
        s_result(b, i, 400, code, why, NULL);
        return 1;
    }
    routes_signup_message(&m, b->rid, email, &cr);
    m.u.gw_signup_request.batch = 1;
    routes_json_free(&cr.root);
    int rc = broker_submit_line(b, (uint32_t)i, &m);
    lk_wipe(&m, sizeof m);
    return rc;
}

/* Line i is answered: formats its result line. */
static void s_result(struct gw_batch *b, size_t i, int status, const char *code, const char *msg,
                     const char *user_id)
{
    struct batch_line *l = &b->lines[i];
    char buf[2048], head[48]; /* a worker's code (32) and message (160), each escaped up to 6x */
    struct gw_buf o = {.p = buf, .cap = sizeof buf, .fixed = 1};

    if (l->state == L_DONE)
        return;
    int k = snprintf(head, sizeof head, "{\"line\":%zu,\"status\":%d,", i + 1, status);
    gw_buf_raw(&o, head, (size_t)k);
    if (user_id) {
        gw_buf_raw(&o, "\"userId\":", 9);
        gw_buf_str(&o, user_id, strlen(user_id));
    } else {
        gw_buf_raw(&o, "\"error\":", 8);
        gw_buf_str(&o, code, strlen(code));
        gw_buf_raw(&o, ",\"message\":", 11);
        gw_buf_str(&o, msg, strlen(msg));
    }
    gw_buf_raw(&o, "}\n", 2);
    l->state = L_DONE;
    l->out = o.fail ? NULL : malloc(o.len);
    if (!l->out) {
        /* cannot happen with the sizes above, or out of memory: the line is lost, the
         * stream goes on (the client sees the gap in the line numbers) */
        lk_log(LK_LOG_ERROR, b->rid, "signup batch: result of line %zu lost", i + 1);
        l->out_len = 0;
        return;
    }
    memcpy(l->out, buf, o.len);
    l->out_len = o.len;
}

void batch_line_reply(struct gw_batch *b, uint32_t line, const struct lk_msg *reply)
{
    if (line >= b->n || b->lines[line].state != L_SENT)
        return;
    b->inflight--;
    const struct lk_msg_su_signup_reply *r = &reply->u.su_signup_reply;
    if (r->status == 201)
        s_result(b, line, 201, NULL, NULL, r->user_id);
    else if (r->status >= 400 && r->status <= 599 && r->error[0])
        s_result(b, line, (int)r->status, r->error,
                 r->message[0] ? r->message : http_reason((int)r->status), NULL);
    else
        s_result(b, line, 500, "internal", "internal error", NULL);
    s_pump(b);
}

void batch_line_fail(struct gw_batch *b, uint32_t line, int status)
{
    if (line >= b->n || b->lines[line].state != L_SENT)
        return;
    b->inflight--;
    if (status == 504)
        s_result(b, line, 504, "timeout", "the request timed out", NULL);
    else
        s_result(b, line, 503, "unavailable", "the service is temporarily unavailable", NULL);
    s_pump(b);
}

void batch_conn_gone(struct gw_conn *c)
{
    struct gw_batch *b = c->batch;
    c->batch = NULL;
    if (!b)
        return;
    broker_batch_gone(b);
    lk_log(LK_LOG_INFO, b->rid, "signup batch abandoned by the client after %zu of %zu lines",
           b->next_emit, b->n);
    if (b->in_pump) {
        b->gone = 1;
        b->conn = NULL;
        return;
    }
    s_free(b);
}

void batch_cron(void)
{
    /* Pumping answers clients, which may end or start other batches: after each pump the
     * walk starts over, skipping the batches this pass has already pumped. */
    s_tick++;
restart:
    for (struct gw_batch *b = s_batches; b; b = b->next)
        if (b->blocked && b->tick != s_tick) {
            b->tick = s_tick;
            s_pump(b);
            goto restart;
        }
}

static void s_free(struct gw_batch *b)
{
    if (b->prev)
        b->prev->next = b->next;
    else if (s_batches == b)
        s_batches = b->next;
    if (b->next)
        b->next->prev = b->prev;
    for (size_t i = 0; i < b->n; i++)
        free(b->lines[i].out);
    free(b->lines);
    free(b);
}
