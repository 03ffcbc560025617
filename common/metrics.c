/* metrics.c: the family table, a process's registry and its shipping, the report parser
 * and the collector's store (see metrics.h).
 *
 * Everything about a family lives in its row of LK_METRIC_FAMILIES; the registry, the
 * report lines, the parser and the exposition are loops over that table, so a new series
 * is one row there plus the line of code that counts it.
 */
#include "metrics.h"

#include "log.h"
#include "util.h"
#include "zmqutil.h"

#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define S_NSLOTS_HIST (1 + LK_METRIC_BUCKETS + 1) /* sum, then the buckets and +Inf */
#define S_LABELS_MAX 256                          /* bytes of a series' label text {k="v",...} */
#define S_SAMPLERS_MAX 8
#define S_SNDHWM 32 /* report messages queued for the collector at most */
#define S_FINAL_LINGER_MS 250

const struct lk_metric_family_def lk_metric_families[LKM_NFAMILIES] = {
#define LK_X_(ID, name, kind, unit, labels, who, help) [ID] = {name, kind, unit, labels, who, help},
    LK_METRIC_FAMILIES(LK_X_)
#undef LK_X_
};

const uint64_t lk_metric_bounds_us[LK_METRIC_BUCKETS] = {
    50,    100,    250,    500,    1000,    2500,    5000,    10000,   25000,
    50000, 100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000};

/* The le="..." text of each bucket, +Inf last: the bounds in seconds. */
static const char *const s_le[LK_METRIC_BUCKETS + 1] = {
    "5e-05", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
    "0.05",  "0.1",    "0.25",    "0.5",    "1",     "2.5",    "5",     "10",   "+Inf"};

uint64_t lk_metric_slots[LK_METRIC_SLOTS_MAX];

/* One registered series of this process. */
struct s_series {
    uint16_t family;
    uint16_t nslots;
    uint32_t slot;
    char labels[S_LABELS_MAX]; /* "{k=\"v\",...}" or "" */
};

static struct {
    struct s_series series[LK_METRIC_SERIES_MAX];
    size_t nseries;
    uint32_t nslots; /* slots handed out; [0, S_NSLOTS_HIST) is the sink */
    int full_logged;
    const char *role;
    uint64_t instance;
    uint64_t seq;
    pid_t pid; /* of the process that started shipping */
    void *zctx, *sock;
    int64_t next_ms; /* monotonic: next report due */
    struct {
        void (*fn)(void *arg);
        void *arg;
    } samplers[S_SAMPLERS_MAX];
    int nsamplers;
    lk_metric_t m_rss, m_cpu;
} S = {.nslots = S_NSLOTS_HIST};

static int s_local(int f);
static size_t s_nlabels(const char *names);
static int s_label_name(const char *names, size_t i, const char **name, size_t *len);
static int s_value_ok(const char *v, size_t n);
static int s_nslots(enum lk_metric_kind k);
static int s_put(char *buf, size_t cap, size_t *o, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static size_t s_series_line(const struct s_series *s, char *buf, size_t cap);
static void s_report_fill(struct lk_msg *m, size_t *i, int final);
static int s_ship(int final);
static void s_sample_process(void);
static void s_atexit(void);

/* ---- the family table ---------------------------------------------------------------- */

/* Made by the collector itself: never registered by a process, never in a report. */
static int s_local(int f)
{
    return strcmp(lk_metric_families[f].who, "local") == 0;
}

/* Number of labels in a comma-separated list of names. */
static size_t s_nlabels(const char *names)
{
    size_t n = *names ? 1 : 0;
    for (const char *p = names; *p; p++)
        n += *p == ',';
    return n;
}

/* The i-th name of a comma-separated list. Returns 0, or -1 past the end. */
static int s_label_name(const char *names, size_t i, const char **name, size_t *len)
{
    const char *p = names;
    if (!*p)
        return -1;
    for (; i > 0; i--) {
        p = strchr(p, ',');
        if (!p)
            return -1;
        p++;
    }
    const char *end = strchr(p, ',');
    *name = p;
    *len = end ? (size_t)(end - p) : strlen(p);
    return 0;
}

/* A label value: 1..LK_METRIC_LABEL_MAX bytes of [A-Za-z0-9_.:/+-], nothing to escape. */
static int s_value_ok(const char *v, size_t n)
{
    if (n < 1 || n > LK_METRIC_LABEL_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == ':' || c == '/' || c == '+' || c == '-'))
            return 0;
    }
    return 1;
}

static int s_nslots(enum lk_metric_kind k)
{
    return k == LK_MK_HISTOGRAM ? S_NSLOTS_HIST : 1;
}

/* snprintf appending at *o; returns -1 (and leaves *o) when it does not fit. */
static int s_put(char *buf, size_t cap, size_t *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *o, cap - *o, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= cap - *o) {
        buf[*o] = '\0';
        return -1;
    }
    *o += (size_t)n;
    return 0;
}

/* Builds the label text {k="v",...} of family f from values (NULL-terminated, or NULL).
 * Returns 0, or -1 when the values do not fit the family. */
static int s_label_text(enum lk_metric_family f, const char *const *values, char *out, size_t cap)
{
    const char *names = lk_metric_families[f].labels;
    size_t want = s_nlabels(names), o = 0, i = 0;

    out[0] = '\0';
    for (; values && values[i]; i++) {
        const char *name;
        size_t nlen;
        if (i >= want || s_label_name(names, i, &name, &nlen) != 0 ||
            !s_value_ok(values[i], strlen(values[i])))
            return -1;
        if (s_put(out, cap, &o, "%s%.*s=\"%s\"", i ? "," : "{", (int)nlen, name, values[i]) != 0)
            return -1;
    }
    if (i != want || (i && s_put(out, cap, &o, "}") != 0))
        return -1;
    return 0;
}

/* ---- one process's registry ---------------------------------------------------------- */

lk_metric_t lk_metric_get(enum lk_metric_family f, const char *const *values)
{
    char labels[S_LABELS_MAX];

    if ((unsigned)f >= LKM_NFAMILIES || s_local(f) ||
        s_label_text(f, values, labels, sizeof labels) != 0) {
        lk_warn("metrics: bad series of %s: not counted",
                (unsigned)f < LKM_NFAMILIES ? lk_metric_families[f].name : "?");
        return 0;
    }
    for (size_t i = 0; i < S.nseries; i++)
        if (S.series[i].family == f && strcmp(S.series[i].labels, labels) == 0)
            return S.series[i].slot;
    int n = s_nslots(lk_metric_families[f].kind);
    if (S.nseries == LK_METRIC_SERIES_MAX || S.nslots + (uint32_t)n > LK_METRIC_SLOTS_MAX) {
        if (!S.full_logged++)
            lk_warn("metrics: registry full (%d series): %s%s and later series not counted",
                    LK_METRIC_SERIES_MAX, lk_metric_families[f].name, labels);
        return 0;
    }
    struct s_series *s = &S.series[S.nseries++];
    s->family = (uint16_t)f;
    s->nslots = (uint16_t)n;
    s->slot = S.nslots;
    memcpy(s->labels, labels, sizeof labels);
    S.nslots += (uint32_t)n;
    memset(&lk_metric_slots[s->slot], 0, (size_t)n * sizeof lk_metric_slots[0]);
    return s->slot;
}

uint64_t lk_metrics_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

const char *lk_metrics_role(void)
{
    return S.role ? S.role : "unknown";
}

/* The report line of one series, without the NUL; returns its length, or 0 when it does
 * not fit cap (cap - 1 usable bytes). */
static size_t s_series_line(const struct s_series *s, char *buf, size_t cap)
{
    const struct lk_metric_family_def *d = &lk_metric_families[s->family];
    const uint64_t *v = &lk_metric_slots[s->slot];
    size_t o = 0;

    if (s_put(buf, cap, &o, "%s%s ", d->name, s->labels) != 0)
        return 0;
    int rc = 0;
    if (d->kind == LK_MK_GAUGE)
        rc = s_put(buf, cap, &o, "%" PRId64, (int64_t)v[0]);
    else
        for (int i = 0; i < s->nslots && rc == 0; i++)
            rc = s_put(buf, cap, &o, i ? " %" PRIu64 : "%" PRIu64, v[i]);
    if (rc != 0 || s_put(buf, cap, &o, "\n") != 0)
        return 0;
    return o;
}

void lk_metrics_start(const char *role, const char *endpoint)
{
    int rc, hwm = S_SNDHWM, one = 1;

    if (S.pid)
        return;
    S.role = role;
    S.pid = getpid();
    if (getrandom(&S.instance, sizeof S.instance, GRND_NONBLOCK) != (ssize_t)sizeof S.instance)
        S.instance = (uint64_t)lk_now_ms() << 20 ^ (uint64_t)S.pid;
    S.m_rss = LK_METRIC(LKM_RESIDENT_MEMORY, role);
    S.m_cpu = LK_METRIC(LKM_CPU_SECONDS, role);
    S.next_ms = lk_mono_ms();
    atexit(s_atexit);

    S.zctx = zmq_ctx_new();
    if (!S.zctx || !(S.sock = zmq_socket(S.zctx, ZMQ_PUSH)) ||
        (rc = lk_zmq_set_defaults(S.sock)) != 0 ||
        zmq_setsockopt(S.sock, ZMQ_SNDHWM, &hwm, sizeof hwm) != 0 ||
        zmq_setsockopt(S.sock, ZMQ_IMMEDIATE, &one, sizeof one) != 0 ||
        zmq_connect(S.sock, endpoint) != 0) {
        lk_warn("metrics: no socket to the collector %s (%s): not shipping", endpoint,
                zmq_strerror(errno));
        if (S.sock)
            zmq_close(S.sock);
        if (S.zctx)
            zmq_ctx_term(S.zctx);
        S.sock = S.zctx = NULL;
    }
}

void lk_metrics_sampler(void (*fn)(void *arg), void *arg)
{
    if (S.nsamplers == S_SAMPLERS_MAX) {
        lk_warn("metrics: more than %d samplers", S_SAMPLERS_MAX);
        return;
    }
    S.samplers[S.nsamplers].fn = fn;
    S.samplers[S.nsamplers++].arg = arg;
}

int64_t lk_metrics_tick(void)
{
    if (!S.sock)
        return LK_METRIC_INTERVAL_MS;
    int64_t now = lk_mono_ms();
    if (now < S.next_ms)
        return S.next_ms - now;
    /* Due times stay on a grid: a late tick does not push every later report back. */
    S.next_ms += LK_METRIC_INTERVAL_MS;
    if (S.next_ms <= now)
        S.next_ms = now + LK_METRIC_INTERVAL_MS;
    (void)s_ship(0);
    return S.next_ms - now;
}

void lk_metrics_stop(void)
{
    int linger = S_FINAL_LINGER_MS;

    if (!S.sock || getpid() != S.pid)
        return;
    /* The final report may leave after the close: a short linger lets it, and bounds how
     * long the exit waits for a collector that does not read. */
    (void)zmq_setsockopt(S.sock, ZMQ_LINGER, &linger, sizeof linger);
    (void)s_ship(1);
    zmq_close(S.sock);
    zmq_ctx_term(S.zctx);
    S.sock = S.zctx = NULL;
}

static void s_atexit(void)
{
    lk_metrics_stop();
}

/* Resident memory and CPU time of this process: /proc/self/statm and getrusage, once per
 * report. */
static void s_sample_process(void)
{
    struct rusage ru;
    char buf[128];
    unsigned long long size, resident;

    if (getrusage(RUSAGE_SELF, &ru) == 0)
        lk_gauge_set(S.m_cpu, (int64_t)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec +
                                  (int64_t)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec);
    FILE *f = fopen("/proc/self/statm", "re");
    if (f) {
        if (fgets(buf, sizeof buf, f) && sscanf(buf, "%llu %llu", &size, &resident) == 2)
            lk_gauge_set(S.m_rss, (int64_t)(resident * (unsigned long long)sysconf(_SC_PAGESIZE)));
        fclose(f);
    }
}

/* Fills m with the report lines of series[*i ...] that fit one message and advances *i.
 * final marks the message that holds the last series. */
static void s_report_fill(struct lk_msg *m, size_t *i, int final)
{
    struct lk_msg_ro_metrics_report *r = &m->u.ro_metrics_report;
    char line[1024];
    size_t o = 0;

    memset(m, 0, sizeof *m);
    m->type = MSG_RO_METRICS_REPORT;
    (void)lk_strlcpy(r->role, lk_metrics_role(), sizeof r->role);
    r->pid = (uint32_t)S.pid;
    r->instance = S.instance;
    r->seq = S.seq;
    for (; *i < S.nseries; ++*i) {
        size_t n = s_series_line(&S.series[*i], line, sizeof line);
        if (n == 0)
            continue; /* cannot happen: a line is far below 1 KiB */
        if (o + n > LK_METRIC_REPORT_MAX)
            break;
        memcpy(r->samples + o, line, n);
        o += n;
    }
    r->samples[o] = '\0';
    r->final = final && *i == S.nseries;
}

/* Builds one report of every series and sends it, split into messages at line
 * boundaries. Never blocks: a message the socket cannot take is dropped with the rest of
 * the report. Returns 0, or -EAGAIN (dropped). */
static int s_ship(int final)
{
    static struct lk_msg m; /* 3.6 KiB: not on the stack of a loop */
    size_t i = 0;
    int rc;

    /* Not at the final report: it leaves from atexit, when what a sampler reads may be
     * gone, and the collector forgets a finished process's gauges anyway. */
    for (int k = 0; k < S.nsamplers && !final; k++)
        S.samplers[k].fn(S.samplers[k].arg);
    s_sample_process();
    S.seq++;
    do {
        s_report_fill(&m, &i, final);
        rc = lk_zmq_send_msg(S.sock, NULL, 0, &m, ZMQ_DONTWAIT);
    } while (rc == 0 && i < S.nseries);
    return rc == 0 ? 0 : -EAGAIN;
}

/* ---- the collector's store ----------------------------------------------------------- */

struct s_mseries {
    uint16_t family;
    uint16_t nslots;
    uint32_t slot;
    char labels[S_LABELS_MAX];
};

struct s_source {
    int used;
    int live;
    uint64_t instance;
    uint32_t pid;
    char role[17];
    int64_t seen_ms; /* monotonic: its latest report */
    uint64_t *vals;  /* indexed by series slot; nvals long */
    uint32_t nvals;
};

#define S_HASH_SIZE (2 * LK_MSTORE_SERIES_MAX) /* a power of two */

struct lk_mstore {
    struct s_mseries series[LK_MSTORE_SERIES_MAX];
    size_t nseries;
    uint32_t nslots;
    uint32_t hash[S_HASH_SIZE]; /* series index + 1, 0 = empty; open addressing */
    struct s_source sources[LK_MSTORE_SOURCES_MAX];
    uint64_t base[LK_MSTORE_SLOTS_MAX]; /* counters of the sources folded away */
    uint64_t reports, malformed;
};

/* One parsed report line; labels and numbers point into the report's text. */
struct s_line {
    enum lk_metric_family family;
    const char *labels; /* "{...}" or "" (then llen 0) */
    size_t llen;
    uint64_t v[S_NSLOTS_HIST];
    int nv;
};

static int s_parse_line(const char **pp, struct s_line *out);
static int s_parse_u64(const char **pp, uint64_t *out);
static int s_parse_labels(const char **pp, enum lk_metric_family f);
static uint32_t s_hash(enum lk_metric_family f, const char *labels, size_t llen);
static struct s_mseries *s_series_find(lk_mstore_t *self, enum lk_metric_family f,
                                       const char *labels, size_t llen);
static struct s_mseries *s_series_add(lk_mstore_t *self, enum lk_metric_family f,
                                      const char *labels, size_t llen);
static struct s_source *s_source_get(lk_mstore_t *self, const struct lk_msg_ro_metrics_report *r,
                                     int *err);
static void s_source_fold(lk_mstore_t *self, struct s_source *src);
static int s_vals_grow(struct s_source *src, uint32_t n);
static void s_expire(lk_mstore_t *self, int64_t now_ms);

lk_mstore_t *lk_mstore_new(void)
{
    return calloc(1, sizeof(lk_mstore_t));
}

void lk_mstore_destroy(lk_mstore_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    for (size_t i = 0; i < LK_MSTORE_SOURCES_MAX; i++)
        free((*self_p)->sources[i].vals);
    free(*self_p);
    *self_p = NULL;
}

/* A canonical decimal uint64: "0" or [1-9][0-9]*, no overflow. Advances *pp. */
static int s_parse_u64(const char **pp, uint64_t *out)
{
    const char *p = *pp;
    uint64_t v = 0;
    if (*p < '0' || *p > '9' || (p[0] == '0' && p[1] >= '0' && p[1] <= '9'))
        return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    *pp = p;
    *out = v;
    return 0;
}

/* {name="value",...} with exactly the family's label names, in order. Advances *pp. */
static int s_parse_labels(const char **pp, enum lk_metric_family f)
{
    const char *names = lk_metric_families[f].labels, *p = *pp;
    size_t n = s_nlabels(names);

    if (n == 0)
        return 0;
    if (*p++ != '{')
        return -1;
    for (size_t i = 0; i < n; i++) {
        const char *name;
        size_t nlen;
        (void)s_label_name(names, i, &name, &nlen);
        if (strncmp(p, name, nlen) != 0 || p[nlen] != '=' || p[nlen + 1] != '"')
            return -1;
        p += nlen + 2;
        const char *v = p;
        while (*p && *p != '"' && *p != '\n')
            p++;
        if (*p != '"' || !s_value_ok(v, (size_t)(p - v)))
            return -1;
        p++;
        if (*p++ != (i + 1 < n ? ',' : '}'))
            return -1;
    }
    *pp = p;
    return 0;
}

/* One line "name{labels} values\n". Advances *pp past the newline. Returns 0 or -1. */
static int s_parse_line(const char **pp, struct s_line *out)
{
    const char *p = *pp, *name = p;

    while ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')
        p++;
    size_t nlen = (size_t)(p - name);
    int f = -1;
    for (int i = 0; i < LKM_NFAMILIES; i++)
        if (strlen(lk_metric_families[i].name) == nlen &&
            memcmp(lk_metric_families[i].name, name, nlen) == 0)
            f = i;
    if (f < 0 || s_local(f))
        return -1;
    out->family = (enum lk_metric_family)f;
    out->labels = p;
    if (s_parse_labels(&p, out->family) != 0)
        return -1;
    out->llen = (size_t)(p - out->labels);
    if (*p++ != ' ')
        return -1;
    enum lk_metric_kind k = lk_metric_families[f].kind;
    out->nv = s_nslots(k);
    for (int i = 0; i < out->nv; i++) {
        if (i && *p++ != ' ')
            return -1;
        if (k == LK_MK_GAUGE && *p == '-') {
            uint64_t mag;
            p++;
            if (s_parse_u64(&p, &mag) != 0 || mag == 0 || mag > (uint64_t)INT64_MAX + 1)
                return -1;
            out->v[i] = 0 - mag; /* two's complement of -mag */
        } else if (s_parse_u64(&p, &out->v[i]) != 0 ||
                   (k == LK_MK_GAUGE && out->v[i] > (uint64_t)INT64_MAX)) {
            return -1;
        }
    }
    if (*p++ != '\n')
        return -1;
    *pp = p;
    return 0;
}

static uint32_t s_hash(enum lk_metric_family f, const char *labels, size_t llen)
{
    uint32_t h = 2166136261u ^ (uint32_t)f;
    for (size_t i = 0; i < llen; i++)
        h = (h ^ (unsigned char)labels[i]) * 16777619u;
    return h;
}

static struct s_mseries *s_series_find(lk_mstore_t *self, enum lk_metric_family f,
                                       const char *labels, size_t llen)
{
    for (uint32_t h = s_hash(f, labels, llen) & (S_HASH_SIZE - 1);;
         h = (h + 1) & (S_HASH_SIZE - 1)) {
        uint32_t e = self->hash[h];
        if (e == 0)
            return NULL;
        struct s_mseries *s = &self->series[e - 1];
        if (s->family == f && strlen(s->labels) == llen && memcmp(s->labels, labels, llen) == 0)
            return s;
    }
}

/* Adds a series the caller checked is absent and fits (nseries and nslots). */
static struct s_mseries *s_series_add(lk_mstore_t *self, enum lk_metric_family f,
                                      const char *labels, size_t llen)
{
    struct s_mseries *s = &self->series[self->nseries];
    s->family = (uint16_t)f;
    s->nslots = (uint16_t)s_nslots(lk_metric_families[f].kind);
    s->slot = self->nslots;
    memcpy(s->labels, labels, llen);
    s->labels[llen] = '\0';
    self->nslots += s->nslots;
    uint32_t h = s_hash(f, labels, llen) & (S_HASH_SIZE - 1);
    while (self->hash[h])
        h = (h + 1) & (S_HASH_SIZE - 1);
    self->hash[h] = (uint32_t)++self->nseries;
    return s;
}

/* The source of r's instance, made when new (a free entry, else the gone source heard from
 * longest ago is folded away). *err: LK_EMALFORMED (the instance changed role),
 * LK_ETOOBIG (every entry is live). */
static struct s_source *s_source_get(lk_mstore_t *self, const struct lk_msg_ro_metrics_report *r,
                                     int *err)
{
    struct s_source *free_src = NULL, *oldest = NULL;

    for (size_t i = 0; i < LK_MSTORE_SOURCES_MAX; i++) {
        struct s_source *s = &self->sources[i];
        if (!s->used) {
            if (!free_src)
                free_src = s;
            continue;
        }
        if (s->instance == r->instance) {
            if (strcmp(s->role, r->role) != 0 || s->pid != r->pid) {
                *err = LK_EMALFORMED;
                return NULL;
            }
            return s;
        }
        if (!s->live && (!oldest || s->seen_ms < oldest->seen_ms))
            oldest = s;
    }
    if (!free_src && oldest) {
        s_source_fold(self, oldest);
        free_src = oldest;
    }
    if (!free_src) {
        *err = LK_ETOOBIG;
        return NULL;
    }
    memset(free_src, 0, sizeof *free_src);
    free_src->instance = r->instance;
    free_src->pid = r->pid;
    memcpy(free_src->role, r->role, strlen(r->role) + 1);
    return free_src;
}

/* Adds a gone source's counters and histograms to the retired base and frees its entry. */
static void s_source_fold(lk_mstore_t *self, struct s_source *src)
{
    for (size_t i = 0; i < self->nseries; i++) {
        const struct s_mseries *s = &self->series[i];
        if (lk_metric_families[s->family].kind == LK_MK_GAUGE)
            continue;
        for (uint32_t k = s->slot; k < s->slot + s->nslots && k < src->nvals; k++)
            self->base[k] += src->vals[k];
    }
    free(src->vals);
    memset(src, 0, sizeof *src);
}

static int s_vals_grow(struct s_source *src, uint32_t n)
{
    if (n <= src->nvals)
        return 0;
    uint64_t *v = realloc(src->vals, n * sizeof *v);
    if (!v)
        return -ENOMEM;
    memset(v + src->nvals, 0, (n - src->nvals) * sizeof *v);
    src->vals = v;
    src->nvals = n;
    return 0;
}

int lk_mstore_ingest(lk_mstore_t *self, const struct lk_msg_ro_metrics_report *r, int64_t now_ms)
{
    struct s_line ln;
    const char *p;
    size_t new_series = 0, new_slots = 0;
    int err = 0;

    s_expire(self, now_ms);
    /* Pass 1: the whole text parses, and what it adds fits. */
    if (!s_value_ok(r->role, strlen(r->role)) || r->final > 1)
        goto malformed;
    for (p = r->samples; *p;) {
        if (s_parse_line(&p, &ln) != 0)
            goto malformed;
        if (!s_series_find(self, ln.family, ln.labels, ln.llen)) {
            new_series++;
            new_slots += (size_t)ln.nv;
        }
    }
    if (self->nseries + new_series > LK_MSTORE_SERIES_MAX ||
        self->nslots + new_slots > LK_MSTORE_SLOTS_MAX) {
        err = LK_ETOOBIG;
        goto dropped;
    }
    struct s_source *src = s_source_get(self, r, &err);
    if (!src)
        goto dropped;
    if (s_vals_grow(src, self->nslots + (uint32_t)new_slots) != 0) {
        err = LK_ETOOBIG;
        goto dropped;
    }

    /* Pass 2: apply. Counters and buckets only ever grow within one instance; a report
     * that arrives out of order cannot take them back. */
    for (p = r->samples; *p;) {
        (void)s_parse_line(&p, &ln);
        struct s_mseries *s = s_series_find(self, ln.family, ln.labels, ln.llen);
        if (!s)
            s = s_series_add(self, ln.family, ln.labels, ln.llen);
        for (int i = 0; i < ln.nv; i++) {
            uint64_t *v = &src->vals[s->slot + (uint32_t)i];
            if (lk_metric_families[ln.family].kind == LK_MK_GAUGE || ln.v[i] > *v)
                *v = ln.v[i];
        }
    }
    src->used = 1;
    src->live = !r->final;
    src->seen_ms = now_ms;
    self->reports++;
    return 0;

malformed:
    err = LK_EMALFORMED;
dropped:
    self->malformed++;
    return err;
}

void lk_mstore_dropped(lk_mstore_t *self)
{
    self->malformed++;
}

static void s_expire(lk_mstore_t *self, int64_t now_ms)
{
    for (size_t i = 0; i < LK_MSTORE_SOURCES_MAX; i++) {
        struct s_source *s = &self->sources[i];
        if (s->used && s->live && now_ms - s->seen_ms > LK_MSTORE_STALE_MS)
            s->live = 0;
    }
}

/* A growing text buffer; any failure is sticky. */
struct s_text {
    char *p;
    size_t len, cap;
    int err;
};

static void s_text_put(struct s_text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void s_text_put(struct s_text *t, const char *fmt, ...)
{
    va_list ap;
    for (int tries = 0; !t->err && tries < 2; tries++) {
        va_start(ap, fmt);
        int n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->err = -ENOMEM;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2;
        while (cap <= t->len + (size_t)n)
            cap *= 2;
        if (cap > LK_MSTORE_TEXT_MAX + 1) {
            if (t->len + (size_t)n > LK_MSTORE_TEXT_MAX) {
                t->err = LK_ETOOBIG;
                return;
            }
            cap = LK_MSTORE_TEXT_MAX + 1;
        }
        char *q = realloc(t->p, cap);
        if (!q) {
            t->err = -ENOMEM;
            return;
        }
        t->p = q;
        t->cap = cap;
    }
}

/* v in the family's unit, as Prometheus reads it. */
static void s_text_value(struct s_text *t, enum lk_metric_unit u, int is_signed, uint64_t v)
{
    if (u == LK_MU_US) {
        int neg = is_signed && (int64_t)v < 0;
        uint64_t m = neg ? 0 - v : v;
        s_text_put(t, "%s%" PRIu64 ".%06" PRIu64, neg ? "-" : "", m / 1000000, m % 1000000);
    } else if (is_signed) {
        s_text_put(t, "%" PRId64, (int64_t)v);
    } else {
        s_text_put(t, "%" PRIu64, v);
    }
}

/* The collector's own families. */
static void s_render_local(lk_mstore_t *self, struct s_text *t, enum lk_metric_family f)
{
    const char *name = lk_metric_families[f].name;
    switch (f) {
    case LKM_BUILD_INFO:
        s_text_put(t, "%s{version=\"%s\",protocol=\"%d\"} 1\n", name, LK_VERSION, LK_PROTO_VERSION);
        break;
    case LKM_METRICS_REPORTS:
        s_text_put(t, "%s %" PRIu64 "\n", name, self->reports);
        break;
    case LKM_METRICS_MALFORMED:
        s_text_put(t, "%s %" PRIu64 "\n", name, self->malformed);
        break;
    case LKM_METRICS_SOURCES:
        /* one line per role with a live source, roles in the order first found */
        for (size_t i = 0; i < LK_MSTORE_SOURCES_MAX; i++) {
            const struct s_source *s = &self->sources[i];
            int seen = 0, n = 0;
            if (!s->used || !s->live)
                continue;
            for (size_t j = 0; j < LK_MSTORE_SOURCES_MAX; j++) {
                const struct s_source *o = &self->sources[j];
                if (!o->used || !o->live || strcmp(o->role, s->role) != 0)
                    continue;
                seen |= j < i;
                n++;
            }
            if (!seen)
                s_text_put(t, "%s{role=\"%s\"} %d\n", name, s->role, n);
        }
        break;
    default:
        break;
    }
}

int lk_mstore_render(lk_mstore_t *self, int64_t now_ms, char **out, size_t *len)
{
    struct s_text t = {.cap = 16384};
    uint64_t *all, *live;

    *out = NULL;
    *len = 0;
    s_expire(self, now_ms);
    t.p = malloc(t.cap);
    all = calloc(self->nslots + 1, sizeof *all);
    live = calloc(self->nslots + 1, sizeof *live);
    if (!t.p || !all || !live) {
        free(t.p);
        free(all);
        free(live);
        return -ENOMEM;
    }
    /* every slot's total once: counters over every source and the base, gauges over the
     * live sources */
    memcpy(all, self->base, self->nslots * sizeof *all);
    for (size_t i = 0; i < LK_MSTORE_SOURCES_MAX; i++) {
        const struct s_source *s = &self->sources[i];
        if (!s->used)
            continue;
        uint32_t n = s->nvals < self->nslots ? s->nvals : self->nslots;
        for (uint32_t k = 0; k < n; k++) {
            all[k] += s->vals[k];
            if (s->live)
                live[k] += s->vals[k];
        }
    }

    for (int f = 0; f < LKM_NFAMILIES; f++) {
        const struct lk_metric_family_def *d = &lk_metric_families[f];
        static const char *const kinds[] = {"counter", "gauge", "histogram"};
        s_text_put(&t, "# HELP %s %s.\n# TYPE %s %s\n", d->name, d->help, d->name, kinds[d->kind]);
        if (s_local(f)) {
            s_render_local(self, &t, (enum lk_metric_family)f);
            continue;
        }
        for (size_t i = 0; i < self->nseries; i++) {
            const struct s_mseries *s = &self->series[i];
            if (s->family != f)
                continue;
            if (d->kind == LK_MK_COUNTER) {
                s_text_put(&t, "%s%s ", d->name, s->labels);
                s_text_value(&t, d->unit, 0, all[s->slot]);
                s_text_put(&t, "\n");
            } else if (d->kind == LK_MK_GAUGE) {
                s_text_put(&t, "%s%s ", d->name, s->labels);
                s_text_value(&t, d->unit, 1, live[s->slot]);
                s_text_put(&t, "\n");
            } else {
                /* labels without the closing brace, so that le can follow */
                int ll = s->labels[0] ? (int)strlen(s->labels) - 1 : 0;
                uint64_t cum = 0;
                for (int b = 0; b <= LK_METRIC_BUCKETS; b++) {
                    cum += all[s->slot + 1 + (uint32_t)b];
                    s_text_put(&t, "%s_bucket%.*s%sle=\"%s\"} %" PRIu64 "\n", d->name, ll,
                               s->labels, ll ? "," : "{", s_le[b], cum);
                }
                s_text_put(&t, "%s_sum%s ", d->name, s->labels);
                s_text_value(&t, d->unit, 0, all[s->slot]);
                s_text_put(&t, "\n%s_count%s %" PRIu64 "\n", d->name, s->labels, cum);
            }
        }
    }
    free(all);
    free(live);
    if (t.err) {
        free(t.p);
        return t.err;
    }
    *out = t.p;
    *len = t.len;
    return 0;
}
