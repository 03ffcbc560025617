/* fuzz_http.c: libFuzzer target for the gateway's HTTP/1.1 request layer
 * (services/gateway/http.c and llhttp under it): heads, the byte-by-byte head checks,
 * Content-Length and chunked bodies (extensions, trailers), 100-continue, pipelining and
 * the response writer. Built and run by tests/fuzz/run.
 *
 * Input: 3 bytes of settings, then the bytes a client sends on one connection.
 *   [0] limits: bit 0 max_uri 256 or 4096, bit 1 max_header 1024 or 8192, bits 2-3 the
 *       body limit given at each head (0, 16, 1024, 65536)
 *   [1] seed of the read sizes of the second pass
 *   [2] bit 0: answer each request with its body echoed (exercises output growth)
 * Oracle, besides the sanitizers and the invariants asserted on every event: the stream is
 * parsed twice, once fed as fast as the input buffer allows and once in reads of
 * pseudo-random sizes (1..64 bytes); the sequence of requests (method, path, body,
 * keep-alive) and the final error must be the same, since the gateway answers whatever way
 * the network happened to split the bytes.
 */
#include "services/gateway/http.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RID_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"

/* FNV-1a over what the caller of http.c sees. */
struct trace {
    uint64_t h;
    unsigned nreq;
    int err;
    char log[512]; /* the first events, printed on a mismatch */
    size_t loglen;
};

static void s_mix(struct trace *t, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        t->h ^= b[i];
        t->h *= 0x100000001b3ull;
    }
}

static void s_log(struct trace *t, const char *fmt, int a, const char *s)
{
    if (t->loglen < sizeof t->log - 1) {
        int n = snprintf(t->log + t->loglen, sizeof t->log - t->loglen, fmt, a, s);
        if (n > 0)
            t->loglen += (size_t)n;
        if (t->loglen > sizeof t->log - 1)
            t->loglen = sizeof t->log - 1;
    }
}

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz_http: invariant failed: %s (line %d)\n", #cond, __LINE__);       \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

static void s_check_head(const struct http_conn *h)
{
    const struct http_request *r = &h->req;
    CHECK(r->path_len <= HTTP_PATH_MAX && r->path[r->path_len] == '\0');
    CHECK(strlen(r->path) == r->path_len);
    CHECK(r->auth_len <= HTTP_AUTH_MAX && memchr(r->auth, '\0', sizeof r->auth));
    CHECK(r->minor == 0 || r->minor == 1);
    CHECK(r->has_host || r->minor == 0);
    if (r->has_rid) {
        size_t n = strlen(r->rid);
        CHECK(n >= 1 && n <= HTTP_RID_MAX);
        CHECK(strspn(r->rid, RID_CHARS) == n);
    }
    if (r->has_origin)
        CHECK(strlen(r->origin) >= 1 && strlen(r->origin) <= HTTP_ORIGIN_MAX);
    CHECK(!(r->chunked && r->content_length));
    CHECK(h->rpos <= h->rlen && h->rlen <= h->rcap);
    CHECK(http_started(h));
}

/* Parses data[0..n) as one connection; split = 0: reads as large as the buffer allows. */
static void s_run(const uint8_t *cfg, const uint8_t *data, size_t n, int split, struct trace *t)
{
    static const size_t bodies[4] = {0, 16, 1024, 65536};
    struct http_limits lim = {.max_uri = cfg[0] & 1 ? 4096 : 256,
                              .max_header = cfg[0] & 2 ? 8192 : 1024};
    size_t body_max = bodies[(cfg[0] >> 2) & 3];
    uint32_t rng = cfg[1] * 2654435761u + 1;
    struct http_conn h;
    size_t off = 0;

    memset(t, 0, sizeof *t);
    t->h = 0xcbf29ce484222325ull;
    http_conn_init(&h, &lim);
    for (;;) {
        enum http_ev ev;
        while ((ev = http_next(&h)) != HTTP_EV_MORE) {
            if (ev == HTTP_EV_ERROR) {
                CHECK(h.err_status >= 400 && h.err_status <= 599 && h.err_code && h.err_msg);
                CHECK(http_next(&h) == HTTP_EV_ERROR); /* terminal */
                char rid[HTTP_RID_MAX + 1];
                if (http_head_rid(&h, rid)) {
                    size_t k = strlen(rid);
                    CHECK(h.err_head && k >= 1 && k <= HTTP_RID_MAX);
                    CHECK(strspn(rid, RID_CHARS) == k);
                }
                t->err = h.err_status;
                s_mix(t, &t->err, sizeof t->err);
                s_log(t, "E%d%s ", h.err_status, "");
                /* the error answer, as the gateway writes it */
                http_out_status(&h, h.err_status);
                http_out_header(&h, "Connection", "close");
                http_out_body(&h, h.err_status, "application/json", h.err_msg, strlen(h.err_msg));
                goto done;
            }
            if (ev == HTTP_EV_HEAD) {
                s_check_head(&h);
                CHECK(!http_idle(&h) && !http_in_head(&h));
                ev = http_body_begin(&h, body_max);
                CHECK(ev == HTTP_EV_MORE || ev == HTTP_EV_ERROR);
                continue;
            }
            /* HTTP_EV_REQUEST */
            const struct http_request *r = &h.req;
            CHECK(r->body && r->body_len <= body_max);
            CHECK(r->chunked || r->body_len == r->content_length);
            t->nreq++;
            s_mix(t, &r->method, sizeof r->method);
            s_mix(t, r->path, r->path_len + 1);
            s_mix(t, &r->body_len, sizeof r->body_len);
            s_mix(t, r->body, r->body_len);
            s_mix(t, &r->keep_alive, sizeof r->keep_alive);
            s_log(t, "R%d:%.40s ", r->method, r->path);
            http_out_status(&h, 200);
            http_out_header(&h, "X-Path", r->path);
            if (cfg[2] & 1)
                http_out_body(&h, 200, "application/octet-stream", r->body, r->body_len);
            else
                http_out_body(&h, 204, NULL, NULL, 0);
            CHECK(!h.out_fail);
            CHECK(h.out_off <= h.out_len && h.out_len <= h.out_cap);
            http_out_consumed(&h, h.out_len - h.out_off);
            if (!r->keep_alive)
                goto done; /* the gateway closes here */
        }
        {
            uint64_t got;
            (void)http_in_body(&h, &got);
            (void)http_idle(&h);
            char rid[HTTP_RID_MAX + 1];
            if (http_in_head(&h) && http_head_rid(&h, rid))
                CHECK(strlen(rid) >= 1 && strlen(rid) <= HTTP_RID_MAX);
        }
        if (off == n)
            break;
        char *p;
        size_t room;
        CHECK(http_rspace(&h, &p, &room) == 0);
        /* The gateway reads only while parsing can go on: the buffer never fills. */
        CHECK(room > 0);
        size_t k = n - off < room ? n - off : room;
        if (split) {
            rng = rng * 1103515245u + 12345u;
            size_t want = 1 + (rng >> 16) % 64;
            if (want < k)
                k = want;
        }
        memcpy(p, data + off, k);
        http_rcommit(&h, k);
        off += k;
    }
done:
    http_out_consumed(&h, h.out_len - h.out_off);
    http_conn_free(&h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct trace a, b;
    if (size < 3)
        return 0;
    s_run(data, data + 3, size - 3, 0, &a);
    s_run(data, data + 3, size - 3, 1, &b);
    if (a.h != b.h || a.nreq != b.nreq || a.err != b.err) {
        fprintf(stderr,
                "fuzz_http: the answer depends on how the bytes were split\n"
                "  whole: %u requests, error %d: %.*s\n  split: %u requests, error %d: %.*s\n",
                a.nreq, a.err, (int)a.loglen, a.log, b.nreq, b.err, (int)b.loglen, b.log);
        abort();
    }
    return 0;
}
