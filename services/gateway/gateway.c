/* gateway.c: the latchkey HTTP gateway's entry point and event loop.
 *
 * One thread, one epoll set holding: the listening socket, the stop signalfd, a timerfd
 * for the cron, the ZeroMQ ROUTER's ZMQ_FD and every client connection.
 *
 * Client sockets and the listener are level-triggered: the interest set of a connection
 * always says what it wants now (EPOLLIN while it may take a request, EPOLLOUT while output
 * is pending), so a connection that stops reading (a request waiting for a worker,
 * backpressure) simply drops EPOLLIN and nothing is lost or spins; each wake-up does one
 * bounded read, which keeps thousands of connections fair without a "drain until EAGAIN"
 * loop per socket. ZMQ_FD is the exception: libzmq signals it edge-style, so it is
 * registered EPOLLET and the ROUTER is drained (ZMQ_EVENTS & ZMQ_POLLIN) at the top of
 * every loop turn, which also covers the sends made since the last turn.
 *
 * Cron duties (s_cron, every CRON_MS):
 *   - connection timers: 408 for slow heads and slow bodies, silent close of idle
 *     keep-alive connections, close of clients that stop reading, end of lingering closes
 *   - the broker: heartbeats, dead workers, route timeouts (broker_cron)
 *   - signup batches: lines the full job queue refused are offered again (batch_cron)
 *   - reopening the session cache when it could not be opened
 *   - re-arming the listener after running out of file descriptors
 *   - the end of a drain after SIGTERM
 */
#include "gateway.h"
#include "idle.h"
#include "gwmetrics.h"

#include "crypto.h"
#include "errors.h"
#include "log.h"
#include "ratelimit.h"
#include "util.h"
#include "worker.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

/* epoll data.u64 tags; a connection is EV_CONN + its slot */
enum { EV_LISTEN = 1, EV_SIGNAL, EV_TIMER, EV_ZMQ, EV_CONN = 16 };

#define CRON_MS 100
#define OUT_HIGH 65536          /* pending output above which no further request is parsed */
#define LINGER_MS 2000          /* after our last byte: read and drop the client's, then close */
#define LINGER_MAX (1u << 20)
#define OVERFLOW_SLOTS 64       /* connections past max_connections that get a 503 */
#define ACCEPT_BUDGET 64
#define EPOLL_BATCH 256
#define CACHE_RETRY_MIN_MS 250 /* reopening the cache: doubling up to the max */
#define CACHE_RETRY_MAX_MS 5000

struct gateway gw;

static int s_epfd = -1, s_lfd = -1, s_tfd = -1, s_zfd = -1;
static struct gw_conn *s_conns;
static size_t s_nslots;
static size_t s_hw_norm, s_hw_over; /* next never-used slot of each range */
static struct gw_conn *s_free, *s_free_over, *s_closed, *s_active;
static size_t s_nactive; /* connections counted against max_connections */
static int s_listen_paused;
static int s_stop;
static int64_t s_drain_end;
static int64_t s_cache_next;
static char s_rid_prefix[9];
static uint32_t s_rid_seq;

int gateway_main(int argc, char **argv);
static void s_raise_nofile(void);
static int s_listen_open(const char *spec);
static void s_ep_add(int fd, uint32_t events, uint64_t tag);
static void s_accept(void);
static void s_reject_now(int fd);
static struct gw_conn *s_slot_take(int overflow);
static struct gw_conn *s_conn_new(int fd);
static void s_conn_event(struct gw_conn *c, uint32_t ev);
static int s_conn_read(struct gw_conn *c);
static void s_conn_process(struct gw_conn *c);
static int s_conn_flush(struct gw_conn *c);
static void s_conn_settle(struct gw_conn *c);
static void s_conn_close(struct gw_conn *c);
static void s_linger_begin(struct gw_conn *c);
static void s_linger_read(struct gw_conn *c);
static void s_release_closed(void);
static void s_cron(void);
static void s_conn_timers(struct gw_conn *c);
static void s_cache_try_open(void);
static void s_drain_begin(void);
static const char *s_method_name(int method);
static void s_reply_headers(struct gw_conn *c, int status, const struct gw_hdr *hdrs,
                            size_t nhdrs);
static void s_request_done(struct gw_conn *c, int status, size_t bytes);

int main(int argc, char **argv)
{
    return gateway_main(argc, argv);
}

int gateway_main(int argc, char **argv)
{
    struct epoll_event evs[EPOLL_BATCH];
    char tok[LK_TOKEN_LEN + 1];

    /* die-with-parent, -c FILE, config (exit 1 on error), log, libsodium, SIGPIPE ignored,
     * SIGTERM/SIGINT blocked into a signalfd: before any thread (ZeroMQ's) exists. */
    lk_role_start("gateway", argc, argv, &gw.cfg);
    /* One write of access lines per loop turn instead of one per request: the line was the
     * largest cost the gateway added to a validate (docs/performance.md). */
    lk_log_buffer(1);
    s_raise_nofile();
    gw.now = lk_mono_ms();

    /* Generated request ids: a random per-process prefix and a counter. They need to be
     * unique, not secret, so no CSPRNG call per request. */
    if (lk_token_new(tok) != 0)
        lk_fatal("cannot make a random request id prefix");
    memcpy(s_rid_prefix, tok, 8);
    lk_wipe(tok, sizeof tok);

    s_epfd = epoll_create1(EPOLL_CLOEXEC);
    if (s_epfd < 0)
        lk_fatal("epoll_create1: %s", strerror(errno));
    s_lfd = s_listen_open(gw.cfg.gateway.listen);
    s_ep_add(s_lfd, EPOLLIN, EV_LISTEN);
    s_ep_add(lk_role_signal_fd(), EPOLLIN, EV_SIGNAL);
    s_tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (s_tfd < 0)
        lk_fatal("timerfd_create: %s", strerror(errno));
    struct itimerspec its = {.it_interval = {0, CRON_MS * 1000000L}, .it_value = {0, CRON_MS * 1000000L}};
    if (timerfd_settime(s_tfd, 0, &its, NULL) != 0)
        lk_fatal("timerfd_settime: %s", strerror(errno));
    s_ep_add(s_tfd, EPOLLIN, EV_TIMER);
    s_zfd = broker_init();
    s_ep_add(s_zfd, EPOLLIN | EPOLLET, EV_ZMQ);
    int mfd = gwm_init(); /* the metrics collector's answers: drained like the broker */
    if (mfd >= 0)
        s_ep_add(mfd, EPOLLIN | EPOLLET, EV_ZMQ);

    s_nslots = (size_t)gw.cfg.gateway.max_connections + OVERFLOW_SLOTS;
    s_conns = calloc(s_nslots, sizeof *s_conns);
    if (!s_conns)
        lk_fatal("out of memory for %zu connection slots", s_nslots);
    /* Slots are handed out from high-water marks (s_slot_take) and recycled through the
     * free lists: a slot's pages are touched only once a connection has used it, so the
     * table costs memory for the connections actually seen, not for max_connections. */
    s_hw_norm = 0;
    s_hw_over = (size_t)gw.cfg.gateway.max_connections;
    routes_init();
    batch_init();
    s_cache_try_open();
    lk_info("listening on %s, backend %s", gw.cfg.gateway.listen, gw.cfg.gateway.backend);

    while (!s_stop) {
        gw.now = lk_mono_ms();
        int more = broker_drain() | gwm_drain();
        lk_log_flush();
        int n = epoll_wait(s_epfd, evs, EPOLL_BATCH, more ? 0 : -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            lk_fatal("epoll_wait: %s", strerror(errno));
        }
        gw.now = lk_mono_ms();
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64;
            if (tag >= EV_CONN) {
                s_conn_event(&s_conns[tag - EV_CONN], evs[i].events);
            } else if (tag == EV_LISTEN) {
                if (s_lfd >= 0)
                    s_accept();
            } else if (tag == EV_SIGNAL) {
                if (lk_role_stopping() && !gw.draining) {
                    /* a second signal would keep the level-triggered signalfd readable */
                    (void)epoll_ctl(s_epfd, EPOLL_CTL_DEL, lk_role_signal_fd(), NULL);
                    s_drain_begin();
                }
            } else if (tag == EV_TIMER) {
                uint64_t ticks;
                if (read(s_tfd, &ticks, sizeof ticks) < 0 && errno != EAGAIN)
                    lk_warn("timerfd read: %s", strerror(errno));
                s_cron();
            }
            /* EV_ZMQ: drained at the top of the next turn */
        }
        /* Slots closed during this batch are reused only now, so that a later event of
         * the same batch can never reach a new connection in an old slot. */
        s_release_closed();
    }

    while (s_active)
        s_conn_close(s_active);
    s_release_closed();
    for (size_t i = 0; i < s_hw_norm; i++)
        http_conn_free(&s_conns[i].http);
    for (size_t i = (size_t)gw.cfg.gateway.max_connections; i < s_hw_over; i++)
        http_conn_free(&s_conns[i].http);
    free(s_conns);
    gwm_fini();
    broker_fini();
    batch_fini();
    routes_fini();
    idle_flush(gw.cache, 1);
    lk_cache_destroy(&gw.cache);
    if (s_lfd >= 0)
        close(s_lfd);
    close(s_tfd);
    close(s_epfd);
    lk_info("stopped");
    return 0;
}

uint64_t gw_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Thousands of sockets need as many descriptors: take the hard limit. */
static void s_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        lk_warn("setrlimit(RLIMIT_NOFILE): %s", strerror(errno));
    if (rl.rlim_cur < (rlim_t)gw.cfg.gateway.max_connections + OVERFLOW_SLOTS + 64)
        lk_warn("open file limit %llu is below max_connections %d",
                (unsigned long long)rl.rlim_cur, gw.cfg.gateway.max_connections);
}

/* "host:port", "[v6]:port" or ":port" (every address). Exits when it cannot listen. */
static int s_listen_open(const char *spec)
{
    char host[128] = "", port[16];
    const char *colon;
    if (spec[0] == '[') {
        const char *end = strchr(spec, ']');
        if (!end || end[1] != ':' || (size_t)(end - spec - 1) >= sizeof host)
            lk_fatal("gateway.listen: bad address %s", spec);
        memcpy(host, spec + 1, (size_t)(end - spec - 1));
        host[end - spec - 1] = '\0';
        colon = end + 1;
    } else {
        colon = strrchr(spec, ':');
        if (!colon || (size_t)(colon - spec) >= sizeof host)
            lk_fatal("gateway.listen: bad address %s", spec);
        memcpy(host, spec, (size_t)(colon - spec));
        host[colon - spec] = '\0';
    }
    if (lk_strlcpy(port, colon + 1, sizeof port) != 0 || !port[0])
        lk_fatal("gateway.listen: bad port in %s", spec);

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV}, *res, *ai;
    int rc = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (rc != 0)
        lk_fatal("gateway.listen %s: %s", spec, gai_strerror(rc));
    int fd = -1, err = 0;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        /* SO_REUSEPORT: gateway.count processes share the port, the kernel spreads clients. */
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0 &&
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) == 0 &&
            bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0)
            break;
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        lk_fatal("cannot listen on %s: %s", spec, strerror(err));
    return fd;
}

static void s_ep_add(int fd, uint32_t events, uint64_t tag)
{
    struct epoll_event ev = {.events = events, .data.u64 = tag};
    if (epoll_ctl(s_epfd, EPOLL_CTL_ADD, fd, &ev) != 0)
        lk_fatal("epoll_ctl(ADD): %s", strerror(errno));
}

static void s_accept(void)
{
    for (int i = 0; i < ACCEPT_BUDGET; i++) {
        struct sockaddr_storage peer;
        socklen_t peerlen = sizeof peer;
        memset(&peer, 0, sizeof peer);
        int fd = accept4(s_lfd, (struct sockaddr *)&peer, &peerlen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* The pending connection stays queued and the level-triggered listener
                 * would wake us in a loop: stop watching it until the next cron turn. */
                lk_warn("accept: %s; pausing the listener", strerror(errno));
                struct epoll_event ev = {.events = 0, .data.u64 = EV_LISTEN};
                (void)epoll_ctl(s_epfd, EPOLL_CTL_MOD, s_lfd, &ev);
                s_listen_paused = 1;
                return;
            }
            lk_warn("accept: %s", strerror(errno));
            return;
        }
        int one = 1;
        /* A response is one write; Nagle would only hold back the next pipelined one. */
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct gw_conn *c = s_conn_new(fd);
        if (!c) {
            s_reject_now(fd);
            continue;
        }
        lk_ip_from_sockaddr(&peer, c->peer);
        if (c->overflow) {
            /* Past max_connections: answer 503 at once and close (lingering, so the
             * client's request bytes arriving later do not reset the answer away). */
            c->close_after = 1;
            struct gw_hdr h = {"Retry-After", "1"};
            gw_reply_error(c, 503, "unavailable", "too many connections", &h, 1);
            s_conn_process(c);
        }
    }
}

/* No slot at all, not even an overflow one: a best-effort 503 and close. */
static void s_reject_now(int fd)
{
    static const char body[] = "{\"error\":\"unavailable\",\"message\":\"too many connections\"}";
    char rid[HTTP_RID_MAX + 1], buf[512];
    gw_rid_new(rid);
    int n = snprintf(buf, sizeof buf,
                     "HTTP/1.1 503 Service Unavailable\r\nX-Request-Id: %s\r\n"
                     "Cache-Control: no-store\r\nRetry-After: 1\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     rid, sizeof body - 1, body);
    (void)send(fd, buf, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    lk_log(LK_LOG_INFO, rid, "http method=- route=- status=503 us=0 bytes=%d", n);
    gwm_answered(-1, NULL, 503, 0);
    close(fd);
}

static struct gw_conn *s_slot_take(int overflow)
{
    struct gw_conn **head = overflow ? &s_free_over : &s_free;
    struct gw_conn *c = *head;
    if (c) {
        *head = c->next;
        return c;
    }
    size_t *hw = overflow ? &s_hw_over : &s_hw_norm;
    size_t end = overflow ? s_nslots : (size_t)gw.cfg.gateway.max_connections;
    if (*hw >= end)
        return NULL;
    c = &s_conns[(*hw)++];
    c->fd = -1;
    c->overflow = overflow;
    return c;
}

static struct gw_conn *s_conn_new(int fd)
{
    struct gw_conn *c = s_slot_take(s_nactive >= (size_t)gw.cfg.gateway.max_connections);
    if (!c)
        return NULL;
    struct http_limits lim = {.max_uri = gw.cfg.gateway.max_uri,
                              .max_header = gw.cfg.gateway.max_header};
    int overflow = c->overflow;
    memset(c, 0, sizeof *c);
    c->overflow = overflow;
    http_conn_init(&c->http, &lim);
    c->fd = fd;
    c->state = C_READ;
    c->route = -1;
    c->method = -1;
    c->t_active = gw.now;
    c->events = EPOLLIN;
    c->prev = NULL;
    c->next = s_active;
    if (s_active)
        s_active->prev = c;
    s_active = c;
    if (!c->overflow)
        s_nactive++;
    s_ep_add(fd, EPOLLIN, EV_CONN + (uint64_t)(c - s_conns));
    return c;
}

static void s_conn_event(struct gw_conn *c, uint32_t ev)
{
    if (c->state == C_FREE)
        return; /* closed earlier in this batch */
    if (ev & EPOLLERR) {
        s_conn_close(c);
        return;
    }
    if (c->state == C_LINGER) {
        s_linger_read(c);
        return;
    }
    if ((ev & EPOLLIN) && s_conn_read(c) < 0)
        return;
    if ((ev & EPOLLHUP) && !(ev & EPOLLIN)) {
        /* both directions are gone: nobody is left to answer */
        s_conn_close(c);
        return;
    }
    s_conn_process(c);
}

/* One read into the connection's input buffer. Returns 0, or -1 when c was closed. */
static int s_conn_read(struct gw_conn *c)
{
    char *p;
    size_t n;
    if (c->peer_eof || c->state != C_READ)
        return 0;
    if (http_rspace(&c->http, &p, &n) != 0 || n == 0) {
        /* n == 0 cannot happen while a head is within its limit; never spin on it */
        s_conn_close(c);
        return -1;
    }
    ssize_t r = recv(c->fd, p, n, 0);
    if (r > 0) {
        http_rcommit(&c->http, (size_t)r);
        c->t_active = gw.now;
    } else if (r == 0) {
        c->peer_eof = 1;
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        s_conn_close(c);
        return -1;
    }
    return 0;
}

/* Runs requests until one waits for a worker, input runs out or output backs up; then
 * flushes and settles the epoll interest. c may be closed on return. */
static void s_conn_process(struct gw_conn *c)
{
    struct http_conn *h = &c->http;

    while (c->state == C_READ && !c->close_after) {
        if (h->out_len - h->out_off > OUT_HIGH) {
            if (s_conn_flush(c) < 0)
                return;
            if (h->out_len - h->out_off > OUT_HIGH)
                break; /* the client reads slowly: take no new request meanwhile */
        }
        if (gw.draining && !http_started(h)) {
            /* SIGTERM: in-flight requests finish, new ones are not read */
            c->close_after = 1;
            break;
        }
        enum http_ev ev = http_next(h);
        if (ev == HTTP_EV_MORE) {
            if (http_in_head(h) && !c->head_timer) {
                c->head_timer = 1;
                c->t_head = gw.now;
            }
            break;
        }
        if (ev == HTTP_EV_HEAD) {
            c->head_timer = 0;
            c->t_body = gw.now;
            c->t_req_us = gw_mono_us();
            routes_head(c);
        } else if (ev == HTTP_EV_REQUEST) {
            routes_request(c);
        } else {
            c->close_after = 1;
            if (!c->rid[0] && h->req.has_rid) /* the head got that far before the error */
                memcpy(c->rid, h->req.rid, sizeof c->rid);
            else if (!c->rid[0])
                (void)http_head_rid(h, c->rid); /* or its bytes hold one */
            gw_reply_error(c, h->err_status, h->err_code, h->err_msg, NULL, 0);
        }
    }
    if (s_conn_flush(c) < 0)
        return;
    s_conn_settle(c);
}

/* Writes pending output. Returns 0, or -1 when c was closed (write error, output bound). */
static int s_conn_flush(struct gw_conn *c)
{
    struct http_conn *h = &c->http;
    if (h->out_fail) {
        s_conn_close(c);
        return -1;
    }
    while (h->out_len > h->out_off) {
        ssize_t w = send(c->fd, h->out + h->out_off, h->out_len - h->out_off, MSG_NOSIGNAL);
        if (w > 0) {
            http_out_consumed(h, (size_t)w);
            c->t_active = gw.now;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            s_conn_close(c);
            return -1;
        }
    }
    return 0;
}

/* After processing: close or linger when done, else register what c waits for. */
static void s_conn_settle(struct gw_conn *c)
{
    struct http_conn *h = &c->http;
    size_t pending = h->out_len - h->out_off;

    if (c->state == C_READ && pending == 0) {
        if (c->close_after) {
            s_linger_begin(c);
            return;
        }
        if (c->peer_eof) {
            /* the client sent all it will: whatever is buffered is an incomplete request */
            s_conn_close(c);
            return;
        }
    }
    uint32_t want = 0;
    if (pending)
        want |= EPOLLOUT;
    if (c->state == C_LINGER ||
        (c->state == C_READ && !c->close_after && !c->peer_eof && pending <= OUT_HIGH))
        want |= EPOLLIN;
    if (want != c->events) {
        struct epoll_event ev = {.events = want, .data.u64 = EV_CONN + (uint64_t)(c - s_conns)};
        if (epoll_ctl(s_epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
            lk_warn("epoll_ctl(MOD): %s", strerror(errno));
            s_conn_close(c);
            return;
        }
        c->events = want;
    }
}

/* Our side is done: send FIN, then read and drop what the client still sends, so that
 * unread request bytes do not make the kernel answer with a RST that could destroy the
 * response before the client reads it (a 413 or 415 sent before the body was read). */
static void s_linger_begin(struct gw_conn *c)
{
    if (c->peer_eof || shutdown(c->fd, SHUT_WR) != 0) {
        s_conn_close(c);
        return;
    }
    c->state = C_LINGER;
    c->t_linger = gw.now + LINGER_MS;
    c->linger_bytes = 0;
    s_conn_settle(c);
}

static void s_linger_read(struct gw_conn *c)
{
    char junk[16384];
    ssize_t r = recv(c->fd, junk, sizeof junk, 0);
    if (r > 0) {
        c->linger_bytes += (size_t)r;
        if (c->linger_bytes <= LINGER_MAX)
            return;
    } else if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
        return;
    }
    s_conn_close(c);
}

static void s_conn_close(struct gw_conn *c)
{
    if (c->state == C_FREE)
        return;
    if (c->job)
        broker_conn_gone(c);
    if (c->batch)
        batch_conn_gone(c); /* its lines' jobs forget it: no reply can reach this slot */
    close(c->fd); /* also leaves the epoll set */
    c->fd = -1;
    http_conn_free(&c->http);
    c->state = C_FREE;
    if (c->prev)
        c->prev->next = c->next;
    else
        s_active = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (!c->overflow)
        s_nactive--;
    c->next = s_closed;
    c->prev = NULL;
    s_closed = c;
}

static void s_release_closed(void)
{
    while (s_closed) {
        struct gw_conn *c = s_closed;
        s_closed = c->next;
        struct gw_conn **head = c->overflow ? &s_free_over : &s_free;
        c->next = *head;
        *head = c;
    }
}

void gw_conn_resume(struct gw_conn *c)
{
    if (c->state != C_FREE)
        s_conn_process(c);
}

void gw_reply(struct gw_conn *c, int status, const char *body, size_t len,
              const struct gw_hdr *hdrs, size_t nhdrs)
{
    gw_reply_typed(c, status, len ? "application/json" : NULL, body, len, hdrs, nhdrs);
}

void gw_reply_typed(struct gw_conn *c, int status, const char *ctype, const char *body,
                    size_t len, const struct gw_hdr *hdrs, size_t nhdrs)
{
    struct http_conn *h = &c->http;
    size_t before = h->out_len;

    s_reply_headers(c, status, hdrs, nhdrs);
    http_out_body(h, status, ctype, body, len);
    s_request_done(c, status, h->out_len - before);
}

/* The status line and the headers every answer has (the blank line not included). */
static void s_reply_headers(struct gw_conn *c, int status, const struct gw_hdr *hdrs,
                            size_t nhdrs)
{
    struct http_conn *h = &c->http;

    if (!c->rid[0])
        gw_rid_new(c->rid);
    /* keep_alive is only set for a complete request: every other answer closes */
    if (!h->req.keep_alive || gw.draining || c->peer_eof)
        c->close_after = 1;
    http_out_status(h, status);
    http_out_header(h, "X-Request-Id", c->rid);
    /* no-store on every answer: every /api/auth/ answer must have it, and nothing else here is
     * worth caching either; the web page's files (static.c) bring their own Cache-Control */
    if (!nhdrs || strcmp(hdrs[0].name, "Cache-Control") != 0)
        http_out_header(h, "Cache-Control", "no-store");
    for (size_t i = 0; i < nhdrs; i++)
        http_out_header(h, hdrs[i].name, hdrs[i].value);
    if (c->cors) {
        http_out_header(h, "Access-Control-Allow-Origin", c->cors);
        http_out_header(h, "Access-Control-Expose-Headers", "X-Request-Id, Retry-After");
        http_out_header(h, "Vary", "Origin");
    }
    if (c->close_after)
        http_out_header(h, "Connection", "close");
    else if (h->req.minor == 0)
        http_out_header(h, "Connection", "keep-alive");
}

/* The access log line and the metrics of the answered request; the next one starts afresh. */
static void s_request_done(struct gw_conn *c, int status, size_t bytes)
{
    uint64_t us = c->t_req_us ? gw_mono_us() - c->t_req_us : 0;
    lk_log(LK_LOG_INFO, c->rid, "http method=%s route=%s status=%d us=%llu bytes=%zu",
           s_method_name(c->method), c->route_name ? c->route_name : "-", status,
           (unsigned long long)us, bytes);
    gwm_answered(c->method, c->route_name, status, us);

    if (c->state == C_BUSY)
        c->state = C_READ;
    c->job = NULL;
    c->streaming = 0;
    c->rid[0] = '\0';
    c->method = -1;
    c->route = -1;
    c->route_name = NULL;
    c->pend_status = 0;
    c->cors = NULL;
    c->preflight = 0;
    c->t_req_us = 0;
}

void gw_stream_begin(struct gw_conn *c, int status, const char *ctype)
{
    struct http_conn *h = &c->http;
    size_t before = h->out_len;

    /* HTTP/1.0 has no chunked coding: the body ends with the connection */
    c->stream_chunked = h->req.minor >= 1;
    if (!c->stream_chunked)
        c->close_after = 1;
    s_reply_headers(c, status, NULL, 0);
    http_out_header(h, "Content-Type", ctype);
    if (c->stream_chunked)
        http_out_header(h, "Transfer-Encoding", "chunked");
    http_out_raw(h, "\r\n", 2);
    c->streaming = 1;
    c->stream_bytes = h->out_len - before;
}

void gw_stream_write(struct gw_conn *c, const char *p, size_t n)
{
    struct http_conn *h = &c->http;
    size_t before = h->out_len;
    char size[24];

    if (!c->streaming || n == 0)
        return; /* an empty chunk would end the body */
    if (c->stream_chunked) {
        int k = snprintf(size, sizeof size, "%zx\r\n", n);
        http_out_raw(h, size, (size_t)k);
    }
    http_out_raw(h, p, n);
    if (c->stream_chunked)
        http_out_raw(h, "\r\n", 2);
    c->stream_bytes += h->out_len - before;
}

void gw_stream_end(struct gw_conn *c)
{
    struct http_conn *h = &c->http;
    size_t before = h->out_len;

    if (!c->streaming)
        return;
    if (c->stream_chunked)
        http_out_raw(h, "0\r\n\r\n", 5);
    /* SIGTERM meanwhile: the answer is whole, the connection takes no further request */
    if (gw.draining)
        c->close_after = 1;
    s_request_done(c, 200, c->stream_bytes + (h->out_len - before));
}

void gw_reply_error(struct gw_conn *c, int status, const char *code, const char *msg,
                    const struct gw_hdr *hdrs, size_t nhdrs)
{
    char body[1280]; /* a worker's code (32) and message (160), each escaped up to 6x */
    struct gw_buf b = {.p = body, .cap = sizeof body, .fixed = 1};
    gw_buf_raw(&b, "{\"error\":", 9);
    gw_buf_str(&b, code, strlen(code));
    gw_buf_raw(&b, ",\"message\":", 11);
    gw_buf_str(&b, msg, strlen(msg));
    gw_buf_raw(&b, "}", 1);
    if (b.fail) { /* cannot happen with the sizes above; never send a cut JSON text */
        static const char internal[] = "{\"error\":\"internal\",\"message\":\"internal error\"}";
        b.len = sizeof internal - 1;
        memcpy(body, internal, b.len);
    }
    gw_reply(c, status, body, b.len, hdrs, nhdrs);
}

static void s_cron(void)
{
    for (struct gw_conn *c = s_active, *next; c; c = next) {
        next = c->next;
        s_conn_timers(c);
    }
    broker_cron();
    batch_cron();
    gwm_cron();
    idle_flush(gw.cache, 0);
    if (!gw.cache && gw.now >= s_cache_next)
        s_cache_try_open();
    if (s_listen_paused && s_lfd >= 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = EV_LISTEN};
        if (epoll_ctl(s_epfd, EPOLL_CTL_MOD, s_lfd, &ev) == 0)
            s_listen_paused = 0;
    }
    if (gw.draining) {
        if (!s_active) {
            lk_info("drained");
            s_stop = 1;
        } else if (gw.now >= s_drain_end) {
            lk_warn("drain timeout: closing the remaining connections");
            s_stop = 1;
        }
    }
}

static void s_conn_timers(struct gw_conn *c)
{
    const struct lk_config *cfg = &gw.cfg;
    struct http_conn *h = &c->http;
    int64_t now = gw.now;
    uint64_t got;

    if (c->state == C_LINGER) {
        if (now >= c->t_linger)
            s_conn_close(c);
        return;
    }
    if (h->out_len > h->out_off) {
        /* output waiting and the client has not taken a byte for a whole idle period */
        if (now - c->t_active > cfg->gateway.idle_timeout_ms)
            s_conn_close(c);
        return;
    }
    if (c->state != C_READ || c->close_after)
        return;
    if (c->head_timer && now - c->t_head > cfg->gateway.header_timeout_ms) {
        c->close_after = 1;
        (void)http_head_rid(h, c->rid);
        gw_reply_error(c, 408, "request_timeout", "request headers not received in time", NULL, 0);
        s_conn_process(c);
    } else if (http_in_body(h, &got) && cfg->gateway.body_min_rate &&
               now - c->t_body > cfg->gateway.body_grace_ms &&
               got < (uint64_t)(now - c->t_body - cfg->gateway.body_grace_ms) *
                         cfg->gateway.body_min_rate / 1000) {
        /* api.md: body_min_rate bytes/s on average, measured from the end of the grace
         * (slow-body DoS); the bytes of the grace count */
        c->close_after = 1;
        gw_reply_error(c, 408, "request_timeout", "request body not received in time", NULL, 0);
        s_conn_process(c);
    } else if (http_idle(h) && now - c->t_active > cfg->gateway.idle_timeout_ms) {
        s_conn_close(c);
    } else if (http_idle(h)) {
        http_trim(h);
    }
}

static void s_cache_try_open(void)
{
    static int64_t wait;
    /* Read-only, unless the idle timeout is on: then the gateway records session uses
     * (idle.h), in batches from the cron, never one write per validate. */
    int rc = lk_cache_open(gw.cfg.cache.path, gw.cfg.cache.map_size,
                           gw.cfg.session.idle_timeout_ms > 0 ? 0 : 1, &gw.cache);
    if (rc == 0) {
        lk_info("session cache open: %s", gw.cfg.cache.path);
        return;
    }
    gw.cache = NULL;
    if (!wait)
        lk_warn("session cache %s cannot be opened (%s); retrying", gw.cfg.cache.path,
                lk_strerror(rc));
    /* the cache module logs each failure: back off so a missing cache is not a flood */
    wait = wait ? (wait * 2 > CACHE_RETRY_MAX_MS ? CACHE_RETRY_MAX_MS : wait * 2) : CACHE_RETRY_MIN_MS;
    s_cache_next = gw.now + wait;
}

static void s_drain_begin(void)
{
    gw.draining = 1;
    s_drain_end = gw.now + gw.cfg.gateway.drain_timeout_ms;
    if (s_lfd >= 0) {
        close(s_lfd);
        s_lfd = -1;
    }
    size_t inflight = 0;
    for (struct gw_conn *c = s_active, *next; c; c = next) {
        next = c->next;
        if (c->state == C_READ && !http_started(&c->http) && c->http.out_len == c->http.out_off)
            s_conn_close(c); /* idle, or a head not complete yet: not in flight */
        else
            inflight++;
    }
    lk_info("draining: %zu connections in flight, up to %lld ms", inflight,
            (long long)gw.cfg.gateway.drain_timeout_ms);
    if (!s_active)
        s_stop = 1;
}

void gw_rid_new(char out[HTTP_RID_MAX + 1])
{
    snprintf(out, HTTP_RID_MAX + 1, "%s%08x", s_rid_prefix, ++s_rid_seq);
}

static const char *s_method_name(int method)
{
    return method < 0 ? "-" : llhttp_method_name((llhttp_method_t)method);
}
