/* replay.h: latchkey-replay, the open-loop load replayer (issue 8). Not a public interface:
 * the types shared by its three files.
 *
 *   scenario.c  reads a scenario file (JSON) or a trace file, and turns a gateway access log
 *               into a trace (--record-from-log);
 *   replay.c    the epoll engine: arrivals on schedule, a bounded pool of keep-alive
 *               connections, HTTP/1.1 requests and answers, the statistics; main();
 *   report.c    the report: text on stdout, DIR/report.json, DIR/report.png (gnuplot).
 *
 * Every function returns 0 or -1 after writing its own message into the caller's err buffer
 * (scenario.c) or to stderr (the rest): bad input from outside is an error message, never a
 * crash. Single-threaded. */
#ifndef LK_REPLAY_H
#define LK_REPLAY_H

#include <stddef.h>
#include <stdint.h>

#include "hist.h"

/* What a step does. The first RK_N are the request kinds the report counts separately. */
enum rkind { RK_SIGNUP, RK_SIGNIN, RK_VALIDATE, RK_SIGNOUT, RK_GET, RK_N, RK_THINK = RK_N };

/* Where a step's email or token comes from. */
enum rsrc {
    SRC_OWN,    /* the virtual user's own: the email it signed up, the token it received */
    SRC_POOL,   /* a user (or token) made by the setup step before the measured phases */
    SRC_RANDOM, /* a random token (validate: 401 expected) */
    SRC_WRONG,  /* signin: an unknown email (401 expected); signout: a random token */
    SRC_TAKEN,  /* signup: an email of the pool, already taken (409 expected) */
    SRC_BAD,    /* signup: an invalid email (400 expected) */
    SRC_REVOKE  /* signout: a token made for it by the setup (204 expected) */
};

#define MAX_NAME 64
#define MAX_PHASES 100
#define MAX_FLOWS 32
#define MAX_STEPS 32

struct step {
    enum rkind kind;
    enum rsrc src;
    int64_t think_ns;    /* RK_THINK */
    char path[MAX_NAME]; /* RK_GET: /health or /ready */
};

struct flow {
    char name[MAX_NAME];
    double weight;
    struct step steps[MAX_STEPS];
    int nsteps;
};

/* A phase of arrivals (rate0 new virtual users/s, ramping linearly to rate1) or a k6 stage
 * (the number of looping virtual users ramps linearly from vus0 to vus1). */
struct phase {
    char name[MAX_NAME];
    double dur_s;
    double rate0, rate1;
    int vus0, vus1;
};

/* One request of a trace: when (from the start, at 1x), what, and the recorded status. */
struct trace_ev {
    int64_t t_ns;
    struct step step;
    int status;
};

enum mode { MODE_ARRIVALS, MODE_STAGES, MODE_TRACE };

struct scenario {
    char name[128];
    enum mode mode;
    struct phase phases[MAX_PHASES];
    int nphases;
    struct flow flows[MAX_FLOWS];
    int nflows;
    double total_weight;
    int setup_users;        /* accounts made before the measured phases */
    int setup_tokens;       /* sessions of those accounts signed in before (tokens of the pool) */
    int setup_revoke;       /* more sessions, each revoked once by a signout of the trace */
    struct trace_ev *trace; /* MODE_TRACE: sorted by t_ns; owned, free with scenario_free */
    size_t ntrace;
    double total_s; /* the measured time: sum of the phases */
};

/* Reads the scenario file path into sc. Returns 0, or -1 with a message naming the file and
 * the problem in err. */
int scenario_load(const char *path, struct scenario *sc, char *err, size_t errlen);

/* Reads a trace file (see --record-from-log) and makes it a scenario replayed at speed
 * (1 = as recorded). Returns 0, or -1 with the message in err. */
int trace_load(const char *path, double speed, struct scenario *sc, char *err, size_t errlen);

/* Turns a gateway access log into a trace file. Prints what it kept and skipped on stderr.
 * Returns 0, or -1 with the message in err. */
int trace_record(const char *logpath, const char *outpath, char *err, size_t errlen);

void scenario_free(struct scenario *sc);

/* The answer statistics of one (phase, request kind), of the setup, or of one second. */
struct rstats {
    uint64_t sent;            /* requests whose bytes were all written */
    uint64_t answered;        /* of those, answered with a complete HTTP response */
    uint64_t errors;          /* answers with an unexpected status + every failure below */
    uint64_t unsent;          /* connection failed before the request was fully written */
    uint64_t cut;             /* sent, then the connection failed before a complete answer */
    uint64_t timeouts_sent;   /* sent, no answer within the timeout or the drain */
    uint64_t timeouts_unsent; /* still waiting for a connection at the timeout or the drain */
    uint64_t queued;          /* had to wait for a free connection (--max-conns reached) */
    uint64_t status[600];     /* answers by status code (100..599; 0: an unparsable code) */
    struct hist lat;          /* answered requests: microseconds from the SCHEDULED send time */
};

/* Everything measured, for the report. */
struct results {
    const struct scenario *sc;
    char target[320];
    char run_id[32];
    char started_at[32]; /* UTC, RFC 3339 */
    double measured_s;   /* from the first arrival to the end of the drain */
    double drain_s;      /* how long the drain took */
    int interrupted;
    int max_conns, conns_opened, conns_peak;
    uint64_t unfinished; /* users between two steps (thinking) when the drain ended */
    struct rstats setup;
    double setup_s;
    struct rstats *by_phase; /* [nphases][RK_N] */
    struct rstats total[RK_N];
    size_t nsec; /* seconds of the series */
    struct sec {
        uint64_t sent, answered, errors, by_kind[RK_N];
        struct hist lat;
    } * series;
};

extern const char *const rkind_names[RK_N];

/* Prints the report on stdout, writes dir/report.json, dir/series.dat, dir/report.gp and
 * dir/report.png (gnuplot). Returns 0, or -1 when a file could not be written (said on
 * stderr). *all_pass is set to 1 when every target with data passed. */
int report_write(const struct results *r, const char *dir, int *all_pass);

#endif
