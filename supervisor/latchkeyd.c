/* latchkeyd: the supervisor. Owns the configuration, the embedded Postgres, the schema
 * migrations and the process table; starts every role in order, restarts the ones that
 * fail (delay doubling from supervisor.restart_delay, at most supervisor.restart_max in
 * supervisor.restart_window, then the role is marked failed: latchkeyctl status shows it,
 * and <var>/run/failed-roles tells the gateways, whose /ready says so), answers
 * latchkeyctl on the control socket, collects every child's jobs done and busy count on
 * its status socket (MSG_RO_STATUS), reloads the configuration on SIGHUP (reloadable keys;
 * worker counts scale; the signal is forwarded to every child, which reloads its own), and
 * on SIGTERM/SIGINT stops every role in reverse order, Postgres last.
 *
 *   latchkeyd [-c FILE] [-n] [-s SQLDIR]
 *     -c FILE   configuration file (default: none, every key at its default)
 *     -n        check the configuration, print "configuration OK" or the first error
 *     -s DIR    migrations directory (default: LATCHKEY_SQL_DIR, else ../../../sql from
 *               the binary, i.e. the repository's sql/)
 */
#include "cache.h"
#include "check.h"
#include "codec.h"
#include "crypto.h"
#include "config.h"
#include "db.h"
#include "log.h"
#include "metrics.h"
#include "pgembed.h"
#include "roles.h"
#include "util.h"
#include "worker.h"
#include "zmqutil.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <poll.h>
#include <string.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#define MAX_PROCS 512
#define MAX_SLOTS 256 /* per role: signup.count and signin.count go up to 256 */

enum proc_state { P_RUNNING, P_BACKOFF, P_FAILED, P_STOPPING };

static const char *const s_state_names[] = {"running", "backoff", "failed", "stopping"};

/* The restart policy's bookkeeping, per process (and for the embedded Postgres). */
struct policy {
    int64_t delay_ms;        /* next restart delay */
    int64_t window_start_ms; /* monotonic: start of the current restart window */
    int window_count;        /* failures within it */
    int restarts;            /* total restarts */
};

struct proc {
    const struct lk_role *role;
    int slot;                 /* 0..count-1 within its role; a gateway's index */
    enum proc_state state;
    pid_t pid;
    int64_t started_ms;       /* monotonic */
    int64_t restart_at_ms;    /* monotonic, P_BACKOFF only */
    struct policy pol;
    int retire;               /* scaled away: do not restart when it exits */
    int manual;               /* restarted by the operator: restart at once, not a failure */
    int reported;             /* it sent a MSG_RO_STATUS since it started */
    uint64_t jobs;            /* from its latest MSG_RO_STATUS */
    uint32_t busy;
};

struct sup {
    struct lk_config cfg;
    char cfg_path[PATH_MAX];  /* absolute, or empty */
    char bindir[PATH_MAX];
    char sqldir[PATH_MAX];
    char conninfo[1100];
    pgembed_t *pg;
    int64_t pg_restart_at_ms;  /* monotonic; 0: no restart pending */
    int64_t pg_started_ms;
    struct policy pg_pol;
    int pg_failed;             /* the restart policy gave up on Postgres */
    void *zctx;
    void *control;
    void *status;              /* PULL: MSG_RO_STATUS from the children; NULL if none */
    char status_ep[LK_PATH_MAX + 32];
    char failed_path[LK_PATH_MAX + 32];
    char failed_text[256];     /* what failed_path holds now */
    int sigfd;
    int stopping;
    int want[16];             /* desired count per role index */
    struct proc procs[MAX_PROCS];
    int nprocs;
};

static int s_prepare_state(struct sup *s);
static int s_check_backends(struct sup *s, char *err, size_t len);
static void s_log_memory(struct sup *s);
static int s_start_postgres(struct sup *s);
static int s_migrate(struct sup *s);
static void s_start_role(struct sup *s, int ri);
static int s_spawn(struct sup *s, struct proc *p);
static void s_reap(struct sup *s);
static void s_on_exit(struct sup *s, struct proc *p, int status);
static int64_t s_policy_failure(struct sup *s, struct policy *pol, int64_t started_ms);
static void s_cron(struct sup *s);
static void s_failed_write(struct sup *s);
static void s_on_status(struct sup *s);
static void s_reload(struct sup *s);
static void s_stop_all(struct sup *s);
static void s_stop_procs(struct sup *s, int ri, int64_t timeout_ms);
static void s_scale(struct sup *s, int ri, int n);
static void s_on_control(struct sup *s);
static void s_status_text(struct sup *s, char *out, size_t len);
static int s_role_index(const struct lk_role *r);
static void s_metrics_sample(void *arg);

int main(int argc, char **argv)
{
    static struct sup sup;
    struct sup *s = &sup;
    const char *cfg_file = NULL;
    int check_only = 0;
    int opt;
    while ((opt = getopt(argc, argv, "c:ns:h")) != -1) {
        switch (opt) {
        case 'c': cfg_file = optarg; break;
        case 'n': check_only = 1; break;
        case 's': snprintf(s->sqldir, sizeof s->sqldir, "%s", optarg); break;
        default:
            fprintf(stderr, "usage: latchkeyd [-c FILE] [-n] [-s SQLDIR]\n");
            return opt == 'h' ? 0 : 2;
        }
    }
    char err[512];
    if (lk_config_load(&s->cfg, cfg_file, err, sizeof err) != 0 ||
        s_check_backends(s, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (check_only) {
        printf("configuration OK\n");
        return 0;
    }
    lk_log_init("supervisor", s->cfg.log.level);
    if (cfg_file && !realpath(cfg_file, s->cfg_path))
        lk_fatal("cannot resolve %s: %s", cfg_file, strerror(errno));

    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        lk_fatal("cannot read /proc/self/exe: %s", strerror(errno));
    exe[n] = '\0';
    if (lk_strlcpy(s->bindir, dirname(exe), sizeof s->bindir) != 0)
        lk_fatal("binary path too long");
    if (!s->sqldir[0]) {
        const char *env = getenv("LATCHKEY_SQL_DIR");
        int w = env ? snprintf(s->sqldir, sizeof s->sqldir, "%s", env)
                    : snprintf(s->sqldir, sizeof s->sqldir, "%s/../../../sql", s->bindir);
        if (w < 0 || (size_t)w >= sizeof s->sqldir)
            lk_fatal("migrations path too long");
    }

    /* Signals arrive through a signalfd in the loop; children get a clean mask back. */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigaddset(&mask, SIGHUP);
    sigaddset(&mask, SIGUSR1); /* logrotate: reopen log.file */
    sigprocmask(SIG_BLOCK, &mask, NULL);
    s->sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    signal(SIGPIPE, SIG_IGN);
    int lrc = lk_log_file(s->cfg.log.file);
    if (lrc != 0)
        lk_warn("log.file %s: %s (logging to stderr only)", s->cfg.log.file, lk_strerror(lrc));
    /* Restarts and the process table, pushed to the collector once it runs. */
    lk_metrics_start("supervisor", s->cfg.metrics.endpoint);
    (void)LK_METRIC(LKM_RESTARTS, "postgres");
    for (int ri = 0; ri < lk_nroles; ri++)
        (void)LK_METRIC(LKM_RESTARTS, lk_roles[ri].name);
    lk_metrics_sampler(s_metrics_sample, s);

    if (s_prepare_state(s) != 0 || s_start_postgres(s) != 0 || s_migrate(s) != 0) {
        pgembed_destroy(&s->pg);
        return 1;
    }
    s->pg_started_ms = lk_mono_ms();
    s->pg_pol.delay_ms = s->cfg.supervisor.restart_delay_ms;
    s->zctx = zmq_ctx_new();
    s->control = zmq_socket(s->zctx, ZMQ_REP);
    if (lk_zmq_prepare_endpoint(s->cfg.supervisor.control) != 0 ||
        lk_zmq_set_defaults(s->control) != 0 || zmq_bind(s->control, s->cfg.supervisor.control) != 0) {
        lk_error("cannot bind the control socket %s: %s", s->cfg.supervisor.control,
                 zmq_strerror(zmq_errno()));
        pgembed_destroy(&s->pg);
        return 1;
    }
    /* The status socket is for our own children only: always ipc, under <var>/run. */
    int w = snprintf(s->status_ep, sizeof s->status_ep, "ipc://%s/run/status.ipc",
                     s->cfg.paths.var);
    if (w < 0 || (size_t)w - 6 >= sizeof(((struct sockaddr_un *)0)->sun_path) ||
        !(s->status = zmq_socket(s->zctx, ZMQ_PULL)) || lk_zmq_set_defaults(s->status) != 0 ||
        lk_zmq_prepare_endpoint(s->status_ep) != 0 || zmq_bind(s->status, s->status_ep) != 0) {
        lk_warn("no status socket (%s): latchkeyctl status will show no jobs", s->status_ep);
        if (s->status)
            zmq_close(s->status);
        s->status = NULL;
        s->status_ep[0] = '\0';
    }

    for (int ri = 0; ri < lk_nroles; ri++) {
        s->want[ri] = lk_roles[ri].count(&s->cfg);
        s_start_role(s, ri);
    }
    s_log_memory(s);
    lk_info("latchkey is up: http://%s (control %s)", s->cfg.gateway.listen, s->cfg.supervisor.control);

    while (!s->stopping) {
        zmq_pollitem_t items[] = {{s->control, 0, ZMQ_POLLIN, 0},
                                  {NULL, s->sigfd, ZMQ_POLLIN, 0},
                                  {s->status, 0, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(items, s->status ? 3 : 2, 250);
        if (rc < 0 && zmq_errno() != EINTR)
            lk_fatal("zmq_poll: %s", zmq_strerror(zmq_errno()));
        if (items[1].revents & ZMQ_POLLIN) {
            struct signalfd_siginfo si;
            while (read(s->sigfd, &si, sizeof si) == sizeof si) {
                if (si.ssi_signo == SIGCHLD) {
                    s_reap(s);
                } else if (si.ssi_signo == SIGHUP) {
                    s_reload(s);
                } else if (si.ssi_signo == SIGUSR1) {
                    lk_log_reopen();
                    lk_info("SIGUSR1: log file reopened");
                } else {
                    lk_info("%s: stopping", strsignal((int)si.ssi_signo));
                    s->stopping = 1;
                }
            }
        }
        if (items[0].revents & ZMQ_POLLIN)
            s_on_control(s);
        if (s->status && (items[2].revents & ZMQ_POLLIN))
            s_on_status(s);
        s_cron(s);
        (void)lk_metrics_tick();
    }
    s_stop_all(s);
    unlink(s->failed_path);
    if (s->status)
        zmq_close(s->status);
    zmq_close(s->control);
    zmq_ctx_term(s->zctx);
    lk_info("stopped");
    return 0;
}

/* With several gateways each binds an endpoint of its own (lk_gateway_backend): refuse a
 * configuration where one of them cannot exist, before anything starts. */
static int s_check_backends(struct sup *s, char *err, size_t len)
{
    const size_t sunmax = sizeof(((struct sockaddr_un *)0)->sun_path);
    for (int i = 0; i < s->cfg.gateway.count; i++) {
        char ep[LK_ENDPOINT_MAX];
        if (lk_gateway_backend(&s->cfg, i, 0, ep, sizeof ep) != 0 ||
            (strncmp(ep, "ipc://", 6) == 0 && strlen(ep) - 6 >= sunmax)) {
            snprintf(err, len,
                     "gateway.backend %.200s: gateway %d of gateway.count %d has no usable "
                     "endpoint (tcp://host:port, gateway i binding port + i, or a short enough "
                     "ipc:// path)",
                     s->cfg.gateway.backend, i, s->cfg.gateway.count);
            return -1;
        }
    }
    return 0;
}

/* One job at a time per worker, each hash taking hash.mem: the most memory password
 * hashing can take on this host at once. */
static void s_log_memory(struct sup *s)
{
    int workers = 0;
    for (int ri = 0; ri < lk_nroles; ri++)
        if (lk_roles[ri].scalable)
            workers += s->want[ri];
    double mib = (double)s->cfg.hash.mem / (1024.0 * 1024.0);
    lk_info("memory bound of password hashing: %d workers x %.2f MiB (hash.mem) = %.1f MiB",
            workers, mib, mib * workers);
}

/* var/ and its subdirectories, the single-instance lock, and the LMDB environment (created
 * here so the gateway can open it read-only from its first second). */
static int s_prepare_state(struct sup *s)
{
    char path[LK_PATH_MAX + 32];
    if (mkdir(s->cfg.paths.var, 0755) != 0 && errno != EEXIST) {
        lk_error("cannot create %s: %s", s->cfg.paths.var, strerror(errno));
        return -1;
    }
    snprintf(path, sizeof path, "%s/latchkeyd.lock", s->cfg.paths.var);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || flock(fd, LOCK_EX | LOCK_NB) != 0) {
        lk_error("another latchkeyd runs on %s (lock %s)", s->cfg.paths.var, path);
        return -1;
    }
    /* fd stays open (and locked) for the life of the process. */
    snprintf(path, sizeof path, "%s/run", s->cfg.paths.var);
    if (mkdir(path, 0700) != 0 && errno != EEXIST) {
        lk_error("cannot create %s: %s", path, strerror(errno));
        return -1;
    }
    snprintf(s->failed_path, sizeof s->failed_path, "%s/run/failed-roles", s->cfg.paths.var);
    unlink(s->failed_path); /* a previous run's */
    lk_cache_t *cache = NULL;
    int rc = lk_cache_open(s->cfg.cache.path, s->cfg.cache.map_size, 0, &cache);
    if (rc != 0) {
        lk_error("cannot open the session cache %s: %s", s->cfg.cache.path, lk_strerror(rc));
        return -1;
    }
    /* The cache is complete again only after the sweeper's warm-up from Postgres (it may
     * have lost commits in an OS crash, or be brand new): until then /ready says so. */
    rc = lk_cache_meta_put(cache, LK_CACHE_META_WARM, NULL);
    lk_cache_destroy(&cache);
    if (rc != 0) {
        lk_error("cannot clear the cache's warm marker in %s: %s", s->cfg.cache.path,
                 lk_strerror(rc));
        return -1;
    }
    return 0;
}

static int s_start_postgres(struct sup *s)
{
    if (s->cfg.database.url[0]) {
        snprintf(s->conninfo, sizeof s->conninfo, "%s", s->cfg.database.url);
        return 0;
    }
    int rc = pgembed_start(&s->cfg, s->conninfo, sizeof s->conninfo, &s->pg);
    if (rc != 0)
        lk_error("the embedded Postgres did not start");
    return rc;
}

/* An external database (database.url) may come up after latchkeyd: wait for it, retrying
 * the connect every 1 s doubling to 8 s, for as long as it takes; SIGTERM or SIGINT (read
 * from the signalfd, as the main loop does) gives up. The embedded Postgres was waited for
 * by pgembed_start: one try. Returns 0 with *db connected, or LK_EDB. */
static int s_connect_wait(struct sup *s, lk_db_t **db)
{
    int delay = 1000, waited = 0;
    for (;;) {
        if (lk_db_connect(s->conninfo, db) == 0) {
            if (waited)
                lk_info("Postgres is up: going on with the migrations");
            return 0;
        }
        if (!s->cfg.database.url[0])
            return LK_EDB;
        lk_warn("Postgres (database.url) unreachable: waiting for it, next try in %d ms", delay);
        waited = 1;
        struct pollfd pfd = {.fd = s->sigfd, .events = POLLIN};
        if (poll(&pfd, 1, delay) > 0) {
            struct signalfd_siginfo si;
            while (read(s->sigfd, &si, sizeof si) == sizeof si) {
                if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
                    lk_info("%s while waiting for Postgres: stopping",
                            strsignal((int)si.ssi_signo));
                    return LK_EDB;
                }
            }
        }
        delay = delay * 2 > 8000 ? 8000 : delay * 2;
    }
}

static int s_migrate(struct sup *s)
{
    lk_db_t *db = NULL;
    int rc = s_connect_wait(s, &db);
    if (rc == 0)
        rc = lk_db_migrate(db, s->sqldir);
    lk_db_destroy(&db);
    if (rc != 0)
        lk_error("migrations from %s failed: %s", s->sqldir, lk_strerror(rc));
    return rc;
}

static int s_role_index(const struct lk_role *r)
{
    return (int)(r - lk_roles);
}

/* Starts processes of role ri until want[ri] are there (retiring ones not counted), each in
 * the lowest free slot. */
static void s_start_role(struct sup *s, int ri)
{
    static char used[MAX_SLOTS];
    int have = 0;
    memset(used, 0, sizeof used);
    for (int i = 0; i < s->nprocs; i++)
        if (s->procs[i].role == &lk_roles[ri]) {
            if (s->procs[i].slot < MAX_SLOTS)
                used[s->procs[i].slot] = 1;
            have += !s->procs[i].retire;
        }
    for (int slot = 0; have < s->want[ri] && slot < MAX_SLOTS && s->nprocs < MAX_PROCS; slot++) {
        if (used[slot])
            continue;
        struct proc *p = &s->procs[s->nprocs++];
        memset(p, 0, sizeof *p);
        p->role = &lk_roles[ri];
        p->slot = slot;
        p->pol.delay_ms = s->cfg.supervisor.restart_delay_ms;
        have++;
        if (s_spawn(s, p) != 0) {
            p->state = P_BACKOFF;
            p->restart_at_ms = lk_mono_ms() + p->pol.delay_ms;
        }
    }
}

static int s_spawn(struct sup *s, struct proc *p)
{
    char bin[PATH_MAX + 64];
    snprintf(bin, sizeof bin, "%s/%s", s->bindir, p->role->binary);
    pid_t pid = fork();
    if (pid < 0) {
        lk_error("fork for %s: %s", p->role->name, strerror(errno));
        return -1;
    }
    if (pid == 0) {
        /* Own process group: Ctrl-C on a terminal reaches latchkeyd alone, which stops the
         * roles in order. Each role asks for SIGTERM when latchkeyd dies. */
        setpgid(0, 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        char pidbuf[32], slotbuf[16];
        snprintf(pidbuf, sizeof pidbuf, "%d", (int)getppid());
        snprintf(slotbuf, sizeof slotbuf, "%d", p->slot);
        setenv("LATCHKEY_SUPERVISOR_PID", pidbuf, 1);
        setenv("LATCHKEY_PATHS_VAR", s->cfg.paths.var, 1);
        setenv("LATCHKEY_DATABASE_URL", s->conninfo, 1);
        if (s->status_ep[0])
            setenv("LATCHKEY_SUPERVISOR_STATUS", s->status_ep, 1);
        if (strcmp(p->role->name, "gateway") == 0)
            setenv("LATCHKEY_GATEWAY_INDEX", slotbuf, 1); /* its own backend endpoint */
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) {
            dup2(devnull, 0);
            close(devnull);
        }
        if (s->cfg_path[0])
            execl(bin, bin, "-c", s->cfg_path, (char *)NULL);
        else
            execl(bin, bin, (char *)NULL);
        fprintf(stderr, "latchkeyd: cannot run %s: %s\n", bin, strerror(errno));
        _exit(127);
    }
    p->pid = pid;
    p->state = P_RUNNING;
    p->started_ms = lk_mono_ms();
    p->reported = 0;
    p->jobs = 0;
    p->busy = 0;
    lk_info("started %s[%d] pid %d", p->role->name, p->slot, (int)pid);
    return 0;
}

static void s_reap(struct sup *s)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        if (s->pg && pid == pgembed_pid(s->pg)) {
            pgembed_reaped(s->pg, status);
            if (s->stopping)
                continue;
            int64_t d = s_policy_failure(s, &s->pg_pol, s->pg_started_ms);
            if (d < 0) {
                s->pg_failed = 1;
                lk_error("postgres failed %d times within %lld s: marked failed, not restarted",
                         s->pg_pol.window_count,
                         (long long)(s->cfg.supervisor.restart_window_ms / 1000));
            } else {
                s->pg_restart_at_ms = lk_mono_ms() + (d > 0 ? d : 1);
                lk_info("postgres restarts in %lld ms", (long long)d);
            }
            continue;
        }
        for (int i = 0; i < s->nprocs; i++)
            if (s->procs[i].pid == pid) {
                s_on_exit(s, &s->procs[i], status);
                break;
            }
    }
}

/* The restart policy (the seed guide's): a process that exits (other than being stopped) is
 * restarted after a delay of supervisor.restart_delay, which doubles on each quick failure
 * (capped at 8x the base) and resets after a minute of running; more than restart_max
 * failures within restart_window mark it failed: not restarted until the operator says
 * (latchkeyctl restart ROLE). Records one failure of a process started at started_ms;
 * returns the delay before its restart, or -1 when it is now failed. */
static int64_t s_policy_failure(struct sup *s, struct policy *pol, int64_t started_ms)
{
    int64_t now = lk_mono_ms(), base = s->cfg.supervisor.restart_delay_ms;
    if (now - started_ms > 60000)
        pol->delay_ms = base;
    if (pol->window_count == 0 ||
        now - pol->window_start_ms > s->cfg.supervisor.restart_window_ms) {
        pol->window_start_ms = now;
        pol->window_count = 0;
    }
    if (++pol->window_count > s->cfg.supervisor.restart_max)
        return -1;
    int64_t d = pol->delay_ms;
    if (pol->delay_ms < base * 8)
        pol->delay_ms *= 2;
    return d;
}

static void s_on_exit(struct sup *s, struct proc *p, int status)
{
    int64_t now = lk_mono_ms();
    int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    pid_t pid = p->pid;
    p->pid = 0;
    p->busy = 0;
    if (p->retire || s->stopping) {
        lk_info("%s[%d] exited", p->role->name, p->slot);
        if (p->retire) {
            *p = s->procs[--s->nprocs];
        } else {
            p->state = P_STOPPING;
        }
        return;
    }
    if (p->manual) {
        p->manual = 0;
        p->state = P_BACKOFF;
        p->restart_at_ms = now;
        return;
    }
    if (sig)
        lk_warn("%s[%d] pid %d died from signal %d", p->role->name, p->slot, (int)pid, sig);
    else
        lk_warn("%s[%d] pid %d exited with status %d", p->role->name, p->slot, (int)pid, code);
    int64_t d = s_policy_failure(s, &p->pol, p->started_ms);
    if (d < 0) {
        p->state = P_FAILED;
        lk_error("%s[%d] failed %d times within %lld s: marked failed, not restarted",
                 p->role->name, p->slot, p->pol.window_count,
                 (long long)(s->cfg.supervisor.restart_window_ms / 1000));
        return;
    }
    p->state = P_BACKOFF;
    p->restart_at_ms = now + d;
    lk_info("%s[%d] restarts in %lld ms", p->role->name, p->slot, (long long)d);
}

/* Duties, every loop turn (at most 250 ms apart):
 * - restart the embedded Postgres if it died and its delay has passed (spawned only: the
 *   workers find it again on their own);
 * - restart roles whose backoff delay has passed;
 * - publish the failed roles for the gateways' /ready. */
static void s_cron(struct sup *s)
{
    int64_t now = lk_mono_ms();
    if (s->pg && pgembed_pid(s->pg) == 0 && s->pg_restart_at_ms && now >= s->pg_restart_at_ms) {
        s->pg_restart_at_ms = 0;
        s->pg_pol.restarts++;
        lk_counter_inc(LK_METRIC(LKM_RESTARTS, "postgres"));
        s->pg_started_ms = now;
        if (pgembed_restart(s->pg) != 0)
            s->pg_restart_at_ms = now + s->cfg.supervisor.restart_delay_ms;
    }
    for (int i = 0; i < s->nprocs; i++) {
        struct proc *p = &s->procs[i];
        if (p->state == P_BACKOFF && now >= p->restart_at_ms) {
            p->pol.restarts++;
            lk_counter_inc(LK_METRIC(LKM_RESTARTS, p->role->name));
            if (s_spawn(s, p) != 0)
                p->restart_at_ms = now + p->pol.delay_ms;
        }
    }
    s_failed_write(s);
}

/* <var>/run/failed-roles: the names of the roles with a failed process, one a line;
 * rewritten (atomically: a gateway may read it at any time) when the set changes. */
static void s_failed_write(struct sup *s)
{
    char text[sizeof s->failed_text] = "";
    size_t o = 0;
    if (s->pg_failed)
        o += (size_t)snprintf(text + o, sizeof text - o, "postgres\n");
    for (int ri = 0; ri < lk_nroles && o < sizeof text; ri++)
        for (int i = 0; i < s->nprocs; i++)
            if (s->procs[i].role == &lk_roles[ri] && s->procs[i].state == P_FAILED) {
                o += (size_t)snprintf(text + o, sizeof text - o, "%s\n", lk_roles[ri].name);
                break;
            }
    if (strcmp(text, s->failed_text) == 0)
        return; /* absent or empty: none failed */
    char tmp[sizeof s->failed_path + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", s->failed_path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    size_t len = strlen(text);
    if (fd < 0 || write(fd, text, len) != (ssize_t)len || close(fd) != 0 ||
        rename(tmp, s->failed_path) != 0) {
        if (fd >= 0)
            unlink(tmp);
        lk_warn("cannot write %s: %s", s->failed_path, strerror(errno));
        return;
    }
    memcpy(s->failed_text, text, sizeof text);
}

/* MSG_RO_STATUS from a child: its jobs done and busy count, for latchkeyctl status. */
static void s_on_status(struct sup *s)
{
    for (int budget = 0; budget < 1000; budget++) {
        struct lk_msg m;
        int rc = lk_zmq_recv_msg(s->status, NULL, NULL, &m, ZMQ_DONTWAIT);
        if (rc == -EAGAIN)
            return;
        if (rc != 0 || m.type != MSG_RO_STATUS) {
            lk_debug("status socket: %s ignored", rc ? lk_strerror(rc) : lk_msg_type_str(m.type));
            continue;
        }
        for (int i = 0; i < s->nprocs; i++)
            if (s->procs[i].pid > 0 && (uint32_t)s->procs[i].pid == m.u.ro_status.pid) {
                s->procs[i].reported = 1;
                s->procs[i].jobs = m.u.ro_status.jobs_done;
                s->procs[i].busy = m.u.ro_status.busy;
            }
    }
}

/* SIGHUP: the same file (and latchkeyd's environment) again. Refused as a whole when a key
 * that needs a restart changed. Otherwise: the new configuration is ours, worker counts
 * that changed in it are applied as latchkeyctl scale would, and every child gets SIGHUP
 * to reload its own copy (timeouts, session.ttl, log.level, ...). */
static void s_reload(struct sup *s)
{
    struct lk_config next;
    char err[512];
    if (lk_config_load(&next, s->cfg_path[0] ? s->cfg_path : NULL, err, sizeof err) != 0 ||
        lk_config_check_reload(&s->cfg, &next, err, sizeof err) != 0) {
        lk_warn("SIGHUP: configuration not reloaded: %s", err);
        return;
    }
    struct lk_config old = s->cfg;
    s->cfg = next;
    lk_log_init("supervisor", s->cfg.log.level);
    for (int i = 0; i < s->nprocs; i++)
        if (s->procs[i].pid > 0 && !s->procs[i].retire)
            kill(s->procs[i].pid, SIGHUP);
    int scaled = 0;
    for (int ri = 0; ri < lk_nroles; ri++) {
        int was = lk_roles[ri].count(&old), now = lk_roles[ri].count(&s->cfg);
        if (lk_roles[ri].scalable && was != now) {
            lk_info("SIGHUP: %s.count %d -> %d", lk_roles[ri].name, was, now);
            s_scale(s, ri, now);
            scaled = 1;
        }
    }
    lk_info("SIGHUP: configuration reloaded");
    if (scaled)
        s_log_memory(s);
}

static void s_stop_procs(struct sup *s, int ri, int64_t timeout_ms)
{
    int live = 0;
    for (int i = 0; i < s->nprocs; i++) {
        struct proc *p = &s->procs[i];
        if ((ri < 0 || p->role == &lk_roles[ri]) && p->pid > 0) {
            kill(p->pid, SIGTERM);
            live++;
        }
    }
    int64_t end = lk_mono_ms() + timeout_ms;
    while (live > 0) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid > 0) {
            if (s->pg && pid == pgembed_pid(s->pg)) {
                pgembed_reaped(s->pg, status);
                continue;
            }
            for (int i = 0; i < s->nprocs; i++)
                if (s->procs[i].pid == pid) {
                    if (ri < 0 || s->procs[i].role == &lk_roles[ri])
                        live--;
                    s->procs[i].pid = 0;
                    s->procs[i].state = P_STOPPING;
                }
            continue;
        }
        if (pid < 0 && errno == ECHILD)
            break;
        if (lk_mono_ms() >= end) {
            for (int i = 0; i < s->nprocs; i++) {
                struct proc *p = &s->procs[i];
                if ((ri < 0 || p->role == &lk_roles[ri]) && p->pid > 0) {
                    lk_warn("%s[%d] did not stop in time: SIGKILL", p->role->name, p->slot);
                    kill(p->pid, SIGKILL);
                }
            }
            end = lk_mono_ms() + 5000;
            timeout_ms = 0;
        }
        usleep(10000);
    }
}

static void s_stop_all(struct sup *s)
{
    /* The gateways first: they drain their in-flight requests (a signup batch included),
     * which need the workers still running; then the rest in reverse start order. */
    int gwi = -1;
    for (int ri = 0; ri < lk_nroles; ri++)
        if (strcmp(lk_roles[ri].name, "gateway") == 0)
            gwi = ri;
    if (gwi >= 0)
        s_stop_procs(s, gwi, s->cfg.supervisor.stop_timeout_ms);
    for (int ri = lk_nroles - 1; ri >= 0; ri--)
        if (ri != gwi)
            s_stop_procs(s, ri, s->cfg.supervisor.stop_timeout_ms);
    pgembed_destroy(&s->pg);
}

static void s_scale(struct sup *s, int ri, int n)
{
    s->want[ri] = n;
    int have = 0;
    for (int i = 0; i < s->nprocs; i++) {
        struct proc *p = &s->procs[i];
        if (p->role != &lk_roles[ri] || p->retire)
            continue;
        if (have >= n) {
            p->retire = 1;
            if (p->pid > 0)
                kill(p->pid, SIGTERM);
            else
                *p-- = s->procs[--s->nprocs]; /* not running: drop the slot now */
        } else {
            have++;
        }
    }
    s_start_role(s, ri);
}

/* latchkeyctl user disable|enable EMAIL: is_active/status in Postgres; disabling also
 * deletes every session of the user, rows then cache entries (the cache opened read-write
 * for the moment), so the user's tokens stop validating before the answer. Runs inside
 * latchkeyd's loop: a few queries, bounded by libpq's own timeouts. */
#define S_USER_SESSIONS_MAX 4096
static void s_user_active(struct sup *s, const char *arg, int active, char *text, size_t len,
                          uint32_t *status)
{
    char email[LK_EMAIL_MAX + 1], uid[37] = "";
    lk_db_t *db = NULL;
    lk_cache_t *cache = NULL;
    uint8_t (*hashes)[32] = NULL;
    int n = 0, rc;

    *status = 1;
    if (lk_email_normalize(arg, strlen(arg), email) != 0) {
        snprintf(text, len, "not a valid email address\n");
        return;
    }
    if ((rc = lk_db_connect(s->conninfo, &db)) != 0) {
        snprintf(text, len, "database unavailable: %s\n", lk_strerror(rc));
        return;
    }
    rc = lk_db_user_set_active(db, email, active, uid);
    if (rc == LK_ENOTFOUND) {
        snprintf(text, len, "no user %s\n", email);
        goto out;
    }
    if (rc != 0) {
        snprintf(text, len, "database error: %s\n", lk_strerror(rc));
        goto out;
    }
    if (active) {
        *status = 0;
        snprintf(text, len, "user %s enabled\n", email);
        goto out;
    }
    hashes = calloc(S_USER_SESSIONS_MAX, sizeof *hashes);
    rc = hashes ? lk_db_user_sessions_delete(db, uid, hashes, S_USER_SESSIONS_MAX, &n) : -ENOMEM;
    if (rc != 0 && rc != LK_ETOOBIG) {
        snprintf(text, len, "user %s disabled, but its sessions were not deleted: %s\n", email,
                 lk_strerror(rc));
        goto out;
    }
    int crc = lk_cache_open(s->cfg.cache.path, s->cfg.cache.map_size, 0, &cache);
    int bad = crc != 0;
    for (int i = 0; crc == 0 && i < n; i++) {
        int drc = lk_cache_session_del(cache, hashes[i]);
        bad |= drc != 0 && drc != LK_ENOTFOUND;
    }
    if (rc == LK_ETOOBIG || bad) {
        snprintf(text, len, "user %s disabled; %d sessions deleted from Postgres but cache "
                 "entries may remain: %s\n", email, n,
                 rc == LK_ETOOBIG ? "too many sessions" : "cache error");
        goto out;
    }
    *status = 0;
    snprintf(text, len, "user %s disabled; %d sessions ended\n", email, n);
out:
    lk_log(LK_LOG_INFO, NULL, "user %s %s by latchkeyctl: %s",
           uid[0] && rc != LK_ENOTFOUND ? uid : "-", active ? "enable" : "disable",
           *status ? "failed" : "done");
    if (hashes) {
        lk_wipe(hashes, S_USER_SESSIONS_MAX * sizeof *hashes);
        free(hashes);
    }
    lk_cache_destroy(&cache);
    lk_db_destroy(&db);
}

static void s_on_control(struct sup *s)
{
    struct lk_msg in, out;
    memset(&out, 0, sizeof out);
    out.type = MSG_SV_COMMAND_REPLY;
    struct lk_msg_sv_command_reply *r = &out.u.sv_command_reply;
    int rc = lk_zmq_recv_msg(s->control, NULL, NULL, &in, ZMQ_DONTWAIT);
    if (rc == -EAGAIN)
        return;
    if (rc != 0 || in.type != MSG_CT_COMMAND_REQUEST) {
        r->status = 1;
        snprintf(r->text, sizeof r->text, "malformed command: %s\n", lk_strerror(rc));
    } else {
        struct lk_msg_ct_command_request *c = &in.u.ct_command_request;
        const struct lk_role *role = lk_role_find(c->arg);
        if (strcmp(c->command, "status") == 0) {
            s_status_text(s, r->text, sizeof r->text);
        } else if (strcmp(c->command, "stop") == 0) {
            s->stopping = 1;
            snprintf(r->text, sizeof r->text, "stopping\n");
        } else if (strcmp(c->command, "restart") == 0 && role) {
            for (int i = 0; i < s->nprocs; i++) {
                struct proc *p = &s->procs[i];
                if (p->role != role || p->retire)
                    continue;
                p->pol.window_count = 0; /* the operator's word: a fresh start */
                p->pol.delay_ms = s->cfg.supervisor.restart_delay_ms;
                if (p->pid > 0) {
                    kill(p->pid, SIGTERM); /* its exit schedules the restart */
                    p->manual = 1;
                } else {
                    p->state = P_BACKOFF;
                    p->restart_at_ms = 0;
                }
            }
            snprintf(r->text, sizeof r->text, "restarting %s\n", role->name);
        } else if (strcmp(c->command, "restart") == 0 && strcmp(c->arg, "postgres") == 0 &&
                   s->pg && s->pg_failed) {
            s->pg_failed = 0;
            s->pg_pol.window_count = 0;
            s->pg_pol.delay_ms = s->cfg.supervisor.restart_delay_ms;
            s->pg_restart_at_ms = lk_mono_ms();
            snprintf(r->text, sizeof r->text, "restarting postgres\n");
        } else if (strcmp(c->command, "user-disable") == 0 ||
                   strcmp(c->command, "user-enable") == 0) {
            s_user_active(s, c->arg, strcmp(c->command, "user-enable") == 0, r->text,
                          sizeof r->text, &r->status);
        } else if (strcmp(c->command, "scale") == 0 && role && role->scalable && c->n <= 64) {
            s_scale(s, s_role_index(role), (int)c->n);
            s_log_memory(s);
            snprintf(r->text, sizeof r->text, "%s scaled to %u\n", role->name, c->n);
        } else {
            r->status = 1;
            snprintf(r->text, sizeof r->text,
                     "unknown command or role (commands: status, stop, restart ROLE, "
                     "restart postgres (when failed), scale signup|signin N (0-64), "
                     "user disable|enable EMAIL)\n");
        }
    }
    if (lk_zmq_send_msg(s->control, NULL, 0, &out, 0) != 0)
        lk_warn("cannot answer latchkeyctl");
}

/* One line per process: role, slot, pid, state, uptime, restarts, jobs done, busy (the
 * last two as the process last reported them; "-" when it never did: the sweeper, the
 * collector, Postgres). A table too long for the reply ends with a count of the rest. */
static void s_status_text(struct sup *s, char *out, size_t len)
{
    static const char fmt[] = "%-8s %4d %7d %-8s %8s %8d %9s %4s\n";
    int64_t now = lk_mono_ms();
    size_t o = (size_t)snprintf(out, len, "%-8s %4s %7s %-8s %8s %8s %9s %4s\n", "ROLE", "SLOT",
                                "PID", "STATE", "UPTIME", "RESTARTS", "JOBS", "BUSY");
    char line[160], up[32], jobs[32], busy[16];
    if (s->pg) {
        pid_t pid = pgembed_pid(s->pg);
        snprintf(up, sizeof up, "%llds", (long long)((now - s->pg_started_ms) / 1000));
        o += (size_t)snprintf(out + o, len - o, fmt, "postgres", 0, (int)pid,
                              pid ? "running" : s->pg_failed ? "failed" : "backoff",
                              pid ? up : "-", s->pg_pol.restarts, "-", "-");
    }
    int left = s->nprocs;
    for (int ri = 0; ri < lk_nroles; ri++)
        for (int i = 0; i < s->nprocs; i++) {
            struct proc *p = &s->procs[i];
            if (p->role != &lk_roles[ri])
                continue;
            snprintf(up, sizeof up, "-");
            if (p->state == P_RUNNING)
                snprintf(up, sizeof up, "%llds", (long long)((now - p->started_ms) / 1000));
            snprintf(jobs, sizeof jobs, "-");
            snprintf(busy, sizeof busy, "-");
            if (p->reported && p->pid > 0) {
                snprintf(jobs, sizeof jobs, "%llu", (unsigned long long)p->jobs);
                snprintf(busy, sizeof busy, "%u", p->busy);
            }
            int n = snprintf(line, sizeof line, fmt, p->role->name, p->slot, (int)p->pid,
                             s_state_names[p->state], up, p->pol.restarts, jobs, busy);
            /* keep room for the "more" line */
            if (o + (size_t)n + 48 >= len) {
                snprintf(out + o, len - o, "... %d more processes\n", left);
                return;
            }
            memcpy(out + o, line, (size_t)n + 1);
            o += (size_t)n;
            left--;
        }
}

/* Before each metrics report: processes running and failed, per role. */
static void s_metrics_sample(void *arg)
{
    struct sup *s = arg;
    for (int ri = 0; ri < lk_nroles; ri++) {
        int running = 0, failed = 0;
        for (int i = 0; i < s->nprocs; i++) {
            const struct proc *p = &s->procs[i];
            if (p->role != &lk_roles[ri])
                continue;
            running += p->state == P_RUNNING;
            failed |= p->state == P_FAILED;
        }
        lk_gauge_set(LK_METRIC(LKM_PROCESSES, lk_roles[ri].name), running);
        lk_gauge_set(LK_METRIC(LKM_ROLE_FAILED, lk_roles[ri].name), failed);
    }
    if (s->pg) {
        lk_gauge_set(LK_METRIC(LKM_PROCESSES, "postgres"), pgembed_pid(s->pg) > 0);
        lk_gauge_set(LK_METRIC(LKM_ROLE_FAILED, "postgres"), s->pg_failed);
    }
}
