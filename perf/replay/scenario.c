/* scenario.c: scenario files, trace files, and access logs turned into traces.
 *
 * A scenario file is JSON (perf/scenarios/README.md has the whole format):
 *   {"name": "...", "setup": {"users": N, "tokens": N},
 *    "phases": [{"name": "...", "duration": 60, "arrivalRate": 10, "rampTo": 20}, ...]
 *      or "stages": [{"duration": "2m", "target": 100}, ...],
 *    "flows": [{"name": "...", "weight": 70, "steps": [{"signup": "unique"}, {"think": 2},
 *               {"signin": "own"}, {"validate": "own"|"pool"|"random"}, {"signout": "own"}]}]}
 * Unknown keys, wrong types and out-of-range numbers are errors naming the key: a typo in a
 * scenario must not silently run another load.
 *
 * A trace file is text: a header line "# latchkey-replay trace v1", then one request per
 * line, "<ms from the start> <METHOD> <route> <status>", in time order. */
#include "replay.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TRACE_HEADER "# latchkey-replay trace v1"
#define MAX_TRACE 5000000 /* requests in one trace */
#define MAX_SETUP 200000  /* accounts or sessions the setup makes */

static int s_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int s_seconds(json_t *v, const char *what, double max, double *out, char *err,
                     size_t errlen);
static int s_number(json_t *v, const char *what, double lo, double hi, double *out, char *err,
                    size_t errlen);
static int s_keys(json_t *o, const char *what, const char *const *allowed, char *err,
                  size_t errlen);
static int s_name(json_t *v, const char *what, char *out, size_t outlen, char *err, size_t errlen);
static int s_step(json_t *v, const char *what, struct step *st, char *err, size_t errlen);
static int s_flows(json_t *a, struct scenario *sc, char *err, size_t errlen);
static int s_route_step(const char *method, const char *route, int status, struct step *st);

static int s_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* A duration: a number of seconds, or a string "90", "90s", "2m", "1h" (k6 style). */
static int s_seconds(json_t *v, const char *what, double max, double *out, char *err, size_t errlen)
{
    double x;
    if (json_is_number(v)) {
        x = json_number_value(v);
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        errno = 0;
        x = strtod(s, &end);
        if (end == s || errno)
            return s_err(err, errlen, "%s: \"%s\" is not a duration (e.g. 90, \"90s\", \"2m\")",
                         what, s);
        if (strcmp(end, "m") == 0)
            x *= 60;
        else if (strcmp(end, "h") == 0)
            x *= 3600;
        else if (strcmp(end, "ms") == 0)
            x /= 1000;
        else if (*end && strcmp(end, "s") != 0)
            return s_err(err, errlen, "%s: \"%s\" is not a duration (unit s, m, h or ms)", what, s);
    } else {
        return s_err(err, errlen, "%s: expected a duration (seconds, or a string like \"2m\")",
                     what);
    }
    if (!isfinite(x) || x < 0 || x > max)
        return s_err(err, errlen, "%s: %g s is out of range (0 to %g s)", what, x, max);
    *out = x;
    return 0;
}

static int s_number(json_t *v, const char *what, double lo, double hi, double *out, char *err,
                    size_t errlen)
{
    if (!json_is_number(v))
        return s_err(err, errlen, "%s: expected a number", what);
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi)
        return s_err(err, errlen, "%s: %g is out of range (%g to %g)", what, x, lo, hi);
    *out = x;
    return 0;
}

static int s_keys(json_t *o, const char *what, const char *const *allowed, char *err, size_t errlen)
{
    const char *k;
    json_t *v;
    if (!json_is_object(o))
        return s_err(err, errlen, "%s: expected an object", what);
    json_object_foreach(o, k, v)
    {
        int ok = 0;
        for (const char *const *a = allowed; *a; a++)
            ok |= strcmp(k, *a) == 0;
        if (!ok)
            return s_err(err, errlen, "%s: unknown key \"%.64s\"", what, k);
    }
    return 0;
}

static int s_name(json_t *v, const char *what, char *out, size_t outlen, char *err, size_t errlen)
{
    if (!v)
        return 0;
    if (!json_is_string(v))
        return s_err(err, errlen, "%s: expected a string", what);
    const char *s = json_string_value(v);
    if (strlen(s) >= outlen)
        return s_err(err, errlen, "%s: longer than %zu bytes", what, outlen - 1);
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == '"' || *p == '\\')
            return s_err(err, errlen,
                         "%s: control characters, quotes and backslashes are not allowed", what);
    snprintf(out, outlen, "%s", s);
    return 0;
}

static int s_step(json_t *v, const char *what, struct step *st, char *err, size_t errlen)
{
    if (!json_is_object(v) || json_object_size(v) != 1)
        return s_err(err, errlen,
                     "%s: expected an object with one key (signup, think, signin, "
                     "validate or signout)",
                     what);
    const char *k = json_object_iter_key(json_object_iter(v));
    json_t *a = json_object_iter_value(json_object_iter(v));
    const char *s = json_is_string(a) ? json_string_value(a) : NULL;
    memset(st, 0, sizeof *st);
    if (strcmp(k, "think") == 0) {
        double x;
        char w[160];
        snprintf(w, sizeof w, "%s.think", what);
        if (s_seconds(a, w, 3600, &x, err, errlen) != 0)
            return -1;
        st->kind = RK_THINK;
        st->think_ns = (int64_t)(x * 1e9);
        return 0;
    }
    if (strcmp(k, "signup") == 0) {
        st->kind = RK_SIGNUP;
        if (s && strcmp(s, "unique") == 0)
            st->src = SRC_OWN;
        else
            return s_err(err, errlen, "%s.signup: expected \"unique\" (a new email of this run)",
                         what);
        return 0;
    }
    if (strcmp(k, "signin") == 0) {
        st->kind = RK_SIGNIN;
        if (s && strcmp(s, "own") == 0)
            st->src = SRC_OWN;
        else if (s && strcmp(s, "pool") == 0)
            st->src = SRC_POOL;
        else if (s && strcmp(s, "unknown") == 0)
            st->src = SRC_WRONG;
        else
            return s_err(err, errlen,
                         "%s.signin: expected \"own\" (the email this user signed up), "
                         "\"pool\" (an account of the setup) or \"unknown\"",
                         what);
        return 0;
    }
    if (strcmp(k, "validate") == 0) {
        st->kind = RK_VALIDATE;
        if (s && strcmp(s, "own") == 0)
            st->src = SRC_OWN;
        else if (s && strcmp(s, "pool") == 0)
            st->src = SRC_POOL;
        else if (s && strcmp(s, "random") == 0)
            st->src = SRC_RANDOM;
        else
            return s_err(err, errlen,
                         "%s.validate: expected \"own\" (the token just received), "
                         "\"pool\" (a token of the setup) or \"random\"",
                         what);
        return 0;
    }
    if (strcmp(k, "signout") == 0) {
        st->kind = RK_SIGNOUT;
        if (s && strcmp(s, "own") == 0)
            st->src = SRC_OWN;
        else if (s && strcmp(s, "random") == 0)
            st->src = SRC_WRONG;
        else
            return s_err(err, errlen, "%s.signout: expected \"own\" or \"random\"", what);
        return 0;
    }
    return s_err(err, errlen,
                 "%s: unknown step \"%.64s\" (signup, think, signin, validate, signout)", what, k);
}

static int s_flows(json_t *a, struct scenario *sc, char *err, size_t errlen)
{
    static const char *const fkeys[] = {"name", "weight", "steps", NULL};
    if (!json_is_array(a) || json_array_size(a) == 0)
        return s_err(err, errlen, "flows: expected a non-empty array");
    if (json_array_size(a) > MAX_FLOWS)
        return s_err(err, errlen, "flows: more than %d flows", MAX_FLOWS);
    size_t i;
    json_t *f;
    json_array_foreach(a, i, f)
    {
        struct flow *fl = &sc->flows[sc->nflows++];
        char w[64];
        snprintf(w, sizeof w, "flows[%zu]", i);
        if (s_keys(f, w, fkeys, err, errlen) != 0)
            return -1;
        snprintf(fl->name, sizeof fl->name, "flow %zu", i + 1);
        snprintf(w, sizeof w, "flows[%zu].name", i);
        if (s_name(json_object_get(f, "name"), w, fl->name, sizeof fl->name, err, errlen) != 0)
            return -1;
        fl->weight = 1;
        json_t *wt = json_object_get(f, "weight");
        snprintf(w, sizeof w, "flows[%zu].weight", i);
        if (wt && s_number(wt, w, 0.001, 1e6, &fl->weight, err, errlen) != 0)
            return -1;
        sc->total_weight += fl->weight;
        json_t *steps = json_object_get(f, "steps");
        if (!json_is_array(steps) || json_array_size(steps) == 0)
            return s_err(err, errlen, "flows[%zu].steps: expected a non-empty array", i);
        if (json_array_size(steps) > MAX_STEPS)
            return s_err(err, errlen, "flows[%zu].steps: more than %d steps", i, MAX_STEPS);
        size_t j;
        json_t *st;
        int requests = 0, has_signup = 0, has_token = 0;
        json_array_foreach(steps, j, st)
        {
            char sw[96];
            snprintf(sw, sizeof sw, "flows[%zu].steps[%zu]", i, j);
            struct step *s = &fl->steps[fl->nsteps++];
            if (s_step(st, sw, s, err, errlen) != 0)
                return -1;
            if (s->kind != RK_THINK)
                requests++;
            if (s->kind == RK_SIGNIN && s->src == SRC_OWN && !has_signup)
                return s_err(err, errlen, "%s: signin \"own\" needs a signup step before it", sw);
            if ((s->kind == RK_VALIDATE || s->kind == RK_SIGNOUT) && s->src == SRC_OWN &&
                !has_token)
                return s_err(err, errlen,
                             "%s: \"own\" needs a signin step before it (the token "
                             "it received)",
                             sw);
            if (s->kind == RK_SIGNUP)
                has_signup = 1;
            if (s->kind == RK_SIGNIN && s->src != SRC_WRONG)
                has_token = 1;
            if (s->kind == RK_SIGNOUT)
                has_token = 0; /* revoked */
            if ((s->kind == RK_SIGNIN || s->kind == RK_VALIDATE) && s->src == SRC_POOL) {
                if (sc->setup_users == 0)
                    return s_err(err, errlen, "%s: \"pool\" needs setup.users > 0", sw);
                if (s->kind == RK_VALIDATE && sc->setup_tokens == 0)
                    return s_err(err, errlen, "%s: validate \"pool\" needs setup.tokens > 0", sw);
            }
        }
        if (requests == 0)
            return s_err(err, errlen, "flows[%zu].steps: no request, only think time", i);
    }
    return 0;
}

int scenario_load(const char *path, struct scenario *sc, char *err, size_t errlen)
{
    static const char *const keys[] = {"name",   "description", "setup", "phases",
                                       "stages", "flows",       NULL};
    static const char *const pkeys[] = {"name", "duration", "arrivalRate", "rampTo", NULL};
    static const char *const gkeys[] = {"name", "duration", "target", NULL};
    static const char *const ukeys[] = {"users", "tokens", NULL};
    char e[256];
    json_error_t je;
    int rc = -1;

    memset(sc, 0, sizeof *sc);
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root && je.line < 1)
        return s_err(err, errlen, "scenario %s: %s", path, je.text);
    if (!root)
        return s_err(err, errlen, "scenario %s: %s (line %d, column %d)", path, je.text, je.line,
                     je.column);
    if (s_keys(root, "the top level", keys, e, sizeof e) != 0)
        goto bad;
    {
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        snprintf(sc->name, sizeof sc->name, "%.*s", (int)strcspn(base, "."), base);
    }
    if (s_name(json_object_get(root, "name"), "name", sc->name, sizeof sc->name, e, sizeof e) != 0)
        goto bad;
    json_t *setup = json_object_get(root, "setup");
    if (setup) {
        double x;
        if (s_keys(setup, "setup", ukeys, e, sizeof e) != 0)
            goto bad;
        json_t *u = json_object_get(setup, "users"), *t = json_object_get(setup, "tokens");
        if (u) {
            if (s_number(u, "setup.users", 0, MAX_SETUP, &x, e, sizeof e) != 0)
                goto bad;
            sc->setup_users = (int)x;
        }
        if (t) {
            if (s_number(t, "setup.tokens", 0, MAX_SETUP, &x, e, sizeof e) != 0)
                goto bad;
            sc->setup_tokens = (int)x;
            if (sc->setup_tokens && !sc->setup_users) {
                snprintf(e, sizeof e,
                         "setup.tokens: needs setup.users > 0 (whose sessions they are)");
                goto bad;
            }
        }
    }
    json_t *ph = json_object_get(root, "phases"), *sg = json_object_get(root, "stages");
    if ((ph != NULL) == (sg != NULL)) {
        snprintf(e, sizeof e,
                 "expected either \"phases\" (arrival rates) or \"stages\" (virtual users), "
                 "exactly one of them");
        goto bad;
    }
    json_t *list = ph ? ph : sg;
    sc->mode = ph ? MODE_ARRIVALS : MODE_STAGES;
    if (!json_is_array(list) || json_array_size(list) == 0 || json_array_size(list) > MAX_PHASES) {
        snprintf(e, sizeof e, "%s: expected an array of 1 to %d entries", ph ? "phases" : "stages",
                 MAX_PHASES);
        goto bad;
    }
    size_t i;
    json_t *p;
    int prev_vus = 0;
    json_array_foreach(list, i, p)
    {
        struct phase *q = &sc->phases[sc->nphases++];
        char w[64];
        snprintf(w, sizeof w, "%s[%zu]", ph ? "phases" : "stages", i);
        if (s_keys(p, w, ph ? pkeys : gkeys, e, sizeof e) != 0)
            goto bad;
        snprintf(q->name, sizeof q->name, "%s %zu", ph ? "phase" : "stage", i + 1);
        snprintf(w, sizeof w, "%s[%zu].name", ph ? "phases" : "stages", i);
        if (s_name(json_object_get(p, "name"), w, q->name, sizeof q->name, e, sizeof e) != 0)
            goto bad;
        snprintf(w, sizeof w, "%s[%zu].duration", ph ? "phases" : "stages", i);
        json_t *d = json_object_get(p, "duration");
        if (!d) {
            snprintf(e, sizeof e, "%s: missing", w);
            goto bad;
        }
        if (s_seconds(d, w, 86400, &q->dur_s, e, sizeof e) != 0)
            goto bad;
        if (q->dur_s < 0.001) {
            snprintf(e, sizeof e, "%s: must be positive", w);
            goto bad;
        }
        if (ph) {
            json_t *r = json_object_get(p, "arrivalRate"), *t = json_object_get(p, "rampTo");
            snprintf(w, sizeof w, "phases[%zu].arrivalRate", i);
            if (!r) {
                snprintf(e, sizeof e, "%s: missing", w);
                goto bad;
            }
            if (s_number(r, w, 0, 100000, &q->rate0, e, sizeof e) != 0)
                goto bad;
            q->rate1 = q->rate0;
            snprintf(w, sizeof w, "phases[%zu].rampTo", i);
            if (t && s_number(t, w, 0, 100000, &q->rate1, e, sizeof e) != 0)
                goto bad;
        } else {
            json_t *t = json_object_get(p, "target");
            double x;
            snprintf(w, sizeof w, "stages[%zu].target", i);
            if (!t) {
                snprintf(e, sizeof e, "%s: missing", w);
                goto bad;
            }
            if (s_number(t, w, 0, 20000, &x, e, sizeof e) != 0)
                goto bad;
            q->vus0 = prev_vus;
            q->vus1 = (int)x;
            prev_vus = q->vus1;
        }
        sc->total_s += q->dur_s;
    }
    if (s_flows(json_object_get(root, "flows"), sc, e, sizeof e) != 0)
        goto bad;
    rc = 0;
    goto out;
bad:
    s_err(err, errlen, "scenario %s: %s", path, e);
out:
    json_decref(root);
    return rc;
}

/* What a recorded request becomes. Returns 0, or -1 for a line that is not replayed. */
static int s_route_step(const char *method, const char *route, int status, struct step *st)
{
    memset(st, 0, sizeof *st);
    if (strcmp(method, "POST") == 0 && strcmp(route, "/api/auth/signup") == 0) {
        st->kind = RK_SIGNUP;
        st->src = status == 409 ? SRC_TAKEN : status == 400 ? SRC_BAD : SRC_OWN;
    } else if (strcmp(method, "POST") == 0 && strcmp(route, "/api/auth/signin") == 0) {
        st->kind = RK_SIGNIN;
        st->src = status == 200 ? SRC_POOL : SRC_WRONG;
    } else if (strcmp(method, "GET") == 0 && strcmp(route, "/api/auth/validate") == 0) {
        st->kind = RK_VALIDATE;
        st->src = status == 200 ? SRC_POOL : SRC_RANDOM;
    } else if (strcmp(method, "POST") == 0 && strcmp(route, "/api/auth/signout") == 0) {
        st->kind = RK_SIGNOUT;
        st->src = status == 204 ? SRC_REVOKE : SRC_WRONG;
    } else if (strcmp(method, "GET") == 0 &&
               (strcmp(route, "/health") == 0 || strcmp(route, "/ready") == 0)) {
        st->kind = RK_GET;
        snprintf(st->path, sizeof st->path, "%s", route);
    } else {
        return -1;
    }
    return 0;
}

int trace_load(const char *path, double speed, struct scenario *sc, char *err, size_t errlen)
{
    memset(sc, 0, sizeof *sc);
    FILE *f = fopen(path, "r");
    if (!f)
        return s_err(err, errlen, "trace %s: %s", path, strerror(errno));
    char line[512];
    size_t lineno = 0, cap = 0;
    int signins = 0, pool_validates = 0, taken = 0;
    int64_t prev = 0;
    if (!fgets(line, sizeof line, f) || strncmp(line, TRACE_HEADER, strlen(TRACE_HEADER)) != 0) {
        fclose(f);
        return s_err(err, errlen,
                     "trace %s: not a trace file (the first line must be \"%s\"; "
                     "make one with --record-from-log)",
                     path, TRACE_HEADER);
    }
    lineno = 1;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        if (!strchr(line, '\n') && !feof(f)) {
            s_err(err, errlen, "trace %s:%zu: line too long", path, lineno);
            goto bad;
        }
        if (line[0] == '#' || line[strspn(line, " \t\r\n")] == '\0')
            continue;
        long long ms;
        char method[16], route[128];
        int status, n = 0;
        if (sscanf(line, "%lld %15s %127s %d %n", &ms, method, route, &status, &n) != 4 ||
            line[n] != '\0') {
            s_err(err, errlen, "trace %s:%zu: expected \"<ms> <METHOD> <route> <status>\"", path,
                  lineno);
            goto bad;
        }
        if (ms < 0 || ms > 86400000LL * 7 || status < 100 || status > 599) {
            s_err(err, errlen, "trace %s:%zu: time or status out of range", path, lineno);
            goto bad;
        }
        int64_t t = (int64_t)((double)ms * 1e6 / speed);
        if (t < prev) {
            s_err(err, errlen, "trace %s:%zu: not in time order", path, lineno);
            goto bad;
        }
        prev = t;
        struct step st;
        if (s_route_step(method, route, status, &st) != 0) {
            s_err(err, errlen, "trace %s:%zu: %s %s is not a request the replayer makes", path,
                  lineno, method, route);
            goto bad;
        }
        if (sc->ntrace == MAX_TRACE) {
            s_err(err, errlen, "trace %s: more than %d requests", path, MAX_TRACE);
            goto bad;
        }
        if (sc->ntrace == cap) {
            cap = cap ? cap * 2 : 1024;
            struct trace_ev *n2 = realloc(sc->trace, cap * sizeof *n2);
            if (!n2) {
                s_err(err, errlen, "trace %s: out of memory", path);
                goto bad;
            }
            sc->trace = n2;
        }
        sc->trace[sc->ntrace++] = (struct trace_ev){.t_ns = t, .step = st, .status = status};
        signins += st.kind == RK_SIGNIN && st.src == SRC_POOL;
        pool_validates += st.kind == RK_VALIDATE && st.src == SRC_POOL;
        taken += st.kind == RK_SIGNUP && st.src == SRC_TAKEN;
        sc->setup_revoke += st.kind == RK_SIGNOUT && st.src == SRC_REVOKE;
    }
    if (ferror(f)) {
        s_err(err, errlen, "trace %s: read error", path);
        goto bad;
    }
    fclose(f);
    if (sc->ntrace == 0) {
        scenario_free(sc);
        return s_err(err, errlen, "trace %s: no request in it", path);
    }
    if (sc->setup_revoke > MAX_SETUP) {
        scenario_free(sc);
        return s_err(err, errlen, "trace %s: more than %d successful signouts", path, MAX_SETUP);
    }
    /* The pool: enough accounts that signins do not all hit one, a few tokens for the
     * validates that succeeded, one more session per successful signout. */
    sc->setup_users = signins || pool_validates || taken || sc->setup_revoke ? 1 : 0;
    if (signins > sc->setup_users)
        sc->setup_users = signins < 100 ? signins : 100;
    sc->setup_tokens = pool_validates ? (pool_validates < 100 ? pool_validates : 100) : 0;
    const char *base = strrchr(path, '/');
    snprintf(sc->name, sizeof sc->name, "trace %.80s at %gx", base ? base + 1 : path, speed);
    sc->mode = MODE_TRACE;
    sc->nphases = 1;
    snprintf(sc->phases[0].name, sizeof sc->phases[0].name, "trace");
    sc->total_s = (double)sc->trace[sc->ntrace - 1].t_ns / 1e9 + 0.001;
    sc->phases[0].dur_s = sc->total_s;
    return 0;
bad:
    fclose(f);
    scenario_free(sc);
    return -1;
}

/* "2026-12-04T23:15:42.123Z" -> ms since the epoch, or -1. */
static int64_t s_time_ms(const char *s)
{
    struct tm tm = {0};
    int ms = 0, n = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
               &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms, &n) != 7 ||
        n == 0)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t t = timegm(&tm);
    return t < 0 ? -1 : (int64_t)t * 1000 + ms;
}

struct rec {
    int64_t t_ms;
    char method[8];
    char route[32];
    int status;
};

static int s_rec_cmp(const void *a, const void *b)
{
    const struct rec *x = a, *y = b;
    return x->t_ms < y->t_ms ? -1 : x->t_ms > y->t_ms;
}

int trace_record(const char *logpath, const char *outpath, char *err, size_t errlen)
{
    FILE *f = fopen(logpath, "r");
    if (!f)
        return s_err(err, errlen, "log %s: %s", logpath, strerror(errno));
    struct rec *v = NULL;
    size_t n = 0, cap = 0, skipped = 0, lines = 0;
    char line[4096];
    int rc = -1;
    while (fgets(line, sizeof line, f)) {
        lines++;
        /* time=T level=info role=gateway pid=P rid=R msg="http method=M route=R status=S us=U
         * bytes=B" */
        const char *tm = strstr(line, "time=");
        const char *m = strstr(line, "msg=\"http method=");
        if (!tm || !m || !strstr(line, " role=gateway "))
            continue;
        char method[16], route[128];
        int status;
        unsigned long long us;
        if (sscanf(m, "msg=\"http method=%15s route=%127s status=%d us=%llu", method, route,
                   &status, &us) != 4) {
            skipped++;
            continue;
        }
        int64_t t = s_time_ms(tm + 5);
        struct step st;
        if (t < 0 || s_route_step(method, route, status, &st) != 0 || status < 100 ||
            status > 599) {
            skipped++;
            continue;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 1024;
            struct rec *n2 = realloc(v, cap * sizeof *n2);
            if (!n2) {
                s_err(err, errlen, "log %s: out of memory", logpath);
                goto out;
            }
            v = n2;
        }
        if (n == MAX_TRACE) {
            s_err(err, errlen, "log %s: more than %d requests", logpath, MAX_TRACE);
            goto out;
        }
        /* the line is written when the answer goes out: the request came us earlier */
        v[n].t_ms = t - (int64_t)(us / 1000);
        snprintf(v[n].method, sizeof v[n].method, "%.7s", method);
        snprintf(v[n].route, sizeof v[n].route, "%.31s", route);
        v[n].status = status;
        n++;
    }
    if (ferror(f)) {
        s_err(err, errlen, "log %s: read error", logpath);
        goto out;
    }
    if (n == 0) {
        s_err(err, errlen,
              "log %s: no gateway access line (\"http method=... route=... status=...\") "
              "of a replayable request among %zu lines",
              logpath, lines);
        goto out;
    }
    qsort(v, n, sizeof *v, s_rec_cmp);
    FILE *o = fopen(outpath, "w");
    if (!o) {
        s_err(err, errlen, "trace %s: %s", outpath, strerror(errno));
        goto out;
    }
    fprintf(o, "%s\n# from %s: <ms from the first request> <method> <route> <status>\n",
            TRACE_HEADER, logpath);
    for (size_t i = 0; i < n; i++)
        fprintf(o, "%lld %s %s %d\n", (long long)(v[i].t_ms - v[0].t_ms), v[i].method, v[i].route,
                v[i].status);
    if (fclose(o) != 0) {
        s_err(err, errlen, "trace %s: write error", outpath);
        goto out;
    }
    fprintf(stderr,
            "latchkey-replay: %s: %zu requests over %.1f s kept, %zu access lines skipped "
            "(other routes or methods)\n",
            outpath, n, (double)(v[n - 1].t_ms - v[0].t_ms) / 1000.0, skipped);
    rc = 0;
out:
    fclose(f);
    free(v);
    return rc;
}

void scenario_free(struct scenario *sc)
{
    free(sc->trace);
    sc->trace = NULL;
    sc->ntrace = 0;
}
