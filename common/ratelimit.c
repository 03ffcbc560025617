/* ratelimit.c: see ratelimit.h. */
#include "ratelimit.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sodium.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>

void lk_rl_init(lk_ratelimit_t *rl)
{
    memset(rl->slot, 0, sizeof rl->slot);
    randombytes_buf(rl->key, sizeof rl->key);
}

int lk_rl_take(lk_ratelimit_t *rl, const uint8_t addr[16], int64_t now_ms, uint32_t rate,
               uint32_t burst, int64_t *retry_ms)
{
    *retry_ms = 0;
    if (rate == 0)
        return 0;
    if (burst == 0)
        burst = 1;
    if (now_ms <= 0)
        now_ms = 1;
    uint64_t h;
    crypto_shorthash((unsigned char *)&h, addr, 16, rl->key);
    struct lk_rl_slot *s = NULL, *victim = NULL;
    for (unsigned i = 0; i < LK_RL_PROBE; i++) {
        struct lk_rl_slot *t = &rl->slot[(h + i) & (LK_RL_SLOTS - 1)];
        if (t->seen_ms != 0 && memcmp(t->addr, addr, 16) == 0) {
            s = t;
            break;
        }
        if (victim == NULL || (victim->seen_ms != 0 && t->seen_ms < victim->seen_ms))
            victim = t;
    }
    int64_t full = (int64_t)burst * 1000;
    if (s == NULL) {
        s = victim;
        memcpy(s->addr, addr, 16);
        s->seen_ms = now_ms;
        s->milli = full;
    } else if (now_ms > s->seen_ms) {
        int64_t dt = now_ms - s->seen_ms;
        /* dt x rate tokens/s = dt x rate milli-tokens; past a full refill it is moot */
        if (dt >= full)
            s->milli = full;
        else {
            s->milli += dt * (int64_t)rate;
            if (s->milli > full)
                s->milli = full;
        }
        s->seen_ms = now_ms;
    }
    if (s->milli >= 1000) {
        s->milli -= 1000;
        return 0;
    }
    int64_t wait = (1000 - s->milli + rate - 1) / rate;
    *retry_ms = wait < 1 ? 1 : wait;
    return LK_ELIMITED;
}

int lk_ip_parse(const char *s, size_t n, uint8_t out[16])
{
    char buf[INET6_ADDRSTRLEN + 1];
    while (n > 0 && (*s == ' ' || *s == '\t')) {
        s++;
        n--;
    }
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (n == 0 || n >= sizeof buf)
        return LK_EINVAL;
    memcpy(buf, s, n);
    buf[n] = '\0';
    struct in_addr a4;
    if (inet_pton(AF_INET, buf, &a4) == 1) {
        memset(out, 0, 10);
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &a4, 4);
        return 0;
    }
    if (inet_pton(AF_INET6, buf, out) == 1)
        return 0;
    return LK_EINVAL;
}

void lk_ip_from_sockaddr(const void *sa, uint8_t out[16])
{
    /* Copied out, not read through a cast pointer: the caller's object is a sockaddr_in,
     * _in6 or _storage, and strict aliasing holds the compiler to that type. */
    sa_family_t fam;
    memset(out, 0, 16);
    memcpy(&fam, (const char *)sa + offsetof(struct sockaddr, sa_family), sizeof fam);
    if (fam == AF_INET) {
        out[10] = out[11] = 0xff;
        memcpy(out + 12, (const char *)sa + offsetof(struct sockaddr_in, sin_addr), 4);
    } else if (fam == AF_INET6) {
        memcpy(out, (const char *)sa + offsetof(struct sockaddr_in6, sin6_addr), 16);
    }
}

int lk_ip_list_parse(const char *csv, struct lk_ip_list *out)
{
    out->n = 0;
    const char *p = csv;
    while (*p) {
        size_t n = strcspn(p, ",");
        size_t k = n;
        const char *q = p;
        while (k > 0 && (*q == ' ' || *q == '\t')) {
            q++;
            k--;
        }
        if (k > 0) {
            if (out->n == LK_RL_TRUSTED_MAX || lk_ip_parse(q, k, out->addr[out->n]) != 0)
                return LK_EINVAL;
            out->n++;
        }
        p += n;
        if (*p == ',')
            p++;
    }
    return 0;
}

static int s_trusted(const struct lk_ip_list *l, const uint8_t a[16])
{
    for (int i = 0; i < l->n; i++)
        if (memcmp(l->addr[i], a, 16) == 0)
            return 1;
    return 0;
}

void lk_client_addr(const uint8_t peer[16], const char *xff, const struct lk_ip_list *trusted,
                    uint8_t out[16])
{
    memcpy(out, peer, 16);
    if (trusted == NULL || !s_trusted(trusted, peer) || xff == NULL)
        return;
    size_t end = strlen(xff);
    while (end > 0) {
        size_t start = end;
        while (start > 0 && xff[start - 1] != ',')
            start--;
        uint8_t a[16];
        size_t k = start;
        while (k < end && (xff[k] == ' ' || xff[k] == '\t'))
            k++;
        if (k == end) { /* an empty element (two commas, a trailing one): skipped */
            end = start > 0 ? start - 1 : 0;
            continue;
        }
        if (lk_ip_parse(xff + start, end - start, a) != 0)
            return; /* garbage: the last trusted hop reached is the client */
        memcpy(out, a, 16);
        if (!s_trusted(trusted, a))
            return;
        end = start > 0 ? start - 1 : 0;
    }
}
