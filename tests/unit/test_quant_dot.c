/*
 * kern_vec_dot_ref against the plain definition sum_i w_i * a_i computed in
 * double from the dequantized rows, for every weight type with a dot, on
 * quantized Gaussian rows and on random raw bit patterns (finite f16
 * scales).  Also kern_vec_dot_type and the argument checks.
 *
 * Tolerance.  The reference sums per block in float, so its error is a few
 * float roundings of the largest partial sums, not of the result: with
 * cancellation (the min terms of Q4_1/Q5_1/Q2_K/Q4_K/Q5_K) the result can be
 * much smaller than its parts.  The bound is therefore relative to
 *     M = sum_i (|w_i| + |min_i|) * |a_i|,
 * where min_i is the element's offset (the weight decoded with all codes
 * zero, for the types with a min; 0 for the others), so both halves of a
 * cancelling pair count.  |dot - ref| <= 4e-6 * M: about (blocks + 8)
 * roundings of 2^-24 for n = 1024 in 32-element blocks, the worst case of
 * the float sum; the worst measured while writing this was 2.8e-8 * M.  Q4_1/Q5_1 add the Q8_1
 * term: the dot uses s = f16(d_a * sum q_a), the definition f16(d_a) * sum q_a; they differ by <=
 * 2^-10 |s| (2^-25 absolute per rounding where subnormal), times |m_w|.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "kernels/cpu/dot.h"
#include "kernels/cpu/quant.h"
#include "tests/unit/harness.h"

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static double rng_gauss(uint64_t *s)
{
    double u1 = ((double)(rng_next(s) >> 11) + 0.5) / 9007199254740992.0;
    double u2 = ((double)(rng_next(s) >> 11) + 0.5) / 9007199254740992.0;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Byte offsets of a block's f16 fields (at most two), and of the code
 * bytes that zeroing turns the weight into its min (has_min). */
struct fmt {
    uint32_t t;
    int f16_off[2]; /* -1: none */
    bool has_min;
    int code_off, code_len;
};

static const struct fmt fmts[] = {
    {KT_F32, {-1, -1}, false, 0, 0},
    {KT_F16, {0, -1}, false, 0, 0},
    {KT_BF16, {-1, -1}, false, 0, 0},
    {KT_Q4_0, {offsetof(block_q4_0, d), -1}, false, 0, 0},
    {KT_Q4_1,
     {offsetof(block_q4_1, d), offsetof(block_q4_1, m)},
     true,
     offsetof(block_q4_1, qs),
     16},
    {KT_Q5_0, {offsetof(block_q5_0, d), -1}, false, 0, 0},
    {KT_Q5_1,
     {offsetof(block_q5_1, d), offsetof(block_q5_1, m)},
     true,
     offsetof(block_q5_1, qh),
     20},
    {KT_Q8_0, {offsetof(block_q8_0, d), -1}, false, 0, 0},
    {KT_Q2_K,
     {offsetof(block_q2_K, d), offsetof(block_q2_K, dmin)},
     true,
     offsetof(block_q2_K, qs),
     64},
    {KT_Q3_K, {offsetof(block_q3_K, d), -1}, false, 0, 0},
    {KT_Q4_K,
     {offsetof(block_q4_K, d), offsetof(block_q4_K, dmin)},
     true,
     offsetof(block_q4_K, qs),
     128},
    {KT_Q5_K,
     {offsetof(block_q5_K, d), offsetof(block_q5_K, dmin)},
     true,
     offsetof(block_q5_K, qh),
     160},
    {KT_Q6_K, {offsetof(block_q6_K, d), -1}, false, 0, 0},
};

/* Random bytes, then every f16 field made finite (exponent 31 -> 15) so the
 * weights are numbers; raw F32 weights are drawn as Gaussian instead. */
static void random_bits(const struct fmt *f, uint8_t *w, int64_t n, uint64_t *s)
{
    const struct kern_type_traits *tt = kern_type_traits(f->t);
    size_t bytes = kern_row_size(f->t, n);
    for (size_t i = 0; i < bytes; i++)
        w[i] = (uint8_t)(rng_next(s) >> 32);
    if (f->t == KT_F32) {
        for (int64_t i = 0; i < n; i++)
            ((float *)w)[i] = (float)rng_gauss(s);
        return;
    }
    if (f->t == KT_BF16) { /* keep |w| < 2^64 so products stay finite */
        for (int64_t i = 0; i < n; i++) {
            uint16_t *h = (uint16_t *)w + i;
            *h = (uint16_t)((*h & 0x807F) | (uint16_t)(64 + (*h >> 7 & 0x7F)) << 7);
        }
        return;
    }
    for (size_t b = 0; b < bytes / tt->size; b++)
        for (int k = 0; k < 2; k++) {
            if (f->f16_off[k] < 0)
                continue;
            uint8_t *p = w + b * tt->size + f->f16_off[k];
            uint16_t h;
            memcpy(&h, p, 2);
            if ((h & 0x7C00) == 0x7C00)
                h &= (uint16_t)~0x4000;
            memcpy(p, &h, 2);
        }
}

/* Dot of w against the activation row a (already in the dot type), checked
 * against the dequantized definition.  Returns the error relative to M. */
static double check_dot(const struct fmt *f, const uint8_t *w, const void *a, int64_t n,
                        const char *what)
{
    uint32_t at = (uint32_t)kern_vec_dot_type(f->t);
    const struct kern_type_traits *tt = kern_type_traits(f->t);
    size_t wbytes = kern_row_size(f->t, n);
    float *wf = malloc(sizeof(float) * n), *w0 = malloc(sizeof(float) * n);
    float *af = malloc(sizeof(float) * n);
    uint8_t *wz = malloc(wbytes);
    if (!wf || !w0 || !af || !wz) {
        test_fail(__FILE__, __LINE__, "out of memory");
        return 0;
    }
    CHECK(kern_dequant_row_ref(f->t, w, wf, n) == 0);
    CHECK(kern_dequant_row_ref(at, a, af, n) == 0);
    memset(w0, 0, sizeof(float) * n);
    if (f->has_min) {
        memcpy(wz, w, wbytes);
        for (size_t b = 0; b < wbytes / tt->size; b++)
            memset(wz + b * tt->size + f->code_off, 0, (size_t)f->code_len);
        CHECK(kern_dequant_row_ref(f->t, wz, w0, n) == 0);
    }
    double ref = 0.0, mag = 0.0, extra = 0.0;
    for (int64_t i = 0; i < n; i++) {
        ref += (double)wf[i] * af[i];
        mag += (fabs(wf[i]) + fabs(w0[i])) * fabs(af[i]);
    }
    if (at == KT_Q8_1) {
        const block_q8_1 *ab = a;
        for (int64_t b = 0; b < n / 32; b++) {
            int sum = 0;
            for (int j = 0; j < 32; j++)
                sum += ab[b].qs[j];
            extra += fabs(w0[32 * b]) *
                     (fabs(kern_f16_to_f32(ab[b].s)) * 0x1p-10 + 0x1p-25 * (1 + abs(sum)));
        }
    }
    float got = NAN;
    CHECK(kern_vec_dot_ref(f->t, n, &got, w, a) == 0);
    double err = fabs((double)got - ref);
    CHECK_MSG(err <= 4e-6 * mag + extra, "%s %s n=%lld: dot %.9g, definition %.9g (M %.3g)",
              kern_type_name(f->t), what, (long long)n, (double)got, ref, mag);
    free(wf);
    free(w0);
    free(af);
    free(wz);
    return extra > 0 || mag == 0 ? 0 : err / mag;
}

TEST(quant_dot_ref_vs_definition)
{
    enum { N = 1024 };
    float *x = malloc(sizeof(float) * N), *xa = malloc(sizeof(float) * N);
    uint8_t *w = malloc(sizeof(float) * N), *a = malloc(sizeof(float) * N);
    REQUIRE(x && xa && w && a);
    uint64_t s = 0xD1B54A32D192ED03ull;
    double worst = 0.0;
    for (size_t k = 0; k < sizeof fmts / sizeof fmts[0]; k++) {
        const struct fmt *f = &fmts[k];
        int at = kern_vec_dot_type(f->t);
        REQUIRE(at >= 0);
        for (int trial = 0; trial < 3; trial++) {
            int64_t n = trial == 0 ? 256 : N; /* one super-block, then 4 */
            for (int64_t i = 0; i < n; i++) {
                x[i] = (float)rng_gauss(&s);
                xa[i] = (float)rng_gauss(&s) * (trial == 2 ? 0.01f : 1.0f);
            }
            REQUIRE(kern_quant_row_ref((uint32_t)at, xa, a, n) == 0);
            REQUIRE(kern_quant_row_ref(f->t, x, w, n) == 0);
            worst = fmax(worst, check_dot(f, w, a, n, "quantized"));
            random_bits(f, w, n, &s);
            worst = fmax(worst, check_dot(f, w, a, n, "raw bits"));
        }
    }
    if (getenv("MOED_TEST_VERBOSE"))
        fprintf(stderr, "    worst |dot - definition| / M = %.3g\n", worst);
    free(x);
    free(xa);
    free(w);
    free(a);
}

/* A hand-checked case: Q4_0 block d = 0.5 with codes 9 (w = 0.5) against a
 * Q8_0 block d = 0.25 with q = 2 (a = 0.5): 32 * 0.5 * 0.5 = 8; Q4_K with
 * one sub-block's min only: d = 0, dmin = 1, m[0] = 3 gives w = -3 on
 * elements 0..31, and a Q8_K row with d = 0.5, q = 1 gives -3 * 0.5 * 32. */
TEST(quant_dot_ref_known)
{
    block_q4_0 w4 = {.d = 0x3800};
    memset(w4.qs, 0x99, sizeof w4.qs);
    block_q8_0 a8 = {.d = 0x3400};
    memset(a8.qs, 2, sizeof a8.qs);
    float s = 0;
    REQUIRE(kern_vec_dot_ref(KT_Q4_0, 32, &s, &w4, &a8) == 0);
    CHECK(s == 8.0f);

    block_q4_K wk = {.d = 0, .dmin = 0x3C00};
    memset(wk.scales, 0, sizeof wk.scales);
    wk.scales[4] = 3; /* m[0] */
    memset(wk.qs, 0x77, sizeof wk.qs);
    block_q8_K ak = {.d = 0.5f};
    memset(ak.qs, 1, sizeof ak.qs);
    for (int j = 0; j < 16; j++)
        ak.bsums[j] = 16;
    REQUIRE(kern_vec_dot_ref(KT_Q4_K, 256, &s, &wk, &ak) == 0);
    CHECK(s == -48.0f);
}

TEST(quant_dot_type_and_bad_arguments)
{
    CHECK_EQ(kern_vec_dot_type(KT_F32), KT_F32);
    CHECK_EQ(kern_vec_dot_type(KT_F16), KT_F32);
    CHECK_EQ(kern_vec_dot_type(KT_BF16), KT_BF16);
    CHECK_EQ(kern_vec_dot_type(KT_Q4_0), KT_Q8_0);
    CHECK_EQ(kern_vec_dot_type(KT_Q5_0), KT_Q8_0);
    CHECK_EQ(kern_vec_dot_type(KT_Q8_0), KT_Q8_0);
    CHECK_EQ(kern_vec_dot_type(KT_Q4_1), KT_Q8_1);
    CHECK_EQ(kern_vec_dot_type(KT_Q5_1), KT_Q8_1);
    for (uint32_t t = KT_Q2_K; t <= KT_Q6_K; t++)
        CHECK_EQ(kern_vec_dot_type(t), KT_Q8_K);
    static const uint32_t nodot[] = {KT_Q8_1, KT_Q8_K, KT_IQ2_XXS, KT_I8,
                                     KT_F64,  4,       KT_COUNT,   77777};
    uint8_t buf[2048] = {0};
    float s;
    for (size_t i = 0; i < sizeof nodot / sizeof nodot[0]; i++) {
        CHECK_EQ(kern_vec_dot_type(nodot[i]), -1);
        CHECK_EQ(kern_vec_dot_ref(nodot[i], 256, &s, buf, buf), MOED_EUNSUPPORTED);
    }
    CHECK_EQ(kern_vec_dot_ref(KT_Q4_0, 48, &s, buf, buf), MOED_EINVAL);
    CHECK_EQ(kern_vec_dot_ref(KT_Q4_K, 512 + 32, &s, buf, buf), MOED_EINVAL);
    CHECK_EQ(kern_vec_dot_ref(KT_F32, -1, &s, buf, buf), MOED_EINVAL);
    s = 1;
    CHECK_EQ(kern_vec_dot_ref(KT_Q6_K, 0, &s, buf, buf), 0);
    CHECK(s == 0.0f);
}
