/* hist.c: log-linear latency histogram (see hist.h). */
#include "hist.h"

#include <math.h>
#include <string.h>

size_t hist_index(uint64_t v)
{
    if (v < HIST_SUB)
        return (size_t)v;
    if (v >> HIST_TOP_BIT)
        return HIST_BUCKETS - 1;
    unsigned m = 63u - (unsigned)__builtin_clzll(v); /* 2^m <= v < 2^(m+1), m >= 8 */
    unsigned shift = m - (HIST_SUB_BITS - 1);        /* bucket width 2^shift */
    return HIST_SUB + (size_t)(m - HIST_SUB_BITS) * HIST_HALF + (size_t)((v >> shift) - HIST_HALF);
}

uint64_t hist_bucket_lo(size_t i)
{
    if (i < HIST_SUB)
        return i;
    size_t k = i - HIST_SUB;
    unsigned m = HIST_SUB_BITS + (unsigned)(k / HIST_HALF);
    unsigned shift = m - (HIST_SUB_BITS - 1);
    return (uint64_t)(HIST_HALF + k % HIST_HALF) << shift;
}

uint64_t hist_bucket_hi(size_t i)
{
    if (i < HIST_SUB)
        return i;
    if (i == HIST_BUCKETS - 1)
        return UINT64_MAX; /* the clamp bucket holds everything above */
    size_t k = i - HIST_SUB;
    unsigned m = HIST_SUB_BITS + (unsigned)(k / HIST_HALF);
    unsigned shift = m - (HIST_SUB_BITS - 1);
    return hist_bucket_lo(i) + ((uint64_t)1 << shift) - 1;
}

void hist_record(struct hist *h, uint64_t v)
{
    if (h->count == 0 || v < h->min)
        h->min = v;
    if (v > h->max)
        h->max = v;
    h->count++;
    h->sum += v;
    h->counts[hist_index(v)]++;
}

void hist_add(struct hist *dst, const struct hist *src)
{
    if (src->count == 0)
        return;
    if (dst->count == 0 || src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->count += src->count;
    dst->sum += src->sum;
    for (size_t i = 0; i < HIST_BUCKETS; i++)
        dst->counts[i] += src->counts[i];
}

uint64_t hist_percentile(const struct hist *h, double p)
{
    if (h->count == 0)
        return 0;
    if (!(p > 0))
        return h->min;
    if (p >= 100)
        return h->max;
    /* p * count / 100 is not exact in binary (99.9 is not): a rank within 1e-9 of a whole
     * number is that number */
    double x = p * (double)h->count / 100.0;
    uint64_t rank = (uint64_t)ceil(x - x * 1e-9);
    if (rank < 1)
        rank = 1;
    if (rank > h->count)
        rank = h->count;
    uint64_t seen = 0;
    for (size_t i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= rank) {
            uint64_t v = hist_bucket_hi(i);
            if (v > h->max)
                v = h->max;
            if (v < h->min)
                v = h->min;
            return v;
        }
    }
    return h->max;
}

double hist_mean(const struct hist *h)
{
    return h->count ? (double)h->sum / (double)h->count : 0.0;
}
