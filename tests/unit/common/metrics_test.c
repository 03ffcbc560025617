/* Unit tests of common/metrics.c: the family table, a process's registry and its report
 * lines, the strict report parser (hostile input included) and the collector's store
 * (sums, restarts of sources, staleness, eviction, the exposition).
 *
 * No socket is made: reports are built with s_report_fill and handed to the store. */
#include "common/metrics.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <cmocka.h>

/* ---- helpers ---- */

static void s_reset(void)
{
    memset(&S, 0, sizeof S);
    S.nslots = S_NSLOTS_HIST;
    memset(lk_metric_slots, 0, sizeof lk_metric_slots);
}

static int s_setup(void **state)
{
    (void)state;
    s_reset();
    return 0;
}

/* A report message from text (role, pid, instance), final or not. */
static struct lk_msg_ro_metrics_report *s_report(const char *role, uint32_t pid, uint64_t inst,
                                                 const char *text, int final)
{
    static struct lk_msg_ro_metrics_report r;
    memset(&r, 0, sizeof r);
    snprintf(r.role, sizeof r.role, "%s", role);
    r.pid = pid;
    r.instance = inst;
    r.final = (uint32_t) final;
    assert_true(strlen(text) <= LK_METRIC_REPORT_MAX);
    memcpy(r.samples, text, strlen(text) + 1);
    return &r;
}

static int s_ingest(lk_mstore_t *st, const char *text, int64_t now)
{
    return lk_mstore_ingest(st, s_report("gateway", 10, 1, text, 0), now);
}

/* The rendered exposition; caller frees. */
static char *s_render(lk_mstore_t *st, int64_t now)
{
    char *t;
    size_t len;
    assert_int_equal(lk_mstore_render(st, now, &t, &len), 0);
    assert_int_equal(strlen(t), len);
    return t;
}

/* The value of the exposition line starting with "series " (exact series text), or -1. */
static double s_value(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (strncmp(p, series, n) == 0 && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    return -1;
}

/* ---- the family table ---- */

static void test_families(void **state)
{
    (void)state;
    for (int f = 0; f < LKM_NFAMILIES; f++) {
        const struct lk_metric_family_def *d = &lk_metric_families[f];
        size_t n = strlen(d->name);
        assert_non_null(d->name);
        /* snake case, counters end in _total and nothing else does */
        for (size_t i = 0; i < n; i++)
            assert_true((d->name[i] >= 'a' && d->name[i] <= 'z') || d->name[i] == '_' ||
                        (d->name[i] >= '0' && d->name[i] <= '9'));
        int total = n > 6 && strcmp(d->name + n - 6, "_total") == 0;
        assert_int_equal(total, d->kind == LK_MK_COUNTER);
        assert_true(strlen(d->help) > 10 && !strpbrk(d->help, "\\\n"));
        /* no family is a prefix-collision of a histogram's _bucket/_sum/_count */
        for (int g = 0; g < LKM_NFAMILIES; g++)
            assert_true(g == f || strcmp(d->name, lk_metric_families[g].name) != 0);
        for (size_t i = 0; i < s_nlabels(d->labels); i++) {
            const char *name;
            size_t len;
            assert_int_equal(s_label_name(d->labels, i, &name, &len), 0);
            assert_true(len > 0 && strncmp(name, "le", len) != 0);
        }
    }
    assert_string_equal(lk_metric_families[LKM_AUTH_ATTEMPTS].name, "auth_attempts_total");
    assert_string_equal(lk_metric_families[LKM_REQUEST_DURATION].name, "request_duration_seconds");
    assert_string_equal(lk_metric_families[LKM_HTTP_REQUESTS].name, "http_requests_total");
    assert_string_equal(lk_metric_families[LKM_ACTIVE_SESSIONS].name, "active_sessions");
    for (int b = 1; b < LK_METRIC_BUCKETS; b++)
        assert_true(lk_metric_bounds_us[b] > lk_metric_bounds_us[b - 1]);
    assert_int_equal(lk_metric_bounds_us[0], 50);
    assert_int_equal(lk_metric_bounds_us[LK_METRIC_BUCKETS - 1], 10000000);
}

/* ---- the registry ---- */

static void test_register(void **state)
{
    (void)state;
    lk_metric_t a = LK_METRIC(LKM_AUTH_ATTEMPTS, "signin", "success");
    lk_metric_t b = LK_METRIC(LKM_AUTH_ATTEMPTS, "signin", "failure");
    lk_metric_t h = LK_METRIC(LKM_REQUEST_DURATION, "/api/auth/validate");
    lk_metric_t g = LK_METRIC0(LKM_ACTIVE_SESSIONS);
    assert_true(a >= S_NSLOTS_HIST && b != a && h != a && g != h);
    assert_int_equal(LK_METRIC(LKM_AUTH_ATTEMPTS, "signin", "success"), a);
    assert_int_equal(LK_METRIC0(LKM_ACTIVE_SESSIONS), g);
    assert_int_equal(S.nslots, S_NSLOTS_HIST + 2 + S_NSLOTS_HIST + 1);

    /* refused: wrong label count, bad characters, empty or long values, local families */
    assert_int_equal(LK_METRIC(LKM_AUTH_ATTEMPTS, "signin"), 0);
    assert_int_equal(LK_METRIC(LKM_AUTH_ATTEMPTS, "signin", "success", "x"), 0);
    assert_int_equal(LK_METRIC0(LKM_AUTH_ATTEMPTS), 0);
    assert_int_equal(LK_METRIC(LKM_ACTIVE_SESSIONS, "x"), 0);
    assert_int_equal(LK_METRIC(LKM_AUTH_ATTEMPTS, "sign\"in", "success"), 0);
    assert_int_equal(LK_METRIC(LKM_AUTH_ATTEMPTS, "sign in", "success"), 0);
    assert_int_equal(LK_METRIC(LKM_AUTH_ATTEMPTS, "", "success"), 0);
    char longv[LK_METRIC_LABEL_MAX + 2];
    memset(longv, 'a', sizeof longv - 1);
    longv[sizeof longv - 1] = '\0';
    assert_int_equal(LK_METRIC(LKM_AUTH_ATTEMPTS, longv, "success"), 0);
    longv[LK_METRIC_LABEL_MAX] = '\0';
    assert_true(LK_METRIC(LKM_AUTH_ATTEMPTS, longv, "success") != 0);
    assert_int_equal(LK_METRIC0(LKM_METRICS_REPORTS), 0);
    assert_int_equal(lk_metric_get((enum lk_metric_family)LKM_NFAMILIES, NULL), 0);

    lk_counter_inc(a);
    lk_counter_add(a, 4);
    lk_gauge_set(g, -3);
    lk_gauge_add(g, 5);
    assert_int_equal(lk_metric_slots[a], 5);
    assert_int_equal((int64_t)lk_metric_slots[g], 2);
}

static void test_histogram_buckets(void **state)
{
    (void)state;
    lk_metric_t h = LK_METRIC(LKM_REQUEST_DURATION, "/x");
    lk_histogram_observe_us(h, 0);        /* le 5e-05 */
    lk_histogram_observe_us(h, 50);       /* le 5e-05: bounds are inclusive */
    lk_histogram_observe_us(h, 51);       /* le 0.0001 */
    lk_histogram_observe_us(h, 100000);   /* le 0.1 */
    lk_histogram_observe_us(h, 10000000); /* le 10 */
    lk_histogram_observe_us(h, 10000001); /* +Inf */
    assert_int_equal(lk_metric_slots[h], 0 + 50 + 51 + 100000 + 10000000 + 10000001);
    assert_int_equal(lk_metric_slots[h + 1 + 0], 2);
    assert_int_equal(lk_metric_slots[h + 1 + 1], 1);
    assert_int_equal(lk_metric_slots[h + 1 + 10], 1);
    assert_int_equal(lk_metric_slots[h + 1 + 16], 1);
    assert_int_equal(lk_metric_slots[h + 1 + 17], 1);
}

static void test_registry_full(void **state)
{
    (void)state;
    char v[16];
    size_t made = 0;
    for (int i = 0; i < LK_METRIC_SERIES_MAX + 10; i++) {
        snprintf(v, sizeof v, "r%d", i);
        if (LK_METRIC(LKM_QUEUE_DEPTH, v) != 0)
            made++;
    }
    assert_int_equal(made, LK_METRIC_SERIES_MAX);
    /* the sink takes any kind of write */
    lk_histogram_observe_us(0, 99999999);
    lk_counter_inc(0);
    s_reset();
    /* slots run out before series with histograms: 8192 / 19 */
    made = 0;
    for (int i = 0; i < LK_METRIC_SERIES_MAX; i++) {
        snprintf(v, sizeof v, "r%d", i);
        if (LK_METRIC(LKM_REQUEST_DURATION, v) != 0)
            made++;
    }
    assert_int_equal(made, (LK_METRIC_SLOTS_MAX - S_NSLOTS_HIST) / S_NSLOTS_HIST);
}

/* ---- report lines ---- */

static void test_report_lines(void **state)
{
    (void)state;
    S.role = "gateway";
    S.pid = 42;
    S.instance = 7;
    lk_metric_t a = LK_METRIC(LKM_AUTH_ATTEMPTS, "signup", "success");
    lk_metric_t g = LK_METRIC0(LKM_ACTIVE_SESSIONS);
    lk_metric_t h = LK_METRIC(LKM_REQUEST_DURATION, "/api/auth/signin");
    lk_counter_add(a, 3);
    lk_gauge_set(g, -12);
    lk_histogram_observe_us(h, 120000);

    struct lk_msg m;
    size_t i = 0;
    s_report_fill(&m, &i, 1);
    assert_int_equal(i, 3);
    assert_int_equal(m.type, MSG_RO_METRICS_REPORT);
    assert_string_equal(m.u.ro_metrics_report.role, "gateway");
    assert_int_equal(m.u.ro_metrics_report.final, 1);
    assert_string_equal(m.u.ro_metrics_report.samples,
                        "auth_attempts_total{type=\"signup\",result=\"success\"} 3\n"
                        "active_sessions -12\n"
                        "request_duration_seconds{route=\"/api/auth/signin\"} 120000 0 0 0 0 0 0 "
                        "0 0 0 0 0 1 0 0 0 0 0 0\n");

    /* what the registry writes, the store reads */
    lk_mstore_t *st = lk_mstore_new();
    assert_non_null(st);
    assert_int_equal(lk_mstore_ingest(st, &m.u.ro_metrics_report, 0), 0);
    lk_mstore_destroy(&st);
    assert_null(st);
    lk_mstore_destroy(&st);
}

static void test_report_split(void **state)
{
    (void)state;
    char v[16];
    S.role = "gateway";
    for (int i = 0; i < 200; i++) {
        snprintf(v, sizeof v, "/route/%d", i);
        lk_counter_add(LK_METRIC(LKM_HTTP_REQUESTS, "GET", v, "200"), (uint64_t)i);
    }
    lk_mstore_t *st = lk_mstore_new();
    struct lk_msg m;
    size_t i = 0, msgs = 0;
    while (i < S.nseries) {
        s_report_fill(&m, &i, 1);
        msgs++;
        const char *t = m.u.ro_metrics_report.samples;
        assert_true(strlen(t) <= LK_METRIC_REPORT_MAX && t[strlen(t) - 1] == '\n');
        assert_int_equal(m.u.ro_metrics_report.final, i == S.nseries);
        assert_int_equal(lk_mstore_ingest(st, &m.u.ro_metrics_report, 0), 0);
    }
    assert_true(msgs > 1);
    char *t = s_render(st, 0);
    assert_true(
        s_value(t, "http_requests_total{method=\"GET\",route=\"/route/199\",status=\"200\"}") ==
        199);
    assert_true(
        s_value(t, "http_requests_total{method=\"GET\",route=\"/route/0\",status=\"200\"}") == 0);
    free(t);
    lk_mstore_destroy(&st);
}

/* ---- the parser: hostile reports ---- */

static void test_parse_hostile(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "nope_total 1\n",                     /* unknown family */
        "latchkey_metrics_reports_total 1\n", /* local family */
        "latchkey_build_info{version=\"1\",protocol=\"2\"} 1\n",
        "active_sessions 1",     /* no newline */
        "active_sessions 1\n\n", /* empty line */
        "\n",
        " active_sessions 1\n",
        "active_sessions  1\n", /* two spaces */
        "active_sessions 1 \n", /* trailing space */
        "active_sessions\t1\n",
        "active_sessions 01\n", /* leading zero */
        "active_sessions +1\n",
        "active_sessions -0\n",
        "active_sessions 1.5\n",
        "active_sessions 1e3\n",
        "active_sessions 9223372036854775808\n", /* past INT64_MAX */
        "active_sessions -9223372036854775809\n",
        "active_sessions NaN\n",
        "active_sessions {} 1\n",
        "active_sessions{} 1\n",    /* braces on a family without labels */
        "latchkey_queue_depth 1\n", /* labels missing */
        "latchkey_queue_depth{} 1\n",
        "latchkey_queue_depth{role=\"signin\"} -1\n", /* a negative gauge is fine... */
        "auth_attempts_total{type=\"signin\",result=\"success\"} -1\n", /* ...a counter not */
        "auth_attempts_total{result=\"success\",type=\"signin\"} 1\n",  /* label order */
        "auth_attempts_total{type=\"signin\"} 1\n",
        "auth_attempts_total{type=\"signin\",result=\"success\",x=\"y\"} 1\n",
        "auth_attempts_total{type=\"signin\",result=\"success\",} 1\n",
        "auth_attempts_total{type=\"signin\",result=\"\"} 1\n",
        "auth_attempts_total{type=\"sig\\\"nin\",result=\"x\"} 1\n",
        "auth_attempts_total{type=\"sig nin\",result=\"x\"} 1\n",
        "auth_attempts_total{type=signin,result=\"x\"} 1\n",
        "auth_attempts_total{type=\"signin\",result=\"x\" 1\n",
        "auth_attempts_total{type=\"signin\",result=\"x\n",
        "auth_attempts_total{type=\"signin\",result=\"x\"}1\n",
        "auth_attempts_total{type=\"signin\",result=\"x\"} 18446744073709551616\n",
        "auth_attempts_total{type=\"signin\",result=\"x\"} 99999999999999999999999\n",
        "auth_attempts_total{type=\"signin\",result=\"x\"} 1 2\n",
        "auth_attempts_total{type=\"signin\",result=\"x\"} \n",
        "AUTH_ATTEMPTS_TOTAL{type=\"signin\",result=\"x\"} 1\n",
        "auth_attempts{type=\"signin\",result=\"x\"} 1\n",
        "auth_attempts_total_x{type=\"signin\",result=\"x\"} 1\n",
        "request_duration_seconds{route=\"/a\"} 1\n", /* a histogram needs 19 numbers */
        "request_duration_seconds{route=\"/a\"} 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
        "request_duration_seconds{route=\"/a\"} 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
        "request_duration_seconds{route=\"/a\"} -1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
        "request_duration_seconds_bucket{route=\"/a\",le=\"0.1\"} 1\n",
        "active_sessions 1\nnope 2\n", /* one bad line spoils all */
    };
    lk_mstore_t *st = lk_mstore_new();
    uint64_t want_bad = 0;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = s_ingest(st, bad[i], 0);
        if (i == 22) { /* the negative gauge */
            assert_int_equal(rc, 0);
            continue;
        }
        if (rc != LK_EMALFORMED)
            fail_msg("accepted: %s", bad[i]);
        want_bad++;
    }
    /* a long label value, and a role that is not a label value */
    char line[256];
    snprintf(line, sizeof line, "latchkey_queue_depth{role=\"%065d\"} 1\n", 0);
    assert_int_equal(s_ingest(st, line, 0), LK_EMALFORMED);
    want_bad++;
    assert_int_equal(lk_mstore_ingest(st, s_report("bad role", 1, 99, "active_sessions 1\n", 0), 0),
                     LK_EMALFORMED);
    assert_int_equal(lk_mstore_ingest(st, s_report("", 1, 99, "active_sessions 1\n", 0), 0),
                     LK_EMALFORMED);
    struct lk_msg_ro_metrics_report *r = s_report("gateway", 1, 98, "", 0);
    r->final = 2;
    assert_int_equal(lk_mstore_ingest(st, r, 0), LK_EMALFORMED);
    want_bad += 3;
    /* an instance id cannot change role or pid */
    assert_int_equal(s_ingest(st, "active_sessions 1\n", 0), 0);
    assert_int_equal(lk_mstore_ingest(st, s_report("signin", 10, 1, "active_sessions 1\n", 0), 0),
                     LK_EMALFORMED);
    assert_int_equal(lk_mstore_ingest(st, s_report("gateway", 11, 1, "active_sessions 1\n", 0), 0),
                     LK_EMALFORMED);
    want_bad += 2;
    lk_mstore_dropped(st);
    want_bad++;

    char *t = s_render(st, 0);
    assert_true(s_value(t, "latchkey_metrics_reports_malformed_total") == (double)want_bad);
    assert_true(s_value(t, "latchkey_metrics_reports_total") == 2);
    assert_null(strstr(t, "nope"));
    assert_true(s_value(t, "latchkey_queue_depth{role=\"signin\"}") == -1);
    free(t);
    lk_mstore_destroy(&st);
}

/* Random bytes and random mutations of a valid report: never a crash, never a read past
 * the text (ASan, valgrind), and what is accepted renders. */
static void test_parse_random(void **state)
{
    (void)state;
    const char *good =
        "auth_attempts_total{type=\"signin\",result=\"success\"} 12\n"
        "active_sessions -3\n"
        "request_duration_seconds{route=\"/a\"} 9 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 2\n";
    static const char alphabet[] = "{}\"=, \n-0123456789_abcdefghijklmnopqrstuvwxyz/.:+\\\t";
    lk_mstore_t *st = lk_mstore_new();
    uint64_t x = 88172645463325252ULL;
    char buf[LK_METRIC_REPORT_MAX + 1];
    for (int iter = 0; iter < 20000; iter++) {
        size_t n;
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        if (iter % 4 == 0) {
            n = x % 200;
            for (size_t i = 0; i < n; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                buf[i] = alphabet[x % (sizeof alphabet - 1)];
            }
        } else {
            n = strlen(good);
            memcpy(buf, good, n);
            for (int k = 0; k < 1 + (int)(x % 3) && n > 0; k++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                size_t at = x % n;
                switch (x >> 60 & 3) {
                case 0:
                    buf[at] = alphabet[(x >> 8) % (sizeof alphabet - 1)];
                    break;
                case 1:
                    memmove(buf + at, buf + at + 1, n - at - 1);
                    n--;
                    break;
                case 2:
                    n = at;
                    break;
                default:
                    buf[at] = (char)(1 + (x >> 16) % 255);
                    break;
                }
            }
        }
        buf[n] = '\0';
        int rc = lk_mstore_ingest(st, s_report("gateway", 1, 1 + (x % 4), buf, x & 1), 0);
        assert_true(rc == 0 || rc == LK_EMALFORMED || rc == LK_ETOOBIG);
    }
    char *t = s_render(st, 0);
    assert_non_null(strstr(t, "# TYPE active_sessions gauge\n"));
    free(t);
    lk_mstore_destroy(&st);
}

/* ---- the store ---- */

static void test_store_sum_and_restart(void **state)
{
    (void)state;
    lk_mstore_t *st = lk_mstore_new();
    const char *c = "auth_attempts_total{type=\"signin\",result=\"success\"}";

    /* two signin workers */
    assert_int_equal(
        lk_mstore_ingest(st,
                         s_report("signin", 1, 100,
                                  "auth_attempts_total{type=\"signin\",result=\"success\"} "
                                  "5\nlatchkey_resident_memory_bytes{role=\"signin\"} 1000\n",
                                  0),
                         0),
        0);
    assert_int_equal(
        lk_mstore_ingest(st,
                         s_report("signin", 2, 200,
                                  "auth_attempts_total{type=\"signin\",result=\"success\"} "
                                  "7\nlatchkey_resident_memory_bytes{role=\"signin\"} 3000\n",
                                  0),
                         0),
        0);
    char *t = s_render(st, 0);
    assert_true(s_value(t, c) == 12);
    assert_true(s_value(t, "latchkey_resident_memory_bytes{role=\"signin\"}") == 4000);
    assert_true(s_value(t, "latchkey_metrics_sources{role=\"signin\"}") == 2);
    free(t);

    /* worker 1 is killed (no final report) and restarts as instance 101: its 5 stay */
    assert_int_equal(
        lk_mstore_ingest(st,
                         s_report("signin", 3, 101,
                                  "auth_attempts_total{type=\"signin\",result=\"success\"} "
                                  "1\nlatchkey_resident_memory_bytes{role=\"signin\"} 500\n",
                                  0),
                         1000),
        0);
    t = s_render(st, 1000);
    assert_true(s_value(t, c) == 13);
    /* instance 100 is not stale yet: its gauge still counts */
    assert_true(s_value(t, "latchkey_resident_memory_bytes{role=\"signin\"}") == 4500);
    free(t);
    assert_int_equal(
        lk_mstore_ingest(st,
                         s_report("signin", 2, 200,
                                  "auth_attempts_total{type=\"signin\",result=\"success\"} 8\n", 0),
                         5500),
        0);
    assert_int_equal(
        lk_mstore_ingest(st,
                         s_report("signin", 3, 101,
                                  "auth_attempts_total{type=\"signin\",result=\"success\"} 2\n", 0),
                         5500),
        0);
    t = s_render(st, 5500);
    assert_true(s_value(t, c) == 15); /* 5 (gone) + 8 + 2 */
    assert_true(s_value(t, "latchkey_resident_memory_bytes{role=\"signin\"}") == 3500);
    assert_true(s_value(t, "latchkey_metrics_sources{role=\"signin\"}") == 2);
    free(t);

    /* a report out of order cannot take a counter back; a gauge follows the latest */
    assert_int_equal(
        lk_mstore_ingest(st,
                         s_report("signin", 2, 200,
                                  "auth_attempts_total{type=\"signin\",result=\"success\"} "
                                  "6\nlatchkey_resident_memory_bytes{role=\"signin\"} 10\n",
                                  0),
                         5600),
        0);
    t = s_render(st, 5600);
    assert_true(s_value(t, c) == 15);
    assert_true(s_value(t, "latchkey_resident_memory_bytes{role=\"signin\"}") == 510);
    free(t);

    /* a clean exit: the final report ends the gauges at once, the counters stay */
    assert_int_equal(
        lk_mstore_ingest(st,
                         s_report("signin", 2, 200,
                                  "auth_attempts_total{type=\"signin\",result=\"success\"} "
                                  "9\nlatchkey_resident_memory_bytes{role=\"signin\"} 10\n",
                                  1),
                         5700),
        0);
    t = s_render(st, 5700);
    assert_true(s_value(t, c) == 16);
    assert_true(s_value(t, "latchkey_resident_memory_bytes{role=\"signin\"}") == 500);
    assert_true(s_value(t, "latchkey_metrics_sources{role=\"signin\"}") == 1);
    free(t);

    /* everyone silent: gauges drop to 0, counters stay */
    t = s_render(st, 60000);
    assert_true(s_value(t, c) == 16);
    assert_true(s_value(t, "latchkey_resident_memory_bytes{role=\"signin\"}") == 0);
    assert_true(s_value(t, "latchkey_metrics_sources{role=\"signin\"}") == -1);
    free(t);
    lk_mstore_destroy(&st);
}

/* More sources than the table holds: gone ones are folded into the base, totals intact. */
static void test_store_eviction(void **state)
{
    (void)state;
    lk_mstore_t *st = lk_mstore_new();
    const char *c = "latchkey_cpu_seconds_total{role=\"signup\"}";
    uint64_t sum = 0;
    for (uint64_t i = 1; i <= 3 * LK_MSTORE_SOURCES_MAX; i++) {
        char line[128];
        snprintf(line, sizeof line, "%s %" PRIu64 "\n", c, i * 10);
        sum += i * 10;
        /* each one says goodbye: a restart loop of short-lived processes */
        assert_int_equal(
            lk_mstore_ingest(st, s_report("signup", (uint32_t)i, i, line, 1), (int64_t)i), 0);
    }
    char *t = s_render(st, 0);
    /* microseconds, exposed in seconds */
    char want[64];
    snprintf(want, sizeof want, "%" PRIu64 ".%06" PRIu64, sum / 1000000, sum % 1000000);
    char *p = strstr(t, c);
    assert_non_null(p);
    assert_int_equal(strncmp(p + strlen(c) + 1, want, strlen(want)), 0);
    free(t);

    /* every entry live: a new source has no room, and is dropped */
    lk_mstore_destroy(&st);
    st = lk_mstore_new();
    for (uint64_t i = 1; i <= LK_MSTORE_SOURCES_MAX; i++)
        assert_int_equal(lk_mstore_ingest(st, s_report("signup", 1, i, "", 0), 0), 0);
    assert_int_equal(lk_mstore_ingest(st, s_report("signup", 1, 9999, "", 0), 0), LK_ETOOBIG);
    /* once they are stale, there is room again */
    assert_int_equal(
        lk_mstore_ingest(st, s_report("signup", 1, 9999, "", 0), LK_MSTORE_STALE_MS + 1), 0);
    lk_mstore_destroy(&st);
}

static void test_store_series_full(void **state)
{
    (void)state;
    lk_mstore_t *st = lk_mstore_new();
    char text[LK_METRIC_REPORT_MAX + 1];
    size_t made = 0;
    int rc = 0;
    for (int k = 0; rc == 0; k++) {
        size_t o = 0;
        int n = 0;
        while (o + 64 < LK_METRIC_REPORT_MAX) {
            o += (size_t)snprintf(text + o, sizeof text - o,
                                  "latchkey_queue_depth{role=\"r%d_%d\"} 1\n", k, n++);
        }
        rc = s_ingest(st, text, 0);
        if (rc == 0)
            made += (size_t)n;
    }
    assert_int_equal(rc, LK_ETOOBIG);
    assert_true(made <= LK_MSTORE_SERIES_MAX && made > LK_MSTORE_SERIES_MAX - 100);
    /* existing series still update */
    assert_int_equal(s_ingest(st, "latchkey_queue_depth{role=\"r0_0\"} 5\n", 0), 0);
    char *t = s_render(st, 0);
    assert_true(s_value(t, "latchkey_queue_depth{role=\"r0_0\"}") == 5);
    free(t);
    lk_mstore_destroy(&st);
}

/* The exposition's shape: HELP and TYPE once per family, histograms cumulative with _sum
 * and _count, seconds from microseconds. */
static void test_render(void **state)
{
    (void)state;
    lk_mstore_t *st = lk_mstore_new();
    assert_int_equal(s_ingest(st,
                              "request_duration_seconds{route=\"/api/auth/validate\"} 1500 1 2 0 0 "
                              "0 0 0 0 0 0 0 0 0 0 0 0 0 3\n"
                              "latchkey_argon2_duration_seconds{role=\"signup\",op=\"hash\"} "
                              "2500001 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 0 0 0\n"
                              "active_sessions 4\n",
                              0),
                     0);
    char *t = s_render(st, 0);
    for (int f = 0; f < LKM_NFAMILIES; f++) {
        char help[128], type[128];
        snprintf(help, sizeof help, "# HELP %s ", lk_metric_families[f].name);
        snprintf(type, sizeof type, "# TYPE %s ", lk_metric_families[f].name);
        char *h = strstr(t, help), *y = strstr(t, type);
        assert_non_null(h);
        assert_non_null(y);
        assert_null(strstr(h + 1, help));
        assert_true(h < y);
    }
    const char *r = "{route=\"/api/auth/validate\"";
    char k[160];
    snprintf(k, sizeof k, "request_duration_seconds_bucket%s,le=\"5e-05\"}", r);
    assert_true(s_value(t, k) == 1);
    snprintf(k, sizeof k, "request_duration_seconds_bucket%s,le=\"0.0001\"}", r);
    assert_true(s_value(t, k) == 3);
    snprintf(k, sizeof k, "request_duration_seconds_bucket%s,le=\"10\"}", r);
    assert_true(s_value(t, k) == 3);
    snprintf(k, sizeof k, "request_duration_seconds_bucket%s,le=\"+Inf\"}", r);
    assert_true(s_value(t, k) == 6);
    snprintf(k, sizeof k, "request_duration_seconds_count%s}", r);
    assert_true(s_value(t, k) == 6);
    assert_non_null(
        strstr(t, "request_duration_seconds_sum{route=\"/api/auth/validate\"} 0.001500\n"));
    assert_non_null(
        strstr(t, "latchkey_argon2_duration_seconds_sum{role=\"signup\",op=\"hash\"} 2.500001\n"));
    assert_non_null(strstr(t, "# TYPE request_duration_seconds histogram\n"));
    assert_non_null(strstr(t, "# TYPE auth_attempts_total counter\n"));
    assert_non_null(strstr(t, "latchkey_build_info{version=\"" LK_VERSION "\",protocol=\""));
    assert_true(s_value(t, "active_sessions") == 4);
    assert_int_equal(t[strlen(t) - 1], '\n');
    free(t);
    lk_mstore_destroy(&st);
}

/* docs/monitoring.md names every family (run from the repository's root, as tests/run
 * does). */
static void test_docs(void **state)
{
    (void)state;
    FILE *f = fopen("docs/monitoring.md", "rb");
    assert_non_null(f);
    static char text[256 * 1024];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    for (int i = 0; i < LKM_NFAMILIES; i++) {
        char name[96];
        snprintf(name, sizeof name, "`%s`", lk_metric_families[i].name);
        if (!strstr(text, name))
            fail_msg("docs/monitoring.md does not name %s", name);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_families, s_setup),
        cmocka_unit_test_setup(test_register, s_setup),
        cmocka_unit_test_setup(test_histogram_buckets, s_setup),
        cmocka_unit_test_setup(test_registry_full, s_setup),
        cmocka_unit_test_setup(test_report_lines, s_setup),
        cmocka_unit_test_setup(test_report_split, s_setup),
        cmocka_unit_test_setup(test_parse_hostile, s_setup),
        cmocka_unit_test_setup(test_parse_random, s_setup),
        cmocka_unit_test_setup(test_store_sum_and_restart, s_setup),
        cmocka_unit_test_setup(test_store_eviction, s_setup),
        cmocka_unit_test_setup(test_store_series_full, s_setup),
        cmocka_unit_test_setup(test_render, s_setup),
        cmocka_unit_test(test_docs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
