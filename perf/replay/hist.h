/* hist.h: the replayer's latency histogram, HDR-style log-linear buckets.
 *
 * Values (microseconds, any unsigned 64-bit quantity) below 256 get a bucket each; above,
 * every power of two [2^m, 2^(m+1)) is cut into 128 equal buckets, so a bucket is never
 * wider than 1/128 of its lower bound (0.8 %). Counts are exact: every recorded value is
 * counted in exactly one bucket, none is sampled away. Values at or above 2^40 (12.7 days
 * in microseconds) land in the last bucket. min, max and sum are kept exactly.
 *
 * A struct hist is plain data: zero it (memset or = {0}) to start, copy it freely, merge two
 * with hist_add. About 35 KiB each. */
#ifndef LK_REPLAY_HIST_H
#define LK_REPLAY_HIST_H

#include <stddef.h>
#include <stdint.h>

#define HIST_SUB_BITS 8                /* 256 exact values, then 128 per octave */
#define HIST_SUB (1u << HIST_SUB_BITS) /* 256 */
#define HIST_HALF (HIST_SUB / 2)       /* 128 buckets per power of two */
#define HIST_TOP_BIT 40                /* values >= 2^40 are clamped */
#define HIST_BUCKETS (HIST_SUB + (HIST_TOP_BIT - HIST_SUB_BITS) * HIST_HALF)

struct hist {
    uint64_t count;                /* values recorded */
    uint64_t min, max;             /* exact; 0 when count is 0 */
    uint64_t sum;                  /* exact sum (wraps past 2^64: not a concern here) */
    uint64_t counts[HIST_BUCKETS]; /* per bucket */
};

/* The bucket of value v (v >= 2^40 gives the last bucket). */
size_t hist_index(uint64_t v);

/* The smallest and largest value of bucket i (i < HIST_BUCKETS). */
uint64_t hist_bucket_lo(size_t i);
uint64_t hist_bucket_hi(size_t i);

/* Counts one value. */
void hist_record(struct hist *h, uint64_t v);

/* Adds every count of src to dst. */
void hist_add(struct hist *dst, const struct hist *src);

/* The p-th percentile (0 < p <= 100) by nearest rank: the value of rank ceil(p/100 * count)
 * in sorted order, given as the largest value of its bucket but never above the exact
 * maximum nor below the exact minimum. So the answer is within one bucket (0.8 %) above the
 * true value, never below it. 0 when the histogram is empty. */
uint64_t hist_percentile(const struct hist *h, double p);

/* The mean, 0 when empty. */
double hist_mean(const struct hist *h);

#endif
