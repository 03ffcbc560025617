#include "log.h"

#include "errors.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *s_role = "latchkey";
static enum lk_log_level s_level = LK_LOG_INFO;
static const char *const s_names[] = {"debug", "info", "warn", "error"};

void lk_log_init(const char *role, enum lk_log_level level)
{
    s_role = role;
    s_level = level;
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
    /* One write() so lines from concurrent processes do not interleave. */
    ssize_t w = write(STDERR_FILENO, line, o);
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
