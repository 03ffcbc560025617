/* Unit tests of perf/replay/hist.c: bucket layout, and percentiles against a brute-force
 * sort of the same values (nearest rank: the value of rank ceil(p/100 * n)). */
#include "perf/replay/hist.c"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <cmocka.h>

static int s_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t s_rng = 88172645463325252ULL;
static uint64_t s_rand(void)
{
    s_rng ^= s_rng << 13;
    s_rng ^= s_rng >> 7;
    s_rng ^= s_rng << 17;
    return s_rng;
}

/* Every bucket is contiguous with the next, values map into their own bucket, and no bucket
 * is wider than 1/128 of its lower bound. */
static void test_buckets(void **state)
{
    (void)state;
    for (size_t i = 0; i + 1 < HIST_BUCKETS; i++) {
        assert_true(hist_bucket_lo(i) <= hist_bucket_hi(i));
        assert_int_equal(hist_bucket_hi(i) + 1, hist_bucket_lo(i + 1));
        assert_int_equal(hist_index(hist_bucket_lo(i)), i);
        assert_int_equal(hist_index(hist_bucket_hi(i)), i);
        if (i >= HIST_SUB)
            assert_true((hist_bucket_hi(i) - hist_bucket_lo(i) + 1) * 128 <= hist_bucket_lo(i));
    }
    assert_int_equal(hist_index(0), 0);
    assert_int_equal(hist_index(255), 255);
    assert_int_equal(hist_index(256), 256);
    assert_int_equal(hist_index(UINT64_MAX), HIST_BUCKETS - 1);
    assert_int_equal(hist_index((uint64_t)1 << 40), HIST_BUCKETS - 1);
    /* the top octave's last bucket also takes everything above 2^40 */
    assert_int_equal(hist_index(((uint64_t)1 << 40) - 1), HIST_BUCKETS - 1);
    assert_int_equal(hist_bucket_hi(HIST_BUCKETS - 1), UINT64_MAX);
}

static void s_check_against_sort(uint64_t *v, size_t n)
{
    static const double ps[] = {1, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99, 100};
    struct hist *h = calloc(1, sizeof *h);
    assert_non_null(h);
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        hist_record(h, v[i]);
        sum += v[i];
    }
    qsort(v, n, sizeof *v, s_cmp);
    assert_int_equal(h->count, n);
    assert_int_equal(h->min, v[0]);
    assert_int_equal(h->max, v[n - 1]);
    assert_int_equal(h->sum, sum);
    uint64_t total = 0;
    for (size_t i = 0; i < HIST_BUCKETS; i++)
        total += h->counts[i];
    assert_int_equal(total, n); /* exact counts */
    for (size_t k = 0; k < sizeof ps / sizeof ps[0]; k++) {
        double x = ps[k] * (double)n / 100.0;
        size_t rank = (size_t)ceil(x - x * 1e-9);
        if (rank < 1)
            rank = 1;
        uint64_t exact = v[rank - 1], got = hist_percentile(h, ps[k]);
        /* same bucket as the true value, never below it */
        if (got < exact || hist_index(got) != hist_index(exact))
            fail_msg("p%g of %zu values: histogram %llu, sorted %llu", ps[k], n,
                     (unsigned long long)got, (unsigned long long)exact);
        /* and the count of values up to its bucket covers the rank exactly */
        uint64_t below = 0;
        for (size_t i = 0; i < hist_index(got); i++)
            below += h->counts[i];
        assert_true(below < rank && below + h->counts[hist_index(got)] >= rank);
    }
    free(h);
}

static void test_percentiles_random(void **state)
{
    (void)state;
    static const size_t sizes[] = {1, 2, 3, 10, 99, 100, 101, 1000, 12345, 200000};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t n = sizes[s];
        uint64_t *v = malloc(n * sizeof *v);
        assert_non_null(v);
        for (int shape = 0; shape < 3; shape++) {
            for (size_t i = 0; i < n; i++) {
                if (shape == 0) /* uniform over 0..10 s */
                    v[i] = s_rand() % 10000000;
                else if (shape == 1) /* log-uniform: 1 us .. 100 s */
                    v[i] = (uint64_t)exp((double)(s_rand() % 1000000) / 1000000.0 * log(1e8));
                else /* a few values repeated, with a far tail */
                    v[i] = (s_rand() % 100 == 0) ? 5000000 + s_rand() % 1000 : 1000 + s_rand() % 3;
            }
            s_check_against_sort(v, n);
        }
        free(v);
    }
}

static void test_empty_and_add(void **state)
{
    (void)state;
    struct hist *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal(hist_percentile(a, 99), 0);
    assert_true(hist_mean(a) == 0.0);
    hist_record(a, 500);
    hist_record(b, 70000);
    hist_record(b, 3);
    hist_add(a, b);
    assert_int_equal(a->count, 3);
    assert_int_equal(a->min, 3);
    assert_int_equal(a->max, 70000);
    /* 500 is in [500, 501]: the answer is the bucket's top, never below the true value */
    assert_int_equal(hist_percentile(a, 50), 501);
    assert_int_equal(hist_percentile(a, 100), 70000);
    assert_int_equal(hist_percentile(a, 1), 3);
    free(a);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buckets),
        cmocka_unit_test(test_percentiles_random),
        cmocka_unit_test(test_empty_and_add),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
