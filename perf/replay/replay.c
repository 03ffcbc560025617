/* replay.c: latchkey-replay's engine and main() (see replay.h and perf/scenarios/README.md).
 *
 * Open loop: virtual users arrive on the schedule of the scenario whatever the server does,
 * and every request's latency runs from the time it was SCHEDULED to go out, not from when a
 * connection was free to send it: a stalled server shows as latency, it cannot slow the load
 * down (no coordinated omission). A user's next step is scheduled when its previous answer
 * came (plus its think time), as in Artillery. k6-style stages are closed loops by
 * definition (each user loops its flow); their iteration rate is reported as it is.
 *
 * Connections: a pool of keep-alive HTTP/1.1 connections, one request at a time each; a
 * request takes an idle one, else opens a new one while fewer than --max-conns are open,
 * else waits in a FIFO queue (its latency still runs from its scheduled time).
 *
 * Counting: a request is "sent" once all its bytes are written; the server then counts it
 * in http_requests_total when it answers. A connection that fails before that is "unsent",
 * one that fails after is "cut", both reported apart from the answers. */
#include "replay.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NS 1000000000LL
#define SETUP_CONC 16           /* requests in flight during the setup */
#define IDLE_CLOSE_NS (20 * NS) /* closes idle connections before the gateway's 60 s */
#define IN_MAX (256 * 1024)     /* largest answer accepted */
#define REQ_MAX 1024
#define PASSWORD "replay password 1234"
#define PASSWORD_LEN 20

enum cstate { CS_FREE, CS_CONNECTING, CS_IDLE, CS_BUSY };
enum outcome { OC_ANSWER, OC_CUT, OC_UNSENT, OC_TIMEOUT_SENT, OC_TIMEOUT_UNSENT };
enum where { W_NONE, W_THINK, W_QUEUE, W_CONN };

struct conn;

struct vu {
    int flow;          /* -1: a setup task or a trace request (one step) */
    int step;          /* the next step of the flow */
    int phase;         /* the phase its arrival (stages: its iteration) fell in; -1 setup */
    int looping, stop; /* stages: loops its flow until stop */
    enum where where;
    const struct step *cur; /* the request in flight or waiting */
    struct step one;        /* setup and trace: the only step */
    int setup_slot;         /* setup signin: where its token goes (>= 0 pool, < 0 revoke) */
    int expect;             /* the expected status */
    int64_t sched;          /* scheduled send time of the current request (ns, monotonic) */
    int sent;
    char email[96];
    char token[48];
    int has_token;
    char req[REQ_MAX];
    size_t req_len;
    struct conn *conn;
    struct vu *qnext;         /* the wait queue */
    struct vu *lprev, *lnext; /* every live user */
    size_t heap_i;
};

struct conn {
    int fd;
    enum cstate state;
    struct vu *vu;
    size_t off; /* bytes of vu->req written */
    char *in;
    size_t in_len, in_cap;
    int64_t idle_since;
    int want_out;
    uint32_t gen;       /* counts the sockets of this slot: epoll events carry it */
    struct conn *inext; /* the idle stack */
};

struct heap_ent {
    int64_t t;
    struct vu *vu;
};

/* ---- state ------------------------------------------------------------------------------ */
static struct {
    struct scenario sc;
    struct results res;
    struct sockaddr_storage addr;
    socklen_t addrlen;
    char hostport[300];
    int epfd;
    struct conn *conns;
    int max_conns, nconns;
    struct conn *idle;
    struct vu *qhead, *qtail;
    size_t qlen;
    struct heap_ent *heap;
    size_t nheap, heap_cap;
    struct vu *live;
    size_t nlive, nloopers;
    int64_t t0, t_end, t_drain_end, timeout_ns, drain_ns;
    int ending; /* past the end of the phases: no new arrivals or iterations */
    int in_setup;
    uint64_t rng;
    uint64_t next_email;
    /* arrivals */
    int ph; /* the current phase */
    int64_t ph_start;
    uint64_t ph_k; /* arrivals made in the current phase */
    size_t trace_i;
    /* setup */
    char **pool_tok;
    char **revoke_tok;
    int revoke_next;
    int setup_stage, setup_next, setup_total, setup_failed, setup_inflight;
    int setup_first_bad;
    /* progress */
    int tty, quiet;
    int64_t last_progress;
    uint64_t prog_sent, prog_errors; /* the measured phases so far, for the progress line */
    struct hist prog_lat;
    volatile sig_atomic_t stop_signal;
} R;

const char *const rkind_names[RK_N] = {"signup", "signin", "validate", "signout", "get"};

static int64_t s_now(void);
static uint64_t s_rand(void);
static void s_random_token(char *out);
static void s_heap_push(struct vu *vu, int64_t t);
static struct vu *s_heap_pop_due(int64_t now);
static struct vu *s_vu_new(int flow, int phase);
static void s_vu_free(struct vu *vu);
static int s_pick_flow(void);
static void s_vu_run(struct vu *vu, int64_t t);
static void s_vu_next_iteration(struct vu *vu, int64_t t, int after_error);
static int s_build(struct vu *vu);
static void s_dispatch(struct vu *vu, int64_t sched);
static void s_conn_assign(struct conn *c, struct vu *vu);
static struct conn *s_conn_open(void);
static void s_conn_close(struct conn *c);
static void s_conn_idle(struct conn *c);
static void s_conn_write(struct conn *c);
static void s_conn_read(struct conn *c);
static void s_conn_event(struct conn *c, uint32_t ev);
static void s_ep_mod(struct conn *c, int out);
static void s_finish(struct vu *vu, enum outcome oc, int status, const char *body, size_t blen,
                     int64_t now);
static struct rstats *s_stats(struct vu *vu);
static struct sec *s_sec(int64_t now);
static void s_cron(int64_t now);
static void s_arrivals(int64_t now);
static void s_setup_feed(int64_t now);
static int s_loop(int64_t until_ns, int setup);
static int64_t s_next_deadline(int64_t now, int setup);
static void s_progress(int64_t now, int final);
static int s_target(const char *url, int allow_remote);
static int s_mkdir_p(const char *dir);
static void s_usage(FILE *f);

static int64_t s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS + ts.tv_nsec;
}

/* xorshift64*: choosing flows, pool entries and random tokens; not a secret */
static uint64_t s_rand(void)
{
    R.rng ^= R.rng >> 12;
    R.rng ^= R.rng << 25;
    R.rng ^= R.rng >> 27;
    return R.rng * 2685821657736338717ULL;
}

static void s_random_token(char *out)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for (int i = 0; i < 43; i++)
        out[i] = b64[s_rand() & 63];
    out[43] = '\0';
}

/* ---- the timer heap: users thinking, and arrivals of the setup ------------------------- */
static void s_heap_push(struct vu *vu, int64_t t)
{
    if (R.nheap == R.heap_cap) {
        size_t cap = R.heap_cap ? R.heap_cap * 2 : 1024;
        struct heap_ent *h = realloc(R.heap, cap * sizeof *h);
        if (!h) {
            fprintf(stderr, "latchkey-replay: out of memory\n");
            exit(1);
        }
        R.heap = h;
        R.heap_cap = cap;
    }
    size_t i = R.nheap++;
    while (i > 0 && R.heap[(i - 1) / 2].t > t) {
        R.heap[i] = R.heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    R.heap[i] = (struct heap_ent){t, vu};
    vu->where = W_THINK;
}

static struct vu *s_heap_pop_due(int64_t now)
{
    if (R.nheap == 0 || R.heap[0].t > now)
        return NULL;
    struct heap_ent top = R.heap[0], last = R.heap[--R.nheap];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        if (l >= R.nheap)
            break;
        m = l;
        if (l + 1 < R.nheap && R.heap[l + 1].t < R.heap[l].t)
            m = l + 1;
        if (R.heap[m].t >= last.t)
            break;
        R.heap[i] = R.heap[m];
        i = m;
    }
    if (R.nheap)
        R.heap[i] = last;
    top.vu->where = W_NONE;
    top.vu->sched = top.t;
    return top.vu;
}

/* ---- virtual users ---------------------------------------------------------------------- */
static struct vu *s_vu_new(int flow, int phase)
{
    struct vu *vu = calloc(1, sizeof *vu);
    if (!vu) {
        fprintf(stderr, "latchkey-replay: out of memory\n");
        exit(1);
    }
    vu->flow = flow;
    vu->phase = phase;
    vu->lnext = R.live;
    if (R.live)
        R.live->lprev = vu;
    R.live = vu;
    R.nlive++;
    return vu;
}

static void s_vu_free(struct vu *vu)
{
    if (vu->lprev)
        vu->lprev->lnext = vu->lnext;
    else
        R.live = vu->lnext;
    if (vu->lnext)
        vu->lnext->lprev = vu->lprev;
    R.nlive--;
    if (vu->looping && !vu->stop)
        R.nloopers--;
    free(vu);
}

static int s_pick_flow(void)
{
    double x = (double)(s_rand() >> 11) / 9007199254740992.0 * R.sc.total_weight;
    for (int i = 0; i < R.sc.nflows; i++) {
        if (x < R.sc.flows[i].weight)
            return i;
        x -= R.sc.flows[i].weight;
    }
    return R.sc.nflows - 1;
}

/* Runs vu's steps from vu->step at time t: think time goes to the heap, a request is
 * dispatched; past the last step the user loops (stages) or leaves. */
static void s_vu_run(struct vu *vu, int64_t t)
{
    if (vu->flow < 0) {
        if (vu->step == 0) {
            vu->step = 1;
            vu->cur = &vu->one;
            s_dispatch(vu, t);
            return;
        }
        s_vu_free(vu);
        return;
    }
    const struct flow *f = &R.sc.flows[vu->flow];
    while (vu->step < f->nsteps) {
        const struct step *st = &f->steps[vu->step++];
        if (st->kind == RK_THINK) {
            if (st->think_ns > 0) {
                s_heap_push(vu, t + st->think_ns);
                return;
            }
            continue;
        }
        vu->cur = st;
        s_dispatch(vu, t);
        return;
    }
    s_vu_next_iteration(vu, t, 0);
}

static void s_vu_next_iteration(struct vu *vu, int64_t t, int after_error)
{
    if (!vu->looping || vu->stop || R.ending || R.stop_signal || R.ph >= R.sc.nphases) {
        s_vu_free(vu);
        return;
    }
    vu->flow = s_pick_flow();
    vu->step = 0;
    vu->has_token = 0;
    vu->phase = R.ph;
    if (after_error) { /* no tight loop of failures: wait a second, as a think time would */
        vu->step = 0;
        s_heap_push(vu, t + NS);
        return;
    }
    s_vu_run(vu, t);
}

/* The request of vu->cur into vu->req; sets vu->expect. Returns 0, or -1 when the step
 * cannot be made (no token left for a signout of a trace: counted as an unsent error). */
static int s_build(struct vu *vu)
{
    const struct step *st = vu->cur;
    char body[256], tok[48];
    const char *method = "POST", *path = NULL, *auth = NULL;
    int blen = -1;
    const char *pool_email_fmt = "lkr-%s-p%d@example.com";

    switch (st->kind) {
    case RK_SIGNUP:
        path = "/api/auth/signup";
        if (vu->flow < 0 && R.in_setup) {
            vu->expect = 201; /* email set by the setup */
        } else if (st->src == SRC_TAKEN && R.sc.setup_users > 0) {
            snprintf(vu->email, sizeof vu->email, pool_email_fmt, R.res.run_id,
                     (int)(s_rand() % (uint64_t)R.sc.setup_users));
            vu->expect = 409;
        } else if (st->src == SRC_BAD) {
            snprintf(vu->email, sizeof vu->email, "lkr-%s-%llu-not-an-email", R.res.run_id,
                     (unsigned long long)++R.next_email);
            vu->expect = 400;
        } else {
            snprintf(vu->email, sizeof vu->email, "lkr-%s-%llu@example.com", R.res.run_id,
                     (unsigned long long)++R.next_email);
            vu->expect = 201;
        }
        blen = snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"%s\"}", vu->email,
                        PASSWORD);
        break;
    case RK_SIGNIN:
        path = "/api/auth/signin";
        vu->expect = 200;
        if (vu->flow < 0 && R.in_setup) {
            /* email set by the setup */
        } else if (st->src == SRC_POOL) {
            snprintf(vu->email, sizeof vu->email, pool_email_fmt, R.res.run_id,
                     (int)(s_rand() % (uint64_t)R.sc.setup_users));
        } else if (st->src == SRC_WRONG) {
            /* an unknown email, new each time: per-email throttling never kicks in */
            snprintf(vu->email, sizeof vu->email, "lkr-%s-%llu-nobody@example.com", R.res.run_id,
                     (unsigned long long)++R.next_email);
            vu->expect = 401;
        }
        blen = snprintf(body, sizeof body, "{\"email\":\"%s\",\"password\":\"%s\"}", vu->email,
                        PASSWORD);
        break;
    case RK_VALIDATE:
    case RK_SIGNOUT:
        method = st->kind == RK_VALIDATE ? "GET" : "POST";
        path = st->kind == RK_VALIDATE ? "/api/auth/validate" : "/api/auth/signout";
        vu->expect = st->kind == RK_VALIDATE ? 200 : 204;
        if (st->src == SRC_OWN && vu->has_token) {
            auth = vu->token;
        } else if (st->src == SRC_POOL && R.sc.setup_tokens > 0) {
            auth = R.pool_tok[s_rand() % (uint64_t)R.sc.setup_tokens];
        } else if (st->src == SRC_REVOKE) {
            if (R.revoke_next >= R.sc.setup_revoke)
                return -1;
            auth = R.revoke_tok[R.revoke_next++];
        } else {
            s_random_token(tok);
            auth = tok;
            vu->expect = 401;
        }
        break;
    case RK_GET:
        method = "GET";
        path = st->path;
        vu->expect = 200;
        break;
    default:
        return -1;
    }
    int n = snprintf(vu->req, sizeof vu->req,
                     "%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: latchkey-replay\r\n", method, path,
                     R.hostport);
    if (auth)
        n +=
            snprintf(vu->req + n, sizeof vu->req - (size_t)n, "Authorization: Bearer %s\r\n", auth);
    if (blen >= 0)
        n += snprintf(vu->req + n, sizeof vu->req - (size_t)n,
                      "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", blen, body);
    else if (strcmp(method, "POST") == 0)
        n += snprintf(vu->req + n, sizeof vu->req - (size_t)n, "Content-Length: 0\r\n\r\n");
    else
        n += snprintf(vu->req + n, sizeof vu->req - (size_t)n, "\r\n");
    if (n < 0 || (size_t)n >= sizeof vu->req)
        return -1;
    vu->req_len = (size_t)n;
    return 0;
}

/* Sends vu's current request, scheduled at sched, on an idle connection, a new one, or
 * after the others waiting. */
static void s_dispatch(struct vu *vu, int64_t sched)
{
    vu->sched = sched;
    vu->sent = 0;
    if (s_build(vu) != 0) {
        s_finish(vu, OC_UNSENT, 0, NULL, 0, s_now());
        return;
    }
    struct conn *c = R.idle;
    if (c) {
        R.idle = c->inext;
        s_conn_assign(c, vu);
        return;
    }
    if (R.nconns < R.max_conns && (c = s_conn_open()) != NULL) {
        s_conn_assign(c, vu);
        return;
    }
    if (R.nconns == 0) { /* cannot connect at all: an unsent error, not an endless queue */
        s_finish(vu, OC_UNSENT, 0, NULL, 0, s_now());
        return;
    }
    vu->where = W_QUEUE;
    s_stats(vu)->queued++;
    vu->qnext = NULL;
    if (R.qtail)
        R.qtail->qnext = vu;
    else
        R.qhead = vu;
    R.qtail = vu;
    R.qlen++;
}

/* ---- connections ------------------------------------------------------------------------ */
static struct conn *s_conn_open(void)
{
    struct conn *c = NULL;
    for (int i = 0; i < R.max_conns; i++)
        if (R.conns[i].state == CS_FREE) {
            c = &R.conns[i];
            break;
        }
    if (!c)
        return NULL;
    int fd = socket(R.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    int one = 1;
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&R.addr, R.addrlen) != 0 && errno != EINPROGRESS) {
        close(fd);
        return NULL;
    }
    c->fd = fd;
    c->state = CS_CONNECTING;
    c->in_len = 0;
    c->off = 0;
    c->vu = NULL;
    c->want_out = 1;
    c->gen++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP,
                             .data.u64 = (uint64_t)c->gen << 32 | (uint64_t)(c - R.conns)};
    if (epoll_ctl(R.epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        close(fd);
        c->state = CS_FREE;
        return NULL;
    }
    R.nconns++;
    R.res.conns_opened++;
    if (R.nconns > R.res.conns_peak)
        R.res.conns_peak = R.nconns;
    return c;
}

static void s_conn_close(struct conn *c)
{
    if (c->state == CS_FREE)
        return;
    if (c->state == CS_IDLE) { /* out of the idle stack */
        struct conn **p = &R.idle;
        while (*p && *p != c)
            p = &(*p)->inext;
        if (*p)
            *p = c->inext;
    }
    close(c->fd); /* also leaves the epoll set */
    c->fd = -1;
    c->state = CS_FREE;
    c->vu = NULL;
    c->in_len = 0;
    R.nconns--;
}

static void s_ep_mod(struct conn *c, int out)
{
    if (c->want_out == out)
        return;
    c->want_out = out;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (out ? EPOLLOUT : 0),
                             .data.u64 = (uint64_t)c->gen << 32 | (uint64_t)(c - R.conns)};
    (void)epoll_ctl(R.epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void s_conn_assign(struct conn *c, struct vu *vu)
{
    c->vu = vu;
    c->off = 0;
    c->in_len = 0;
    vu->conn = c;
    vu->where = W_CONN;
    if (c->state == CS_IDLE) {
        c->state = CS_BUSY;
        s_conn_write(c);
    }
    /* CS_CONNECTING: written when the connection is up */
}

/* The connection is free again: the next waiting request, or the idle stack. */
static void s_conn_idle(struct conn *c)
{
    c->vu = NULL;
    c->in_len = 0;
    c->idle_since = s_now();
    c->state = CS_IDLE;
    s_ep_mod(c, 0);
    struct vu *vu = R.qhead;
    if (vu) {
        R.qhead = vu->qnext;
        if (!R.qhead)
            R.qtail = NULL;
        R.qlen--;
        s_conn_assign(c, vu);
        return;
    }
    c->inext = R.idle;
    R.idle = c;
}

static void s_conn_fail(struct conn *c)
{
    struct vu *vu = c->vu;
    s_conn_close(c);
    if (vu) {
        vu->conn = NULL;
        s_finish(vu, vu->sent ? OC_CUT : OC_UNSENT, 0, NULL, 0, s_now());
    }
}

static void s_conn_write(struct conn *c)
{
    struct vu *vu = c->vu;
    while (c->off < vu->req_len) {
        ssize_t n = send(c->fd, vu->req + c->off, vu->req_len - c->off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            s_ep_mod(c, 1);
            return;
        }
        if (n <= 0) {
            s_conn_fail(c);
            return;
        }
        c->off += (size_t)n;
    }
    s_ep_mod(c, 0);
    vu->sent = 1;
    int64_t now = s_now();
    s_stats(vu)->sent++;
    if (!R.in_setup) {
        struct sec *s = s_sec(now);
        if (s)
            s->sent++;
        R.prog_sent++;
    }
}

/* Parses c->in: 0 incomplete, 1 complete (status, body), -1 not HTTP. *close set when the
 * server closes after it. eof: the peer closed (a body without a length ends there). */
static int s_parse(struct conn *c, int eof, int *status, const char **body, size_t *blen,
                   int *close_after)
{
    char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!end)
        return c->in_len > 16384 ? -1 : 0;
    size_t hlen = (size_t)(end - c->in) + 4;
    if (c->in_len < 12 || memcmp(c->in, "HTTP/1.", 7) != 0)
        return -1;
    int st = 0;
    for (int i = 9; i < 12; i++) {
        if (c->in[i] < '0' || c->in[i] > '9')
            return -1;
        st = st * 10 + (c->in[i] - '0');
    }
    long long clen = -1;
    int chunked = 0;
    *close_after = c->in[7] == '0'; /* HTTP/1.0 closes unless keep-alive */
    for (char *p = memchr(c->in, '\n', hlen); p && p < end;
         p = memchr(p, '\n', (size_t)(end - p))) {
        p++;
        if (strncasecmp(p, "Content-Length:", 15) == 0) {
            char *e;
            clen = strtoll(p + 15, &e, 10);
            if (clen < 0 || clen > IN_MAX)
                return -1;
        } else if (strncasecmp(p, "Connection:", 11) == 0) {
            const char *v = p + 11;
            while (*v == ' ')
                v++;
            if (strncasecmp(v, "close", 5) == 0)
                *close_after = 1;
            else if (strncasecmp(v, "keep-alive", 10) == 0)
                *close_after = 0;
        } else if (strncasecmp(p, "Transfer-Encoding:", 18) == 0) {
            chunked = 1;
        }
    }
    if (chunked)
        return -1; /* no route the replayer calls answers chunked */
    *status = st;
    *body = c->in + hlen;
    if (st == 204 || st == 304 || st < 200)
        clen = 0;
    if (clen < 0) {
        if (!eof)
            return 0;
        *blen = c->in_len - hlen;
        *close_after = 1;
        return 1;
    }
    if (c->in_len < hlen + (size_t)clen)
        return 0;
    if (c->in_len > hlen + (size_t)clen)
        return -1; /* bytes after the answer: nothing was asked */
    *blen = (size_t)clen;
    return 1;
}

static void s_conn_read(struct conn *c)
{
    int eof = 0;
    for (;;) {
        if (c->in_cap - c->in_len < 4096) {
            size_t cap = c->in_cap ? c->in_cap * 2 : 8192;
            if (cap > IN_MAX + 16384) {
                s_conn_fail(c);
                return;
            }
            char *p = realloc(c->in, cap);
            if (!p) {
                s_conn_fail(c);
                return;
            }
            c->in = p;
            c->in_cap = cap;
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, c->in_cap - c->in_len - 1, 0);
        if (n > 0) {
            c->in_len += (size_t)n;
            c->in[c->in_len] = '\0'; /* the header parser's string functions stop there */
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN)
            break;
        eof = 1; /* 0: closed; < 0: reset */
        break;
    }
    if (c->state != CS_BUSY || !c->vu || !c->vu->sent) {
        /* an idle connection the server closed (or that said something unasked) */
        if (eof || c->in_len)
            s_conn_fail(c);
        return;
    }
    int status = 0, close_after = 0;
    const char *body = NULL;
    size_t blen = 0;
    int r = s_parse(c, eof, &status, &body, &blen, &close_after);
    if (r == 0 && !eof)
        return;
    if (r <= 0) {
        s_conn_fail(c);
        return;
    }
    struct vu *vu = c->vu;
    int64_t now = s_now();
    vu->conn = NULL;
    c->vu = NULL;
    /* the connection first (the user's next request may take it), then the answer */
    char *copy = NULL;
    if (blen) {
        copy = malloc(blen + 1);
        if (copy) {
            memcpy(copy, body, blen);
            copy[blen] = '\0';
        }
    }
    if (close_after || eof)
        s_conn_close(c);
    else
        s_conn_idle(c);
    s_finish(vu, OC_ANSWER, status, copy, copy ? blen : 0, now);
    free(copy);
}

static void s_conn_event(struct conn *c, uint32_t ev)
{
    if (c->state == CS_CONNECTING) {
        if (!(ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
            return;
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0) {
            s_conn_fail(c);
            return;
        }
        if (c->vu) {
            c->state = CS_BUSY;
            s_conn_write(c);
        } else {
            s_conn_idle(c);
        }
        return;
    }
    if (c->state == CS_BUSY && (ev & EPOLLOUT) && c->vu && !c->vu->sent) {
        uint32_t gen = c->gen;
        s_conn_write(c);
        if (c->state == CS_FREE || c->gen != gen) /* failed (and maybe reopened meanwhile) */
            return;
    }
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        s_conn_read(c);
}

/* ---- outcomes --------------------------------------------------------------------------- */
static struct rstats *s_stats(struct vu *vu)
{
    if (vu->phase < 0)
        return &R.res.setup;
    return &R.res.by_phase[(size_t)vu->phase * RK_N + vu->cur->kind];
}

static struct sec *s_sec(int64_t now)
{
    if (now < R.t0)
        return NULL;
    size_t i = (size_t)((now - R.t0) / NS);
    return i < R.res.nsec ? &R.res.series[i] : NULL;
}

/* The end of vu's current request: counts it, takes a token from a signin's answer, and
 * moves the user on (its next step, or away after an error). */
static void s_finish(struct vu *vu, enum outcome oc, int status, const char *body, size_t blen,
                     int64_t now)
{
    struct rstats *st = s_stats(vu);
    struct sec *sec = R.in_setup ? NULL : s_sec(now);
    int ok = 0;
    vu->where = W_NONE;
    switch (oc) {
    case OC_ANSWER:
        st->answered++;
        st->status[status >= 100 && status < 600 ? status : 0]++;
        hist_record(&st->lat, (uint64_t)(now > vu->sched ? now - vu->sched : 0) / 1000);
        ok = status == vu->expect;
        if (sec) {
            sec->answered++;
            sec->by_kind[vu->cur->kind]++;
            hist_record(&sec->lat, (uint64_t)(now > vu->sched ? now - vu->sched : 0) / 1000);
        }
        if (!R.in_setup)
            hist_record(&R.prog_lat, (uint64_t)(now > vu->sched ? now - vu->sched : 0) / 1000);
        break;
    case OC_CUT:
        st->cut++;
        break;
    case OC_UNSENT:
        st->unsent++;
        break;
    case OC_TIMEOUT_SENT:
        st->timeouts_sent++;
        break;
    case OC_TIMEOUT_UNSENT:
        st->timeouts_unsent++;
        break;
    }
    if (!ok) {
        st->errors++;
        if (sec)
            sec->errors++;
        if (!R.in_setup)
            R.prog_errors++;
    }
    if (ok && vu->cur->kind == RK_SIGNIN && body) {
        json_t *j = json_loadb(body, blen, 0, NULL);
        const char *t = json_string_value(json_object_get(j, "token"));
        if (t && strlen(t) == 43) {
            memcpy(vu->token, t, 44);
            vu->has_token = 1;
        } else {
            ok = 0;
            st->errors++;
        }
        json_decref(j);
    }
    if (ok && vu->cur->kind == RK_SIGNOUT)
        vu->has_token = 0;
    if (R.in_setup) {
        R.setup_inflight--;
        if (!ok) {
            R.setup_failed++;
            if (!R.setup_first_bad)
                R.setup_first_bad = oc == OC_ANSWER ? status : -1;
        } else if (vu->cur->kind == RK_SIGNIN) {
            char *dst = vu->setup_slot >= 0 ? R.pool_tok[vu->setup_slot]
                                            : R.revoke_tok[-vu->setup_slot - 1];
            memcpy(dst, vu->token, 44);
        }
        s_vu_free(vu);
        return;
    }
    if (oc == OC_TIMEOUT_SENT || oc == OC_TIMEOUT_UNSENT) {
        s_vu_free(vu); /* the drain or the timeout: the user is gone */
        return;
    }
    if (!ok) {
        if (vu->flow >= 0)
            s_vu_next_iteration(vu, now, 1);
        else
            s_vu_free(vu);
        return;
    }
    s_vu_run(vu, now);
}

/* ---- the schedule ----------------------------------------------------------------------- */
/* Time of the k-th arrival (from 0) of phase p after its start, in ns, or -1 past its end:
 * the arrival rate ramps linearly from rate0 to rate1, so N(t) = r0 t + (r1 - r0) t^2 / 2D
 * arrivals have come by t, and the k-th comes when N(t) = k. */
static int64_t s_arrival_at(const struct phase *p, uint64_t k)
{
    double a = (p->rate1 - p->rate0) / (2 * p->dur_s), b = p->rate0, t;
    if (fabs(a) < 1e-12) {
        if (b <= 0)
            return -1;
        t = (double)k / b;
    } else {
        double d = b * b + 4 * a * (double)k;
        if (d < 0)
            return -1;
        t = (-b + sqrt(d)) / (2 * a);
        if (t < 0)
            return -1;
    }
    if (t >= p->dur_s)
        return -1;
    return (int64_t)(t * 1e9);
}

static void s_arrivals(int64_t now)
{
    if (R.ending)
        return;
    if (R.sc.mode == MODE_TRACE) {
        while (R.trace_i < R.sc.ntrace && R.t0 + R.sc.trace[R.trace_i].t_ns <= now) {
            struct vu *vu = s_vu_new(-1, 0);
            vu->one = R.sc.trace[R.trace_i].step;
            s_vu_run(vu, R.t0 + R.sc.trace[R.trace_i].t_ns);
            R.trace_i++;
        }
        return;
    }
    /* which phase now */
    while (R.ph < R.sc.nphases && now >= R.ph_start + (int64_t)(R.sc.phases[R.ph].dur_s * 1e9)) {
        if (R.sc.mode == MODE_ARRIVALS) { /* the arrivals due before the phase ended */
            int64_t t;
            while ((t = s_arrival_at(&R.sc.phases[R.ph], R.ph_k)) >= 0) {
                struct vu *vu = s_vu_new(s_pick_flow(), R.ph);
                R.ph_k++;
                s_vu_run(vu, R.ph_start + t);
            }
        }
        R.ph_start += (int64_t)(R.sc.phases[R.ph].dur_s * 1e9);
        R.ph++;
        R.ph_k = 0;
    }
    if (R.ph >= R.sc.nphases)
        return;
    const struct phase *p = &R.sc.phases[R.ph];
    if (R.sc.mode == MODE_ARRIVALS) {
        int64_t t;
        while ((t = s_arrival_at(p, R.ph_k)) >= 0 && R.ph_start + t <= now) {
            struct vu *vu = s_vu_new(s_pick_flow(), R.ph);
            R.ph_k++;
            s_vu_run(vu, R.ph_start + t);
        }
        return;
    }
    /* stages: as many looping users as the ramp says now */
    double f = (double)(now - R.ph_start) / (p->dur_s * 1e9);
    size_t want = (size_t)llround(p->vus0 + (p->vus1 - p->vus0) * (f > 1 ? 1 : f));
    while (R.nloopers < want) {
        struct vu *vu = s_vu_new(s_pick_flow(), R.ph);
        vu->looping = 1;
        R.nloopers++;
        s_vu_run(vu, now);
    }
    for (struct vu *vu = R.live; vu && R.nloopers > want; vu = vu->lnext)
        if (vu->looping && !vu->stop) {
            vu->stop = 1;
            R.nloopers--;
        }
}

/* Setup: signups of the pool's accounts, then signins for its tokens, SETUP_CONC at once. */
static void s_setup_feed(int64_t now)
{
    int users = R.sc.setup_users, sessions = R.sc.setup_tokens + R.sc.setup_revoke;
    for (;;) {
        if (R.setup_stage == 0 && R.setup_next >= users) {
            if (R.setup_inflight)
                return;
            R.setup_stage = 1;
            R.setup_next = 0;
        }
        if (R.setup_stage == 1 && R.setup_next >= sessions)
            return;
        if (R.setup_inflight >= SETUP_CONC || R.setup_failed)
            return;
        struct vu *vu = s_vu_new(-1, -1);
        int i = R.setup_next++;
        vu->one.kind = R.setup_stage == 0 ? RK_SIGNUP : RK_SIGNIN;
        snprintf(vu->email, sizeof vu->email, "lkr-%s-p%d@example.com", R.res.run_id,
                 R.setup_stage == 0 ? i : i % users);
        vu->setup_slot = i < R.sc.setup_tokens ? i : -(i - R.sc.setup_tokens) - 1;
        R.setup_inflight++;
        s_vu_run(vu, now);
    }
}

/* Timeouts, idle connections, the progress line. */
static void s_cron(int64_t now)
{
    for (int i = 0; i < R.max_conns; i++) {
        struct conn *c = &R.conns[i];
        if (c->state == CS_IDLE && now - c->idle_since > IDLE_CLOSE_NS) {
            s_conn_close(c);
        } else if ((c->state == CS_BUSY || c->state == CS_CONNECTING) && c->vu &&
                   now - c->vu->sched > R.timeout_ns) {
            struct vu *vu = c->vu;
            s_conn_close(c);
            vu->conn = NULL;
            s_finish(vu, vu->sent ? OC_TIMEOUT_SENT : OC_TIMEOUT_UNSENT, 0, NULL, 0, now);
        }
    }
    while (R.qhead && now - R.qhead->sched > R.timeout_ns) {
        struct vu *vu = R.qhead;
        R.qhead = vu->qnext;
        if (!R.qhead)
            R.qtail = NULL;
        R.qlen--;
        s_finish(vu, OC_TIMEOUT_UNSENT, 0, NULL, 0, now);
    }
    /* a queue with no connection left to serve it (all failed): open one */
    if (R.qhead && R.nconns == 0) {
        struct conn *c = s_conn_open();
        if (c) {
            struct vu *vu = R.qhead;
            R.qhead = vu->qnext;
            if (!R.qhead)
                R.qtail = NULL;
            R.qlen--;
            s_conn_assign(c, vu);
        }
    }
    if (!R.in_setup)
        s_progress(now, 0);
}

static void s_progress(int64_t now, int final)
{
    if (R.quiet)
        return;
    int64_t every = R.tty ? NS / 2 : 5 * NS;
    if (!final && now - R.last_progress < every)
        return;
    R.last_progress = now;
    size_t secs = (size_t)((now - R.t0) / NS);
    /* req/s over the last 5 whole seconds */
    uint64_t recent = 0;
    size_t from = secs >= 5 ? secs - 5 : 0, n = secs - from;
    for (size_t i = from; i < secs && i < R.res.nsec; i++)
        recent += R.res.series[i].answered;
    const char *phase = R.ending ? "drain" : R.ph < R.sc.nphases ? R.sc.phases[R.ph].name : "drain";
    fprintf(stderr,
            "%s[%6.1fs] %-16.16s sent %7llu  %7.1f req/s  p99 %8.1f ms  errors %llu  "
            "in flight %zu%s",
            R.tty ? "\r" : "", (double)(now - R.t0) / 1e9, phase, (unsigned long long)R.prog_sent,
            n ? (double)recent / (double)n : 0.0, (double)hist_percentile(&R.prog_lat, 99) / 1000.0,
            (unsigned long long)R.prog_errors, R.nlive, R.tty && !final ? "   " : "\n");
}

/* When the loop must run next: the first thinking user's wake-up, the next arrival or
 * trace request, the end of the phases or of the drain, and the cron (100 ms) at the
 * latest. Stage ramps start their users within 10 ms. */
static int64_t s_next_deadline(int64_t now, int setup)
{
    int64_t d = now + NS / 10;
    if (R.nheap && R.heap[0].t < d)
        d = R.heap[0].t;
    if (setup)
        return d;
    if (!R.ending) {
        int64_t t = R.t_end;
        if (R.sc.mode == MODE_TRACE && R.trace_i < R.sc.ntrace) {
            t = R.t0 + R.sc.trace[R.trace_i].t_ns;
        } else if (R.sc.mode == MODE_ARRIVALS && R.ph < R.sc.nphases) {
            int64_t a = s_arrival_at(&R.sc.phases[R.ph], R.ph_k);
            t = R.ph_start + (a >= 0 ? a : (int64_t)(R.sc.phases[R.ph].dur_s * 1e9));
        } else if (R.sc.mode == MODE_STAGES) {
            t = now + NS / 100;
        }
        d = t < d ? t : d;
        d = R.t_end < d ? R.t_end : d;
    } else if (R.t_drain_end < d) {
        d = R.t_drain_end;
    }
    return d;
}

/* The event loop until the phases end and the users finish (or until_ns, the drain's end).
 * setup: runs the setup instead. Returns 0, or -1 on an epoll failure. */
static int s_loop(int64_t until_ns, int setup)
{
    struct epoll_event evs[256];
    int64_t last_cron = 0;
    for (;;) {
        int64_t now = s_now();
        if (setup) {
            s_setup_feed(now);
            if ((R.setup_stage == 1 && R.setup_next >= R.sc.setup_tokens + R.sc.setup_revoke &&
                 R.setup_inflight == 0) ||
                (R.setup_failed && R.setup_inflight == 0) || R.stop_signal)
                return 0;
        } else {
            if (!R.ending && (now >= R.t_end || R.stop_signal)) {
                s_arrivals(R.t_end < now ? R.t_end : now);
                R.ending = 1;
                R.t_drain_end = now + R.drain_ns;
            }
            if (!R.ending)
                s_arrivals(now);
            if (R.ending && (R.nlive == 0 || now >= R.t_drain_end || R.stop_signal > 1))
                return 0;
        }
        if (now >= until_ns)
            return 0;
        struct vu *vu;
        int ran = 0;
        while ((vu = s_heap_pop_due(now)) != NULL) {
            ran = 1;
            if (vu->flow >= 0 && vu->step == 0) /* after an error: a new iteration */
                s_vu_next_iteration(vu, vu->sched, 0);
            else
                s_vu_run(vu, vu->sched);
        }
        if (now - last_cron >= NS / 10) {
            last_cron = now;
            s_cron(now);
        }
        /* sleep until the next think time, arrival or cron, to the microsecond: a late
         * wake-up would be counted in the latency of every request it delays */
        int64_t d = ran ? 0 : s_next_deadline(now, setup) - s_now();
        struct timespec ts = {.tv_sec = d > 0 ? d / NS : 0, .tv_nsec = d > 0 ? d % NS : 0};
        static int no_pwait2; /* before Linux 5.11 (or under valgrind): millisecond timeouts */
        int n = no_pwait2 ? -1 : epoll_pwait2(R.epfd, evs, 256, &ts, NULL);
        if (n < 0 && (no_pwait2 || errno == ENOSYS)) {
            no_pwait2 = 1;
            n = epoll_wait(R.epfd, evs, 256, d > 0 ? (int)((d + 999999) / 1000000) : 0);
        }
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "latchkey-replay: epoll_wait: %s\n", strerror(errno));
            return -1;
        }
        for (int i = 0; i < n; i++) {
            /* an event of a socket closed (and its slot reused) earlier in this batch is stale */
            struct conn *c = &R.conns[evs[i].data.u64 & 0xffffffffu];
            if (c->state != CS_FREE && c->gen == (uint32_t)(evs[i].data.u64 >> 32))
                s_conn_event(c, evs[i].events);
        }
    }
}

/* ---- target, files, main ---------------------------------------------------------------- */
static int s_target(const char *url, int allow_remote)
{
    char host[256], port[16] = "80";
    const char *p = url;
    if (strncmp(p, "https://", 8) == 0) {
        fprintf(stderr,
                "latchkey-replay: --target %s: https is not supported (the gateway speaks "
                "plain HTTP behind a TLS terminator)\n",
                url);
        return -1;
    }
    if (strncmp(p, "http://", 7) == 0)
        p += 7;
    size_t hl;
    const char *rest;
    if (*p == '[') {
        const char *e = strchr(p, ']');
        if (!e)
            goto bad;
        hl = (size_t)(e - p - 1);
        if (hl == 0 || hl >= sizeof host)
            goto bad;
        memcpy(host, p + 1, hl);
        rest = e + 1;
    } else {
        hl = strcspn(p, ":/");
        if (hl == 0 || hl >= sizeof host)
            goto bad;
        memcpy(host, p, hl);
        rest = p + hl;
    }
    host[hl] = '\0';
    if (*rest == ':') {
        size_t pl = strspn(rest + 1, "0123456789");
        if (pl == 0 || pl > 5)
            goto bad;
        memcpy(port, rest + 1, pl);
        port[pl] = '\0';
        rest += 1 + pl;
        if (atoi(port) < 1 || atoi(port) > 65535)
            goto bad;
    }
    if (*rest && strcmp(rest, "/") != 0)
        goto bad;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL, *a;
    int rc = getaddrinfo(host, port, &hints, &ai);
    if (rc != 0) {
        fprintf(stderr, "latchkey-replay: --target %s: %s\n", url, gai_strerror(rc));
        return -1;
    }
    for (a = ai; a; a = a->ai_next) {
        int loop = 0;
        if (a->ai_family == AF_INET)
            loop = (ntohl(((struct sockaddr_in *)a->ai_addr)->sin_addr.s_addr) >> 24) == 127;
        else if (a->ai_family == AF_INET6)
            loop = IN6_IS_ADDR_LOOPBACK(&((struct sockaddr_in6 *)a->ai_addr)->sin6_addr);
        if (!loop && !allow_remote) {
            fprintf(stderr,
                    "latchkey-replay: --target %s is not a loopback address: refusing to "
                    "load a remote server without --allow-remote\n",
                    url);
            freeaddrinfo(ai);
            return -1;
        }
    }
    memcpy(&R.addr, ai->ai_addr, ai->ai_addrlen);
    R.addrlen = ai->ai_addrlen;
    freeaddrinfo(ai);
    snprintf(R.hostport, sizeof R.hostport, "%s%s%s:%s", strchr(host, ':') ? "[" : "", host,
             strchr(host, ':') ? "]" : "", port);
    snprintf(R.res.target, sizeof R.res.target, "http://%s", R.hostport);
    return 0;
bad:
    fprintf(stderr, "latchkey-replay: --target %s: expected http://HOST:PORT\n", url);
    return -1;
}

static int s_mkdir_p(const char *dir)
{
    char p[4096];
    if (snprintf(p, sizeof p, "%s", dir) >= (int)sizeof p)
        return -ENAMETOOLONG;
    for (char *s = p + 1; *s; s++)
        if (*s == '/') {
            *s = '\0';
            if (mkdir(p, 0755) != 0 && errno != EEXIST)
                return -errno;
            *s = '/';
        }
    if (mkdir(p, 0755) != 0 && errno != EEXIST)
        return -errno;
    return 0;
}

static void s_usage(FILE *f)
{
    fprintf(f, "usage: latchkey-replay SCENARIO.json [options]\n"
               "       latchkey-replay --trace TRACE [--speed N] [options]\n"
               "       latchkey-replay --record-from-log LOG --trace OUT\n"
               "options:\n"
               "  --target URL      http://HOST:PORT (default http://127.0.0.1:8080)\n"
               "  --allow-remote    allow a target that is not a loopback address\n"
               "  --out DIR         report directory (default perf/results/replay-NAME-TIME, or\n"
               "                    ./replay-NAME-TIME outside the repository)\n"
               "  --speed N         trace replay speed (default 1: as recorded)\n"
               "  --max-conns N     connections open at most (default 3000; the gateway's own\n"
               "                    limit is gateway.max_connections, 4096 by default)\n"
               "  --timeout S       seconds before a request counts as a timeout (default 40)\n"
               "  --drain S         seconds allowed after the last phase (default 10)\n"
               "  --seed N          random seed (flows, pool picks, random tokens)\n"
               "  --strict          exit 3 when a target of the performance table fails\n"
               "  --quiet           no progress line\n"
               "Exit: 0 done, 1 bad usage or input, 2 the run could not start, 3 (--strict) a\n"
               "target failed. Scenario format: perf/scenarios/README.md.\n");
}

/* The first signal ends the phases (the drain follows), the second the drain. */
static void s_on_signal(int sig)
{
    (void)sig;
    if (R.stop_signal < 2)
        R.stop_signal++;
}

static int s_num_arg(const char *opt, const char *v, double lo, double hi, double *out)
{
    char *e;
    errno = 0;
    double x = v ? strtod(v, &e) : 0;
    if (!v || e == v || *e || errno || !isfinite(x) || x < lo || x > hi) {
        fprintf(stderr, "latchkey-replay: %s: expected a number from %g to %g\n", opt, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

int main(int argc, char **argv)
{
    const char *scen = NULL, *target = "http://127.0.0.1:8080", *out = NULL, *trace = NULL,
               *record = NULL;
    double speed = 1, max_conns = 3000, timeout = 40, drain = 10, seed = 0;
    int allow_remote = 0, strict = 0;
    char err[512];

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = 1;
        if (strcmp(a, "--target") == 0 && v)
            target = v;
        else if (strcmp(a, "--out") == 0 && v)
            out = v;
        else if (strcmp(a, "--trace") == 0 && v)
            trace = v;
        else if (strcmp(a, "--record-from-log") == 0 && v)
            record = v;
        else if (strcmp(a, "--speed") == 0) {
            if (s_num_arg(a, v, 0.01, 1000, &speed) != 0)
                return 1;
        } else if (strcmp(a, "--max-conns") == 0) {
            if (s_num_arg(a, v, 1, 60000, &max_conns) != 0)
                return 1;
        } else if (strcmp(a, "--timeout") == 0) {
            if (s_num_arg(a, v, 0.1, 3600, &timeout) != 0)
                return 1;
        } else if (strcmp(a, "--drain") == 0) {
            if (s_num_arg(a, v, 0, 3600, &drain) != 0)
                return 1;
        } else if (strcmp(a, "--seed") == 0) {
            if (s_num_arg(a, v, 0, 4e15, &seed) != 0)
                return 1;
        } else {
            takes = 0;
            if (strcmp(a, "--allow-remote") == 0)
                allow_remote = 1;
            else if (strcmp(a, "--strict") == 0)
                strict = 1;
            else if (strcmp(a, "--quiet") == 0)
                R.quiet = 1;
            else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
                s_usage(stdout);
                return 0;
            } else if (a[0] == '-') {
                fprintf(stderr, "latchkey-replay: unknown option %s (or its value is missing)\n",
                        a);
                s_usage(stderr);
                return 1;
            } else if (scen) {
                fprintf(stderr, "latchkey-replay: one scenario at a time (%s and %s)\n", scen, a);
                return 1;
            } else {
                scen = a;
            }
        }
        i += takes;
    }
    if (record) {
        if (!trace || scen) {
            fprintf(stderr,
                    "latchkey-replay: --record-from-log LOG needs --trace OUT and no scenario\n");
            return 1;
        }
        if (trace_record(record, trace, err, sizeof err) != 0) {
            fprintf(stderr, "latchkey-replay: %s\n", err);
            return 1;
        }
        return 0;
    }
    if ((scen != NULL) == (trace != NULL)) {
        s_usage(stderr);
        return 1;
    }
    if ((trace ? trace_load(trace, speed, &R.sc, err, sizeof err)
               : scenario_load(scen, &R.sc, err, sizeof err)) != 0) {
        fprintf(stderr, "latchkey-replay: %s\n", err);
        return 1;
    }
    if (s_target(target, allow_remote) != 0) {
        scenario_free(&R.sc);
        return 1;
    }

    /* the run: its id (in every email it makes), its directory, its clocks */
    struct timespec wall;
    clock_gettime(CLOCK_REALTIME, &wall);
    struct tm tm;
    gmtime_r(&wall.tv_sec, &tm);
    strftime(R.res.started_at, sizeof R.res.started_at, "%Y-%m-%dT%H:%M:%SZ", &tm);
    snprintf(R.res.run_id, sizeof R.res.run_id, "%lx%x", (unsigned long)wall.tv_sec,
             (unsigned)getpid() & 0xfffff);
    R.rng = seed > 0 ? (uint64_t)seed
                     : ((uint64_t)wall.tv_nsec << 20) ^ (uint64_t)getpid() ^ 0x9e3779b97f4a7c15ULL;
    if (!R.rng)
        R.rng = 1;
    char dir[4096];
    if (out) {
        snprintf(dir, sizeof dir, "%s", out);
    } else {
        char stamp[32], clean[64];
        strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%SZ", &tm);
        size_t k = 0;
        for (const char *p = R.sc.name; *p && k < sizeof clean - 1; p++)
            clean[k++] = (isalnum((unsigned char)*p) || *p == '-' || *p == '.') ? *p : '_';
        clean[k] = '\0';
        struct stat sb;
        int inrepo = stat("perf/scenarios", &sb) == 0 && S_ISDIR(sb.st_mode); /* at the root */
        snprintf(dir, sizeof dir, "%sreplay-%s-%s", inrepo ? "perf/results/" : "", clean, stamp);
    }
    int mk = s_mkdir_p(dir);
    if (mk != 0) {
        fprintf(stderr, "latchkey-replay: --out %s: %s\n", dir, strerror(-mk));
        scenario_free(&R.sc);
        return 1;
    }

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        (void)setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && (double)rl.rlim_cur < max_conns + 64)
        max_conns = rl.rlim_cur > 128 ? (double)rl.rlim_cur - 64 : 64;
    R.max_conns = (int)max_conns;
    R.res.max_conns = R.max_conns;
    R.timeout_ns = (int64_t)(timeout * 1e9);
    R.drain_ns = (int64_t)(drain * 1e9);
    R.tty = isatty(STDERR_FILENO);
    R.res.sc = &R.sc;
    R.conns = calloc((size_t)R.max_conns, sizeof *R.conns);
    R.res.by_phase = calloc((size_t)R.sc.nphases * RK_N, sizeof *R.res.by_phase);
    R.res.nsec = (size_t)ceil(R.sc.total_s + drain) + 2;
    R.res.series = calloc(R.res.nsec, sizeof *R.res.series);
    int ntok = R.sc.setup_tokens + R.sc.setup_revoke;
    R.pool_tok = calloc((size_t)R.sc.setup_tokens + 1, sizeof *R.pool_tok);
    R.revoke_tok = calloc((size_t)R.sc.setup_revoke + 1, sizeof *R.revoke_tok);
    char *tokmem = calloc((size_t)ntok + 1, 48);
    R.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!R.conns || !R.res.by_phase || !R.res.series || !R.pool_tok || !R.revoke_tok || !tokmem ||
        R.epfd < 0) {
        fprintf(stderr, "latchkey-replay: out of memory (or epoll_create1 failed)\n");
        return 2;
    }
    for (int i = 0; i < R.sc.setup_tokens; i++)
        R.pool_tok[i] = tokmem + (size_t)i * 48;
    for (int i = 0; i < R.sc.setup_revoke; i++)
        R.revoke_tok[i] = tokmem + (size_t)(R.sc.setup_tokens + i) * 48;

    (void)prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* wake-ups on time, not 50 us late */
    struct sigaction sa = {.sa_handler = s_on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    fprintf(stderr, "latchkey-replay: %s against %s, run %s, report in %s\n", R.sc.name,
            R.res.target, R.res.run_id, dir);
    int rc = 0;
    if (R.sc.setup_users || ntok) {
        int64_t s0 = s_now();
        fprintf(stderr, "latchkey-replay: setup: %d accounts, %d sessions (not measured)\n",
                R.sc.setup_users, ntok);
        R.in_setup = 1;
        if (s_loop(INT64_MAX, 1) != 0)
            rc = 2;
        R.in_setup = 0;
        R.res.setup_s = (double)(s_now() - s0) / 1e9;
        if (rc == 0 && (R.setup_failed || R.stop_signal)) {
            if (R.stop_signal)
                fprintf(stderr, "latchkey-replay: interrupted during the setup\n");
            else if (R.setup_first_bad > 0)
                fprintf(
                    stderr,
                    "latchkey-replay: setup failed: a %s answered %d (is the target a "
                    "latchkey gateway with its workers up? LATCHKEY_RATELIMIT_CLIENT_RATE=0?)\n",
                    R.setup_stage == 0 ? "signup" : "signin", R.setup_first_bad);
            else
                fprintf(stderr,
                        "latchkey-replay: setup failed: cannot connect to %s (or no answer "
                        "within --timeout)\n",
                        R.res.target);
            rc = 2;
        }
    }
    if (rc == 0) {
        R.t0 = s_now();
        R.ph_start = R.t0;
        R.t_end = R.t0 + (int64_t)(R.sc.total_s * 1e9);
        R.last_progress = R.t0;
        if (s_loop(INT64_MAX, 0) != 0)
            rc = 2;
        int64_t now = s_now();
        /* the drain is over: what is left counts as timeouts */
        for (int i = 0; i < R.max_conns; i++) {
            struct conn *c = &R.conns[i];
            struct vu *vu = c->vu;
            if (c->state != CS_FREE)
                s_conn_close(c);
            if (vu) {
                vu->conn = NULL;
                s_finish(vu, vu->sent ? OC_TIMEOUT_SENT : OC_TIMEOUT_UNSENT, 0, NULL, 0, now);
            }
        }
        while (R.qhead) {
            struct vu *vu = R.qhead;
            R.qhead = vu->qnext;
            s_finish(vu, OC_TIMEOUT_UNSENT, 0, NULL, 0, now);
        }
        R.qtail = NULL;
        while (R.live) { /* thinking: no request pending, the flow unfinished */
            R.res.unfinished += R.live->flow >= 0;
            s_vu_free(R.live);
        }
        R.res.measured_s = (double)(now - R.t0) / 1e9;
        R.res.drain_s = R.t_drain_end && now > R.t_end ? (double)(now - R.t_end) / 1e9 : 0;
        R.res.interrupted = R.stop_signal != 0;
        s_progress(now, 1);
        if (R.tty && !R.quiet)
            fputc('\n', stderr);
        int pass = 1;
        if (report_write(&R.res, dir, &pass) != 0)
            rc = 2;
        else if (strict && !pass)
            rc = 3;
    }
    for (int i = 0; i < R.max_conns; i++) {
        s_conn_close(&R.conns[i]);
        free(R.conns[i].in);
    }
    while (R.live)
        s_vu_free(R.live);
    close(R.epfd);
    free(R.conns);
    free(R.res.by_phase);
    free(R.res.series);
    free(R.pool_tok);
    free(R.revoke_tok);
    free(tokmem);
    free(R.heap);
    scenario_free(&R.sc);
    return rc;
}
