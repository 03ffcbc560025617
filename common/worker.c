#include "worker.h"

#include "crypto.h"
#include "log.h"
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

#define DB_RETRY_MIN_MS 1000
#define DB_RETRY_MAX_MS 30000
#define GW_RETRY_MIN_MS 1000
#define GW_RETRY_MAX_MS 32000
#define GW_LIVENESS 3 /* silent heartbeat intervals before the gateway is dead */
#define DB_IDLE_PING_MS 5000

struct worker {
    const char *role;
    const struct lk_config *cfg;
    const struct msg_handler *handlers;
    size_t nhandlers;
    void *zctx;
    void *sock; /* DEALER to the gateway; NULL only inside a reconnect */
    lk_db_t *db;
    int db_ok;           /* the last Postgres call or ping succeeded */
    int64_t db_used_ms;  /* monotonic: last Postgres call or ping */
    int64_t gw_seen_ms;  /* monotonic: last message from the gateway (or the READY) */
    int64_t gw_retry_ms; /* wait before the next reconnect */
};

static void s_usage(const char *role);
static int s_db_connect(struct worker *w);
static void s_db_result(struct worker *w, int rc);
static void s_gateway_connect(struct worker *w);
static int s_gateway_reconnect(struct worker *w);
static int s_has_input(void *sock);
static int s_cron(struct worker *w);
static void s_recv(struct worker *w);
static void s_job(struct worker *w, struct lk_msg *req);
static const struct msg_handler *s_handler(const struct worker *w, enum lk_msg_type type);
static void s_job_head(const struct lk_msg *m, const char **rid, int64_t *deadline_ms);
static void s_send(struct worker *w, const struct lk_msg *m, const char *rid);

static int s_sigfd = -1;
static int s_stopping;

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
    lk_log_init(role, cfg->log.level);
    if (lk_crypto_init() != 0)
        lk_fatal("libsodium failed to initialize");

    /* A log write into a pipe the supervisor closed must fail, not kill the process. */
    signal(SIGPIPE, SIG_IGN);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    /* Reload is the supervisor's (for now it only logs it): a stray SIGHUP, say from a
     * closing terminal, must not kill a role. */
    sigaddset(&set, SIGHUP);
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0)
        lk_fatal("sigprocmask: %s", strerror(errno));
    s_sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (s_sigfd < 0)
        lk_fatal("signalfd: %s", strerror(errno));
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
            lk_info("SIGHUP ignored: configuration reload is not supported yet");
            continue;
        }
        s_stopping = 1;
        lk_info("%s: stopping", strsignal((int)si.ssi_signo));
    }
    return s_stopping;
}

int lk_role_sleep(int64_t ms)
{
    int64_t end = lk_mono_ms() + ms;

    while (!lk_role_stopping()) {
        int64_t left = end - lk_mono_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = s_sigfd, .events = POLLIN};
        (void)poll(&p, 1, left > INT_MAX ? INT_MAX : (int)left);
    }
    return 1;
}

/* ---- workers --------------------------------------------------------------------------- */

int lk_worker_run(const char *role, const struct lk_config *cfg, const struct msg_handler *handlers,
                  size_t nhandlers)
{
    struct worker w = {
        .role = role,
        .cfg = cfg,
        .handlers = handlers,
        .nhandlers = nhandlers,
        .gw_retry_ms = GW_RETRY_MIN_MS,
    };

    /* A worker that cannot reach Postgres would only answer 503: it says READY once it can. */
    if (s_db_connect(&w) != 0)
        goto out;
    w.zctx = zmq_ctx_new();
    if (!w.zctx)
        lk_fatal("zmq_ctx_new: %s", zmq_strerror(errno));
    s_gateway_connect(&w);

    int64_t next_cron = lk_mono_ms() + cfg->gateway.heartbeat_ms;
    while (!lk_role_stopping()) {
        zmq_pollitem_t items[] = {
            {.socket = w.sock, .events = ZMQ_POLLIN},
            {.fd = lk_role_signal_fd(), .events = ZMQ_POLLIN},
        };
        int64_t wait = next_cron - lk_mono_ms();
        if (zmq_poll(items, 2, wait > 0 ? (long)wait : 0) < 0 && errno != EINTR)
            lk_fatal("zmq_poll: %s", zmq_strerror(errno));
        /* One message per turn, so that a burst of jobs cannot starve the heartbeat. */
        if (items[0].revents & ZMQ_POLLIN)
            s_recv(&w);
        if (lk_mono_ms() >= next_cron) {
            if (s_cron(&w) != 0)
                break;
            next_cron = lk_mono_ms() + cfg->gateway.heartbeat_ms;
        }
    }
out:
    if (w.sock)
        zmq_close(w.sock);
    if (w.zctx)
        zmq_ctx_term(w.zctx);
    lk_db_destroy(&w.db);
    lk_info("stopped");
    return 0;
}

/* Connects to Postgres, retrying with backoff. Returns 0, or 1 when a stop signal came. */
static int s_db_connect(struct worker *w)
{
    int64_t wait = DB_RETRY_MIN_MS;

    while (lk_db_connect(w->cfg->database.url, &w->db) != 0) {
        lk_warn("Postgres unreachable; retrying in %lld ms", (long long)wait);
        if (lk_role_sleep(wait))
            return 1;
        wait = wait * 2 > DB_RETRY_MAX_MS ? DB_RETRY_MAX_MS : wait * 2;
    }
    lk_info("connected to Postgres");
    s_db_result(w, 0);
    return 0;
}

/* Records the outcome of a Postgres call for the heartbeat's db_ok; logs the changes. */
static void s_db_result(struct worker *w, int rc)
{
    int ok = rc != LK_EDB;

    if (ok != w->db_ok && w->db_used_ms)
        lk_log(ok ? LK_LOG_INFO : LK_LOG_WARN, NULL,
               ok ? "Postgres answers again" : "Postgres failed");
    w->db_ok = ok;
    w->db_used_ms = lk_mono_ms();
}

static void s_gateway_connect(struct worker *w)
{
    const char *backend = w->cfg->gateway.backend;
    int rc;

    w->sock = zmq_socket(w->zctx, ZMQ_DEALER);
    if (!w->sock)
        lk_fatal("zmq_socket: %s", zmq_strerror(errno));
    if ((rc = lk_zmq_set_defaults(w->sock)) != 0)
        lk_fatal("socket options: %s", lk_strerror(rc));
    if (zmq_connect(w->sock, backend) != 0)
        lk_fatal("connect %s: %s", backend, zmq_strerror(errno));

    struct lk_msg m = {.type = MSG_WK_READY};
    (void)lk_strlcpy(m.u.wk_ready.role, w->role, sizeof m.u.wk_ready.role);
    m.u.wk_ready.version = LK_PROTO_VERSION;
    m.u.wk_ready.pid = (uint32_t)getpid();
    s_send(w, &m, NULL);
    w->gw_seen_ms = lk_mono_ms();
    lk_info("READY sent to %s", backend);
}

/* Paranoid Pirate: a new socket, after a backoff, so that a restarted gateway learns of
 * this worker again (its READY). Returns 0, or 1 when a stop signal came while waiting. */
static int s_gateway_reconnect(struct worker *w)
{
    lk_warn("gateway silent for %lld ms; reconnecting in %lld ms",
            (long long)(lk_mono_ms() - w->gw_seen_ms), (long long)w->gw_retry_ms);
    zmq_close(w->sock);
    w->sock = NULL;
    if (lk_role_sleep(w->gw_retry_ms))
        return 1;
    if (w->gw_retry_ms < GW_RETRY_MAX_MS)
        w->gw_retry_ms *= 2;
    s_gateway_connect(w);
    return 0;
}

/* A message queued while a long job ran is life too, even if not read yet. */
static int s_has_input(void *sock)
{
    int events = 0;
    size_t len = sizeof events;

    return zmq_getsockopt(sock, ZMQ_EVENTS, &events, &len) == 0 && (events & ZMQ_POLLIN);
}

/* Duties, every gateway.heartbeat:
 * - after GW_LIVENESS silent intervals, declare the gateway dead: new socket and READY,
 *   after a backoff (1 s doubling to 32 s; reset by the next message from the gateway);
 * - ping Postgres when no call was made for DB_IDLE_PING_MS, so that db_ok stays true
 *   (the gateway's /ready reads it) on an idle worker;
 * - heartbeat MSG_WK_HEARTBEAT {pid, db_ok} to the gateway.
 * Returns 0, or 1 when a stop signal came during a reconnect. */
static int s_cron(struct worker *w)
{
    if (lk_mono_ms() - w->gw_seen_ms >= GW_LIVENESS * w->cfg->gateway.heartbeat_ms &&
        !s_has_input(w->sock) && s_gateway_reconnect(w) != 0)
        return 1;
    if (lk_mono_ms() - w->db_used_ms >= DB_IDLE_PING_MS)
        s_db_result(w, lk_db_ping(w->db));

    struct lk_msg hb = {.type = MSG_WK_HEARTBEAT};
    hb.u.wk_heartbeat.pid = (uint32_t)getpid();
    hb.u.wk_heartbeat.db_ok = (uint32_t)w->db_ok;
    s_send(w, &hb, NULL);
    return 0;
}

static void s_recv(struct worker *w)
{
    struct lk_msg req;
    int rc = lk_zmq_recv_msg(w->sock, NULL, NULL, &req, ZMQ_DONTWAIT);

    if (rc == -EAGAIN || rc == -EINTR)
        return;
    /* The gateway is an internal peer: what it sends must decode. A version mismatch
     * decodes as nothing at all, hence the protocol version in the message. */
    if (rc != 0)
        lk_fatal("message from the gateway: %s (this worker speaks protocol version %d)",
                 lk_strerror(rc), LK_PROTO_VERSION);
    w->gw_seen_ms = lk_mono_ms();
    w->gw_retry_ms = GW_RETRY_MIN_MS;
    if (req.type != MSG_GW_HEARTBEAT)
        s_job(w, &req);
    lk_wipe(&req, sizeof req);
}

static void s_job(struct worker *w, struct lk_msg *req)
{
    const struct msg_handler *h = s_handler(w, req->type);
    const char *rid;
    int64_t deadline_ms;

    if (!h)
        lk_fatal("protocol error: %s sent to a %s worker", lk_msg_type_str(req->type), w->role);
    s_job_head(req, &rid, &deadline_ms);
    int64_t now = lk_now_ms();
    if (deadline_ms < now) {
        lk_log(LK_LOG_WARN, rid, "%s dropped: its deadline passed %lld ms ago",
               lk_msg_type_str(req->type), (long long)(now - deadline_ms));
        return;
    }

    struct lk_msg reply;
    memset(&reply, 0, sizeof reply);
    s_db_result(w, h->handle(w->db, req, &reply));
    if (reply.type != LK_MSG_NONE)
        s_send(w, &reply, rid);
    lk_wipe(&reply, sizeof reply);
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
    default:
        lk_fatal("%s has a handler row but is not a job", lk_msg_type_str(m->type));
    }
}

/* Never blocks: while the gateway is away the socket's queue fills, and a message that
 * does not fit is lost (the gateway times the job out, the next heartbeat follows). */
static void s_send(struct worker *w, const struct lk_msg *m, const char *rid)
{
    int rc = lk_zmq_send_msg(w->sock, NULL, 0, m, ZMQ_DONTWAIT);

    if (rc != 0)
        lk_log(LK_LOG_WARN, rid, "%s not sent: %s", lk_msg_type_str(m->type), lk_strerror(rc));
}
