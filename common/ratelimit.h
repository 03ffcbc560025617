/* ratelimit.h: the gateway's per-client-IP token bucket (ratelimit.client_rate and
 * client_burst over signup and signin) and the choice of the client address
 * (ratelimit.trusted_proxies, X-Forwarded-For).
 *
 * The table is fixed-size (LK_RL_SLOTS), allocated once, open addressing with a keyed
 * hash (SipHash-2-4 under a random key, so a client cannot aim at one probe window);
 * a lookup touches at most LK_RL_PROBE slots and makes no system call. When the window
 * is full the least recently seen entry is taken over: a client forgotten that way
 * starts again with a full bucket, which only errs on the side of letting it through.
 * Addresses are 16 bytes: IPv6 as is, IPv4 as ::ffff:a.b.c.d.
 */
#ifndef LK_RATELIMIT_H
#define LK_RATELIMIT_H

#include "errors.h"

#include <stddef.h>
#include <stdint.h>

#define LK_RL_SLOTS 16384 /* power of two */
#define LK_RL_PROBE 8
#define LK_RL_TRUSTED_MAX 64

struct lk_rl_slot {
    uint8_t addr[16];
    int64_t seen_ms;  /* last refill (mono ms); 0 = free */
    int64_t milli;    /* tokens x 1000 */
};

typedef struct lk_ratelimit {
    unsigned char key[16];
    struct lk_rl_slot slot[LK_RL_SLOTS];
} lk_ratelimit_t;

/* A fresh table with a random hash key (call after lk_crypto_init). */
void lk_rl_init(lk_ratelimit_t *rl);

/* One request of addr at now_ms (monotonic, > 0): returns 0 (a token was taken) or
 * LK_ELIMITED with *retry_ms set to the time until the next token (>= 1). rate is tokens
 * per second (0: never limited), burst the bucket size (>= 1). */
int lk_rl_take(lk_ratelimit_t *rl, const uint8_t addr[16], int64_t now_ms, uint32_t rate,
               uint32_t burst, int64_t *retry_ms) LK_WUR;

/* Parses an IPv4 or IPv6 address of n bytes (surrounding blanks allowed) into out.
 * Returns 0 or LK_EINVAL. */
int lk_ip_parse(const char *s, size_t n, uint8_t out[16]) LK_WUR;

/* Converts a socket address (struct sockaddr_in / sockaddr_in6) into out; anything else
 * (a unix socket) becomes all zeros. */
void lk_ip_from_sockaddr(const void *sa, uint8_t out[16]);

struct lk_ip_list {
    int n;
    uint8_t addr[LK_RL_TRUSTED_MAX][16];
};

/* Parses a comma-separated list of addresses (empty: none). Returns 0 or LK_EINVAL. */
int lk_ip_list_parse(const char *csv, struct lk_ip_list *out) LK_WUR;

/* The client of a request that came from peer with X-Forwarded-For value xff (NULL or
 * "" when absent): peer, unless peer is a trusted proxy; then the rightmost address of
 * xff that is not a trusted proxy (walking left over trusted ones); when xff holds no
 * parseable address there, the rightmost trusted one reached, i.e. the proxy itself. */
void lk_client_addr(const uint8_t peer[16], const char *xff, const struct lk_ip_list *trusted,
                    uint8_t out[16]);

#endif
