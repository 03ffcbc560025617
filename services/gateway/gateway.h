/* gateway.h: what the gateway's files share (not a public interface).
 *
 *   gateway.c  main, the epoll reactor, client connections, timers, signals, the cron
 *   http.c     HTTP/1.1 parsing and response formatting (no sockets; fuzzable)
 *   routes.c   the route table and its handlers, JSON in and out
 *   broker.c   the ZeroMQ ROUTER: worker registry, LRU idle lists, job queues, heartbeats
 *   batch.c    the admin's POST /api/auth/signup/batch: NDJSON lines, streamed answer
 *   static.c   the web page (GET /, /assets/<name>), read once at start, served from memory
 *
 * Single-threaded: every function here runs on the reactor's thread and must not block.
 */
#ifndef LK_GW_GATEWAY_H
#define LK_GW_GATEWAY_H

#include "http.h"

#include "cache.h"
#include "check.h"
#include "codec.h"
#include "config.h"

#include <stddef.h>
#include <stdint.h>

struct json_t; /* jansson's */

enum gw_role { GW_SIGNUP = 0, GW_SIGNIN, GW_NROLES };

/* What a job is for: decides how its reply becomes an HTTP response. */
enum gw_kind { GW_JOB_SIGNUP = 0, GW_JOB_SIGNIN, GW_JOB_SIGNOUT, GW_JOB_SIGNOUT_ALL };

struct gw_job;
struct gw_batch; /* batch.c */

/* Connection states. */
enum gw_conn_state {
    C_FREE = 0, /* the slot is unused */
    C_READ,     /* taking requests: reading, parsing, answering at once */
    C_BUSY,     /* the current request waits for a worker (c->job) */
    C_LINGER,   /* our answer is out and our side shut: draining the client's bytes */
};

/* One client connection (a slot of the gateway's fixed table). */
struct gw_conn {
    int state;             /* enum gw_conn_state */
    int fd;
    uint32_t events;       /* epoll interest currently registered */
    int close_after;       /* close once the output is flushed */
    int peer_eof;          /* the client shut its sending side */
    int overflow;          /* over max_connections: a 503 slot */
    int head_timer;        /* t_head is running */
    int route;             /* routes.c's table index, -1 when none */
    int pend_status;       /* error decided at the head, answered at the request */
    const char *pend_code;
    const char *pend_msg;
    const char *pend_allow;
    const char *pend_auth; /* WWW-Authenticate of a pending 401 */
    const char *route_name;
    const char *cors;      /* the request's Origin when it is a configured CORS origin (the
                              configured string, static), else NULL: no CORS headers */
    int preflight;         /* the request is a CORS preflight (OPTIONS from cors) */
    int method;            /* llhttp method of the request being answered, -1 if unknown */
    char rid[HTTP_RID_MAX + 1];
    uint8_t peer[16];      /* the client's address (IPv4 as ::ffff:a.b.c.d), for the rate limit */
    int64_t t_head;        /* mono ms: first byte of the current request */
    int64_t t_body;        /* mono ms: head received, body being read */
    int64_t t_active;      /* mono ms: last byte in or out */
    int64_t t_linger;      /* mono ms: end of the lingering close */
    uint64_t t_req_us;     /* mono us: head received (access log duration) */
    size_t linger_bytes;
    struct gw_job *job;    /* the job answering the current request, or NULL */
    struct gw_batch *batch; /* the signup batch answering the current request, or NULL
                              (owned: freed by batch.c when done or when c closes) */
    int streaming;         /* a gw_stream_begin response is being sent */
    int stream_chunked;    /* ... with chunked framing (HTTP/1.1) */
    size_t stream_bytes;   /* bytes of it queued so far (access log) */
    struct gw_conn *next, *prev; /* active list, or free list (next only) */
    struct http_conn http;
};

/* The process-wide state of the gateway. */
struct gateway {
    struct lk_config cfg;
    lk_cache_t *cache;     /* NULL while the environment cannot be opened */
    int draining;          /* SIGTERM received: finish in-flight requests, then exit */
    int64_t now;           /* mono ms, refreshed on every loop turn */
};

extern struct gateway gw;

/* One response header beyond those every response has. */
struct gw_hdr {
    const char *name;
    const char *value;
};

/* ---- gateway.c ---- */

/* Queues the response to c's current request: status line, X-Request-Id, Cache-Control
 * (no-store, unless hdrs[0] is a Cache-Control of its own), Connection, hdrs, then body
 * (JSON when len > 0 or status >= 400, none for 204). Writes the access log line and marks
 * the request answered. */
void gw_reply(struct gw_conn *c, int status, const char *body, size_t len,
              const struct gw_hdr *hdrs, size_t nhdrs);

/* gw_reply with a body of media type ctype (e.g. GET /metrics' text/plain), any length. */
void gw_reply_typed(struct gw_conn *c, int status, const char *ctype, const char *body,
                    size_t len, const struct gw_hdr *hdrs, size_t nhdrs);

/* gw_reply with {"error": code, "message": msg}. */
void gw_reply_error(struct gw_conn *c, int status, const char *code, const char *msg,
                    const struct gw_hdr *hdrs, size_t nhdrs);

/* A streamed response (the signup batch): gw_stream_begin queues the status line and the
 * headers gw_reply would send, with Content-Type ctype and Transfer-Encoding: chunked
 * (HTTP/1.1; an HTTP/1.0 client gets a body delimited by the connection's close).
 * gw_stream_write queues n bytes as one chunk; gw_stream_end queues the last chunk, writes
 * the access log line (one per request) and marks the request answered, as gw_reply
 * does. c stays C_BUSY in between; the caller calls gw_conn_resume to flush. */
void gw_stream_begin(struct gw_conn *c, int status, const char *ctype);
void gw_stream_write(struct gw_conn *c, const char *p, size_t n);
void gw_stream_end(struct gw_conn *c);

/* Resumes a connection whose job was answered outside its event (a worker's reply, a
 * timeout): flushes, then parses pipelined requests. c may be closed on return. */
void gw_conn_resume(struct gw_conn *c);

/* Monotonic microseconds. */
uint64_t gw_mono_us(void);

/* Writes a new generated request id (16 chars of [A-Za-z0-9_-]) into out. */
void gw_rid_new(char out[HTTP_RID_MAX + 1]);

/* ---- routes.c ---- */

/* At HTTP_EV_HEAD: picks the route, sets the request id, decides errors and the body limit. */
void routes_head(struct gw_conn *c);

/* At HTTP_REQUEST: answers at once, or submits a job (the connection waits). */
void routes_request(struct gw_conn *c);

/* A worker answered c's job (reply is a MSG_SU_SIGNUP_REPLY, MSG_SI_SIGNIN_REPLY or
 * MSG_SI_SIGNOUT_REPLY matching kind). email is the job's normalized email (signup). */
void routes_job_reply(struct gw_conn *c, int kind, const char *email, const struct lk_msg *reply);

/* c's job failed: 503 unavailable (no worker, worker died) or 504 timeout. */
void routes_job_fail(struct gw_conn *c, int status);

/* Parses gateway.cors_origins (exits when an origin is malformed: a gateway that would
 * silently refuse a configured origin is a misconfiguration nobody notices) and sets up
 * jansson (allocations wiped on free: request bodies hold passwords). */
void routes_init(void);
void routes_fini(void);

/* The configured CORS origin equal, byte for byte, to origin, or NULL (CORS off, origin
 * not configured). The result is static. */
const char *routes_cors_origin(const char *origin);

/* JSON request decoding, without sockets (tests/fuzz/fuzz_json.c drives these alone).
 * Each parses body (len bytes, any content) with jansson, duplicate keys rejected, invalid
 * UTF-8 and \u0000 rejected, and returns 0 or LK_EMALFORMED with *why set to a static
 * sentence for the 400 answer. On success the caller owns *root: routes_json_free. */

/* {"email": string, "password": string, ...}: the body of signup and signin. The strings
 * are borrowed from *root (NUL-terminated; *_len excludes the NUL). */
struct gw_credentials {
    struct json_t *root;
    const char *email;
    size_t email_len;
    const char *password;
    size_t password_len;
};
int routes_json_credentials(const char *body, size_t len, struct gw_credentials *out,
                            const char **why) LK_WUR;

/* {"tokens": [string, ...], ...} with 1..GW_BATCH_MAX strings: validate/batch. *tokens is
 * the array, borrowed from *root. */
#define GW_BATCH_MAX 1000
int routes_json_tokens(const char *body, size_t len, struct json_t **root,
                       struct json_t **tokens, const char **why) LK_WUR;

/* Releases a decoded body (wiping every block: it may hold a password); sets *root NULL. */
void routes_json_free(struct json_t **root);

/* The checks of a signup's credentials (POST /api/auth/signup and each line of the batch):
 * the email normalized into email, the password policy. Returns 0, or 400 with *code and
 * *why set to static strings for the error answer. */
int routes_signup_check(const struct gw_credentials *cr, char email[LK_EMAIL_MAX + 1],
                        const char **code, const char **why) LK_WUR;

/* Fills *m with the MSG_GW_SIGNUP_REQUEST of a checked signup (request id rid, the route
 * timeout as its deadline). m holds the password: the caller wipes it (lk_wipe). */
void routes_signup_message(struct lk_msg *m, const char *rid, const char *email,
                           const struct gw_credentials *cr);

/* A byte buffer for JSON output. fixed: p is caller-provided storage of cap bytes that
 * never grows; otherwise p is heap memory grown as needed (gw_buf_free releases it).
 * Any failure (no room, no memory) sets fail and later appends do nothing. */
struct gw_buf {
    char *p;
    size_t len, cap;
    int fixed;
    int fail;
};
void gw_buf_raw(struct gw_buf *b, const char *s, size_t n);
/* Appends s (n bytes) as a JSON string, quotes included: ", \ and control bytes escaped,
 * valid UTF-8 kept, invalid bytes replaced by U+FFFD. */
void gw_buf_str(struct gw_buf *b, const char *s, size_t n);
void gw_buf_free(struct gw_buf *b);

/* ---- batch.c ---- */

/* At start: hashes admin.api_key (warns when it is short). */
void batch_init(void);
void batch_fini(void);

/* 1 when admin.api_key is set: otherwise the batch route answers 404 like an unknown
 * path. */
int batch_enabled(void);

/* At the head of a batch request: 0 when Authorization is "Bearer <admin.api_key>"
 * (compared in constant time: BLAKE2b-256 of both sides, then sodium_memcmp), else -1
 * with c->pend_* set to 401 invalid_token. */
int batch_auth(struct gw_conn *c);

/* The route's handler: checks the lines, answers 400 (empty, over GW_BATCH_MAX lines)
 * or 503 (no signup worker), else starts the streamed 200 and feeds the lines to the
 * signup workers, at most a few at a time. c is C_BUSY until the last line is answered. */
void batch_request(struct gw_conn *c);

/* The broker's answer for line (0-based) of b: a MSG_SU_SIGNUP_REPLY, or a failure (503
 * unavailable, 504 timeout). May finish the batch and resume its connection. */
void batch_line_reply(struct gw_batch *b, uint32_t line, const struct lk_msg *reply);
void batch_line_fail(struct gw_batch *b, uint32_t line, int status);

/* c is closing with c->batch set: the batch and its jobs are forgotten. */
void batch_conn_gone(struct gw_conn *c);

/* Cron: retries lines the full job queue refused. */
void batch_cron(void);

/* Splits an NDJSON body into lines (pure: fuzzed by tests/fuzz/fuzz_json.c). A line
 * ends at LF; a CR before it is dropped; the LF that ends the body does not begin
 * another line (so "a\n" is one line, "a\n\n" two, the second blank; "" none).
 * Stores the first max lines' spans in lines and returns the total number of lines. */
struct gw_span {
    size_t off, len;
};
size_t batch_split(const char *body, size_t len, struct gw_span *lines, size_t max);

/* Checks one line as POST /api/auth/signup checks its body (pure apart from the
 * configuration; fuzzed). Returns 0 with cr decoded (the caller frees cr->root with
 * routes_json_free) and email normalized, or the line's status (400) with *code and
 * *why set to static strings. */
int batch_line_check(const char *line, size_t len, struct gw_credentials *cr,
                     char email[LK_EMAIL_MAX + 1], const char **code, const char **why) LK_WUR;

/* ---- broker.c ---- */

/* Creates the ROUTER socket and binds cfg.gateway.backend. Returns its ZMQ_FD, or exits
 * (a gateway that cannot bind its backend is useless: the supervisor restarts it). */
int broker_init(void);

/* Closes the socket and the context; answers nothing (call after the last client). */
void broker_fini(void);

/* Reads every message the ROUTER has (ZMQ_FD is edge-triggered). Returns 1 when it stopped
 * at its per-call budget with more to read, else 0. */
int broker_drain(void);

/* Heartbeats, dead workers, job timeouts. */
void broker_cron(void);

/* Hands a copy of m (type and fields set; the job id is filled in here) to the least
 * recently used idle worker of role for c, or queues it. email (may be NULL) is kept for
 * the response. On success c->job is set and the connection waits for routes_job_reply or
 * routes_job_fail. The broker wipes its copy once sent; the caller wipes m.
 * Returns 0, or -EAGAIN when no worker of the role is connected or its queue is full. */
int broker_submit(struct gw_conn *c, int role, int kind, struct lk_msg *m, const char *email);

/* c is closing: its job, if any, forgets it (a reply is then discarded). */
void broker_conn_gone(struct gw_conn *c);

/* broker_submit for line of batch b (a signup): answered through batch_line_reply or
 * batch_line_fail, never synchronously. Returns 0, -ENOTCONN when no signup worker is
 * connected, -EAGAIN when the queue is full (retry later), -ENOMEM. */
int broker_submit_line(struct gw_batch *b, uint32_t line, struct lk_msg *m);

/* b is going away: its queued jobs are dropped, its sent ones forget it. */
void broker_batch_gone(struct gw_batch *b);

/* For /ready: connected workers per role, and whether Postgres answers (a worker's latest
 * heartbeat said db_ok, or it said READY within three heartbeat intervals). */
void broker_status(int counts[GW_NROLES], int *db_ok);

/* For /ready: appends to names[0..n) the roles latchkeyd marked failed (it gave up
 * restarting them), skipping names already there, up to max entries. Returns the new
 * count. The strings are the broker's, valid until the next broker_cron. */
int broker_failed(const char **names, int n, int max);

/* Number of jobs not yet answered (drain waits for them). */
size_t broker_jobs(void);

/* For metrics (gwmetrics.c): the workers of role connected, those running a job (this
 * gateway's, or another's), and the jobs of role waiting in the queue. */
void broker_stats(int role, int *connected, int *busy, size_t *queued);

#endif
