/* top.c: latchkeyctl top (see top.h). Reads the same Prometheus exposition an operator's
 * Prometheus scrapes, so what it shows is what the dashboards show. */
#include "top.h"

#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define MAX_KEYS 48
#define MAX_BUCKETS 24
#define BODY_MAX (8 * 1024 * 1024)

/* One sample of the series top shows, keyed by a label value. */
struct series {
    char key[64];
    double v;
};

struct hist {
    char route[64];
    int n;
    double le[MAX_BUCKETS];  /* upper bounds, +Inf as INFINITY */
    double cum[MAX_BUCKETS]; /* cumulative counts */
};

struct sample {
    double t;
    struct series req[MAX_KEYS], auth[MAX_KEYS], conn[MAX_KEYS], busy[MAX_KEYS],
        queue[MAX_KEYS], restarts[MAX_KEYS];
    int nreq, nauth, nconn, nbusy, nqueue, nrestarts;
    struct hist hist[MAX_KEYS];
    int nhist;
};

static volatile sig_atomic_t s_stop;

static void s_on_signal(int sig)
{
    (void)sig;
    s_stop = 1;
}

static double s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* GET /metrics from host:port into a malloc'd body. Returns NULL on any failure. */
static char *s_fetch(const char *listen)
{
    char host[128], port[16];
    const char *colon = strrchr(listen, ':');
    if (!colon || (size_t)(colon - listen) >= sizeof host || strlen(colon + 1) >= sizeof port)
        return NULL;
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    snprintf(port, sizeof port, "%s", colon + 1);
    char *h = host;
    if (h[0] == '[') { /* [::1]:8080 */
        h++;
        h[strcspn(h, "]")] = '\0';
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    if (getaddrinfo(h, port, &hints, &ai) != 0)
        return NULL;
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {2, 0};
    if (fd >= 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    }
    if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) != 0) {
        if (fd >= 0)
            close(fd);
        freeaddrinfo(ai);
        return NULL;
    }
    freeaddrinfo(ai);
    static const char req[] = "GET /metrics HTTP/1.1\r\nHost: latchkey\r\nConnection: close\r\n\r\n";
    if (write(fd, req, sizeof req - 1) != (ssize_t)(sizeof req - 1)) {
        close(fd);
        return NULL;
    }
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (!buf || len == cap) {
            if (!buf || cap >= BODY_MAX) {
                free(buf);
                close(fd);
                return NULL;
            }
            cap *= 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                free(buf);
                close(fd);
                return NULL;
            }
            buf = nb;
        }
        ssize_t n = read(fd, buf + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    char *body = strstr(buf, "\r\n\r\n");
    if (strncmp(buf, "HTTP/1.1 200", 12) != 0 || !body) {
        free(buf);
        return NULL;
    }
    memmove(buf, body + 4, len - (size_t)(body + 4 - buf) + 1);
    return buf;
}

/* Copies the value of label `name` in a "{a="x",b="y"}" block into out. */
static int s_label(const char *labels, const char *name, char *out, size_t len)
{
    char pat[40];
    snprintf(pat, sizeof pat, "%s=\"", name);
    for (const char *p = labels; (p = strstr(p, pat)); p++) {
        if (p != labels && p[-1] != '{' && p[-1] != ',')
            continue;
        p += strlen(pat);
        size_t n = strcspn(p, "\"");
        if (n >= len)
            n = len - 1;
        memcpy(out, p, n);
        out[n] = '\0';
        return 0;
    }
    return -1;
}

static void s_add(struct series *s, int *n, const char *key, double v)
{
    for (int i = 0; i < *n; i++)
        if (strcmp(s[i].key, key) == 0) {
            s[i].v += v;
            return;
        }
    if (*n < MAX_KEYS) {
        snprintf(s[*n].key, sizeof s[*n].key, "%s", key);
        s[(*n)++].v = v;
    }
}

static double s_get(const struct series *s, int n, const char *key)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s[i].key, key) == 0)
            return s[i].v;
    return 0;
}

static void s_bucket(struct sample *sm, const char *route, double le, double v)
{
    struct hist *h = NULL;
    for (int i = 0; i < sm->nhist; i++)
        if (strcmp(sm->hist[i].route, route) == 0)
            h = &sm->hist[i];
    if (!h && sm->nhist < MAX_KEYS) {
        h = &sm->hist[sm->nhist++];
        memset(h, 0, sizeof *h);
        snprintf(h->route, sizeof h->route, "%s", route);
    }
    if (h && h->n < MAX_BUCKETS) {
        h->le[h->n] = le;
        h->cum[h->n++] = v;
    }
}

static void s_parse(char *text, struct sample *sm)
{
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#' || line[0] == '\0')
            continue;
        char *sp = strrchr(line, ' ');
        if (!sp)
            continue;
        double v = strtod(sp + 1, NULL);
        *sp = '\0';
        char *lb = strchr(line, '{');
        const char *labels = lb ? lb : "";
        size_t nl = lb ? (size_t)(lb - line) : strlen(line);
        char name[96], a[64], b[64], key[130];
        if (nl >= sizeof name)
            continue;
        memcpy(name, line, nl);
        name[nl] = '\0';
        if (strcmp(name, "http_requests_total") == 0 && s_label(labels, "route", a, sizeof a) == 0) {
            s_add(sm->req, &sm->nreq, a, v);
        } else if (strcmp(name, "auth_attempts_total") == 0 &&
                   s_label(labels, "type", a, sizeof a) == 0 &&
                   s_label(labels, "result", b, sizeof b) == 0) {
            snprintf(key, sizeof key, "%s %s", a, b);
            s_add(sm->auth, &sm->nauth, key, v);
        } else if (strcmp(name, "request_duration_seconds_bucket") == 0 &&
                   s_label(labels, "route", a, sizeof a) == 0 &&
                   s_label(labels, "le", b, sizeof b) == 0) {
            s_bucket(sm, a, strcmp(b, "+Inf") == 0 ? INFINITY : strtod(b, NULL), v);
        } else if (s_label(labels, "role", a, sizeof a) == 0) {
            if (strcmp(name, "latchkey_workers_connected") == 0)
                s_add(sm->conn, &sm->nconn, a, v);
            else if (strcmp(name, "latchkey_workers_busy") == 0)
                s_add(sm->busy, &sm->nbusy, a, v);
            else if (strcmp(name, "latchkey_queue_depth") == 0)
                s_add(sm->queue, &sm->nqueue, a, v);
            else if (strcmp(name, "latchkey_restarts_total") == 0)
                s_add(sm->restarts, &sm->nrestarts, a, v);
        }
    }
}

/* The q-quantile of the requests between two samples of a route's histogram, linearly
 * interpolated inside its bucket (as Prometheus' histogram_quantile does); NAN when no
 * request was answered in between. */
static double s_quantile(const struct hist *now, const struct hist *before, double q)
{
    double total = now->cum[now->n - 1] - (before ? before->cum[before->n - 1] : 0);
    if (now->n == 0 || total <= 0)
        return NAN;
    double rank = q * total, prev_cum = 0, prev_le = 0;
    for (int i = 0; i < now->n; i++) {
        double c = now->cum[i] - (before && i < before->n ? before->cum[i] : 0);
        if (c >= rank) {
            if (isinf(now->le[i]))
                return prev_le;
            double in = c - prev_cum;
            return prev_le + (now->le[i] - prev_le) * (in > 0 ? (rank - prev_cum) / in : 1);
        }
        prev_cum = c;
        prev_le = isinf(now->le[i]) ? prev_le : now->le[i];
    }
    return prev_le;
}

static void s_fmt_time(double s, char *out, size_t len)
{
    if (isnan(s))
        snprintf(out, len, "-");
    else if (s < 1e-3)
        snprintf(out, len, "%.0fus", s * 1e6);
    else if (s < 1)
        snprintf(out, len, "%.1fms", s * 1e3);
    else
        snprintf(out, len, "%.2fs", s);
}

static void s_frame(FILE *o, const char *listen, const struct sample *now, const struct sample *prev,
                    int tty)
{
    double dt = prev ? now->t - prev->t : 0;
    time_t wall = time(NULL);
    char ts[32];
    strftime(ts, sizeof ts, "%Y-%m-%d %H:%M:%S", localtime(&wall));
    if (tty)
        fputs("\033[H\033[2J", o);
    fprintf(o, "latchkey top  %s  %s%s\n\n", listen, ts, tty ? "  (q quits)" : "");
    fprintf(o, "%-28s %10s %10s %10s\n", "ROUTE", "REQ/S", "P50", "P99");
    for (int i = 0; i < now->nreq; i++) {
        const char *r = now->req[i].key;
        double rate = dt > 0 ? (now->req[i].v - s_get(prev->req, prev->nreq, r)) / dt : 0;
        const struct hist *h = NULL, *hb = NULL;
        for (int j = 0; j < now->nhist; j++)
            if (strcmp(now->hist[j].route, r) == 0)
                h = &now->hist[j];
        for (int j = 0; prev && j < prev->nhist; j++)
            if (strcmp(prev->hist[j].route, r) == 0)
                hb = &prev->hist[j];
        char p50[16] = "-", p99[16] = "-";
        if (h && prev) {
            s_fmt_time(s_quantile(h, hb, 0.5), p50, sizeof p50);
            s_fmt_time(s_quantile(h, hb, 0.99), p99, sizeof p99);
        }
        fprintf(o, "%-28s %10.1f %10s %10s\n", r, rate, p50, p99);
    }
    fprintf(o, "\n%-28s %10s %10s\n", "AUTH ATTEMPTS", "PER S", "TOTAL");
    for (int i = 0; i < now->nauth; i++) {
        const char *k = now->auth[i].key;
        double rate = dt > 0 ? (now->auth[i].v - s_get(prev->auth, prev->nauth, k)) / dt : 0;
        fprintf(o, "%-28s %10.1f %10.0f\n", k, rate, now->auth[i].v);
    }
    fprintf(o, "\n%-10s %10s %10s %10s %10s\n", "ROLE", "CONNECTED", "BUSY", "QUEUE", "RESTARTS");
    const char *roles[] = {"gateway", "signup", "signin", "sweeper", "metrics"};
    for (size_t i = 0; i < sizeof roles / sizeof roles[0]; i++) {
        const char *r = roles[i];
        fprintf(o, "%-10s %10.0f %10.0f %10.0f %10.0f\n", r, s_get(now->conn, now->nconn, r),
                s_get(now->busy, now->nbusy, r), s_get(now->queue, now->nqueue, r),
                s_get(now->restarts, now->nrestarts, r));
    }
    if (!tty)
        fputc('\n', o);
    fflush(o);
}

int lk_top(const struct lk_config *cfg, int argc, char **argv)
{
    long frames = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-n") == 0 && i + 1 < argc) {
            char *end;
            frames = strtol(argv[++i], &end, 10);
            if (*end || frames <= 0)
                return 2;
        } else {
            fprintf(stderr, "usage: latchkeyctl top [-n FRAMES]\n");
            return 2;
        }
    }
    int tty = isatty(STDOUT_FILENO) && isatty(STDIN_FILENO);
    struct termios saved;
    if (tty && tcgetattr(STDIN_FILENO, &saved) == 0) {
        struct termios raw = saved;
        raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
        tcsetattr(STDIN_FILENO, TCSANOW, &raw);
    } else {
        tty = 0;
    }
    struct sigaction sa = {.sa_handler = s_on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    static struct sample a, b;
    struct sample *now = &a, *prev = NULL;
    int rc = 0;
    for (long shown = 0; !s_stop && (frames < 0 || shown < frames); shown++) {
        char *text = s_fetch(cfg->gateway.listen);
        if (!text) {
            fprintf(stderr, "latchkeyctl top: cannot read http://%s/metrics\n", cfg->gateway.listen);
            rc = 3;
            break;
        }
        memset(now, 0, sizeof *now);
        now->t = s_now();
        s_parse(text, now);
        free(text);
        s_frame(stdout, cfg->gateway.listen, now, prev, tty);
        prev = now;
        now = now == &a ? &b : &a;
        if (frames >= 0 && shown + 1 >= frames)
            break;
        /* Wait a second, or less when q arrives. */
        double until = s_now() + 1.0;
        while (!s_stop) {
            int ms = (int)((until - s_now()) * 1000);
            if (ms <= 0)
                break;
            struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
            if (tty && poll(&p, 1, ms) == 1) {
                char c;
                if (read(STDIN_FILENO, &c, 1) == 1 && (c == 'q' || c == 'Q'))
                    s_stop = 1;
            } else if (!tty) {
                struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
                nanosleep(&ts, NULL);
                break;
            }
        }
    }
    if (tty)
        tcsetattr(STDIN_FILENO, TCSANOW, &saved);
    return rc;
}
