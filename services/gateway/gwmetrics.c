/* gwmetrics.c: the gateway's metrics and GET /metrics (see gwmetrics.h).
 *
 * Counting an answer costs one lookup in a small open-addressing table keyed by (route,
 * method, status): the handles of a combination are registered on its first answer and
 * reused from then on. The table is bounded; a combination that finds it full is counted
 * into the registry's sink (and the registry itself is bounded the same way), so a client
 * inventing methods cannot grow anything.
 *
 * GET /metrics: a query id per request, MSG_GW_METRICS_QUERY to the collector's ROUTER
 * over a DEALER (ZMQ_IMMEDIATE: with the collector down the send fails at once and the
 * answer is an immediate 503), the request parked in a small table until the pages arrive
 * (MSG_MC_METRICS_PAGE frames of one message) or GWM_TIMEOUT_MS passes. A parked
 * connection may close meanwhile, and its slot be reused: an entry only answers the very
 * request it was made for (same slot, fd, state, route and head time).
 */
#include "gwmetrics.h"

#include "gateway.h"

#include "errors.h"
#include "log.h"
#include "metrics.h"
#include "util.h"
#include "zmqutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define CACHE_SIZE 1024 /* (route, method, status) combinations; a power of two */
#define ROUTES_MAX 64   /* routes with a duration histogram */
#define PENDING_MAX 32  /* GET /metrics waiting for the collector at once; 503 past it */
#define PAGES_MAX 512   /* frames of one answer */
#define DRAIN_BUDGET 16 /* answers read per gwm_drain */
#define CTYPE "text/plain; version=0.0.4; charset=utf-8"

struct s_combo {
    const char *route; /* the route table's string, or NULL: unmatched */
    int16_t method;
    int16_t status; /* 0: empty entry */
    lk_metric_t requests;
    lk_metric_t auth; /* valid when has_auth */
    int has_auth;
};

struct s_pending {
    struct gw_conn *c; /* NULL: free */
    int fd;
    uint64_t t_req_us;
    uint64_t query;
    int64_t deadline; /* mono ms */
};

static void s_sample(void *arg);
static struct s_combo *s_combo(int method, const char *route, int status);
static lk_metric_t s_duration(const char *route);
static int s_valid(const struct s_pending *p);
static void s_answer(struct s_pending *p, int status, const char *text, size_t len);
static void s_recv_answer(void);

static const char *const s_roles[GW_NROLES] = {"signup", "signin"};

static struct {
    void *ctx, *sock;
    struct s_combo combos[CACHE_SIZE];
    struct {
        const char *route;
        lk_metric_t h;
    } durations[ROUTES_MAX];
    lk_metric_t duration_other;
    lk_metric_t connected[GW_NROLES], busy[GW_NROLES], queued[GW_NROLES], rejected[GW_NROLES];
    struct s_pending pending[PENDING_MAX];
    uint64_t seq;
} M;

int gwm_init(void)
{
    int one = 1, fd = -1, rc;
    size_t sz = sizeof fd;

    for (int r = 0; r < GW_NROLES; r++) {
        M.connected[r] = LK_METRIC(LKM_WORKERS_CONNECTED, s_roles[r]);
        M.busy[r] = LK_METRIC(LKM_WORKERS_BUSY, s_roles[r]);
        M.queued[r] = LK_METRIC(LKM_QUEUE_DEPTH, s_roles[r]);
        M.rejected[r] = LK_METRIC(LKM_QUEUE_REJECTIONS, s_roles[r]);
    }
    /* present from the start, so that rate() has a zero to start from */
    (void)LK_METRIC(LKM_AUTH_ATTEMPTS, "signup", "success");
    (void)LK_METRIC(LKM_AUTH_ATTEMPTS, "signup", "failure");
    (void)LK_METRIC(LKM_AUTH_ATTEMPTS, "signin", "success");
    (void)LK_METRIC(LKM_AUTH_ATTEMPTS, "signin", "failure");
    M.duration_other = LK_METRIC(LKM_REQUEST_DURATION, "unmatched");
    lk_metrics_sampler(s_sample, NULL);

    const char *ep = gw.cfg.metrics.query_endpoint;
    if (!(M.ctx = zmq_ctx_new()) || !(M.sock = zmq_socket(M.ctx, ZMQ_DEALER)) ||
        (rc = lk_zmq_set_defaults(M.sock)) != 0 ||
        zmq_setsockopt(M.sock, ZMQ_IMMEDIATE, &one, sizeof one) != 0 ||
        zmq_connect(M.sock, ep) != 0 || zmq_getsockopt(M.sock, ZMQ_FD, &fd, &sz) != 0) {
        lk_warn("metrics collector %s: %s; GET /metrics answers 503", ep, zmq_strerror(errno));
        if (M.sock)
            zmq_close(M.sock);
        if (M.ctx)
            zmq_ctx_term(M.ctx);
        M.sock = M.ctx = NULL;
        return -1;
    }
    return fd;
}

void gwm_fini(void)
{
    for (int i = 0; i < PENDING_MAX; i++)
        if (M.pending[i].c)
            s_answer(&M.pending[i], 503, NULL, 0);
    if (M.sock)
        zmq_close(M.sock);
    if (M.ctx)
        zmq_ctx_term(M.ctx);
    M.sock = M.ctx = NULL;
}

/* The broker's state, once per report. */
static void s_sample(void *arg)
{
    (void)arg;
    for (int r = 0; r < GW_NROLES; r++) {
        int connected, busy;
        size_t queued;
        broker_stats(r, &connected, &busy, &queued);
        lk_gauge_set(M.connected[r], connected);
        lk_gauge_set(M.busy[r], busy);
        lk_gauge_set(M.queued[r], (int64_t)queued);
    }
}

/* ---- counting answers ---- */

static struct s_combo *s_combo(int method, const char *route, int status)
{
    uint32_t h = (uint32_t)((uintptr_t)route >> 3) * 2654435761u ^ (uint32_t)(method + 1) * 40503u ^
                 (uint32_t)status * 97u;
    for (int probe = 0; probe < CACHE_SIZE; probe++) {
        struct s_combo *e = &M.combos[(h + (uint32_t)probe) & (CACHE_SIZE - 1)];
        if (e->status == 0) {
            /* first answer of this combination: register its series */
            char st[8];
            const char *mname = method < 0 ? "none" : llhttp_method_name((llhttp_method_t)method);
            snprintf(st, sizeof st, "%d", status);
            e->route = route;
            e->method = (int16_t)method;
            e->status = (int16_t)status;
            e->requests = LK_METRIC(LKM_HTTP_REQUESTS, mname, route ? route : "unmatched", st);
            e->has_auth = 0;
            if (route && method == HTTP_POST &&
                (strcmp(route, "/api/auth/signup") == 0 ||
                 strcmp(route, "/api/auth/signin") == 0)) {
                e->has_auth = 1;
                e->auth = LK_METRIC(LKM_AUTH_ATTEMPTS, route + 10,
                                    status >= 200 && status < 300 ? "success" : "failure");
            }
            return e;
        }
        if (e->route == route && e->method == method && e->status == status)
            return e;
    }
    return NULL;
}

static lk_metric_t s_duration(const char *route)
{
    if (!route)
        return M.duration_other;
    for (int i = 0; i < ROUTES_MAX; i++) {
        if (M.durations[i].route == route)
            return M.durations[i].h;
        if (!M.durations[i].route) {
            M.durations[i].route = route;
            M.durations[i].h = LK_METRIC(LKM_REQUEST_DURATION, route);
            return M.durations[i].h;
        }
    }
    return 0;
}

void gwm_answered(int method, const char *route, int status, uint64_t us)
{
    struct s_combo *e = s_combo(method, route, status);
    lk_counter_inc(e ? e->requests : 0);
    if (e && e->has_auth)
        lk_counter_inc(e->auth);
    if (method >= 0)
        lk_histogram_observe_us(s_duration(route), us);
}

void gwm_rejected(int role)
{
    if (role >= 0 && role < GW_NROLES)
        lk_counter_inc(M.rejected[role]);
}

/* ---- GET /metrics ---- */

void gwm_serve(struct gw_conn *c)
{
    struct s_pending *p = NULL;
    struct lk_msg m;

    for (int i = 0; i < PENDING_MAX && !p; i++)
        if (!M.pending[i].c)
            p = &M.pending[i];
    if (!M.sock || !p) {
        struct gw_hdr h = {"Retry-After", "1"};
        gw_reply_error(c, 503, "unavailable", "metrics unavailable", &h, 1);
        return;
    }
    memset(&m, 0, sizeof m);
    m.type = MSG_GW_METRICS_QUERY;
    m.u.gw_metrics_query.query = ++M.seq;
    int rc = lk_zmq_send_msg(M.sock, NULL, 0, &m, ZMQ_DONTWAIT);
    if (rc != 0) {
        struct gw_hdr h = {"Retry-After", "1"};
        lk_log(LK_LOG_WARN, c->rid, "metrics collector unreachable: %s", lk_strerror(rc));
        gw_reply_error(c, 503, "unavailable", "metrics unavailable", &h, 1);
        return;
    }
    p->c = c;
    p->fd = c->fd;
    p->t_req_us = c->t_req_us;
    p->query = M.seq;
    p->deadline = gw.now + GWM_TIMEOUT_MS;
    c->state = C_BUSY;
}

/* p still stands for the request it was made for. */
static int s_valid(const struct s_pending *p)
{
    const struct gw_conn *c = p->c;
    return c->state == C_BUSY && !c->job && c->fd == p->fd && c->t_req_us == p->t_req_us &&
           c->route_name && strcmp(c->route_name, "/metrics") == 0;
}

/* Answers p's request (text: the exposition, when status is 200) and frees p. */
static void s_answer(struct s_pending *p, int status, const char *text, size_t len)
{
    struct gw_conn *c = p->c;
    int valid = s_valid(p);
    p->c = NULL;
    if (!valid)
        return; /* the client left: nobody to answer */
    if (status == 200) {
        gw_reply_typed(c, 200, CTYPE, text, len, NULL, 0);
    } else {
        struct gw_hdr h = {"Retry-After", "1"};
        lk_log(LK_LOG_WARN, c->rid, "metrics collector did not answer within %d ms",
               GWM_TIMEOUT_MS);
        gw_reply_error(c, 503, "unavailable", "metrics unavailable", &h, 1);
    }
    gw_conn_resume(c);
}

void gwm_cron(void)
{
    for (int i = 0; i < PENDING_MAX; i++)
        if (M.pending[i].c && gw.now >= M.pending[i].deadline)
            s_answer(&M.pending[i], 503, NULL, 0);
    (void)lk_metrics_tick();
}

int gwm_drain(void)
{
    if (!M.sock)
        return 0;
    for (int n = 0; n < DRAIN_BUDGET; n++) {
        int events = 0;
        size_t len = sizeof events;
        if (zmq_getsockopt(M.sock, ZMQ_EVENTS, &events, &len) != 0 || !(events & ZMQ_POLLIN))
            return 0;
        s_recv_answer();
    }
    return 1;
}

/* Reads one answer (every frame of it) and hands it to its request. An answer that is
 * late (its request got 503), or malformed, is discarded. */
static void s_recv_answer(void)
{
    static struct lk_msg m;
    struct gw_buf text = {0};
    struct s_pending *p = NULL;
    uint32_t pages = 0, got = 0;
    int bad = 0, more;
    zmq_msg_t f;

    do {
        zmq_msg_init(&f);
        if (zmq_msg_recv(&f, M.sock, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&f);
            break;
        }
        more = zmq_msg_more(&f);
        if (!bad &&
            (got >= PAGES_MAX || lk_msg_decode(zmq_msg_data(&f), zmq_msg_size(&f), &m) != 0 ||
             m.type != MSG_MC_METRICS_PAGE || m.u.mc_metrics_page.page != got ||
             (got == 0 ? m.u.mc_metrics_page.pages == 0 : m.u.mc_metrics_page.pages != pages)))
            bad = 1;
        if (!bad && got == 0) {
            pages = m.u.mc_metrics_page.pages;
            for (int i = 0; i < PENDING_MAX && !p; i++)
                if (M.pending[i].c && M.pending[i].query == m.u.mc_metrics_page.query)
                    p = &M.pending[i];
        }
        if (!bad && p && m.u.mc_metrics_page.query == p->query)
            gw_buf_raw(&text, m.u.mc_metrics_page.text, strlen(m.u.mc_metrics_page.text));
        got++;
        zmq_msg_close(&f);
    } while (more);

    if (bad || got != pages)
        lk_warn("metrics collector: a malformed answer discarded");
    else if (p && text.fail)
        s_answer(p, 503, NULL, 0);
    else if (p)
        s_answer(p, 200, text.p ? text.p : "", text.len);
    gw_buf_free(&text);
}
