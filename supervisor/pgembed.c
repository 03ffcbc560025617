#include "pgembed.h"

#include "log.h"
#include "util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <libpq-fe.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct pgembed {
    char bindir[LK_PATH_MAX];
    char dir[LK_PATH_MAX + 8];   /* <var>/pg */
    char data[LK_PATH_MAX + 16]; /* <var>/pg/data */
    char run[LK_PATH_MAX + 16];  /* <var>/pg/run: the socket directory */
    char log[LK_PATH_MAX + 24];  /* <var>/pg/postgres.log */
    uid_t uid;                  /* who runs postgres (getuid() unless root) */
    gid_t gid;
    pid_t pid;
};

static int s_find_bindir(const struct lk_config *cfg, char *out, size_t len);
static int s_resolve_user(const struct lk_config *cfg, uid_t *uid, gid_t *gid);
static int s_mkdir_owned(const char *path, uid_t uid, gid_t gid);
static int s_run(pgembed_t *self, char *const argv[], int background, pid_t *pid_out);
static int s_spawn(pgembed_t *self);
static int s_wait_ready(pgembed_t *self, char *conninfo, size_t len);
static int s_ensure_database(const char *admin_conninfo);

int pgembed_start(const struct lk_config *cfg, char *conninfo, size_t len, pgembed_t **out)
{
    pgembed_t *self = calloc(1, sizeof *self);
    if (!self)
        return -ENOMEM;
    int rc = s_find_bindir(cfg, self->bindir, sizeof self->bindir);
    if (rc == 0)
        rc = s_resolve_user(cfg, &self->uid, &self->gid);
    if (rc != 0) {
        free(self);
        return rc;
    }
    snprintf(self->dir, sizeof self->dir, "%s/pg", cfg->paths.var);
    snprintf(self->data, sizeof self->data, "%s/data", self->dir);
    snprintf(self->run, sizeof self->run, "%s/run", self->dir);
    snprintf(self->log, sizeof self->log, "%s/postgres.log", self->dir);
    if ((rc = s_mkdir_owned(self->dir, self->uid, self->gid)) != 0 ||
        (rc = s_mkdir_owned(self->run, self->uid, self->gid)) != 0) {
        free(self);
        return rc;
    }

    char version[LK_PATH_MAX + 48];
    snprintf(version, sizeof version, "%s/PG_VERSION", self->data);
    if (access(version, F_OK) != 0) {
        lk_info("initializing the embedded Postgres cluster in %s", self->data);
        char initdb[LK_PATH_MAX + 16];
        snprintf(initdb, sizeof initdb, "%s/initdb", self->bindir);
        char *argv[] = {initdb, "-D", self->data, "-U", "latchkey", "--auth=trust", "-E", "UTF8",
                        "--no-locale", "--no-instructions", NULL};
        if ((rc = s_run(self, argv, 0, NULL)) != 0) {
            lk_error("initdb failed; see %s", self->log);
            free(self);
            return rc;
        }
    }
    if ((rc = s_spawn(self)) != 0 || (rc = s_wait_ready(self, conninfo, len)) != 0) {
        pgembed_destroy(&self);
        return rc;
    }
    *out = self;
    return 0;
}

pid_t pgembed_pid(const pgembed_t *self)
{
    return self ? self->pid : 0;
}

void pgembed_reaped(pgembed_t *self, int status)
{
    lk_warn("embedded Postgres exited (%s %d)", WIFSIGNALED(status) ? "signal" : "status",
            WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    self->pid = 0;
}

int pgembed_restart(pgembed_t *self)
{
    return s_spawn(self);
}

void pgembed_stop(pgembed_t *self, int64_t timeout_ms)
{
    if (!self || self->pid <= 0)
        return;
    /* SIGINT = fast shutdown (abort transactions, checkpoint); SIGQUIT = immediate. */
    const int sigs[] = {SIGINT, SIGQUIT, SIGKILL};
    for (size_t i = 0; i < 3 && self->pid > 0; i++) {
        kill(self->pid, sigs[i]);
        int64_t end = lk_mono_ms() + timeout_ms;
        while (lk_mono_ms() < end) {
            int status;
            pid_t r = waitpid(self->pid, &status, WNOHANG);
            if (r == self->pid || (r < 0 && errno == ECHILD)) {
                self->pid = 0;
                break;
            }
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    lk_info("embedded Postgres stopped");
}

void pgembed_destroy(pgembed_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    pgembed_stop(*self_p, 10000);
    free(*self_p);
    *self_p = NULL;
}

/* The newest /usr/lib/postgresql/<major>/bin holding a postgres binary, unless configured. */
static int s_find_bindir(const struct lk_config *cfg, char *out, size_t len)
{
    if (cfg->postgres.bindir[0]) {
        snprintf(out, len, "%s", cfg->postgres.bindir);
        return 0;
    }
    DIR *d = opendir("/usr/lib/postgresql");
    int best = -1;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            char *end;
            long v = strtol(e->d_name, &end, 10);
            char probe[300];
            snprintf(probe, sizeof probe, "/usr/lib/postgresql/%s/bin/postgres", e->d_name);
            if (*end == '\0' && end != e->d_name && v > best && access(probe, X_OK) == 0)
                best = (int)v;
        }
        closedir(d);
    }
    if (best < 0) {
        lk_error("no Postgres server found under /usr/lib/postgresql (install the postgresql "
                 "package or set postgres.bindir or database.url)");
        return -ENOENT;
    }
    snprintf(out, len, "/usr/lib/postgresql/%d/bin", best);
    return 0;
}

static int s_resolve_user(const struct lk_config *cfg, uid_t *uid, gid_t *gid)
{
    if (geteuid() != 0) {
        *uid = geteuid();
        *gid = getegid();
        return 0;
    }
    struct passwd *pw = getpwnam(cfg->postgres.user);
    if (!pw) {
        /* Postgres refuses root: give it a system user of its own. */
        lk_info("creating system user %s for the embedded Postgres", cfg->postgres.user);
        char *argv[] = {"useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", (char *)cfg->postgres.user, NULL};
        pid_t pid = fork();
        if (pid == 0) {
            execvp("useradd", argv);
            _exit(127);
        }
        int status = 0;
        if (pid > 0)
            waitpid(pid, &status, 0);
        pw = getpwnam(cfg->postgres.user);
        if (!pw) {
            lk_error("cannot create system user %s for the embedded Postgres", cfg->postgres.user);
            return -ENOENT;
        }
    }
    *uid = pw->pw_uid;
    *gid = pw->pw_gid;
    return 0;
}

static int s_mkdir_owned(const char *path, uid_t uid, gid_t gid)
{
    if (mkdir(path, 0700) != 0 && errno != EEXIST) {
        int e = errno;
        lk_error("cannot create %s: %s", path, strerror(e));
        return -e;
    }
    if (chown(path, uid, gid) != 0 || chmod(path, 0700) != 0) {
        int e = errno;
        lk_error("cannot give %s to uid %d: %s", path, (int)uid, strerror(e));
        return -e;
    }
    return 0;
}

/* Runs argv as the Postgres user with stdout/stderr to the server log, and waits for it
 * (background=0) or returns its pid (background=1). */
static int s_run(pgembed_t *self, char *const argv[], int background, pid_t *pid_out)
{
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        /* Own process group: a terminal's Ctrl-C reaches latchkeyd only, which then stops
         * everything in order, Postgres last. */
        setpgid(0, 0);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (getuid() != self->uid) {
            if (setgroups(0, NULL) != 0 || setgid(self->gid) != 0 || setuid(self->uid) != 0) {
                fprintf(stderr, "latchkeyd: cannot switch to the Postgres user: %s\n",
                        strerror(errno));
                _exit(126);
            }
        }
        /* After setuid: a change of credentials clears the parent-death signal. */
        prctl(PR_SET_PDEATHSIG, SIGINT);
        if (getppid() == 1)
            _exit(1);
        if (access(self->dir, R_OK | W_OK | X_OK) != 0) {
            fprintf(stderr,
                    "latchkeyd: the Postgres user cannot reach %s (%s): every directory above "
                    "it must be searchable (chmod o+x), or set paths.var elsewhere\n",
                    self->dir, strerror(errno));
            _exit(126);
        }
        {
            int fd = open(self->log, O_WRONLY | O_CREAT | O_APPEND, 0600);
            if (fd >= 0) {
                dup2(fd, 1);
                dup2(fd, 2);
                close(fd);
            }
        }
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) {
            dup2(devnull, 0);
            close(devnull);
        }
        execv(argv[0], argv);
        fprintf(stderr, "latchkeyd: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    if (background) {
        *pid_out = pid;
        return 0;
    }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR)
            return -errno;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

static int s_spawn(pgembed_t *self)
{
    char postgres[LK_PATH_MAX + 16];
    snprintf(postgres, sizeof postgres, "%s/postgres", self->bindir);
    char sockdir[LK_PATH_MAX + 64];
    snprintf(sockdir, sizeof sockdir, "unix_socket_directories=%s", self->run);
    char *argv[] = {postgres, "-D", self->data, "-c", "listen_addresses=", "-c", sockdir,
                    "-c", "unix_socket_permissions=0700",
                    "-c", "shared_preload_libraries=pg_stat_statements",
                    "-c", "max_connections=200",
                    /* a 2xx means committed and on disk: never let a config file say otherwise */
                    "-c", "fsync=on", "-c", "synchronous_commit=on", NULL};
    int rc = s_run(self, argv, 1, &self->pid);
    if (rc == 0)
        lk_info("embedded Postgres started (pid %d, log %s)", (int)self->pid, self->log);
    return rc;
}

static int s_wait_ready(pgembed_t *self, char *conninfo, size_t len)
{
    char admin[LK_PATH_MAX + 96];
    snprintf(admin, sizeof admin, "host=%s dbname=postgres user=latchkey", self->run);
    int64_t end = lk_mono_ms() + 60000;
    for (;;) {
        if (PQping(admin) == PQPING_OK)
            break;
        int status;
        if (waitpid(self->pid, &status, WNOHANG) == self->pid) {
            self->pid = 0;
            lk_error("embedded Postgres exited during start-up; see %s", self->log);
            return -EIO;
        }
        if (lk_mono_ms() > end) {
            lk_error("embedded Postgres did not answer within 60 s; see %s", self->log);
            return -ETIMEDOUT;
        }
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    int rc = s_ensure_database(admin);
    if (rc == 0)
        snprintf(conninfo, len, "host=%s dbname=latchkey user=latchkey", self->run);
    return rc;
}

static int s_ensure_database(const char *admin_conninfo)
{
    PGconn *c = PQconnectdb(admin_conninfo);
    int rc = -EIO;
    if (PQstatus(c) != CONNECTION_OK) {
        lk_error("cannot connect to the embedded Postgres: %s", PQerrorMessage(c));
        goto out;
    }
    PGresult *r = PQexec(c, "SELECT 1 FROM pg_database WHERE datname = 'latchkey'");
    int exists = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
    PQclear(r);
    if (!exists) {
        r = PQexec(c, "CREATE DATABASE latchkey");
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            lk_error("cannot create database latchkey: %s", PQerrorMessage(c));
            PQclear(r);
            goto out;
        }
        PQclear(r);
        lk_info("created database latchkey");
    }
    rc = 0;
out:
    PQfinish(c);
    return rc;
}
