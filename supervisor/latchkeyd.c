/* latchkeyd: the supervisor. Owns the configuration, the embedded Postgres, the schema
 * migrations and the process table; starts every role in order, restarts the ones that
 * fail (delay doubling from supervisor.restart_delay, at most supervisor.restart_max in
 * supervisor.restart_window, then the role is marked failed), answers latchkeyctl on the
 * control socket, and on SIGTERM/SIGINT stops every role in reverse order, Postgres last.
 *
 *   latchkeyd [-c FILE] [-n] [-s SQLDIR]
 *     -c FILE   configuration file (default: none, every key at its default)
 *     -n        check the configuration, print "configuration OK" or the first error
 *     -s DIR    migrations directory (default: LATCHKEY_SQL_DIR, else ../../../sql from
 *               the binary, i.e. the repository's sql/)
 */
#include "cache.h"
#include "codec.h"
#include "config.h"
#include "db.h"
#include "log.h"
#include "pgembed.h"
#include "roles.h"
#include "util.h"
#include "zmqutil.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#define MAX_PROCS 512

enum proc_state { P_RUNNING, P_BACKOFF, P_FAILED, P_STOPPING };

static const char *const s_state_names[] = {"running", "backoff", "failed", "stopping"};

struct proc {
    const struct lk_role *role;
    int slot;                 /* 0..count-1 within its role */
    enum proc_state state;
    pid_t pid;
    int64_t started_ms;       /* monotonic */
    int64_t restart_at_ms;    /* monotonic, P_BACKOFF only */
    int64_t delay_ms;         /* next restart delay */
    int restarts;             /* total restarts */
    int64_t window_start_ms;  /* restart window bookkeeping */
    int window_count;
    int retire;               /* scaled away: do not restart when it exits */
    int manual;               /* restarted by the operator: restart at once, not a failure */
};

struct sup {
    struct lk_config cfg;
    char cfg_path[PATH_MAX];  /* absolute, or empty */
    char bindir[PATH_MAX];
    char sqldir[PATH_MAX];
    char conninfo[1100];
    pgembed_t *pg;
    int64_t pg_restart_at_ms;
    void *zctx;
    void *control;
    int sigfd;
    int stopping;
    int want[16];             /* desired count per role index */
    struct proc procs[MAX_PROCS];
    int nprocs;
};

static int s_prepare_state(struct sup *s);
static int s_start_postgres(struct sup *s);
static int s_migrate(struct sup *s);
static void s_start_role(struct sup *s, int ri);
static int s_spawn(struct sup *s, struct proc *p);
static void s_reap(struct sup *s);
static void s_on_exit(struct sup *s, struct proc *p, int status);
static void s_cron(struct sup *s);
static void s_stop_all(struct sup *s);
static void s_stop_procs(struct sup *s, int ri, int64_t timeout_ms);
static void s_scale(struct sup *s, int ri, int n);
static void s_on_control(struct sup *s);
static void s_status_text(struct sup *s, char *out, size_t len);
static int s_role_index(const struct lk_role *r);

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
    if (lk_config_load(&s->cfg, cfg_file, err, sizeof err) != 0) {
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
    sigprocmask(SIG_BLOCK, &mask, NULL);
    s->sigfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    signal(SIGPIPE, SIG_IGN);

    if (s_prepare_state(s) != 0 || s_start_postgres(s) != 0 || s_migrate(s) != 0) {
        pgembed_destroy(&s->pg);
        return 1;
    }
    s->zctx = zmq_ctx_new();
    s->control = zmq_socket(s->zctx, ZMQ_REP);
    if (lk_zmq_prepare_endpoint(s->cfg.supervisor.control) != 0 ||
        lk_zmq_set_defaults(s->control) != 0 || zmq_bind(s->control, s->cfg.supervisor.control) != 0) {
        lk_error("cannot bind the control socket %s: %s", s->cfg.supervisor.control,
                 zmq_strerror(zmq_errno()));
        pgembed_destroy(&s->pg);
        return 1;
    }

    for (int ri = 0; ri < lk_nroles; ri++) {
        s->want[ri] = lk_roles[ri].count(&s->cfg);
        s_start_role(s, ri);
    }
    lk_info("latchkey is up: http://%s (control %s)", s->cfg.gateway.listen, s->cfg.supervisor.control);

    while (!s->stopping) {
        zmq_pollitem_t items[] = {{s->control, 0, ZMQ_POLLIN, 0}, {NULL, s->sigfd, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(items, 2, 250);
        if (rc < 0 && zmq_errno() != EINTR)
            lk_fatal("zmq_poll: %s", zmq_strerror(zmq_errno()));
        if (items[1].revents & ZMQ_POLLIN) {
            struct signalfd_siginfo si;
            while (read(s->sigfd, &si, sizeof si) == sizeof si) {
                if (si.ssi_signo == SIGCHLD) {
                    s_reap(s);
                } else if (si.ssi_signo == SIGHUP) {
                    lk_info("SIGHUP: configuration reload is not supported yet; restart to apply");
                } else {
                    lk_info("%s: stopping", strsignal((int)si.ssi_signo));
                    s->stopping = 1;
                }
            }
        }
        if (items[0].revents & ZMQ_POLLIN)
            s_on_control(s);
        s_cron(s);
    }
    s_stop_all(s);
    zmq_close(s->control);
    zmq_ctx_term(s->zctx);
    lk_info("stopped");
    return 0;
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
    lk_cache_t *cache = NULL;
    int rc = lk_cache_open(s->cfg.cache.path, s->cfg.cache.map_size, 0, &cache);
    if (rc != 0) {
        lk_error("cannot open the session cache %s: %s", s->cfg.cache.path, lk_strerror(rc));
        return -1;
    }
    lk_cache_destroy(&cache);
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

static int s_migrate(struct sup *s)
{
    lk_db_t *db = NULL;
    int rc = lk_db_connect(s->conninfo, &db);
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

static void s_start_role(struct sup *s, int ri)
{
    int have = 0;
    for (int i = 0; i < s->nprocs; i++)
        if (s->procs[i].role == &lk_roles[ri] && !s->procs[i].retire)
            have++;
    for (int slot = have; slot < s->want[ri] && s->nprocs < MAX_PROCS; slot++) {
        struct proc *p = &s->procs[s->nprocs++];
        memset(p, 0, sizeof *p);
        p->role = &lk_roles[ri];
        p->slot = slot;
        p->delay_ms = s->cfg.supervisor.restart_delay_ms;
        if (s_spawn(s, p) != 0) {
            p->state = P_BACKOFF;
            p->restart_at_ms = lk_mono_ms() + p->delay_ms;
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
        char pidbuf[32];
        snprintf(pidbuf, sizeof pidbuf, "%d", (int)getppid());
        setenv("LATCHKEY_SUPERVISOR_PID", pidbuf, 1);
        setenv("LATCHKEY_PATHS_VAR", s->cfg.paths.var, 1);
        setenv("LATCHKEY_DATABASE_URL", s->conninfo, 1);
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
            if (!s->stopping)
                s->pg_restart_at_ms = lk_mono_ms() + s->cfg.supervisor.restart_delay_ms;
            continue;
        }
        for (int i = 0; i < s->nprocs; i++)
            if (s->procs[i].pid == pid) {
                s_on_exit(s, &s->procs[i], status);
                break;
            }
    }
}

/* The restart policy: a role that exits (other than being stopped) is restarted after
 * delay_ms, which doubles on each quick failure (capped at 8x the base) and resets after a
 * minute of running; more than restart_max restarts within restart_window marks it failed. */
static void s_on_exit(struct sup *s, struct proc *p, int status)
{
    int64_t now = lk_mono_ms();
    int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    p->pid = 0;
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
        lk_warn("%s[%d] died from signal %d", p->role->name, p->slot, sig);
    else
        lk_warn("%s[%d] exited with status %d", p->role->name, p->slot, code);
    if (now - p->started_ms > 60000)
        p->delay_ms = s->cfg.supervisor.restart_delay_ms;
    if (now - p->window_start_ms > s->cfg.supervisor.restart_window_ms) {
        p->window_start_ms = now;
        p->window_count = 0;
    }
    if (++p->window_count > s->cfg.supervisor.restart_max) {
        p->state = P_FAILED;
        lk_error("%s[%d] failed %d times within %lld s: marked failed, not restarted", p->role->name,
                 p->slot, p->window_count, (long long)(s->cfg.supervisor.restart_window_ms / 1000));
        return;
    }
    p->state = P_BACKOFF;
    p->restart_at_ms = now + p->delay_ms;
    lk_info("%s[%d] restarts in %lld ms", p->role->name, p->slot, (long long)p->delay_ms);
    if (p->delay_ms < s->cfg.supervisor.restart_delay_ms * 8)
        p->delay_ms *= 2;
}

/* Duties, every loop turn (at most 250 ms apart):
 * - restart roles whose backoff delay has passed;
 * - restart the embedded Postgres if it died. */
static void s_cron(struct sup *s)
{
    int64_t now = lk_mono_ms();
    for (int i = 0; i < s->nprocs; i++) {
        struct proc *p = &s->procs[i];
        if (p->state == P_BACKOFF && now >= p->restart_at_ms) {
            p->restarts++;
            if (s_spawn(s, p) != 0)
                p->restart_at_ms = now + p->delay_ms;
        }
    }
    if (s->pg && pgembed_pid(s->pg) == 0 && s->pg_restart_at_ms && now >= s->pg_restart_at_ms) {
        s->pg_restart_at_ms = 0;
        if (pgembed_restart(s->pg) != 0)
            s->pg_restart_at_ms = now + s->cfg.supervisor.restart_delay_ms;
    }
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
                    s->procs[i].pid = 0;
                    s->procs[i].state = P_STOPPING;
                    live--;
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
    for (int ri = lk_nroles - 1; ri >= 0; ri--)
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
                if (p->role != role)
                    continue;
                if (p->pid > 0) {
                    kill(p->pid, SIGTERM); /* its exit schedules the restart */
                    p->manual = 1;
                } else {
                    p->state = P_BACKOFF;
                    p->restart_at_ms = 0;
                    p->window_count = 0;
                }
            }
            snprintf(r->text, sizeof r->text, "restarting %s\n", role->name);
        } else if (strcmp(c->command, "scale") == 0 && role && role->scalable && c->n <= 64) {
            s_scale(s, s_role_index(role), (int)c->n);
            snprintf(r->text, sizeof r->text, "%s scaled to %u\n", role->name, c->n);
        } else {
            r->status = 1;
            snprintf(r->text, sizeof r->text,
                     "unknown command or role (commands: status, stop, restart ROLE, "
                     "scale signup|signin N (0-64))\n");
        }
    }
    if (lk_zmq_send_msg(s->control, NULL, 0, &out, 0) != 0)
        lk_warn("cannot answer latchkeyctl");
}

static void s_status_text(struct sup *s, char *out, size_t len)
{
    int64_t now = lk_mono_ms();
    size_t o = (size_t)snprintf(out, len, "%-10s %-4s %-8s %-9s %-9s %s\n", "ROLE", "SLOT", "PID",
                                "STATE", "UPTIME", "RESTARTS");
    if (s->pg && o < len)
        o += (size_t)snprintf(out + o, len - o, "%-10s %-4d %-8d %-9s %-9s %d\n", "postgres", 0,
                              (int)pgembed_pid(s->pg), pgembed_pid(s->pg) ? "running" : "down",
                              "-", 0);
    for (int ri = 0; ri < lk_nroles; ri++)
        for (int i = 0; i < s->nprocs && o < len; i++) {
            struct proc *p = &s->procs[i];
            if (p->role != &lk_roles[ri])
                continue;
            char up[32] = "-";
            if (p->state == P_RUNNING)
                snprintf(up, sizeof up, "%llds", (long long)((now - p->started_ms) / 1000));
            o += (size_t)snprintf(out + o, len - o, "%-10s %-4d %-8d %-9s %-9s %d\n",
                                  p->role->name, p->slot, (int)p->pid, s_state_names[p->state], up,
                                  p->restarts);
        }
}
