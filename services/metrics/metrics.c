/* metrics.c: the metrics collector (latchkey-metrics).
 *
 * Every process of the deployment pushes its cumulative values once a second
 * (MSG_RO_METRICS_REPORT, common/metrics.h) to the PULL socket bound at metrics.endpoint;
 * the store (lk_mstore_*) keeps the latest values of every source and totals across their
 * restarts. The gateways ask for the exposition on the ROUTER bound at
 * metrics.query_endpoint (MSG_GW_METRICS_QUERY) and get it back as one multi-frame message
 * of MSG_MC_METRICS_PAGE frames, which they serve as GET /metrics.
 *
 * Reports are outside input as far as this process is concerned: one that does not decode
 * or parse is dropped and counted (latchkey_metrics_reports_malformed_total), and logged
 * at most once per LOG_EVERY_MS. The collector keeps nothing on disk: when it restarts,
 * every counter starts again from the live processes' values (Prometheus sees a reset).
 *
 * Loop duties, each turn (zmq_poll wakes at least once a second):
 *   - drain the PULL socket (reports) and the ROUTER (queries), a budget each;
 *   - ship the collector's own process metrics (lk_metrics_tick, to itself);
 *   - log the drops of the last LOG_EVERY_MS.
 */
#include "config.h"
#include "errors.h"
#include "log.h"
#include "metrics.h"
#include "util.h"
#include "worker.h"
#include "zmqutil.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#define BUDGET 256         /* messages per socket per loop turn */
#define LOG_EVERY_MS 10000 /* drops are summed into one warning this often */
#define PAGES_MAX (LK_MSTORE_TEXT_MAX / 3000 + 1)
#define ID_MAX 256

enum { S_PULL = 0, S_ROUTER };

/* One row per message type the collector accepts, with the socket it must come from. */
struct mc_handler {
    enum lk_msg_type type;
    int sock;
    void (*fn)(const uint8_t *id, size_t idlen, const struct lk_msg *m);
};

int metrics_main(int argc, char **argv);
static void *s_bind(void *zctx, int type, const char *endpoint);
static void s_drain(int which);
static void s_on_report(const uint8_t *id, size_t idlen, const struct lk_msg *m);
static void s_on_query(const uint8_t *id, size_t idlen, const struct lk_msg *m);
static void s_drop(const char *why);
static void s_cron(void);

static const struct mc_handler handlers[] = {
    {MSG_RO_METRICS_REPORT, S_PULL, s_on_report},
    {MSG_GW_METRICS_QUERY, S_ROUTER, s_on_query},
};

static struct lk_config s_cfg;
static void *s_sock[2];
static lk_mstore_t *s_store;
static uint64_t s_drops;       /* since the last warning */
static const char *s_drop_why; /* the latest reason */
static int64_t s_next_log;

int main(int argc, char **argv)
{
    return metrics_main(argc, argv);
}

int metrics_main(int argc, char **argv)
{
    lk_role_start("metrics", argc, argv, &s_cfg);
    s_store = lk_mstore_new();
    if (!s_store)
        lk_fatal("out of memory for the metrics store");
    void *zctx = zmq_ctx_new();
    if (!zctx)
        lk_fatal("zmq_ctx_new: %s", zmq_strerror(errno));
    s_sock[S_PULL] = s_bind(zctx, ZMQ_PULL, s_cfg.metrics.endpoint);
    s_sock[S_ROUTER] = s_bind(zctx, ZMQ_ROUTER, s_cfg.metrics.query_endpoint);
    lk_info("collecting on %s, answering on %s", s_cfg.metrics.endpoint,
            s_cfg.metrics.query_endpoint);
    s_next_log = lk_mono_ms() + LOG_EVERY_MS;

    while (!lk_role_stopping()) {
        int64_t wait = lk_metrics_tick();
        zmq_pollitem_t items[] = {
            {.socket = s_sock[S_PULL], .events = ZMQ_POLLIN},
            {.socket = s_sock[S_ROUTER], .events = ZMQ_POLLIN},
            {.fd = lk_role_signal_fd(), .events = ZMQ_POLLIN},
        };
        if (zmq_poll(items, 3, (long)wait) < 0 && errno != EINTR)
            lk_fatal("zmq_poll: %s", zmq_strerror(errno));
        if (items[0].revents & ZMQ_POLLIN)
            s_drain(S_PULL);
        if (items[1].revents & ZMQ_POLLIN)
            s_drain(S_ROUTER);
        s_cron();
    }
    zmq_close(s_sock[S_PULL]);
    zmq_close(s_sock[S_ROUTER]);
    zmq_ctx_term(zctx);
    lk_mstore_destroy(&s_store);
    lk_info("stopped");
    return 0;
}

/* A socket of type bound at endpoint, or exit (the supervisor restarts us). */
static void *s_bind(void *zctx, int type, const char *endpoint)
{
    int rc;

    if ((rc = lk_zmq_prepare_endpoint(endpoint)) != 0)
        lk_fatal("endpoint %s: %s", endpoint, lk_strerror(rc));
    void *sock = zmq_socket(zctx, type);
    if (!sock)
        lk_fatal("zmq_socket: %s", zmq_strerror(errno));
    if ((rc = lk_zmq_set_defaults(sock)) != 0)
        lk_fatal("socket options: %s", lk_strerror(rc));
    if (zmq_bind(sock, endpoint) != 0)
        lk_fatal("bind %s: %s", endpoint, zmq_strerror(errno));
    return sock;
}

/* Reads up to BUDGET messages of one socket and dispatches them through handlers[]. */
static void s_drain(int which)
{
    uint8_t id[ID_MAX];
    static struct lk_msg m; /* 3.6 KiB */

    for (int n = 0; n < BUDGET; n++) {
        size_t idlen = sizeof id;
        int rc = lk_zmq_recv_msg(s_sock[which], which == S_ROUTER ? id : NULL,
                                 which == S_ROUTER ? &idlen : NULL, &m, ZMQ_DONTWAIT);
        if (rc == -EAGAIN || rc == -EINTR)
            return;
        if (rc != 0) {
            if (which == S_PULL)
                lk_mstore_dropped(s_store);
            s_drop(rc == LK_EVERSION ? "another protocol version" : "does not decode");
            continue;
        }
        size_t i = 0;
        while (i < sizeof handlers / sizeof handlers[0] &&
               (handlers[i].type != m.type || handlers[i].sock != which))
            i++;
        if (i == sizeof handlers / sizeof handlers[0]) {
            if (which == S_PULL)
                lk_mstore_dropped(s_store);
            s_drop(lk_msg_type_str(m.type));
            continue;
        }
        handlers[i].fn(id, idlen, &m);
    }
}

static void s_on_report(const uint8_t *id, size_t idlen, const struct lk_msg *m)
{
    (void)id;
    (void)idlen;
    int rc = lk_mstore_ingest(s_store, &m->u.ro_metrics_report, lk_mono_ms());
    if (rc != 0)
        s_drop(rc == LK_ETOOBIG ? "the store is full" : "malformed samples");
}

/* Renders the exposition and sends it to the asking gateway as one message of pages. */
static void s_on_query(const uint8_t *id, size_t idlen, const struct lk_msg *m)
{
    static struct lk_msg page;
    static uint8_t buf[LK_MSG_MAX];
    uint64_t query = m->u.gw_metrics_query.query;
    char *text;
    size_t len, cut[PAGES_MAX + 1];
    uint32_t pages = 0;

    int rc = lk_mstore_render(s_store, lk_mono_ms(), &text, &len);
    if (rc != 0) {
        lk_error("exposition not rendered: %s (the gateway answers 503)", lk_strerror(rc));
        return;
    }
    /* page boundaries at line ends, each page at most LK_METRIC_REPORT_MAX bytes */
    cut[0] = 0;
    while (cut[pages] < len && pages < PAGES_MAX) {
        size_t start = cut[pages], end = start + LK_METRIC_REPORT_MAX;
        if (end >= len) {
            end = len;
        } else {
            while (end > start && text[end - 1] != '\n')
                end--;
            if (end == start) /* a line longer than a page: cannot happen */
                end = start + LK_METRIC_REPORT_MAX;
        }
        cut[++pages] = end;
    }
    if (pages == 0)
        cut[++pages] = 0; /* nothing to say still takes one (empty) page */
    if (zmq_send(s_sock[S_ROUTER], id, idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        goto out;
    for (uint32_t i = 0; i < pages; i++) {
        size_t a = cut[i], b = cut[i + 1], n;
        memset(&page, 0, sizeof page);
        page.type = MSG_MC_METRICS_PAGE;
        page.u.mc_metrics_page.query = query;
        page.u.mc_metrics_page.page = i;
        page.u.mc_metrics_page.pages = pages;
        memcpy(page.u.mc_metrics_page.text, text + a, b - a);
        if (lk_msg_encode(&page, buf, sizeof buf, &n) != 0 ||
            zmq_send(s_sock[S_ROUTER], buf, n, i + 1 < pages ? ZMQ_SNDMORE : 0) < 0) {
            lk_error("exposition not sent: %s", zmq_strerror(errno));
            break;
        }
    }
out:
    free(text);
}

static void s_drop(const char *why)
{
    s_drops++;
    s_drop_why = why;
}

static void s_cron(void)
{
    int64_t now = lk_mono_ms();
    if (now < s_next_log)
        return;
    s_next_log = now + LOG_EVERY_MS;
    if (s_drops)
        lk_warn("%llu messages dropped in %d s (latest: %s)", (unsigned long long)s_drops,
                LOG_EVERY_MS / 1000, s_drop_why);
    s_drops = 0;
}
