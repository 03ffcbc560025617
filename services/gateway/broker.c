/* broker.c: the gateway's ZeroMQ ROUTER, the broker between HTTP requests and workers.
 *
 * Paranoid Pirate, gateway side (zguide ppqueue.c): a worker (DEALER) says MSG_WK_READY
 * and is registered under its routing id; heartbeats go both ways every
 * gateway.heartbeat_ms; any message counts as life; three silent intervals and a worker is
 * dead. A worker does one job at a time. Idle workers wait on a per-role list, oldest
 * first (least recently used); jobs wait in a bounded per-role FIFO while no worker is
 * idle. Invariant: a role's queue is non-empty only while its idle list is empty.
 *
 * Every job is on one list in creation order, which is deadline order (the route timeout
 * is the same for all), so the cron finds the expired ones at its head. A job answered
 * without its worker (route timeout) leaves the worker busy with the job's id until the
 * late reply comes (then discarded) or a few heartbeats after the deadline.
 *
 * A job answers either a connection (conn) or one line of a signup batch (batch, line:
 * batch.c, which keeps a few lines of a batch in flight at a time); s_job_finish is the one
 * place that hands an answer to either. A batch that goes away (its client left) drops its
 * queued jobs and detaches its sent ones, exactly as a connection does.
 *
 * Several gateways (gateway.count > 1): gateway i binds its own endpoint
 * (lk_gateway_backend) and every worker serves every gateway, one job at a time. A worker
 * running another gateway's job says so (MSG_WK_HEARTBEAT busy=1) and is "away": off the
 * idle list until busy=0. A job sent to it just before it said so waits in its socket and
 * runs next: correct, only slower.
 *
 * Malformed input on the backend socket: from a registered worker, the worker is dropped
 * (its job answered 503); from anyone else, the message is discarded and logged (rate
 * limited). A frame over LK_MSG_MAX or a broken ZMTP handshake makes libzmq close that
 * connection (ZMQ_MAXMSGSIZE); a socket monitor logs it.
 */
#include "gateway.h"
#include "gwmetrics.h"

#include "check.h"
#include "crypto.h"
#include "errors.h"
#include "log.h"
#include "util.h"
#include "zmqutil.h"

#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define QUEUE_MAX 1024   /* jobs waiting per role; past it: 503 */
#define WORKERS_MAX 4096 /* registered workers; READY past it is refused */
#define ID_MAX 256       /* a ZeroMQ routing id is at most 255 bytes */
#define DRAIN_BUDGET 512 /* messages per broker_drain call (the HTTP side gets its turn) */
#define LIVENESS 3       /* heartbeat intervals of silence that make a worker dead */
#define STATUS_MS 1000   /* how often latchkeyd hears from us, and we read its failed roles */
#define FAILED_MAX 8     /* failed roles remembered (latchkeyd has 6 roles) */
#define PEER_LOG_MAX 20  /* log lines per second about unknown or broken peers */
#define MONITOR_EP "inproc://lk-backend-monitor"

struct gw_worker {
    struct gw_worker *next, *prev;   /* every worker */
    struct gw_worker *inext, *iprev; /* idle list of its role */
    int idle;
    int role;
    uint32_t pid;
    uint8_t id[ID_MAX];
    size_t idlen;
    int64_t seen;       /* mono ms of its latest message */
    int64_t ready_at;   /* mono ms of its READY */
    int db_ok;          /* its latest heartbeat said Postgres answers */
    int hb_seen;        /* it sent a heartbeat since its READY */
    int away;           /* it runs another gateway's job: not idle, even without ours */
    int gone;           /* its routing id is unreachable: to be dropped */
    uint64_t job_id;    /* the job it works on, 0 when none */
    struct gw_job *job; /* that job, NULL once answered without the worker (timeout) */
    int64_t busy_until; /* mono ms: taken back even if its reply never comes */
};

struct gw_job {
    struct gw_job *next, *prev;   /* every job, oldest first */
    struct gw_job *qnext, *qprev; /* its role's queue while queued */
    int queued;
    uint64_t id;
    int role;
    int kind;                     /* enum gw_kind */
    struct gw_conn *conn;         /* NULL once the client is gone (or for a batch line) */
    struct gw_batch *batch;       /* a line of this signup batch, NULL once it is gone */
    uint32_t line;                /* that line, 0-based */
    struct gw_worker *worker;     /* NULL while queued */
    int64_t deadline;             /* mono ms: 504 */
    char email[LK_EMAIL_MAX + 1]; /* normalized, for the signup answer */
    struct lk_msg msg;            /* the request; wiped once sent */
};

/* One row per message type the gateway accepts. A type with no row is a protocol error.
 * role: the role that may send it (-1: any registered worker, or anyone for READY). */
struct broker_handler {
    enum lk_msg_type type;
    int role;
    int kind; /* for replies: the job kind it answers */
    void (*fn)(struct gw_worker *w, const uint8_t *id, size_t idlen, const struct lk_msg *m,
               int kind);
};

static void s_on_ready(struct gw_worker *w, const uint8_t *id, size_t idlen,
                       const struct lk_msg *m, int kind);
static void s_on_heartbeat(struct gw_worker *w, const uint8_t *id, size_t idlen,
                           const struct lk_msg *m, int kind);
static void s_on_reply(struct gw_worker *w, const uint8_t *id, size_t idlen,
                       const struct lk_msg *m, int kind);

static const struct broker_handler handlers[] = {
    {MSG_WK_READY, -1, 0, s_on_ready},
    {MSG_WK_HEARTBEAT, -1, 0, s_on_heartbeat},
    {MSG_SU_SIGNUP_REPLY, GW_SIGNUP, GW_JOB_SIGNUP, s_on_reply},
    {MSG_SI_SIGNIN_REPLY, GW_SIGNIN, GW_JOB_SIGNIN, s_on_reply},
    {MSG_SI_SIGNOUT_REPLY, GW_SIGNIN, GW_JOB_SIGNOUT, s_on_reply},
    {MSG_SI_SIGNOUT_ALL_REPLY, GW_SIGNIN, GW_JOB_SIGNOUT_ALL, s_on_reply},
};

static void s_dispatch(const uint8_t *id, size_t idlen, int rc, const struct lk_msg *m);
static struct gw_worker *s_find(const uint8_t *id, size_t idlen);
static void s_worker_idle(struct gw_worker *w);
static void s_worker_drop(struct gw_worker *w, const char *why);
static void s_idle_unlink(struct gw_worker *w);
static int s_send_job(struct gw_worker *w, struct gw_job *j);
static void s_job_unlink(struct gw_job *j);
static void s_job_free(struct gw_job *j);
static void s_job_finish(struct gw_job *j, const struct lk_msg *reply, int status);
static int s_submit(struct gw_conn *c, struct gw_batch *b, uint32_t line, int role, int kind,
                    struct lk_msg *m, const char *email);
static void s_queue_push(struct gw_job *j);
static struct gw_job *s_queue_pop(int role);
static void s_queue_remove(struct gw_job *j);
static void s_fail_queue(int role);
static void s_heartbeats(void);
static int64_t s_hb(void);
static void s_monitor_drain(void);
static void s_failed_read(void);
static void s_peer_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static const char *const s_roles[GW_NROLES] = {"signup", "signin"};

static struct {
    void *ctx, *sock;
    void *mon;                       /* PAIR: the backend socket's monitor events */
    char endpoint[LK_ENDPOINT_MAX];  /* what this gateway bound */
    lk_status_t *status;
    uint64_t done;                   /* jobs finished, for latchkeyctl status */
    int64_t next_status;
    char failed_path[LK_PATH_MAX + 32];
    char failed[FAILED_MAX][16];     /* roles latchkeyd marked failed */
    int nfailed;
    int64_t peer_log_sec;            /* rate limit of s_peer_log */
    int peer_log_n;
    struct gw_worker *workers;
    size_t nall;
    int count[GW_NROLES];
    struct gw_worker *idle_head[GW_NROLES], *idle_tail[GW_NROLES];
    struct gw_job *q_head[GW_NROLES], *q_tail[GW_NROLES];
    size_t q_len[GW_NROLES];
    struct gw_job *jobs_head, *jobs_tail;
    size_t njobs;
    uint64_t seq;
    int64_t next_hb;
} B;

int broker_init(void)
{
    const char *ep = B.endpoint;
    int one = 1, fd, rc;
    size_t sz = sizeof fd;

    int index = lk_gateway_index(&gw.cfg);
    if (index < 0)
        lk_fatal("LATCHKEY_GATEWAY_INDEX must be 0..%d (gateway.count - 1)",
                 gw.cfg.gateway.count - 1);
    if (lk_gateway_backend(&gw.cfg, index, 0, B.endpoint, sizeof B.endpoint) != 0)
        lk_fatal("gateway.backend %s: no endpoint for gateway %d of %d", gw.cfg.gateway.backend,
                 index, gw.cfg.gateway.count);
    snprintf(B.failed_path, sizeof B.failed_path, "%s/run/failed-roles", gw.cfg.paths.var);
    B.ctx = zmq_ctx_new();
    if (!B.ctx)
        lk_fatal("zmq_ctx_new: %s", zmq_strerror(errno));
    B.sock = zmq_socket(B.ctx, ZMQ_ROUTER);
    if (!B.sock)
        lk_fatal("zmq_socket: %s", zmq_strerror(errno));
    if ((rc = lk_zmq_set_defaults(B.sock)) != 0)
        lk_fatal("backend socket options: %s", lk_strerror(rc));
    /* A send to a routing id that is gone fails with EHOSTUNREACH instead of vanishing:
     * that is how a dead worker is noticed at dispatch. */
    if (zmq_setsockopt(B.sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one) != 0)
        lk_fatal("ZMQ_ROUTER_MANDATORY: %s", zmq_strerror(errno));
    /* Connections libzmq closes on its own (oversized frame, bad handshake) are otherwise
     * silent: the monitor tells. Read in broker_drain, i.e. at every loop turn. */
    if (zmq_socket_monitor(B.sock, MONITOR_EP,
                           ZMQ_EVENT_DISCONNECTED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                               ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) != 0 ||
        !(B.mon = zmq_socket(B.ctx, ZMQ_PAIR)) || zmq_connect(B.mon, MONITOR_EP) != 0)
        lk_fatal("backend socket monitor: %s", zmq_strerror(errno));
    if ((rc = lk_zmq_prepare_endpoint(ep)) != 0)
        lk_fatal("backend %s: %s", ep, lk_strerror(rc));
    if (zmq_bind(B.sock, ep) != 0)
        lk_fatal("cannot bind backend %s: %s", ep, zmq_strerror(errno));
    if (zmq_getsockopt(B.sock, ZMQ_FD, &fd, &sz) != 0)
        lk_fatal("ZMQ_FD: %s", zmq_strerror(errno));
    /* Job ids start from the clock so that a reply meant for a previous gateway process
     * never matches a job of this one. */
    B.seq = (uint64_t)lk_now_ms() << 16;
    B.next_hb = gw.now + s_hb();
    B.status = lk_status_new(B.ctx);
    lk_info("gateway %d of %d: backend %s", index, gw.cfg.gateway.count, ep);
    return fd;
}

void broker_fini(void)
{
    while (B.jobs_head) {
        struct gw_job *j = B.jobs_head;
        if (j->queued)
            s_queue_remove(j);
        s_job_unlink(j);
        s_job_free(j);
    }
    while (B.workers) {
        struct gw_worker *w = B.workers;
        B.workers = w->next;
        free(w);
    }
    lk_status_destroy(&B.status);
    if (B.sock)
        zmq_socket_monitor(B.sock, NULL, 0);
    if (B.mon)
        zmq_close(B.mon);
    if (B.sock)
        zmq_close(B.sock);
    if (B.ctx)
        zmq_ctx_term(B.ctx);
    memset(&B, 0, sizeof B);
}

int broker_drain(void)
{
    s_monitor_drain();
    for (int i = 0; i < DRAIN_BUDGET; i++) {
        int ev = 0;
        size_t sz = sizeof ev;
        if (zmq_getsockopt(B.sock, ZMQ_EVENTS, &ev, &sz) != 0) {
            if (errno == EINTR)
                continue;
            lk_fatal("ZMQ_EVENTS: %s", zmq_strerror(errno));
        }
        if (!(ev & ZMQ_POLLIN))
            return 0;
        uint8_t id[ID_MAX];
        size_t idlen = sizeof id;
        struct lk_msg m;
        int rc = lk_zmq_recv_msg(B.sock, id, &idlen, &m, ZMQ_DONTWAIT);
        if (rc == -EAGAIN || rc == -EINTR)
            continue;
        s_dispatch(id, idlen, rc, &m);
        lk_wipe(&m, sizeof m); /* a signin reply carries a token */
    }
    return 1;
}

static void s_dispatch(const uint8_t *id, size_t idlen, int rc, const struct lk_msg *m)
{
    struct gw_worker *w = idlen ? s_find(id, idlen) : NULL;

    if (rc != 0) {
        if (w) {
            lk_error("worker %s pid %u sent a malformed message (%s)", s_roles[w->role], w->pid,
                     lk_strerror(rc));
            s_worker_drop(w, "malformed message");
        } else if (rc == LK_EVERSION) {
            s_peer_log("peer refused: it speaks another protocol version (this gateway: %d)",
                       LK_PROTO_VERSION);
        } else {
            s_peer_log("malformed message from an unregistered peer: %s (discarded)",
                       lk_strerror(rc));
        }
        return;
    }
    if (w)
        w->seen = gw.now;
    for (size_t i = 0; i < sizeof handlers / sizeof handlers[0]; i++) {
        const struct broker_handler *h = &handlers[i];
        if (h->type != m->type)
            continue;
        if (m->type != MSG_WK_READY && !w) {
            /* After a gateway restart its workers' heartbeats come before their new READY
             * (Paranoid Pirate: they say READY again once this gateway has been silent
             * for three intervals): expected, not worth a warning. */
            if (m->type == MSG_WK_HEARTBEAT)
                lk_debug("MSG_WK_HEARTBEAT from an unregistered peer: ignored");
            else
                s_peer_log("%s from an unregistered peer: ignored", lk_msg_type_str(m->type));
            return;
        }
        if (h->role >= 0 && w->role != h->role) {
            lk_error("protocol error: %s worker pid %u sent %s", s_roles[w->role], w->pid,
                     lk_msg_type_str(m->type));
            s_worker_drop(w, "protocol error");
            return;
        }
        h->fn(w, id, idlen, m, h->kind);
        return;
    }
    if (w) {
        lk_error("protocol error: %s worker pid %u sent %s", s_roles[w->role], w->pid,
                 lk_msg_type_str(m->type));
        s_worker_drop(w, "protocol error");
    } else {
        s_peer_log("%s from an unregistered peer: ignored", lk_msg_type_str(m->type));
    }
}

static void s_on_ready(struct gw_worker *w, const uint8_t *id, size_t idlen,
                       const struct lk_msg *m, int kind)
{
    const struct lk_msg_wk_ready *r = &m->u.wk_ready;
    int role = -1;
    (void)kind;
    for (int i = 0; i < GW_NROLES; i++)
        if (strcmp(r->role, s_roles[i]) == 0)
            role = i;
    if (r->version != LK_PROTO_VERSION || role < 0) {
        s_peer_log("worker refused: role=%s pid=%u version=%u (expected version %d)", r->role,
                   r->pid, r->version, LK_PROTO_VERSION);
        if (w)
            s_worker_drop(w, "refused READY");
        return;
    }
    if (w) /* a second READY: the worker started over; whatever it held is lost */
        s_worker_drop(w, "READY again");
    if (B.nall >= WORKERS_MAX) {
        lk_warn("worker refused: role=%s pid=%u: %d workers already", r->role, r->pid, WORKERS_MAX);
        return;
    }
    w = calloc(1, sizeof *w);
    if (!w) {
        lk_error("out of memory registering a worker");
        return;
    }
    memcpy(w->id, id, idlen);
    w->idlen = idlen;
    w->role = role;
    w->pid = r->pid;
    w->seen = w->ready_at = gw.now;
    w->next = B.workers;
    if (B.workers)
        B.workers->prev = w;
    B.workers = w;
    B.nall++;
    B.count[role]++;
    lk_info("worker ready: role=%s pid=%u (%d %s workers)", r->role, r->pid, B.count[role],
            r->role);
    s_worker_idle(w);
}

static void s_on_heartbeat(struct gw_worker *w, const uint8_t *id, size_t idlen,
                           const struct lk_msg *m, int kind)
{
    (void)id, (void)idlen, (void)kind;
    w->db_ok = m->u.wk_heartbeat.db_ok != 0;
    w->hb_seen = 1;
    int away = m->u.wk_heartbeat.busy != 0;
    if (away == w->away)
        return;
    w->away = away;
    if (away)
        s_idle_unlink(w); /* nothing when it holds our job: it answers that one later */
    else if (!w->job_id)
        s_worker_idle(w);
}

static void s_on_reply(struct gw_worker *w, const uint8_t *id, size_t idlen,
                       const struct lk_msg *m, int kind)
{
    uint64_t job;
    (void)id, (void)idlen;
    if (m->type == MSG_SU_SIGNUP_REPLY)
        job = m->u.su_signup_reply.job;
    else if (m->type == MSG_SI_SIGNIN_REPLY)
        job = m->u.si_signin_reply.job;
    else if (m->type == MSG_SI_SIGNOUT_ALL_REPLY)
        job = m->u.si_signout_all_reply.job;
    else
        job = m->u.si_signout_reply.job;

    if (!w->job_id || job != w->job_id) {
        lk_debug("%s for unknown job %llu from pid %u: discarded", lk_msg_type_str(m->type),
                 (unsigned long long)job, w->pid);
        return;
    }
    struct gw_job *j = w->job;
    if (j && j->kind != kind) {
        lk_error("protocol error: worker pid %u answered job %llu with %s", w->pid,
                 (unsigned long long)job, lk_msg_type_str(m->type));
        s_worker_drop(w, "protocol error");
        return;
    }
    w->job = NULL;
    w->job_id = 0;
    if (j) {
        s_job_unlink(j);
        j->worker = NULL;
    } else {
        lk_debug("late %s for job %llu from pid %u: discarded", lk_msg_type_str(m->type),
                 (unsigned long long)job, w->pid);
    }
    /* Bookkeeping first: the answer below may start the connection's next request,
     * which may want this very worker. */
    if (!w->away)
        s_worker_idle(w);
    if (j)
        s_job_finish(j, m, 0);
}

int broker_submit(struct gw_conn *c, int role, int kind, struct lk_msg *m, const char *email)
{
    int rc = s_submit(c, NULL, 0, role, kind, m, email);
    if (rc != 0)
        gwm_rejected(role);
    return rc == -ENOTCONN ? -EAGAIN : rc;
}

int broker_submit_line(struct gw_batch *b, uint32_t line, struct lk_msg *m)
{
    /* not counted as rejected: a refused line waits and is offered again */
    return s_submit(NULL, b, line, GW_SIGNUP, GW_JOB_SIGNUP, m, NULL);
}

/* For a connection c, or for line of batch b (c NULL). */
static int s_submit(struct gw_conn *c, struct gw_batch *b, uint32_t line, int role, int kind,
                    struct lk_msg *m, const char *email)
{
    if (B.count[role] == 0)
        return -ENOTCONN;
    if (!B.idle_head[role] && B.q_len[role] >= QUEUE_MAX)
        return -EAGAIN;
    struct gw_job *j = calloc(1, sizeof *j);
    if (!j)
        return -ENOMEM;
    j->id = ++B.seq;
    j->role = role;
    j->kind = kind;
    j->conn = c;
    j->batch = b;
    j->line = line;
    j->deadline = gw.now + gw.cfg.gateway.route_timeout_ms;
    if (email)
        (void)lk_strlcpy(j->email, email, sizeof j->email);
    j->msg = *m;
    if (m->type == MSG_GW_SIGNUP_REQUEST)
        j->msg.u.gw_signup_request.job = j->id;
    else if (m->type == MSG_GW_SIGNIN_REQUEST)
        j->msg.u.gw_signin_request.job = j->id;
    else if (m->type == MSG_GW_SIGNOUT_ALL_REQUEST)
        j->msg.u.gw_signout_all_request.job = j->id;
    else
        j->msg.u.gw_signout_request.job = j->id;
    j->prev = B.jobs_tail;
    if (B.jobs_tail)
        B.jobs_tail->next = j;
    else
        B.jobs_head = j;
    B.jobs_tail = j;
    B.njobs++;
    if (c) {
        c->job = j;
        c->state = C_BUSY;
    }

    /* Dropping an unreachable worker below answers nothing of j's own (j is on no worker
     * and in no queue yet), but it may answer other jobs: a batch's answer to those is
     * recorded and acted upon later (batch.c does not re-enter its own dispatch). */
    while (B.idle_head[role]) {
        struct gw_worker *w = B.idle_head[role];
        s_idle_unlink(w);
        if (s_send_job(w, j) == 0)
            return 0;
        s_worker_drop(w, "unreachable");
    }
    if (B.count[role] == 0 || B.q_len[role] >= QUEUE_MAX) {
        int rc = B.count[role] == 0 ? -ENOTCONN : -EAGAIN;
        if (c) {
            c->job = NULL;
            c->state = C_READ;
        }
        s_job_unlink(j);
        lk_wipe(&j->msg, sizeof j->msg);
        s_job_free(j);
        return rc;
    }
    s_queue_push(j);
    return 0;
}

void broker_batch_gone(struct gw_batch *b)
{
    for (struct gw_job *j = B.jobs_head, *next; j; j = next) {
        next = j->next;
        if (j->batch != b)
            continue;
        j->batch = NULL;
        if (j->queued) {
            s_queue_remove(j);
            s_job_unlink(j);
            s_job_free(j);
        }
        /* sent: kept until its reply or its deadline, then dropped without an answer */
    }
}

/* j is on no list any more: answers whoever waits for it (a connection, or a line of a
 * batch) with reply, or with status (503, 504) when reply is NULL, and frees j. */
static void s_job_finish(struct gw_job *j, const struct lk_msg *reply, int status)
{
    struct gw_conn *c = j->conn;
    struct gw_batch *b = j->batch;
    uint32_t line = j->line;

    if (c) {
        c->job = NULL;
        if (reply)
            routes_job_reply(c, j->kind, j->email, reply);
        else
            routes_job_fail(c, status);
    }
    s_job_free(j);
    if (c)
        gw_conn_resume(c);
    else if (b && reply)
        batch_line_reply(b, line, reply);
    else if (b)
        batch_line_fail(b, line, status);
}

void broker_conn_gone(struct gw_conn *c)
{
    struct gw_job *j = c->job;
    if (!j)
        return;
    c->job = NULL;
    j->conn = NULL;
    if (j->queued) {
        s_queue_remove(j);
        s_job_unlink(j);
        s_job_free(j);
    }
    /* sent: kept until its reply or its deadline, then dropped without an answer */
}

void broker_cron(void)
{
    int64_t now = gw.now, hb = s_hb();

    while (B.jobs_head && B.jobs_head->deadline <= now) {
        struct gw_job *j = B.jobs_head;
        struct gw_conn *c = j->conn;
        s_job_unlink(j);
        if (j->queued)
            s_queue_remove(j);
        if (j->worker)
            j->worker->job = NULL; /* busy with j->id until its reply or busy_until */
        if (c)
            lk_log(LK_LOG_WARN, c->rid, "job %llu timed out", (unsigned long long)j->id);
        else if (j->batch)
            lk_warn("job %llu (line %u of a signup batch) timed out", (unsigned long long)j->id,
                    j->line + 1);
        s_job_finish(j, NULL, 504);
    }

    /* Dropping a worker or giving it work can answer clients, and answering can drop
     * other workers (an unreachable one at dispatch): start over after each change. */
restart:
    for (struct gw_worker *w = B.workers; w; w = w->next) {
        if (now - w->seen > LIVENESS * hb) {
            lk_warn("worker %s pid %u silent for %lld ms: dead", s_roles[w->role], w->pid,
                    (long long)(now - w->seen));
            s_worker_drop(w, "dead");
            goto restart;
        }
        if (w->job_id && !w->job && now > w->busy_until) {
            lk_debug("worker pid %u never answered job %llu: taken back", w->pid,
                     (unsigned long long)w->job_id);
            w->job_id = 0;
            if (!w->away)
                s_worker_idle(w);
            goto restart;
        }
    }
    if (now >= B.next_hb) {
        B.next_hb = now + hb;
        s_heartbeats();
    }
    if (now >= B.next_status) {
        B.next_status = now + STATUS_MS;
        s_failed_read();
        lk_status_report(B.status, B.done, (uint32_t)B.njobs);
    }
}

int broker_failed(const char **names, int n, int max)
{
    for (int i = 0; i < B.nfailed && n < max; i++) {
        int dup = 0;
        for (int j = 0; j < n; j++)
            dup |= strcmp(names[j], B.failed[i]) == 0;
        if (!dup)
            names[n++] = B.failed[i];
    }
    return n;
}

/* latchkeyd writes the roles it gave up restarting to <var>/run/failed-roles (one name a
 * line, replaced atomically; absent or empty: none). A local file of a few bytes: reading
 * it once a second costs the loop nothing measurable. */
static void s_failed_read(void)
{
    char buf[256];
    ssize_t n = -1;
    int fd = open(B.failed_path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0) {
        n = read(fd, buf, sizeof buf - 1);
        close(fd);
    }
    int was = B.nfailed;
    B.nfailed = 0;
    if (n <= 0)
        goto out;
    buf[n] = '\0';
    for (char *save = NULL, *t = strtok_r(buf, "\n", &save); t && B.nfailed < FAILED_MAX;
         t = strtok_r(NULL, "\n", &save))
        if (lk_strlcpy(B.failed[B.nfailed], t, sizeof B.failed[0]) == 0)
            B.nfailed++;
out:
    if (B.nfailed != was)
        lk_log(B.nfailed ? LK_LOG_WARN : LK_LOG_INFO, NULL, "failed roles: %d (%s%s)", B.nfailed,
               B.nfailed ? B.failed[0] : "none", B.nfailed > 1 ? ", ..." : "");
}

/* Events of the backend socket's monitor: [uint16 event, uint32 value][endpoint]. */
static void s_monitor_drain(void)
{
    for (;;) {
        zmq_msg_t ev, addr;
        zmq_msg_init(&ev);
        if (zmq_msg_recv(&ev, B.mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&ev);
            return;
        }
        uint16_t event = 0;
        uint32_t value = 0;
        if (zmq_msg_size(&ev) >= 6) {
            memcpy(&event, zmq_msg_data(&ev), 2);
            memcpy(&value, (const uint8_t *)zmq_msg_data(&ev) + 2, 4);
        }
        int more = zmq_msg_more(&ev);
        zmq_msg_close(&ev);
        if (more) {
            zmq_msg_init(&addr);
            (void)zmq_msg_recv(&addr, B.mon, 0); /* the endpoint: ours, nothing to learn */
            zmq_msg_close(&addr);
        }
        if (event == ZMQ_EVENT_DISCONNECTED)
            lk_info("backend: a connection closed (a worker left, or a peer broke the "
                    "protocol, e.g. a frame over %d bytes)", LK_MSG_MAX);
        else if (event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL)
            s_peer_log("backend: peer dropped: ZMTP protocol error 0x%x", (unsigned)value);
        else
            s_peer_log("backend: peer dropped: ZMTP handshake failed (%s)",
                       zmq_strerror((int)value));
    }
}

/* Warnings about peers that are not (or no longer) registered workers, at most
 * PEER_LOG_MAX a second: a peer that floods the socket cannot flood the log. */
static void s_peer_log(const char *fmt, ...)
{
    int64_t sec = gw.now / 1000;
    char msg[256];
    va_list ap;

    if (sec != B.peer_log_sec) {
        if (B.peer_log_n > PEER_LOG_MAX)
            lk_warn("%d more warnings about backend peers suppressed", B.peer_log_n - PEER_LOG_MAX);
        B.peer_log_sec = sec;
        B.peer_log_n = 0;
    }
    if (++B.peer_log_n > PEER_LOG_MAX)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    lk_warn("%s", msg);
}

static void s_heartbeats(void)
{
    struct lk_msg m;
    memset(&m, 0, sizeof m);
    m.type = MSG_GW_HEARTBEAT;
    m.u.gw_heartbeat.now_ms = lk_now_ms();
    for (struct gw_worker *w = B.workers; w; w = w->next) {
        int rc = lk_zmq_send_msg(B.sock, w->id, w->idlen, &m, ZMQ_DONTWAIT);
        if (rc == -EHOSTUNREACH)
            w->gone = 1; /* dropped below: dropping answers clients, which may change the list */
        else if (rc != 0 && rc != -EAGAIN)
            lk_warn("heartbeat to pid %u: %s", w->pid, lk_strerror(rc));
    }
restart:
    for (struct gw_worker *w = B.workers; w; w = w->next)
        if (w->gone) {
            s_worker_drop(w, "disconnected");
            goto restart;
        }
}

void broker_status(int counts[GW_NROLES], int *db_ok)
{
    *db_ok = 0;
    for (int i = 0; i < GW_NROLES; i++)
        counts[i] = B.count[i];
    for (struct gw_worker *w = B.workers; w; w = w->next)
        if (w->hb_seen ? w->db_ok : gw.now - w->ready_at < LIVENESS * s_hb())
            *db_ok = 1;
}

size_t broker_jobs(void)
{
    return B.njobs;
}

void broker_stats(int role, int *connected, int *busy, size_t *queued)
{
    int n = 0;
    for (struct gw_worker *w = B.workers; w; w = w->next)
        if (w->role == role && (w->job_id || w->away))
            n++;
    *connected = B.count[role];
    *busy = n;
    *queued = B.q_len[role];
}

static int64_t s_hb(void)
{
    return gw.cfg.gateway.heartbeat_ms > 0 ? gw.cfg.gateway.heartbeat_ms : 1000;
}

static struct gw_worker *s_find(const uint8_t *id, size_t idlen)
{
    for (struct gw_worker *w = B.workers; w; w = w->next)
        if (w->idlen == idlen && memcmp(w->id, id, idlen) == 0)
            return w;
    return NULL;
}

/* w has nothing to do: it takes the oldest queued job, or waits at the idle list's tail. */
static void s_worker_idle(struct gw_worker *w)
{
    struct gw_job *j;
    if (w->idle)
        return;
    while ((j = s_queue_pop(w->role)) != NULL) {
        if (s_send_job(w, j) == 0)
            return;
        /* put the job back first: it is the oldest and stays first */
        j->qnext = B.q_head[w->role];
        j->qprev = NULL;
        if (B.q_head[w->role])
            B.q_head[w->role]->qprev = j;
        else
            B.q_tail[w->role] = j;
        B.q_head[w->role] = j;
        B.q_len[w->role]++;
        j->queued = 1;
        s_worker_drop(w, "unreachable");
        return;
    }
    w->idle = 1;
    w->inext = NULL;
    w->iprev = B.idle_tail[w->role];
    if (B.idle_tail[w->role])
        B.idle_tail[w->role]->inext = w;
    else
        B.idle_head[w->role] = w;
    B.idle_tail[w->role] = w;
}

static void s_idle_unlink(struct gw_worker *w)
{
    if (!w->idle)
        return;
    if (w->iprev)
        w->iprev->inext = w->inext;
    else
        B.idle_head[w->role] = w->inext;
    if (w->inext)
        w->inext->iprev = w->iprev;
    else
        B.idle_tail[w->role] = w->iprev;
    w->inext = w->iprev = NULL;
    w->idle = 0;
}

/* Removes w; its job, if it still has a client, is answered 503. When w was the last of
 * its role, the jobs queued for the role are answered 503 too. */
static void s_worker_drop(struct gw_worker *w, const char *why)
{
    struct gw_job *j = w->job;
    int role = w->role;

    lk_info("worker dropped: role=%s pid=%u (%s)", s_roles[role], w->pid, why);
    s_idle_unlink(w);
    if (w->prev)
        w->prev->next = w->next;
    else
        B.workers = w->next;
    if (w->next)
        w->next->prev = w->prev;
    B.nall--;
    B.count[role]--;
    free(w);
    if (j) {
        s_job_unlink(j);
        s_job_finish(j, NULL, 503);
    }
    if (B.count[role] == 0)
        s_fail_queue(role);
}

static void s_fail_queue(int role)
{
    struct gw_job *j;
    while ((j = s_queue_pop(role)) != NULL) {
        s_job_unlink(j);
        s_job_finish(j, NULL, 503);
    }
}

/* Sends j to w. Returns 0 (w is now busy with j; the password is wiped) or a send error. */
static int s_send_job(struct gw_worker *w, struct gw_job *j)
{
    int rc = lk_zmq_send_msg(B.sock, w->id, w->idlen, &j->msg, ZMQ_DONTWAIT);
    if (rc != 0) {
        lk_warn("sending %s to pid %u: %s", lk_msg_type_str(j->msg.type), w->pid, lk_strerror(rc));
        return rc;
    }
    lk_wipe(&j->msg, sizeof j->msg);
    j->worker = w;
    w->job = j;
    w->job_id = j->id;
    w->busy_until = j->deadline + LIVENESS * s_hb();
    return 0;
}

static void s_job_unlink(struct gw_job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else if (B.jobs_head == j)
        B.jobs_head = j->next;
    else
        return; /* not on the list */
    if (j->next)
        j->next->prev = j->prev;
    else
        B.jobs_tail = j->prev;
    j->next = j->prev = NULL;
    B.njobs--;
}

static void s_job_free(struct gw_job *j)
{
    B.done++;
    lk_wipe(j, sizeof *j);
    free(j);
}

static void s_queue_push(struct gw_job *j)
{
    int r = j->role;
    j->qnext = NULL;
    j->qprev = B.q_tail[r];
    if (B.q_tail[r])
        B.q_tail[r]->qnext = j;
    else
        B.q_head[r] = j;
    B.q_tail[r] = j;
    B.q_len[r]++;
    j->queued = 1;
}

static struct gw_job *s_queue_pop(int role)
{
    struct gw_job *j = B.q_head[role];
    if (j)
        s_queue_remove(j);
    return j;
}

static void s_queue_remove(struct gw_job *j)
{
    int r = j->role;
    if (j->qprev)
        j->qprev->qnext = j->qnext;
    else
        B.q_head[r] = j->qnext;
    if (j->qnext)
        j->qnext->qprev = j->qprev;
    else
        B.q_tail[r] = j->qprev;
    j->qnext = j->qprev = NULL;
    j->queued = 0;
    B.q_len[r]--;
}
