#include "log.h"

#include "errors.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_CHECK_MS 1000 /* how often the log file's path is checked for a rotation */

static const char *s_role = "latchkey";
static enum lk_log_level s_level = LK_LOG_INFO;
static const char *const s_names[] = {"debug", "info", "warn", "error"};
static char s_path[512];  /* the log file; empty: none */
static int s_fd = -1;
static dev_t s_dev;       /* of the file s_fd holds open */
static ino_t s_ino;
static int64_t s_checked; /* monotonic ms of the last check of s_path */

/* Buffered mode (lk_log_buffer): info and debug lines wait here until lk_log_flush. */
#define S_BUF_MAX 65536
static char s_buf[S_BUF_MAX];
static size_t s_buf_len;
static int s_buffered;

static int s_open(void);
static void s_write_all(const char *p, size_t n);

void lk_log_init(const char *role, enum lk_log_level level)
{
    s_role = role;
    s_level = level;
}

int lk_log_file(const char *path)
{
    if (s_fd >= 0)
        close(s_fd);
    s_fd = -1;
    s_path[0] = '\0';
    if (!path || !*path)
        return 0;
    if (lk_strlcpy(s_path, path, sizeof s_path) != 0) {
        s_path[0] = '\0';
        return -ENAMETOOLONG;
    }
    int rc = s_open();
    if (rc != 0)
        s_path[0] = '\0';
    return rc;
}

void lk_log_reopen(void)
{
    if (s_path[0])
        (void)s_open();
}

/* (Re)opens s_path; on failure the file open before stays. Returns 0 or -errno. */
static int s_open(void)
{
    struct stat st;
    int fd = open(s_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0)
        return -errno;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    if (s_fd >= 0)
        close(s_fd);
    s_fd = fd;
    s_dev = st.st_dev;
    s_ino = st.st_ino;
    s_checked = lk_mono_ms();
    return 0;
}

int lk_log_level_parse(const char *s, enum lk_log_level *out)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, s_names[i]) == 0) {
            *out = (enum lk_log_level)i;
            return 0;
        }
    return LK_EINVAL;
}

static void s_vlog(enum lk_log_level level, const char *rid, const char *fmt, va_list ap)
{
    char text[1024], line[2048], ts[32];
    vsnprintf(text, sizeof text, fmt, ap);
    lk_time_format_ms(lk_now_ms(), ts, sizeof ts);
    int n = snprintf(line, sizeof line, "time=%s level=%s role=%s pid=%d", ts, s_names[level],
                     s_role, (int)getpid());
    if (rid && *rid && n < (int)sizeof line)
        n += snprintf(line + n, sizeof line - n, " rid=%s", rid);
    /* Escape into msg="...": one line per event whatever the text holds. */
    size_t o = (size_t)n;
    const char *pre = " msg=\"";
    for (const char *p = pre; *p && o < sizeof line - 8; p++)
        line[o++] = *p;
    for (const unsigned char *p = (const unsigned char *)text; *p && o < sizeof line - 8; p++) {
        if (*p == '"' || *p == '\\') {
            line[o++] = '\\';
            line[o++] = (char)*p;
        } else if (*p < 0x20 || *p == 0x7f) {
            line[o++] = '?';
        } else {
            line[o++] = (char)*p;
        }
    }
    line[o++] = '"';
    line[o++] = '\n';
    if (s_buffered && level < LK_LOG_WARN) {
        if (s_buf_len + o > sizeof s_buf)
            lk_log_flush();
        memcpy(s_buf + s_buf_len, line, o);
        s_buf_len += o;
        return;
    }
    lk_log_flush(); /* keep the order of lines */
    s_write_all(line, o);
}

void lk_log_buffer(int on)
{
    if (on && !s_buffered)
        atexit(lk_log_flush);
    s_buffered = on;
}

void lk_log_flush(void)
{
    /* Whole lines, at most PIPE_BUF bytes per write(): the supervisor merges every
     * process's stderr, and only writes that small are atomic on a pipe. */
    size_t off = 0;
    while (off < s_buf_len) {
        size_t n = s_buf_len - off;
        if (n > 4096) {
            n = 4096;
            while (n > 0 && s_buf[off + n - 1] != '\n')
                n--;
            if (n == 0)
                n = 4096;
        }
        s_write_all(s_buf + off, n);
        off += n;
    }
    s_buf_len = 0;
}

/* One write() per destination so lines from concurrent processes do not interleave. */
static void s_write_all(const char *line, size_t o)
{
    ssize_t w = write(STDERR_FILENO, line, o);
    (void)w;
    if (s_fd < 0)
        return;
    /* logrotate moved the file (or removed it): follow the path, once a second at most */
    int64_t now = lk_mono_ms();
    if (now - s_checked >= S_CHECK_MS) {
        struct stat st;
        s_checked = now;
        if (stat(s_path, &st) != 0 || st.st_dev != s_dev || st.st_ino != s_ino)
            (void)s_open();
    }
    w = write(s_fd, line, o);
    (void)w;
}

void lk_log(enum lk_log_level level, const char *rid, const char *fmt, ...)
{
    if (level < s_level)
        return;
    va_list ap;
    va_start(ap, fmt);
    s_vlog(level, rid, fmt, ap);
    va_end(ap);
}

void lk_fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    s_vlog(LK_LOG_ERROR, NULL, fmt, ap);
    va_end(ap);
    exit(1);
}
