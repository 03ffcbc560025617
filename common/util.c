#include "util.h"

#include "errors.h"

#include <stdio.h>
#include <string.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

int64_t lk_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t lk_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

char *lk_time_format_ms(int64_t ms, char *out, size_t outlen)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
    return out;
}

char *lk_time_format_s(int64_t ms, char *out, size_t outlen)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, outlen, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    return out;
}

void lk_uuid_format(const uint8_t id[16], char out[37])
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[o++] = '-';
        out[o++] = hex[id[i] >> 4];
        out[o++] = hex[id[i] & 15];
    }
    out[o] = '\0';
}

static int s_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int lk_uuid_parse(const char *s, uint8_t id[16])
{
    if (strlen(s) != 36)
        return LK_EMALFORMED;
    int b = 0;
    for (int i = 0; i < 36;) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return LK_EMALFORMED;
            i++;
            continue;
        }
        int hi = s_hexval(s[i]), lo = s_hexval(s[i + 1]);
        if (hi < 0 || lo < 0)
            return LK_EMALFORMED;
        id[b++] = (uint8_t)(hi << 4 | lo);
        i += 2;
    }
    return 0;
}

int lk_strlcpy(char *dst, const char *src, size_t dstlen)
{
    size_t n = strlen(src);
    if (n < dstlen) {
        memcpy(dst, src, n + 1);
        return 0;
    }
    if (dstlen) {
        memcpy(dst, src, dstlen - 1);
        dst[dstlen - 1] = '\0';
    }
    return LK_ETOOBIG;
}

void lk_die_with_parent(void)
{
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    const char *sup = getenv("LATCHKEY_SUPERVISOR_PID");
    if (sup && atoi(sup) > 1 && getppid() != (pid_t)atoi(sup))
        _exit(1);
}
