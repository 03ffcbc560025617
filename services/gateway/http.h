/* http.h: the gateway's HTTP/1.1 connection layer, without sockets.
 *
 * One struct http_conn per client connection holds the llhttp parser, the input buffer,
 * the request body and the output buffer. The caller reads from the socket straight into
 * the input buffer (http_rspace/http_rcommit), pulls events with http_next(), and writes
 * out[out_off..out_len) to the socket. Nothing here touches a file descriptor, so a fuzz
 * target can drive the whole parser with http_conn_init + http_rspace/http_rcommit +
 * http_next alone.
 *
 * One request at a time: after HTTP_EV_REQUEST the parser stays paused on the bytes that
 * follow (pipelined requests) until the caller calls http_next() again, which it does only
 * once the response is queued. That is what answers pipelined requests in order.
 *
 * The request head (request line + headers) is collected whole before llhttp sees it and
 * checked byte by byte first (see s_scan in http.c). llhttp 8.1 as built here
 * (LLHTTP_STRICT_MODE 0, no lenient flag set) rejects by itself: Content-Length with
 * Transfer-Encoding, duplicate Content-Lengths (even equal ones), a bad chunk size, a bare
 * CR, NUL and other controls in field values, a coding after "chunked". It accepts, and
 * s_scan or on_headers_complete reject: obs-fold, white space before the colon, an empty
 * field name, a bare LF ending the head, tab or controls in the target, version HTTP/2.0,
 * a missing or repeated Host, a Transfer-Encoding other than "chunked" alone.
 * Having the head contiguous also means every llhttp span of the head arrives in one
 * piece.
 *
 * Ownership: every buffer belongs to the http_conn; http_conn_free releases them (and wipes
 * the body and the Authorization copy, which may hold passwords and tokens).
 */
#ifndef LK_GW_HTTP_H
#define LK_GW_HTTP_H

#include <llhttp.h>

#include <stddef.h>
#include <stdint.h>

#define HTTP_PATH_MAX 128  /* longer paths match no route (404), they are not stored */
#define HTTP_AUTH_MAX 256  /* longer Authorization values are malformed tokens */
#define HTTP_RID_MAX 64    /* X-Request-Id: 1-64 chars of [A-Za-z0-9._-] */
#define HTTP_XFF_MAX 512    /* the rightmost bytes of X-Forwarded-For kept */
#define HTTP_ORIGIN_MAX 320 /* longer Origin values match no configured origin */
#define HTTP_LIST_MAX 256   /* If-None-Match, Accept-Encoding: longer ones are flagged long */
#define HTTP_OUT_MAX (4u << 20) /* output bound (a full validate/batch answer fits): past
                                   it the caller closes the client */

struct http_limits {
    size_t max_uri;    /* request-target bytes: 414 past it */
    size_t max_header; /* request line + headers: 431 past it */
};

enum http_ev {
    HTTP_EV_MORE = 0, /* everything buffered is consumed: read more */
    HTTP_EV_HEAD,     /* req's head fields are set: call http_body_begin or fail */
    HTTP_EV_REQUEST,  /* a complete request: answer it, then call http_next again */
    HTTP_EV_ERROR,    /* framing or limit error: answer err_status/err_code, close */
};

/* Content-Type: application/json, application/x-ndjson (the signup batch), anything else.
 * Parameters (e.g. "; charset=utf-8") are allowed; two Content-Type fields are OTHER. */
enum http_ctype { HTTP_CT_NONE = 0, HTTP_CT_JSON, HTTP_CT_OTHER, HTTP_CT_NDJSON };

struct http_request {
    int method;                    /* enum llhttp_method */
    int minor;                     /* HTTP/1.<minor>: 0 or 1 */
    char path[HTTP_PATH_MAX + 1];  /* path part of the target, without the query */
    size_t path_len;
    int path_long;                 /* path longer than HTTP_PATH_MAX: matches nothing */
    int has_host;
    int expect_continue;
    int upgrade;                   /* Upgrade or CONNECT: the connection closes after */
    enum http_ctype ctype;
    int has_auth;
    int auth_long;
    char auth[HTTP_AUTH_MAX + 1];  /* Authorization value, OWS trimmed; wiped on reuse */
    size_t auth_len;
    int has_rid;                   /* a valid client X-Request-Id is in rid */
    char rid[HTTP_RID_MAX + 1];
    int has_origin;                /* exactly one Origin field, at most HTTP_ORIGIN_MAX */
    char origin[HTTP_ORIGIN_MAX + 1]; /* its value, OWS trimmed */
    /* X-Forwarded-For, every field joined with ","; when longer than HTTP_XFF_MAX only
     * the rightmost bytes are kept (the proxies' end; ratelimit.trusted_proxies) */
    char xff[HTTP_XFF_MAX + 1];
    size_t xff_len;
    /* If-None-Match and Accept-Encoding (the web page, static.c): every field of the name
     * joined with ", ", OWS trimmed; past HTTP_LIST_MAX bytes only toolong is set */
    struct http_list {
        char v[HTTP_LIST_MAX + 1];
        size_t len;
        int present, toolong;
    } inm, ae;
    int has_body;                  /* Content-Length > 0 or chunked */
    int chunked;
    uint64_t content_length;       /* when !chunked */
    /* Set when HTTP_EV_REQUEST is returned: */
    const char *body;              /* borrowed, valid until the next http_next() */
    size_t body_len;
    int keep_alive;                /* the client allows another request on this connection */
};

struct http_conn {
    llhttp_t parser;
    struct http_limits lim;
    int phase;           /* enum in http.c */
    /* input: rbuf[rpos..rlen) is not yet parsed */
    char *rbuf;
    size_t rcap, rlen, rpos;
    /* head scanner (s_scan): offsets relative to rpos */
    size_t scan_pos;
    int scan_state;
    size_t target_len;
    /* body */
    char *body;
    size_t body_cap, body_len, body_max;
    uint64_t body_wire;  /* raw bytes after the head (chunk framing included) */
    /* output: out[out_off..out_len) is waiting for the socket */
    char *out;
    size_t out_cap, out_len, out_off;
    int out_fail;        /* an append failed (no memory or HTTP_OUT_MAX): close */
    /* the error after HTTP_EV_ERROR */
    int err_status;
    const char *err_code;
    const char *err_msg;
    int err_head;        /* the error came before the head was whole (see http_head_rid) */
    int in_trailers;     /* header callbacks after the body are trailers: ignored */
    struct http_request req;
};

/* Initializes h (no allocation yet). */
void http_conn_init(struct http_conn *h, const struct http_limits *lim);

/* Releases and wipes every buffer; h can be initialized again. NULL-safe members. */
void http_conn_free(struct http_conn *h);

/* Gives the free space at the end of the input buffer (allocated on first use, compacted
 * as needed). *n is 0 when the buffer is full: do not read. Returns 0 or -ENOMEM. */
int http_rspace(struct http_conn *h, char **p, size_t *n);

/* Records n bytes written at the pointer given by http_rspace. */
void http_rcommit(struct http_conn *h, size_t n);

/* Parses what is buffered and returns the next event (see enum http_ev). After
 * HTTP_EV_ERROR it keeps returning HTTP_EV_ERROR. */
enum http_ev http_next(struct http_conn *h);

/* After HTTP_EV_HEAD: accept a body of at most max bytes (0 allowed: a body is then 413).
 * Queues "100 Continue" when the client asked for it and a body is to come. Returns
 * HTTP_EV_MORE to go on with http_next(), or HTTP_EV_ERROR (413 from Content-Length). */
enum http_ev http_body_begin(struct http_conn *h, size_t max);

/* 1 when no request has begun: no byte of a next request is buffered, nothing paused. */
int http_idle(const struct http_conn *h);

/* On an idle connection (http_idle, nothing left to send) releases the input, output and
 * body buffers, wiped; the next read allocates them again. Thousands of idle keep-alive
 * connections then cost their slot and nothing more. No-op otherwise. */
void http_trim(struct http_conn *h);

/* 1 while the head of a request is being received (the header timeout runs). */
int http_in_head(const struct http_conn *h);

/* 1 between the head and the end of a request's body (accepted, not yet complete). */
int http_started(const struct http_conn *h);

/* 1 while a body is being received; *got gets the body bytes received so far. */
int http_in_body(const struct http_conn *h, uint64_t *got);

/* For an answer given before the head was whole (an error found in it, a header
 * timeout): copies the client's X-Request-Id into out when a complete, valid one (the
 * first such line) is among the head bytes received, so that even this answer echoes it
 * as api.md asks. Returns 1 when out was set, else 0. */
int http_head_rid(const struct http_conn *h, char out[HTTP_RID_MAX + 1]);

/* Response building. A response is http_out_status, any http_out_header, then
 * http_out_body (which adds Content-Length unless status is 204, 304 or 1xx, and the
 * blank line; no body for 204 and 304). Failures set out_fail; the caller checks it once and closes the client. */
void http_out_status(struct http_conn *h, int status);
void http_out_header(struct http_conn *h, const char *name, const char *value);
void http_out_body(struct http_conn *h, int status, const char *ctype, const char *body,
                   size_t len);

/* Appends raw bytes to the output. */
void http_out_raw(struct http_conn *h, const char *p, size_t n);

/* Drops the output already written to the socket (n bytes from out_off). */
void http_out_consumed(struct http_conn *h, size_t n);

/* Reason phrase of a status code. */
const char *http_reason(int status);

#endif
