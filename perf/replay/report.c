/* report.c: the replayer's report. Text on stdout; the same numbers in DIR/report.json;
 * a chart of throughput and latency percentiles per second in DIR/report.png, drawn by
 * gnuplot from DIR/series.dat and DIR/report.gp (both kept, to redraw or restyle). */
#include "replay.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* The seed guide's performance-targets table (docs: perf/scenarios/README.md). */
static const struct target {
    enum rkind kind;
    const char *what; /* p95, p99, errors, throughput */
    double limit;     /* ms, percent, or req/s */
} targets[] = {
    {RK_SIGNUP, "p95", 500},         {RK_SIGNUP, "p99", 1000},        {RK_SIGNUP, "errors", 1.0},
    {RK_SIGNUP, "throughput", 1000}, {RK_SIGNIN, "p95", 200},         {RK_SIGNIN, "p99", 500},
    {RK_SIGNIN, "errors", 0.5},      {RK_SIGNIN, "throughput", 2000},
};

static const char *const route_of[RK_N] = {"POST /api/auth/signup", "POST /api/auth/signin",
                                           "GET /api/auth/validate", "POST /api/auth/signout",
                                           "GET /health or /ready"};

static void s_add(struct rstats *d, const struct rstats *s);
static uint64_t s_attempts(const struct rstats *s);
static double s_ms(uint64_t us);
static json_t *s_json(const struct rstats *s, double secs);
static void s_row(const char *name, const struct rstats *s, double secs);
static void s_errors(const char *name, const struct rstats *s);
static int s_chart(const struct results *r, const char *dir);

static void s_add(struct rstats *d, const struct rstats *s)
{
    d->sent += s->sent;
    d->answered += s->answered;
    d->errors += s->errors;
    d->unsent += s->unsent;
    d->cut += s->cut;
    d->timeouts_sent += s->timeouts_sent;
    d->timeouts_unsent += s->timeouts_unsent;
    d->queued += s->queued;
    for (int i = 0; i < 600; i++)
        d->status[i] += s->status[i];
    hist_add(&d->lat, &s->lat);
}

/* Every request the run tried: answered, cut, never sent, or timed out. */
static uint64_t s_attempts(const struct rstats *s)
{
    return s->answered + s->cut + s->unsent + s->timeouts_sent + s->timeouts_unsent;
}

static double s_ms(uint64_t us)
{
    return (double)us / 1000.0;
}

static json_t *s_json(const struct rstats *s, double secs)
{
    uint64_t att = s_attempts(s);
    json_t *st = json_object();
    for (int i = 0; i < 600; i++)
        if (s->status[i]) {
            char k[8];
            snprintf(k, sizeof k, "%d", i);
            json_object_set_new(st, k, json_integer((json_int_t)s->status[i]));
        }
    json_t *lat =
        json_pack("{s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f}", "min", s_ms(s->lat.min), "mean",
                  hist_mean(&s->lat) / 1000.0, "p50", s_ms(hist_percentile(&s->lat, 50)), "p90",
                  s_ms(hist_percentile(&s->lat, 90)), "p95", s_ms(hist_percentile(&s->lat, 95)),
                  "p99", s_ms(hist_percentile(&s->lat, 99)), "p99.9",
                  s_ms(hist_percentile(&s->lat, 99.9)), "max", s_ms(s->lat.max));
    return json_pack("{s:I, s:I, s:I, s:I, s:f, s:I, s:I, s:I, s:I, s:I, s:f, s:o, s:o}",
                     "attempts", (json_int_t)att, "sent", (json_int_t)s->sent, "answered",
                     (json_int_t)s->answered, "errors", (json_int_t)s->errors, "errorRatePercent",
                     att ? 100.0 * (double)s->errors / (double)att : 0.0, "unsent",
                     (json_int_t)s->unsent, "cut", (json_int_t)s->cut, "timeoutsSent",
                     (json_int_t)s->timeouts_sent, "timeoutsUnsent", (json_int_t)s->timeouts_unsent,
                     "waitedForConnection", (json_int_t)s->queued, "throughput",
                     secs > 0 ? (double)s->answered / secs : 0.0, "latencyMs", lat, "status", st);
}

static void s_row(const char *name, const struct rstats *s, double secs)
{
    uint64_t att = s_attempts(s);
    printf("  %-9s %8llu %8llu %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %8.1f %7llu %6.2f%%\n", name,
           (unsigned long long)s->sent, (unsigned long long)s->answered,
           secs > 0 ? (double)s->answered / secs : 0.0, s_ms(hist_percentile(&s->lat, 50)),
           s_ms(hist_percentile(&s->lat, 90)), s_ms(hist_percentile(&s->lat, 95)),
           s_ms(hist_percentile(&s->lat, 99)), s_ms(hist_percentile(&s->lat, 99.9)),
           s_ms(s->lat.max), (unsigned long long)s->errors,
           att ? 100.0 * (double)s->errors / (double)att : 0.0);
}

static void s_errors(const char *name, const struct rstats *s)
{
    printf("    %-9s", name);
    for (int i = 0; i < 600; i++)
        if (s->status[i])
            printf(" %d x%llu", i, (unsigned long long)s->status[i]);
    if (s->cut)
        printf("; cut after sending x%llu", (unsigned long long)s->cut);
    if (s->unsent)
        printf("; connection failed before sending x%llu", (unsigned long long)s->unsent);
    if (s->timeouts_sent)
        printf("; timeouts after sending x%llu", (unsigned long long)s->timeouts_sent);
    if (s->timeouts_unsent)
        printf("; timeouts waiting for a connection x%llu", (unsigned long long)s->timeouts_unsent);
    if (s->queued)
        printf("; waited for a free connection (--max-conns) x%llu", (unsigned long long)s->queued);
    printf("\n");
}

static void s_header(void)
{
    printf("  %-9s %8s %8s %8s %8s %8s %8s %8s %8s %8s %7s %7s\n", "step", "sent", "answered",
           "req/s", "p50 ms", "p90 ms", "p95 ms", "p99 ms", "p99.9 ms", "max ms", "errors", "err%");
}

/* gnuplot draws the chart; its absence or failure is said, and the run's numbers stand. */
static int s_chart(const struct results *r, const char *dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/series.dat", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "latchkey-replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "# second answered/s errors/s p50_ms p90_ms p99_ms max_ms sent/s\n");
    /* every second of the phases, and of the drain while anything happened */
    size_t last = (size_t)r->sc->total_s;
    uint64_t answered = 0;
    for (size_t i = 0; i < r->nsec; i++) {
        answered += r->series[i].answered;
        if (r->series[i].sent || r->series[i].answered || r->series[i].errors)
            last = i > last ? i : last;
    }
    if (last >= r->nsec)
        last = r->nsec - 1;
    for (size_t i = 0; i <= last && i < r->nsec; i++) {
        const struct sec *s = &r->series[i];
        if (s->lat.count)
            fprintf(f, "%zu %llu %llu %.3f %.3f %.3f %.3f %llu\n", i,
                    (unsigned long long)s->answered, (unsigned long long)s->errors,
                    s_ms(hist_percentile(&s->lat, 50)), s_ms(hist_percentile(&s->lat, 90)),
                    s_ms(hist_percentile(&s->lat, 99)), s_ms(s->lat.max),
                    (unsigned long long)s->sent);
        else /* no answer that second: no latency point ("?" is gnuplot's missing value) */
            fprintf(f, "%zu %llu %llu ? ? ? ? %llu\n", i, (unsigned long long)s->answered,
                    (unsigned long long)s->errors, (unsigned long long)s->sent);
    }
    if (fclose(f) != 0) {
        fprintf(stderr, "latchkey-replay: %s: write error\n", path);
        return -1;
    }
    snprintf(path, sizeof path, "%s/report.gp", dir);
    f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "latchkey-replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f,
            "# written by latchkey-replay: gnuplot report.gp (in this directory)\n"
            "set terminal png size 1200,800\n"
            "set output 'report.png'\n"
            "set multiplot layout 2,1 title \"latchkey-replay: %s against %s (%s)\"\n"
            "set grid\nset key outside right top\nset xlabel 'seconds'\nset xrange [0:%zu]\n",
            r->sc->name, r->target, r->started_at, last + 1);
    double t = 0;
    if (r->sc->nphases > 1)
        for (int i = 0; i < r->sc->nphases - 1; i++) {
            t += r->sc->phases[i].dur_s;
            fprintf(f, "set arrow from %g, graph 0 to %g, graph 1 nohead dt 2 lc rgb 'gray'\n", t,
                    t);
        }
    fprintf(f, "set ylabel 'requests/s'\nset yrange [0:*]\n"
               "set y2label 'errors/s' tc rgb 'red'\nset y2range [0:*]\nset y2tics tc rgb 'red'\n"
               "plot 'series.dat' using 1:8 with lines lw 2 title 'sent', "
               "'' using 1:2 with lines lw 2 title 'answered', "
               "'' using 1:3 axes x1y2 with lines lw 2 lc rgb 'red' title 'errors (right)'\n"
               "unset y2label\nunset y2tics\nset ylabel 'latency ms (from the scheduled time)'\n");
    if (answered)
        fprintf(f, "set logscale y\nset yrange [*:*]\n"
                   "plot 'series.dat' using 1:4 with lines lw 2 title 'p50', "
                   "'' using 1:5 with lines lw 2 title 'p90', "
                   "'' using 1:6 with lines lw 2 title 'p99', "
                   "'' using 1:7 with lines lw 1 dt 3 title 'max'\n");
    else /* no answer at all: an empty panel that says so */
        fprintf(f, "set yrange [0:1]\nplot 'series.dat' using 1:(0) with lines lw 2 lc rgb 'red' "
                   "title 'no answer'\n");
    fprintf(f, "unset multiplot\n");
    if (fclose(f) != 0) {
        fprintf(stderr, "latchkey-replay: %s: write error\n", path);
        return -1;
    }
    /* gnuplot runs in dir, quietly; a missing gnuplot is said once */
    pid_t pid;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, "gnuplot.log",
                                     O_WRONLY | O_CREAT | O_TRUNC, 0644);
    char *const argv[] = {"gnuplot", "report.gp", NULL};
    char cwd[4200];
    int rc = -1;
    if (!getcwd(cwd, sizeof cwd) || chdir(dir) != 0) {
        fprintf(stderr, "latchkey-replay: cannot enter %s to draw the chart\n", dir);
        posix_spawn_file_actions_destroy(&fa);
        return -1;
    }
    int e = posix_spawnp(&pid, "gnuplot", &fa, NULL, argv, environ);
    if (e != 0) {
        fprintf(stderr,
                "latchkey-replay: no chart: cannot run gnuplot (%s); install the Debian "
                "package gnuplot-nox\n",
                strerror(e));
    } else {
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
            ;
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
            rc = 0;
        else
            fprintf(stderr,
                    "latchkey-replay: gnuplot failed on %s/report.gp (see %s/gnuplot.log)\n", dir,
                    dir);
    }
    posix_spawn_file_actions_destroy(&fa);
    if (chdir(cwd) != 0)
        fprintf(stderr, "latchkey-replay: cannot return to %s\n", cwd);
    return rc;
}

int report_write(const struct results *r, const char *dir, int *all_pass)
{
    const struct scenario *sc = r->sc;
    struct rstats *tot = calloc(RK_N + 1, sizeof *tot); /* per kind, then all */
    struct rstats *ph_all = calloc(1, sizeof *ph_all);
    if (!tot || !ph_all) {
        free(tot);
        free(ph_all);
        fprintf(stderr, "latchkey-replay: out of memory\n");
        return -1;
    }
    json_t *root = json_object(), *jphases = json_array();
    const char *mode = sc->mode == MODE_ARRIVALS ? "arrivals"
                       : sc->mode == MODE_STAGES ? "stages"
                                                 : "trace";

    printf("\nlatchkey-replay report: %s (%s) against %s, run %s, started %s%s\n", sc->name, mode,
           r->target, r->run_id, r->started_at, r->interrupted ? ", INTERRUPTED" : "");
    printf("measured %.1f s (phases %.1f s + drain %.1f s); connections: %d opened, %d open at "
           "most (limit %d); latency from each request's scheduled send time\n",
           r->measured_s, sc->total_s, r->drain_s, r->conns_opened, r->conns_peak, r->max_conns);
    if (s_attempts(&r->setup))
        printf("setup (not measured): %llu requests in %.1f s, %llu errors\n",
               (unsigned long long)r->setup.sent, r->setup_s, (unsigned long long)r->setup.errors);
    double ph_from = 0;
    for (int p = 0; p < sc->nphases; p++) {
        const struct phase *q = &sc->phases[p];
        /* rates over the time the phase ran: all of it, unless the run was interrupted */
        double secs = q->dur_s;
        if (r->interrupted && r->measured_s < ph_from + secs)
            secs = r->measured_s > ph_from ? r->measured_s - ph_from : 0;
        ph_from += q->dur_s;
        memset(ph_all, 0, sizeof *ph_all);
        printf("\nphase %d \"%s\": %.0f s, ", p + 1, q->name, q->dur_s);
        if (sc->mode == MODE_ARRIVALS && q->rate0 != q->rate1)
            printf("arrivals %g/s ramping to %g/s\n", q->rate0, q->rate1);
        else if (sc->mode == MODE_ARRIVALS)
            printf("arrivals %g/s\n", q->rate0);
        else if (sc->mode == MODE_STAGES)
            printf("virtual users %d -> %d\n", q->vus0, q->vus1);
        else
            printf("recorded requests\n");
        s_header();
        json_t *jsteps = json_object();
        for (int k = 0; k < RK_N; k++) {
            const struct rstats *s = &r->by_phase[(size_t)p * RK_N + k];
            s_add(&tot[k], s);
            s_add(ph_all, s);
            if (!s_attempts(s))
                continue;
            s_row(rkind_names[k], s, secs);
            json_object_set_new(jsteps, rkind_names[k], s_json(s, secs));
        }
        s_row("all", ph_all, secs);
        json_array_append_new(jphases,
                              json_pack("{s:s, s:f, s:f, s:f, s:i, s:i, s:o, s:o}", "name", q->name,
                                        "durationSeconds", q->dur_s, "arrivalRate", q->rate0,
                                        "rampTo", q->rate1, "vusFrom", q->vus0, "vusTo", q->vus1,
                                        "steps", jsteps, "all", s_json(ph_all, secs)));
    }
    for (int k = 0; k < RK_N; k++)
        s_add(&tot[RK_N], &tot[k]);
    double all_s = r->interrupted && r->measured_s < sc->total_s ? r->measured_s : sc->total_s;
    printf("\nall phases: %.0f s\n", all_s);
    s_header();
    json_t *jtot = json_object();
    for (int k = 0; k < RK_N; k++) {
        if (!s_attempts(&tot[k]))
            continue;
        s_row(rkind_names[k], &tot[k], all_s);
        json_object_set_new(jtot, rkind_names[k], s_json(&tot[k], all_s));
    }
    s_row("all", &tot[RK_N], all_s);
    printf("  answers by status and failures:\n");
    for (int k = 0; k < RK_N; k++)
        if (s_attempts(&tot[k]))
            s_errors(rkind_names[k], &tot[k]);
    if (r->unfinished)
        printf("  %llu users were between two steps (thinking) when the drain ended: their "
               "next steps were never sent\n",
               (unsigned long long)r->unfinished);
    if (tot[RK_N].status[429])
        printf("  note: 429 answers: the stack rate-limits per client IP by default; run it with "
               "LATCHKEY_RATELIMIT_CLIENT_RATE=0 for a load test\n");

    /* sent per route, setup included: what the server's http_requests_total must show */
    json_t *jroutes = json_object();
    printf("  sent per route, setup included (compare with http_requests_total):");
    for (int k = 0; k < RK_N; k++) {
        uint64_t n = tot[k].sent;
        if (k == RK_SIGNUP || k == RK_SIGNIN) {
            /* the setup's requests are signups then signins: r->setup is one block; its
             * signups are its accounts (the setup stops at its first failure) */
            uint64_t su = r->setup.sent < (uint64_t)sc->setup_users ? r->setup.sent
                                                                    : (uint64_t)sc->setup_users;
            n += k == RK_SIGNUP ? su : r->setup.sent - su;
        }
        if (!n)
            continue;
        printf(" %s %llu", route_of[k], (unsigned long long)n);
        json_object_set_new(jroutes, route_of[k], json_integer((json_int_t)n));
    }
    printf("\n");

    /* the targets */
    json_t *jt = json_array();
    int pass = 1;
    printf("\ntargets (seed performance-targets table, all phases together):\n");
    for (size_t i = 0; i < sizeof targets / sizeof targets[0]; i++) {
        const struct target *t = &targets[i];
        const struct rstats *s = &tot[t->kind];
        const char *name = rkind_names[t->kind];
        char line[256];
        const char *verdict;
        double measured = 0;
        const char *unit = strcmp(t->what, "errors") == 0       ? "%"
                           : strcmp(t->what, "throughput") == 0 ? "req/s"
                                                                : "ms";
        if (strcmp(t->what, "throughput") == 0) {
            measured = all_s > 0 ? (double)s->answered / all_s : 0;
            verdict = "n/a";
            snprintf(line, sizeof line,
                     "%-4s %s throughput %g req/s: measured %.1f req/s at this "
                     "scenario's offered load (a capacity, not a verdict of an "
                     "open-loop run)",
                     verdict, name, t->limit, measured);
        } else if (!s_attempts(s)) {
            verdict = "n/a";
            snprintf(line, sizeof line, "%-4s %s %s < %g %s: no %s in this run", verdict, name,
                     t->what, t->limit, unit, name);
        } else {
            if (strcmp(t->what, "errors") == 0)
                measured = 100.0 * (double)s->errors / (double)s_attempts(s);
            else
                measured = s_ms(hist_percentile(&s->lat, strcmp(t->what, "p95") == 0 ? 95 : 99));
            /* a percentile over no answer at all fails: every request failed */
            int ok = measured < t->limit && (strcmp(t->what, "errors") == 0 || s->answered > 0);
            verdict = ok ? "PASS" : "FAIL";
            pass &= ok;
            snprintf(line, sizeof line, "%-4s %s %s < %g %s: measured %.2f %s", verdict, name,
                     t->what, t->limit, unit, measured, unit);
        }
        printf("%s\n", line);
        json_array_append_new(jt, json_pack("{s:s, s:s, s:f, s:s, s:f, s:s}", "step", name, "what",
                                            t->what, "limit", t->limit, "unit", unit, "measured",
                                            measured, "verdict", verdict));
    }
    *all_pass = pass;

    json_t *jseries = json_array();
    for (size_t i = 0; i < r->nsec; i++) {
        const struct sec *s = &r->series[i];
        if (!s->sent && !s->answered && i * 1.0 > sc->total_s)
            continue;
        json_array_append_new(
            jseries,
            json_pack("{s:I, s:I, s:I, s:I, s:f, s:f, s:f, s:f}", "second", (json_int_t)i, "sent",
                      (json_int_t)s->sent, "answered", (json_int_t)s->answered, "errors",
                      (json_int_t)s->errors, "p50", s_ms(hist_percentile(&s->lat, 50)), "p90",
                      s_ms(hist_percentile(&s->lat, 90)), "p99", s_ms(hist_percentile(&s->lat, 99)),
                      "max", s_ms(s->lat.max)));
    }
    json_object_set_new(root, "scenario", json_string(sc->name));
    json_object_set_new(root, "mode", json_string(mode));
    json_object_set_new(root, "target", json_string(r->target));
    json_object_set_new(root, "runId", json_string(r->run_id));
    json_object_set_new(root, "startedAt", json_string(r->started_at));
    json_object_set_new(root, "interrupted", json_boolean(r->interrupted));
    json_object_set_new(root, "phasesSeconds", json_real(sc->total_s));
    json_object_set_new(root, "measuredSeconds", json_real(r->measured_s));
    json_object_set_new(root, "drainSeconds", json_real(r->drain_s));
    json_object_set_new(root, "latency",
                        json_string("ms from each request's scheduled send time; "
                                    "log-linear histogram, < 0.8 % bucket width"));
    json_object_set_new(root, "connections",
                        json_pack("{s:i, s:i, s:i}", "limit", r->max_conns, "opened",
                                  r->conns_opened, "peak", r->conns_peak));
    json_object_set_new(root, "setup",
                        json_pack("{s:i, s:i, s:i, s:f, s:o}", "users", sc->setup_users, "tokens",
                                  sc->setup_tokens, "revokeTokens", sc->setup_revoke, "seconds",
                                  r->setup_s, "stats", s_json(&r->setup, r->setup_s)));
    json_object_set_new(root, "unfinishedUsers", json_integer((json_int_t)r->unfinished));
    json_object_set_new(root, "phases", jphases);
    json_object_set_new(root, "total",
                        json_pack("{s:o, s:o}", "steps", jtot, "all", s_json(&tot[RK_N], all_s)));
    json_object_set_new(root, "sentByRouteIncludingSetup", jroutes);
    json_object_set_new(root, "targets", jt);
    json_object_set_new(root, "allTargetsPass", json_boolean(pass));
    json_object_set_new(root, "series", jseries);

    int rc = 0;
    char path[4200];
    snprintf(path, sizeof path, "%s/report.json", dir);
    if (json_dump_file(root, path, JSON_INDENT(1) | JSON_REAL_PRECISION(6)) != 0) {
        fprintf(stderr, "latchkey-replay: cannot write %s\n", path);
        rc = -1;
    }
    json_decref(root);
    free(tot);
    free(ph_all);
    if (rc == 0 && s_chart(r, dir) == 0)
        printf("\nreport: %s/report.json, chart: %s/report.png\n", dir, dir);
    else if (rc == 0)
        printf("\nreport: %s/report.json (no chart)\n", dir);
    fflush(stdout);
    return rc;
}
