/* metrics.c: the metrics collector.
 *
 * For now it binds the PULL socket every process will push its counters to, and counts
 * what arrives. The aggregation, the message types it needs in schemas/ (and with them
 * the handler table) and the Prometheus exposition come with the observability issue. */
#include "config.h"
#include "errors.h"
#include "log.h"
#include "util.h"
#include "worker.h"
#include "zmqutil.h"

#include <errno.h>
#include <stdint.h>
#include <zmq.h>

int metrics_main(int argc, char **argv);
static void s_drain(void *sock, uint64_t *count);

static struct lk_config s_cfg;

int main(int argc, char **argv)
{
    return metrics_main(argc, argv);
}

int metrics_main(int argc, char **argv)
{
    const char *endpoint;
    uint64_t count = 0;
    int rc;

    lk_role_start("metrics", argc, argv, &s_cfg);
    endpoint = s_cfg.metrics.endpoint;
    if ((rc = lk_zmq_prepare_endpoint(endpoint)) != 0)
        lk_fatal("endpoint %s: %s", endpoint, lk_strerror(rc));
    void *zctx = zmq_ctx_new();
    if (!zctx)
        lk_fatal("zmq_ctx_new: %s", zmq_strerror(errno));
    void *sock = zmq_socket(zctx, ZMQ_PULL);
    if (!sock)
        lk_fatal("zmq_socket: %s", zmq_strerror(errno));
    if ((rc = lk_zmq_set_defaults(sock)) != 0)
        lk_fatal("socket options: %s", lk_strerror(rc));
    if (zmq_bind(sock, endpoint) != 0)
        lk_fatal("bind %s: %s", endpoint, zmq_strerror(errno));
    lk_info("collecting on %s", endpoint);

    while (!lk_role_stopping()) {
        zmq_pollitem_t items[] = {
            {.socket = sock, .events = ZMQ_POLLIN},
            {.fd = lk_role_signal_fd(), .events = ZMQ_POLLIN},
        };
        if (zmq_poll(items, 2, -1) < 0 && errno != EINTR)
            lk_fatal("zmq_poll: %s", zmq_strerror(errno));
        if (items[0].revents & ZMQ_POLLIN)
            s_drain(sock, &count);
    }
    zmq_close(sock);
    zmq_ctx_term(zctx);
    lk_info("stopped after %llu messages", (unsigned long long)count);
    return 0;
}

/* Receives every message waiting (all its frames) and counts it. */
static void s_drain(void *sock, uint64_t *count)
{
    zmq_msg_t frame;
    size_t bytes = 0;

    zmq_msg_init(&frame);
    while (zmq_msg_recv(&frame, sock, ZMQ_DONTWAIT) >= 0) {
        bytes += zmq_msg_size(&frame);
        if (zmq_msg_more(&frame))
            continue;
        ++*count;
        lk_debug("message %llu: %zu bytes", (unsigned long long)*count, bytes);
        bytes = 0;
    }
    zmq_msg_close(&frame);
}
