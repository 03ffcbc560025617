#include "worker.h"

#include "crypto.h"
#include "log.h"
#include "metrics.h"
#include "util.h"
#include "zmqutil.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>
#include <zmq.h>

#define DB_RETRY_MIN_MS 250
#define DB_RETRY_MAX_MS 4000 /* a restarted Postgres is found within 4 s */
#define GW_RETRY_MIN_MS 1000
#define GW_RETRY_MAX_MS 32000
#define GW_LIVENESS 3 /* silent heartbeat intervals before a gateway is dead */
#define GW_MAX 64     /* gateway.count's upper bound */
#define DB_IDLE_PING_MS 5000
#define LEAVE_MS 300 /* at a stop: how long jobs already on their way are still run */
#define REPORT_MS 50 /* status reports to latchkeyd: at most about two per this */

/* One gateway this worker serves. */
struct gw_link {
    char endpoint[LK_ENDPOINT_MAX];
    void *sock;           /* DEALER; NULL while waiting to reconnect */
    int64_t seen_ms;      /* monotonic: last message from it (or our READY) */
    int64_t retry_ms;     /* wait before the next reconnect */
    int64_t reconnect_at; /* monotonic, while sock == NULL */
};

struct worker {
    const char *role;
    const struct lk_config *cfg;
    const struct msg_handler *handlers;
    size_t nhandlers;
    void *zctx;
    struct gw_link gw[GW_MAX];
    int ngw;
    unsigned rr;          /* which gateway is served first on the next turn */
    lk_db_t *db;
    int db_ok;            /* the last Postgres call or ping succeeded */
    int64_t db_used_ms;   /* monotonic: last Postgres call or ping */
    int64_t db_retry_ms;  /* backoff after the next failure */
    int64_t db_retry_at;  /* monotonic: next attempt while !db_ok */
    uint64_t jobs_done;
    lk_status_t *status;
    int reported_busy;    /* the busy value latchkeyd heard last */
    int64_t reported_ms;  /* monotonic: when */
    int leaving;          /* stopping: every gateway is told busy, whatever runs */
};

struct lk_status {
    void *sock;
};

static void s_usage(const char *role);
static void s_reload(void);
static int64_t s_jitter(int64_t ms);
static int s_db_connect(struct worker *w);
static void s_db_result(struct worker *w, int rc);
static void s_gateway_connect(struct worker *w, struct gw_link *g);
static void s_gateway_lost(struct worker *w, struct gw_link *g);
static int s_has_input(void *sock);
static void s_cron(struct worker *w);
static void s_recv(struct worker *w, struct gw_link *g);
static void s_job(struct worker *w, struct gw_link *g, struct lk_msg *req);
static void s_job_answer(const struct lk_msg *req, struct lk_msg *reply, uint32_t status,
                         const char *code, const char *text);
static void s_busy(struct worker *w, const struct gw_link *except, int busy);
static void s_leave(struct worker *w);
static void s_report(struct worker *w, int busy, int force);
static const struct msg_handler *s_handler(const struct worker *w, enum lk_msg_type type);
static void s_job_head(const struct lk_msg *m, const char **rid, int64_t *deadline_ms);
static void s_send(struct gw_link *g, const struct lk_msg *m, const char *rid);

static int (*s_idle)(lk_db_t *db);
static int s_sigfd = -1;
static int s_stopping;
static const char *s_role;
static struct lk_config *s_cfg;
static char s_cfg_path[PATH_MAX]; /* empty: defaults and environment only */

/* ---- every role ------------------------------------------------------------------------ */

void lk_role_start(const char *role, int argc, char **argv, struct lk_config *cfg)
{
    const char *path = NULL;
    char err[512];
    int opt;

    lk_die_with_parent();
    lk_log_init(role, LK_LOG_INFO);
    while ((opt = getopt(argc, argv, "c:")) != -1) {
        if (opt != 'c')
            s_usage(role);
        path = optarg;
    }
    if (optind != argc)
        s_usage(role);
    if (lk_config_load(cfg, path, err, sizeof err) != 0)
        lk_fatal("configuration: %s", err);
    if (path && lk_strlcpy(s_cfg_path, path, sizeof s_cfg_path) != 0)
        lk_fatal("configuration path too long");
    s_role = role;
    s_cfg = cfg;
    lk_log_init(role, cfg->log.level);
    int lrc = lk_log_file(cfg->log.file);
    if (lrc != 0)
        lk_warn("log.file %s: %s (logging to stderr only)", cfg->log.file, lk_strerror(lrc));
    if (lk_crypto_init() != 0)
        lk_fatal("libsodium failed to initialize");
    srandom((unsigned)getpid() ^ (unsigned)lk_mono_ms());

    /* A log write into a pipe the supervisor closed must fail, not kill the process. */
    signal(SIGPIPE, SIG_IGN);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    /* SIGHUP reloads (latchkeyd forwards its own); blocked like the others so that it is
     * handled between jobs, never inside one. */
    sigaddset(&set, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
        lk_fatal("sigprocmask: %s", strerror(errno));
    s_sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (s_sigfd < 0)
        lk_fatal("signalfd: %s", strerror(errno));
    /* after the mask: its ZeroMQ thread inherits it; ships from every loop's wait (below,
     * lk_worker_run, the gateway's cron, the collector's poll) and at exit */
    lk_metrics_start(role, cfg->metrics.endpoint);
}

static void s_usage(const char *role)
{
    fprintf(stderr, "usage: latchkey-%s [-c FILE]\n", role);
    exit(2);
}

int lk_role_signal_fd(void)
{
    return s_sigfd;
}

int lk_role_stopping(void)
{
    struct signalfd_siginfo si;

    while (!s_stopping && read(s_sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGHUP) {
            s_reload();
            continue;
        }
        s_stopping = 1;
        lk_info("%s: stopping", strsignal((int)si.ssi_signo));
    }
    return s_stopping;
}

/* SIGHUP: the same file and environment again; only reloadable keys may differ (the same
 * check latchkeyd makes before it forwards the signal). Reloadable values are read where
 * they are used, so replacing the struct is all it takes. */
static void s_reload(void)
{
    struct lk_config next;
    char err[512];

    if (lk_config_load(&next, s_cfg_path[0] ? s_cfg_path : NULL, err, sizeof err) != 0) {
        lk_warn("SIGHUP: configuration not reloaded: %s", err);
        return;
    }
    if (lk_config_check_reload(s_cfg, &next, err, sizeof err) != 0) {
        lk_warn("SIGHUP: configuration not reloaded: %s", err);
        return;
    }
    *s_cfg = next;
    lk_log_init(s_role, s_cfg->log.level);
    lk_info("SIGHUP: configuration reloaded");
}

int lk_role_sleep(int64_t ms)
{
    int64_t end = lk_mono_ms() + ms;

    while (!lk_role_stopping()) {
        int64_t left = end - lk_mono_ms(), due = lk_metrics_tick();
        if (left <= 0)
            return 0;
        left = due < left ? due : left;
        struct pollfd p = {.fd = s_sigfd, .events = POLLIN};
        (void)poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
    }
    return 1;
}

/* ---- neighbours ------------------------------------------------------------------------ */

int lk_gateway_backend(const struct lk_config *cfg, int index, int connect, char *out, size_t len)
{
    const char *ep = cfg->gateway.backend;
    int n;

    if (index < 0 || index >= cfg->gateway.count)
        return LK_EINVAL;
    if (strncmp(ep, "tcp://", 6) == 0) {
        const char *host = ep + 6, *colon = strrchr(host, ':');
        char *end;
        if (!colon)
            return LK_EINVAL;
        long port = strtol(colon + 1, &end, 10);
        if (*end || end == colon + 1 || port < 0 || port + index > 65535)
            return LK_EINVAL;
        int hostlen = (int)(colon - host);
        if (connect && ((hostlen == 1 && host[0] == '*') ||
                        (hostlen == 7 && strncmp(host, "0.0.0.0", 7) == 0))) {
            host = "127.0.0.1";
            hostlen = 9;
        }
        /* port 0 asks the kernel for one: it cannot be shared, so it is kept as is */
        n = snprintf(out, len, "tcp://%.*s:%ld", hostlen, host, port ? port + index : 0);
    } else if (index == 0) {
        n = snprintf(out, len, "%s", ep);
    } else if (strncmp(ep, "ipc://", 6) == 0) {
        size_t el = strlen(ep);
        int dot = el > 10 && strcmp(ep + el - 4, ".ipc") == 0;
        n = dot ? snprintf(out, len, "%.*s-%d.ipc", (int)(el - 4), ep, index)
                : snprintf(out, len, "%s-%d", ep, index);
    } else {
        return LK_EINVAL;
    }
    return n < 0 || (size_t)n >= len ? LK_EINVAL : 0;
}

int lk_gateway_index(const struct lk_config *cfg)
{
    const char *s = getenv("LATCHKEY_GATEWAY_INDEX");
    char *end;

    if (!s)
        return 0;
    long i = strtol(s, &end, 10);
    if (*s == '\0' || *end || i < 0 || i >= cfg->gateway.count)
        return -1;
    return (int)i;
}

lk_status_t *lk_status_new(void *zctx)
{
    const char *ep = getenv("LATCHKEY_SUPERVISOR_STATUS");
    int one = 1, rc;

    if (!ep || !*ep)
        return NULL;
    lk_status_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->sock = zmq_socket(zctx, ZMQ_PUSH);
    /* Conflate: a report replaces the one not yet sent, so a supervisor that is slow (or
     * gone) never costs more than one message of memory. */
    if (!self->sock || (rc = lk_zmq_set_defaults(self->sock)) != 0 ||
        zmq_setsockopt(self->sock, ZMQ_CONFLATE, &one, sizeof one) != 0 ||
        zmq_connect(self->sock, ep) != 0) {
        lk_warn("status socket %s: %s (latchkeyctl status will show no jobs)", ep,
                zmq_strerror(errno));
        lk_status_destroy(&self);
        return NULL;
    }
    return self;
}

void lk_status_report(lk_status_t *self, uint64_t jobs_done, uint32_t busy)
{
    if (!self)
        return;
    struct lk_msg m = {.type = MSG_RO_STATUS};
    m.u.ro_status.pid = (uint32_t)getpid();
    m.u.ro_status.jobs_done = jobs_done;
    m.u.ro_status.busy = busy;
    if (lk_zmq_send_msg(self->sock, NULL, 0, &m, ZMQ_DONTWAIT) != 0)
        return; /* dropped: the next report says the same and more */
}

void lk_status_destroy(lk_status_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    if ((*self_p)->sock)
        zmq_close((*self_p)->sock);
    free(*self_p);
    *self_p = NULL;
}

/* ---- workers --------------------------------------------------------------------------- */

void lk_worker_set_idle(int (*fn)(lk_db_t *db))
{
    s_idle = fn;
}

int lk_worker_run(const char *role, const struct lk_config *cfg, const struct msg_handler *handlers,
                  size_t nhandlers)
{
    static struct worker w; /* 64 links: too big for the stack of a sanitized build */
    memset(&w, 0, sizeof w);
    w.role = role;
    w.cfg = cfg;
    w.handlers = handlers;
    w.nhandlers = nhandlers;
    w.db_retry_ms = DB_RETRY_MIN_MS;
    w.ngw = cfg->gateway.count > GW_MAX ? GW_MAX : cfg->gateway.count;
    for (int i = 0; i < w.ngw; i++) {
        if (lk_gateway_backend(cfg, i, 1, w.gw[i].endpoint, sizeof w.gw[i].endpoint) != 0)
            lk_fatal("gateway.backend %s: no endpoint for gateway %d of %d", cfg->gateway.backend,
                     i, cfg->gateway.count);
        w.gw[i].retry_ms = GW_RETRY_MIN_MS;
    }

    /* A worker that cannot reach Postgres would only answer 503: it says READY once it can. */
    if (s_db_connect(&w) != 0)
        goto out;
    w.zctx = zmq_ctx_new();
    if (!w.zctx)
        lk_fatal("zmq_ctx_new: %s", zmq_strerror(errno));
    w.status = lk_status_new(w.zctx);
    s_report(&w, 0, 1);
    for (int i = 0; i < w.ngw; i++)
        s_gateway_connect(&w, &w.gw[i]);

    int64_t next_cron = lk_mono_ms() + cfg->gateway.heartbeat_ms;
    while (!lk_role_stopping()) {
        zmq_pollitem_t items[GW_MAX + 1];
        struct gw_link *links[GW_MAX];
        int n = 0;
        for (int i = 0; i < w.ngw; i++) {
            struct gw_link *g = &w.gw[(w.rr + (unsigned)i) % (unsigned)w.ngw];
            if (!g->sock)
                continue;
            items[n] = (zmq_pollitem_t){.socket = g->sock, .events = ZMQ_POLLIN};
            links[n++] = g;
        }
        items[n] = (zmq_pollitem_t){.fd = lk_role_signal_fd(), .events = ZMQ_POLLIN};
        int64_t wait = next_cron - lk_mono_ms(), due = lk_metrics_tick();
        wait = due < wait ? due : wait;
        if (zmq_poll(items, n + 1, wait > 0 ? (long)wait : 0) < 0 && errno != EINTR)
            lk_fatal("zmq_poll: %s", zmq_strerror(errno));
        /* One message per gateway per turn, the first served changing every turn: a burst
         * from one gateway neither starves the others nor the heartbeats. */
        for (int i = 0; i < n && !lk_role_stopping(); i++)
            if (items[i].revents & ZMQ_POLLIN)
                s_recv(&w, links[i]);
        w.rr++;
        if (lk_mono_ms() >= next_cron) {
            s_cron(&w);
            next_cron = lk_mono_ms() + cfg->gateway.heartbeat_ms;
        }
    }
    s_leave(&w);
out:
    for (int i = 0; i < w.ngw; i++)
        if (w.gw[i].sock)
            zmq_close(w.gw[i].sock);
    lk_status_destroy(&w.status);
    if (w.zctx)
        zmq_ctx_term(w.zctx);
    lk_db_destroy(&w.db);
    lk_info("stopped after %llu jobs", (unsigned long long)w.jobs_done);
    return 0;
}

/* ms minus up to a half, at random: workers that lost Postgres together do not all knock
 * at the same instant when it comes back. */
static int64_t s_jitter(int64_t ms)
{
    return ms - (ms / 2 > 0 ? random() % (ms / 2) : 0);
}

/* Connects to Postgres, retrying with backoff. Returns 0, or 1 when a stop signal came. */
static int s_db_connect(struct worker *w)
{
    int64_t wait = DB_RETRY_MIN_MS;

    while (lk_db_connect(w->cfg->database.url, &w->db) != 0) {
        int64_t j = s_jitter(wait);
        lk_warn("Postgres unreachable; retrying in %lld ms", (long long)j);
        if (lk_role_sleep(j))
            return 1;
        wait = wait * 2 > DB_RETRY_MAX_MS ? DB_RETRY_MAX_MS : wait * 2;
    }
    lk_info("connected to Postgres");
    s_db_result(w, 0);
    return 0;
}

/* Records the outcome of a Postgres call for the heartbeat's db_ok and the reconnect
 * backoff; logs the changes. */
static void s_db_result(struct worker *w, int rc)
{
    int ok = rc != LK_EDB;
    int64_t now = lk_mono_ms();

    if (ok != w->db_ok && w->db_used_ms)
        lk_log(ok ? LK_LOG_INFO : LK_LOG_WARN, NULL,
               ok ? "Postgres answers again" : "Postgres failed; answering 503 until it is back");
    w->db_ok = ok;
    w->db_used_ms = now;
    if (ok) {
        w->db_retry_ms = DB_RETRY_MIN_MS;
    } else {
        w->db_retry_at = now + s_jitter(w->db_retry_ms);
        w->db_retry_ms =
            w->db_retry_ms * 2 > DB_RETRY_MAX_MS ? DB_RETRY_MAX_MS : w->db_retry_ms * 2;
    }
}

static void s_gateway_connect(struct worker *w, struct gw_link *g)
{
    int rc;

    g->sock = zmq_socket(w->zctx, ZMQ_DEALER);
    if (!g->sock)
        lk_fatal("zmq_socket: %s", zmq_strerror(errno));
    if ((rc = lk_zmq_set_defaults(g->sock)) != 0)
        lk_fatal("socket options: %s", lk_strerror(rc));
    if (zmq_connect(g->sock, g->endpoint) != 0)
        lk_fatal("connect %s: %s", g->endpoint, zmq_strerror(errno));

    struct lk_msg m = {.type = MSG_WK_READY};
    (void)lk_strlcpy(m.u.wk_ready.role, w->role, sizeof m.u.wk_ready.role);
    m.u.wk_ready.version = LK_PROTO_VERSION;
    m.u.wk_ready.pid = (uint32_t)getpid();
    s_send(g, &m, NULL);
    g->seen_ms = lk_mono_ms();
    lk_info("READY sent to %s", g->endpoint);
}

/* Paranoid Pirate: the gateway is dead. Its socket goes (with whatever it queued) and a new
 * one says READY after a backoff, so that a restarted gateway learns of this worker again.
 * The other gateways are served meanwhile. */
static void s_gateway_lost(struct worker *w, struct gw_link *g)
{
    (void)w;
    lk_warn("gateway %s silent for %lld ms; reconnecting in %lld ms", g->endpoint,
            (long long)(lk_mono_ms() - g->seen_ms), (long long)g->retry_ms);
    zmq_close(g->sock);
    g->sock = NULL;
    g->reconnect_at = lk_mono_ms() + g->retry_ms;
    if (g->retry_ms < GW_RETRY_MAX_MS)
        g->retry_ms *= 2;
}

/* A message queued while a long job ran is life too, even if not read yet. */
static int s_has_input(void *sock)
{
    int events = 0;
    size_t len = sizeof events;

    return zmq_getsockopt(sock, ZMQ_EVENTS, &events, &len) == 0 && (events & ZMQ_POLLIN);
}

/* Duties, every gateway.heartbeat:
 * - a gateway silent for GW_LIVENESS intervals is dead: drop its socket, and after a
 *   backoff (1 s doubling to 32 s; reset by its next message) connect anew and say READY;
 * - Postgres: while it is down, try again when the jittered backoff says so; while it is
 *   up, ping it when no call was made for DB_IDLE_PING_MS, so that db_ok stays true (the
 *   gateway's /ready reads it) on an idle worker;
 * - the role's idle duty (lk_worker_set_idle), while Postgres answers;
 * - heartbeat MSG_WK_HEARTBEAT {pid, db_ok, busy 0} to every gateway (no job runs now);
 * - report jobs done to latchkeyd. */
static void s_cron(struct worker *w)
{
    int64_t now = lk_mono_ms();

    for (int i = 0; i < w->ngw; i++) {
        struct gw_link *g = &w->gw[i];
        if (!g->sock && now >= g->reconnect_at)
            s_gateway_connect(w, g);
        else if (g->sock && now - g->seen_ms >= GW_LIVENESS * w->cfg->gateway.heartbeat_ms &&
                 !s_has_input(g->sock))
            s_gateway_lost(w, g);
    }
    if (w->db_ok ? now - w->db_used_ms >= DB_IDLE_PING_MS : now >= w->db_retry_at)
        s_db_result(w, lk_db_ping(w->db));
    if (s_idle && w->db_ok && s_idle(w->db) == LK_EDB)
        s_db_result(w, LK_EDB); /* a success says nothing: it may have made no call */
    s_busy(w, NULL, 0);
    s_report(w, 0, 1);
}

/* Tells latchkeyd the jobs done and whether a job runs, without a message per job: a busy
 * worker is always shown busy (a job start after an idle report is always reported), and
 * the rest at most every REPORT_MS, or at the next cron. */
static void s_report(struct worker *w, int busy, int force)
{
    int64_t now = lk_mono_ms();
    if (!force && (busy ? w->reported_busy : now - w->reported_ms < REPORT_MS))
        return;
    lk_status_report(w->status, w->jobs_done, (uint32_t)busy);
    w->reported_busy = busy;
    w->reported_ms = now;
}

static void s_recv(struct worker *w, struct gw_link *g)
{
    struct lk_msg req;
    int rc = lk_zmq_recv_msg(g->sock, NULL, NULL, &req, ZMQ_DONTWAIT);

    if (rc == -EAGAIN || rc == -EINTR)
        return;
    /* The gateway is an internal peer: what it sends must decode. A version mismatch
     * decodes as nothing at all, hence the protocol version in the message. */
    if (rc != 0)
        lk_fatal("message from the gateway %s: %s (this worker speaks protocol version %d)",
                 g->endpoint, lk_strerror(rc), LK_PROTO_VERSION);
    g->seen_ms = lk_mono_ms();
    g->retry_ms = GW_RETRY_MIN_MS;
    if (req.type != MSG_GW_HEARTBEAT)
        s_job(w, g, &req);
    lk_wipe(&req, sizeof req);
}

static void s_job(struct worker *w, struct gw_link *g, struct lk_msg *req)
{
    const struct msg_handler *h = s_handler(w, req->type);
    const char *rid;
    int64_t deadline_ms;
    struct lk_msg reply;
    int ran = 0;

    if (!h)
        lk_fatal("protocol error: %s sent to a %s worker", lk_msg_type_str(req->type), w->role);
    s_job_head(req, &rid, &deadline_ms);
    memset(&reply, 0, sizeof reply);
    int64_t now = lk_now_ms();
    if (deadline_ms < now) {
        /* The gateway has answered 504 already; the answer only gives the worker back. */
        lk_log(LK_LOG_WARN, rid, "%s dropped: its deadline passed %lld ms ago",
               lk_msg_type_str(req->type), (long long)(now - deadline_ms));
        s_job_answer(req, &reply, 504, "timeout", "the request timed out");
    } else if (!w->db_ok && lk_mono_ms() < w->db_retry_at) {
        s_job_answer(req, &reply, 503, "unavailable", "the service is temporarily unavailable");
    } else {
        ran = 1;
        s_busy(w, g, 1);
        s_report(w, 1, 0);
        s_db_result(w, h->handle(w->db, req, &reply));
    }
    if (reply.type != LK_MSG_NONE)
        s_send(g, &reply, rid);
    lk_wipe(&reply, sizeof reply);
    w->jobs_done++;
    if (ran)
        s_busy(w, g, 0);
    s_report(w, 0, 0);
}

/* A stop (SIGTERM: the stack stops, or latchkeyctl scale retires this worker) without
 * failing a client: every gateway hears busy=1 and sends nothing more; a job it sent just
 * before is run all the same if it arrives within LEAVE_MS. Then the sockets close and the
 * gateways drop this worker with no job in hand. */
static void s_leave(struct worker *w)
{
    w->leaving = 1;
    s_busy(w, NULL, 1);
    for (int64_t end = lk_mono_ms() + LEAVE_MS, left; (left = end - lk_mono_ms()) > 0;) {
        zmq_pollitem_t items[GW_MAX];
        struct gw_link *links[GW_MAX];
        int n = 0;
        for (int i = 0; i < w->ngw; i++)
            if (w->gw[i].sock) {
                items[n] = (zmq_pollitem_t){.socket = w->gw[i].sock, .events = ZMQ_POLLIN};
                links[n++] = &w->gw[i];
            }
        if (n == 0 || zmq_poll(items, n, (long)left) <= 0)
            break;
        for (int i = 0; i < n; i++)
            if (items[i].revents & ZMQ_POLLIN)
                s_recv(w, links[i]);
    }
}

/* Fills reply as the loop's own answer to req: its reply type, its job id, an error. Every
 * reply type starts with the same fields (job, status, error, message). */
static void s_job_answer(const struct lk_msg *req, struct lk_msg *reply, uint32_t status,
                         const char *code, const char *text)
{
    switch (req->type) {
    case MSG_GW_SIGNUP_REQUEST:
        reply->type = MSG_SU_SIGNUP_REPLY;
        reply->u.su_signup_reply.job = req->u.gw_signup_request.job;
        LK_REPLY_ERROR(&reply->u.su_signup_reply, status, code, text);
        return;
    case MSG_GW_SIGNIN_REQUEST:
        reply->type = MSG_SI_SIGNIN_REPLY;
        reply->u.si_signin_reply.job = req->u.gw_signin_request.job;
        LK_REPLY_ERROR(&reply->u.si_signin_reply, status, code, text);
        return;
    case MSG_GW_SIGNOUT_REQUEST:
        reply->type = MSG_SI_SIGNOUT_REPLY;
        reply->u.si_signout_reply.job = req->u.gw_signout_request.job;
        LK_REPLY_ERROR(&reply->u.si_signout_reply, status, code, text);
        return;
    case MSG_GW_SIGNOUT_ALL_REQUEST:
        reply->type = MSG_SI_SIGNOUT_ALL_REPLY;
        reply->u.si_signout_all_reply.job = req->u.gw_signout_all_request.job;
        LK_REPLY_ERROR(&reply->u.si_signout_all_reply, status, code, text);
        return;
    default:
        lk_fatal("%s has a handler row but is not a job", lk_msg_type_str(req->type));
    }
}

/* Tells every gateway but except whether a job of except runs now (busy 1) or the worker
 * is free again (busy 0). With one gateway: nothing, except the cron's heartbeat. */
static void s_busy(struct worker *w, const struct gw_link *except, int busy)
{
    struct lk_msg hb = {.type = MSG_WK_HEARTBEAT};
    hb.u.wk_heartbeat.pid = (uint32_t)getpid();
    hb.u.wk_heartbeat.db_ok = (uint32_t)w->db_ok;
    hb.u.wk_heartbeat.busy = (uint32_t)(busy || w->leaving);
    for (int i = 0; i < w->ngw; i++)
        if (&w->gw[i] != except && w->gw[i].sock)
            s_send(&w->gw[i], &hb, NULL);
}

static const struct msg_handler *s_handler(const struct worker *w, enum lk_msg_type type)
{
    for (size_t i = 0; i < w->nhandlers; i++)
        if (w->handlers[i].type == type)
            return &w->handlers[i];
    return NULL;
}

/* The request id and deadline every job from the gateway carries. */
static void s_job_head(const struct lk_msg *m, const char **rid, int64_t *deadline_ms)
{
    switch (m->type) {
    case MSG_GW_SIGNUP_REQUEST:
        *rid = m->u.gw_signup_request.rid;
        *deadline_ms = m->u.gw_signup_request.deadline_ms;
        return;
    case MSG_GW_SIGNIN_REQUEST:
        *rid = m->u.gw_signin_request.rid;
        *deadline_ms = m->u.gw_signin_request.deadline_ms;
        return;
    case MSG_GW_SIGNOUT_REQUEST:
        *rid = m->u.gw_signout_request.rid;
        *deadline_ms = m->u.gw_signout_request.deadline_ms;
        return;
    case MSG_GW_SIGNOUT_ALL_REQUEST:
        *rid = m->u.gw_signout_all_request.rid;
        *deadline_ms = m->u.gw_signout_all_request.deadline_ms;
        return;
    default:
        lk_fatal("%s has a handler row but is not a job", lk_msg_type_str(m->type));
    }
}

/* Never blocks: while the gateway is away the socket's queue fills, and a message that
 * does not fit is lost (the gateway times the job out, the next heartbeat follows). */
static void s_send(struct gw_link *g, const struct lk_msg *m, const char *rid)
{
    int rc = lk_zmq_send_msg(g->sock, NULL, 0, m, ZMQ_DONTWAIT);

    if (rc != 0)
        lk_log(LK_LOG_WARN, rid, "%s to %s not sent: %s", lk_msg_type_str(m->type), g->endpoint,
               lk_strerror(rc));
}
