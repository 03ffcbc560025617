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
 */
#include "gateway.h"

#include "check.h"
#include "crypto.h"
#include "errors.h"
#include "log.h"
#include "util.h"
#include "zmqutil.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define QUEUE_MAX 1024   /* jobs waiting per role; past it: 503 */
#define WORKERS_MAX 4096 /* registered workers; READY past it is refused */
#define ID_MAX 256       /* a ZeroMQ routing id is at most 255 bytes */
#define DRAIN_BUDGET 512 /* messages per broker_drain call (the HTTP side gets its turn) */
#define LIVENESS 3       /* heartbeat intervals of silence that make a worker dead */

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
    struct gw_conn *conn;         /* NULL once the client is gone */
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
};

static void s_dispatch(const uint8_t *id, size_t idlen, int rc, const struct lk_msg *m);
static struct gw_worker *s_find(const uint8_t *id, size_t idlen);
static void s_worker_idle(struct gw_worker *w);
static void s_worker_drop(struct gw_worker *w, const char *why);
static void s_idle_unlink(struct gw_worker *w);
static int s_send_job(struct gw_worker *w, struct gw_job *j);
static void s_job_unlink(struct gw_job *j);
static void s_job_free(struct gw_job *j);
static void s_queue_push(struct gw_job *j);
static struct gw_job *s_queue_pop(int role);
static void s_queue_remove(struct gw_job *j);
static void s_fail_queue(int role);
static void s_heartbeats(void);
static int64_t s_hb(void);

static const char *const s_roles[GW_NROLES] = {"signup", "signin"};

static struct {
    void *ctx, *sock;
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
    const char *ep = gw.cfg.gateway.backend;
    int one = 1, fd, rc;
    size_t sz = sizeof fd;

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
    if (B.sock)
        zmq_close(B.sock);
    if (B.ctx)
        zmq_ctx_term(B.ctx);
    memset(&B, 0, sizeof B);
}

int broker_drain(void)
{
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
        } else {
            lk_warn("malformed message from an unregistered peer: %s", lk_strerror(rc));
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
            lk_warn("%s from an unregistered peer: ignored", lk_msg_type_str(m->type));
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
        lk_warn("%s from an unregistered peer: ignored", lk_msg_type_str(m->type));
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
        lk_warn("worker refused: role=%s pid=%u version=%u (expected version %d)", r->role,
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
    s_worker_idle(w);
    if (j) {
        struct gw_conn *c = j->conn;
        if (c) {
            c->job = NULL;
            routes_job_reply(c, j->kind, j->email, m);
        }
        s_job_free(j);
        if (c)
            gw_conn_resume(c);
    }
}

int broker_submit(struct gw_conn *c, int role, int kind, struct lk_msg *m, const char *email)
{
    if (B.count[role] == 0 || (!B.idle_head[role] && B.q_len[role] >= QUEUE_MAX))
        return -EAGAIN;
    struct gw_job *j = calloc(1, sizeof *j);
    if (!j)
        return -ENOMEM;
    j->id = ++B.seq;
    j->role = role;
    j->kind = kind;
    j->conn = c;
    j->deadline = gw.now + gw.cfg.gateway.route_timeout_ms;
    if (email)
        (void)lk_strlcpy(j->email, email, sizeof j->email);
    j->msg = *m;
    if (m->type == MSG_GW_SIGNUP_REQUEST)
        j->msg.u.gw_signup_request.job = j->id;
    else if (m->type == MSG_GW_SIGNIN_REQUEST)
        j->msg.u.gw_signin_request.job = j->id;
    else
        j->msg.u.gw_signout_request.job = j->id;
    j->prev = B.jobs_tail;
    if (B.jobs_tail)
        B.jobs_tail->next = j;
    else
        B.jobs_head = j;
    B.jobs_tail = j;
    B.njobs++;
    c->job = j;
    c->state = C_BUSY;

    while (B.idle_head[role]) {
        struct gw_worker *w = B.idle_head[role];
        s_idle_unlink(w);
        if (s_send_job(w, j) == 0)
            return 0;
        s_worker_drop(w, "unreachable");
    }
    if (B.count[role] == 0 || B.q_len[role] >= QUEUE_MAX) {
        c->job = NULL;
        c->state = C_READ;
        s_job_unlink(j);
        s_job_free(j);
        return -EAGAIN;
    }
    s_queue_push(j);
    return 0;
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
        if (c) {
            c->job = NULL;
            lk_log(LK_LOG_WARN, c->rid, "job %llu timed out", (unsigned long long)j->id);
            routes_job_fail(c, 504);
        }
        s_job_free(j);
        if (c)
            gw_conn_resume(c);
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
            s_worker_idle(w);
            goto restart;
        }
    }
    if (now >= B.next_hb) {
        B.next_hb = now + hb;
        s_heartbeats();
    }
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
        struct gw_conn *c = j->conn;
        s_job_unlink(j);
        if (c) {
            c->job = NULL;
            routes_job_fail(c, 503);
        }
        s_job_free(j);
        if (c)
            gw_conn_resume(c);
    }
    if (B.count[role] == 0)
        s_fail_queue(role);
}

static void s_fail_queue(int role)
{
    struct gw_job *j;
    while ((j = s_queue_pop(role)) != NULL) {
        struct gw_conn *c = j->conn;
        s_job_unlink(j);
        if (c) {
            c->job = NULL;
            routes_job_fail(c, 503);
        }
        s_job_free(j);
        if (c)
            gw_conn_resume(c);
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
