/*
 * Dispatched dot kernels and activation quantizers against the scalar
 * reference, at every ISA level this CPU has (AVX-512 tests skip visibly
 * elsewhere; the AVX-512 file still compiles everywhere).
 *
 * Data are fresh random rows (seed from the clock, printed on failure, or
 * MOED_TEST_SEED): weights as raw random bytes with random finite fp16
 * scales (two modes: scales near 1, and any finite fp16 incl. subnormals),
 * or quantized from random floats; activations quantized by the reference
 * from random floats, plus constant rows (all quants +-127) with all-ones
 * weight bytes for the extremes of every i16 step.  Rows are deliberately
 * misaligned (by 2 or 4 bytes) so every vector load is unaligned.
 *
 * Tolerance: |simd - ref| <= 1e-5 * M, M = sum_i |w_i a_i| over the
 * dequantized rows.  For integer formats the block integer sums are exact
 * in both, so the difference is float rounding of the per-block scale
 * products and of the sums over blocks in another order: at most ~nb * eps
 * (nb <= 136 blocks here, eps = 6e-8: 8e-6) and typically ~sqrt(nb) * eps.
 * For F32/F16/BF16 the reference sums in double, the kernels in 16 (AVX2)
 * or 32 (AVX-512) f32 lanes of n / 16 terms: ~sqrt(n / 16) * eps, worst
 * case (n / 16) * eps = 1.6e-5 for n = 4097, never approached by random
 * data.  MOED_TEST_VERBOSE=1 prints the worst ratio |diff| / M seen.
 *
 * Activation quantization is bit-exact (memcmp) with kern_quant_row_ref,
 * NaN, inf, subnormals and rounding ties included.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "kernels/cpu/dot.h"
#include "kernels/cpu/dot_impl.h"
#include "kernels/cpu/quant.h"
#include "tests/unit/harness.h"

#define TOL 1e-5

static uint64_t rng;
static uint64_t seed_used;

static void seed_rng(void)
{
    const char *s = getenv("MOED_TEST_SEED");
    seed_used = s && *s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL) * 2654435761u + (uint64_t)clock();
    rng = seed_used | 1;
}

static uint64_t rnd(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1Dull;
}

static float rndf(void) { return (float)((double)(rnd() >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

/* Values with a spread of magnitudes within and between 32-element groups. */
static void fill_floats(float *x, int64_t n)
{
    float scale = 1.0f;
    for (int64_t i = 0; i < n; i++) {
        if (i % 32 == 0)
            scale = ldexpf(1.0f, (int)(rnd() % 9) - 4);
        x[i] = rndf() * scale;
        if (rnd() % 97 == 0)
            x[i] *= 8.0f; /* an outlier */
    }
}

static kern_f16 rnd_f16(bool wide)
{
    if (!wide) /* |d| in [0.25, 4) */
        return kern_f32_to_f16(ldexpf(0.5f + 0.5f * fabsf(rndf()), (int)(rnd() % 4) - 1) *
                               (rnd() & 1 ? -1.0f : 1.0f));
    kern_f16 h = (kern_f16)rnd();
    if ((h & 0x7c00) == 0x7c00) /* inf/NaN -> largest exponent of finite values */
        h = (kern_f16)(h & ~0x0400);
    return h;
}

/* Overwrite the fp16 scale fields of every block of a raw-bytes row. */
static void fix_scales(uint32_t t, void *w, int64_t nb, bool wide)
{
    for (int64_t i = 0; i < nb; i++) {
        switch (t) {
        case KT_Q4_0: ((block_q4_0 *)w)[i].d = rnd_f16(wide); break;
        case KT_Q4_1: ((block_q4_1 *)w)[i].d = rnd_f16(wide); ((block_q4_1 *)w)[i].m = rnd_f16(wide); break;
        case KT_Q5_0: ((block_q5_0 *)w)[i].d = rnd_f16(wide); break;
        case KT_Q5_1: ((block_q5_1 *)w)[i].d = rnd_f16(wide); ((block_q5_1 *)w)[i].m = rnd_f16(wide); break;
        case KT_Q8_0: ((block_q8_0 *)w)[i].d = rnd_f16(wide); break;
        case KT_Q2_K: ((block_q2_K *)w)[i].d = rnd_f16(wide); ((block_q2_K *)w)[i].dmin = rnd_f16(wide); break;
        case KT_Q3_K: ((block_q3_K *)w)[i].d = rnd_f16(wide); break;
        case KT_Q4_K: ((block_q4_K *)w)[i].d = rnd_f16(wide); ((block_q4_K *)w)[i].dmin = rnd_f16(wide); break;
        case KT_Q5_K: ((block_q5_K *)w)[i].d = rnd_f16(wide); ((block_q5_K *)w)[i].dmin = rnd_f16(wide); break;
        case KT_Q6_K: ((block_q6_K *)w)[i].d = rnd_f16(wide); break;
        case KT_F16:
            for (int64_t j = 0; j < nb; j++)
                ((kern_f16 *)w)[j] = rnd_f16(wide);
            return;
        default: break;
        }
    }
}

enum wmode { W_QUANT, W_RAW, W_RAW_WIDE, W_ONES, WMODES };
enum amode { A_RANDOM, A_PLUS, A_MINUS, AMODES };

static const char *wmode_name[] = {"quantized", "raw bits", "raw bits, wide scales", "all-ones bytes"};
static const char *amode_name[] = {"random", "all +1", "all -1"};

static void fill_weights(uint32_t t, void *w, int64_t n, enum wmode m, float *tmp)
{
    const struct kern_type_traits *tt = kern_type_traits(t);
    size_t bytes = kern_row_size(t, n);
    bool quantized = tt->quantized;
    if (m == W_QUANT || (!quantized && t != KT_F16) || (t == KT_F16 && m == W_ONES)) {
        fill_floats(tmp, n);
        kern_quant_row_ref(t, tmp, w, n);
        return;
    }
    if (m == W_ONES)
        memset(w, 0xFF, bytes);
    else
        for (size_t i = 0; i < bytes; i++)
            ((uint8_t *)w)[i] = (uint8_t)rnd();
    fix_scales(t, w, n / tt->blck, m == W_RAW_WIDE);
}

static void fill_act(uint32_t at, void *a, int64_t n, enum amode m, float *tmp)
{
    if (m == A_RANDOM)
        fill_floats(tmp, n);
    else
        for (int64_t i = 0; i < n; i++)
            tmp[i] = m == A_PLUS ? 1.0f : -1.0f;
    kern_quant_row_ref(at, tmp, a, n);
}

/* sum |w_i a_i| over the dequantized rows */
static double magnitude(uint32_t t, const void *w, const void *a, int64_t n, float *wf, float *af)
{
    uint32_t at = (uint32_t)kern_vec_dot_type(t);
    kern_dequant_row_ref(t, w, wf, n);
    kern_dequant_row_ref(at, a, af, n);
    double m = 0.0;
    for (int64_t i = 0; i < n; i++)
        m += fabs((double)wf[i] * (double)af[i]);
    return m;
}

static const uint32_t dot_types[] = {KT_F32, KT_F16, KT_BF16, KT_Q4_0, KT_Q4_1, KT_Q5_0, KT_Q5_1,
                                     KT_Q8_0, KT_Q2_K, KT_Q3_K, KT_Q4_K, KT_Q5_K, KT_Q6_K};
#define NTYPES (sizeof dot_types / sizeof dot_types[0])

static const int64_t n_float[] = {1, 7, 8, 15, 16, 17, 31, 33, 64, 100, 255, 1000, 4097};
static const int64_t n_blk32[] = {32, 64, 96, 224, 1056, 4096};
static const int64_t n_blkK[] = {256, 512, 768, 2048, 4352};

static void sizes_for(uint32_t t, const int64_t **ns, size_t *cnt)
{
    uint32_t blck = kern_type_traits(t)->blck;
    if (blck == 1) {
        *ns = n_float;
        *cnt = sizeof n_float / sizeof n_float[0];
    } else if (blck == 32) {
        *ns = n_blk32;
        *cnt = sizeof n_blk32 / sizeof n_blk32[0];
    } else {
        *ns = n_blkK;
        *cnt = sizeof n_blkK / sizeof n_blkK[0];
    }
}

static double worst;

/* Every type, size and data mode at one level; the tile entry point is
 * checked for nt = 1..4 with padded strides, and must write only s[t*ss]. */
static void check_level(enum kern_isa isa, bool vnni, bool bf16, const char *label)
{
    enum { NMAX = 4352 + 64, TOK = KERN_TILE_T };
    float *tmp = malloc(NMAX * sizeof(float)), *wf = malloc(NMAX * sizeof(float)),
          *af = malloc(NMAX * sizeof(float));
    /* +2 / +4 byte offsets: no load may rely on alignment */
    uint8_t *wbuf = malloc(NMAX * 4 + 64), *abuf = malloc(TOK * (NMAX * 4 + 64) + 64);
    REQUIRE(tmp && wf && af && wbuf && abuf);
    for (size_t ti = 0; ti < NTYPES; ti++) {
        uint32_t t = dot_types[ti];
        uint32_t at = (uint32_t)kern_vec_dot_type(t);
        struct kern_dot_kernels k = kern_dot_kernels_ex(t, isa, vnni, bf16);
        CHECK_MSG(k.dot != NULL, "%s: no kernel for %s", label, kern_type_name(t));
        if (!k.dot)
            continue;
        const int64_t *ns;
        size_t cnt;
        sizes_for(t, &ns, &cnt);
        for (size_t ni = 0; ni < cnt; ni++) {
            int64_t n = ns[ni];
            size_t ars = kern_row_size(at, n);
            size_t astride = ars + 4 * (1 + rnd() % 8);
            void *w = wbuf + (t == KT_F32 ? 4 : 2); /* the element type's alignment, not 32 */
            uint8_t *a = abuf + 4;
            for (int wm = 0; wm < WMODES; wm++) {
                for (int am = 0; am < AMODES; am++) {
                    if ((wm == W_ONES) != (am != A_RANDOM))
                        continue; /* extremes go together; random with random */
                    fill_weights(t, w, n, (enum wmode)wm, tmp);
                    for (int tk = 0; tk < TOK; tk++)
                        fill_act(at, a + tk * astride, n, tk == 0 ? (enum amode)am : A_RANDOM, tmp);
                    float ref[TOK];
                    double mag[TOK];
                    for (int tk = 0; tk < TOK; tk++) {
                        kern_vec_dot_ref(t, n, &ref[tk], w, a + tk * astride);
                        mag[tk] = magnitude(t, w, a + tk * astride, n, wf, af);
                    }
                    float got;
                    k.dot(n, &got, w, a);
                    double d = fabs((double)got - ref[0]);
                    if (mag[0] > 0)
                        worst = fmax(worst, d / mag[0]);
                    CHECK_MSG(d <= TOL * mag[0] + 1e-30,
                              "%s %s n=%lld w %s a %s: dot %.9g ref %.9g (M %.3g, seed %llu)", label,
                              kern_type_name(t), (long long)n, wmode_name[wm], amode_name[am], got,
                              ref[0], mag[0], (unsigned long long)seed_used);
                    if (!k.tile)
                        continue;
                    for (int nt = 1; nt <= TOK; nt++) {
                        float s[3 * TOK];
                        for (int j = 0; j < 3 * TOK; j++)
                            s[j] = NAN;
                        k.tile(n, w, a, astride, s, 3, nt);
                        for (int j = 0; j < 3 * TOK; j++) {
                            if (j % 3 == 0 && j / 3 < nt) {
                                int tk = j / 3;
                                double dd = fabs((double)s[j] - ref[tk]);
                                CHECK_MSG(dd <= TOL * mag[tk] + 1e-30,
                                          "%s %s tile nt=%d token %d n=%lld w %s: %.9g ref %.9g "
                                          "(M %.3g, seed %llu)",
                                          label, kern_type_name(t), nt, tk, (long long)n,
                                          wmode_name[wm], s[j], ref[tk], mag[tk],
                                          (unsigned long long)seed_used);
                            } else {
                                CHECK_MSG(isnan(s[j]), "%s %s tile nt=%d wrote s[%d]", label,
                                          kern_type_name(t), nt, j);
                            }
                        }
                    }
                    if (test_failed_now())
                        goto out;
                }
            }
        }
    }
out:
    free(tmp);
    free(wf);
    free(af);
    free(wbuf);
    free(abuf);
}

TEST(dot_avx2_vs_ref)
{
    if (kern_isa_best() < KERN_ISA_AVX2)
        SKIP("CPU has no AVX2");
    seed_rng();
    worst = 0;
    check_level(KERN_ISA_AVX2, false, false, "avx2");
    if (getenv("MOED_TEST_VERBOSE"))
        fprintf(stderr, "    avx2: worst |simd - ref| / M = %.3g\n", worst);
}

TEST(dot_avx512_vs_ref)
{
    if (kern_isa_best() < KERN_ISA_AVX512)
        SKIP("CPU has no AVX-512 (the AVX-512 kernels are built but cannot run here)");
    const struct kern_cpu_features *f = kern_cpu_features();
    seed_rng();
    worst = 0;
    check_level(KERN_ISA_AVX512, false, false, "avx512");
    if (f->avx512vnni)
        check_level(KERN_ISA_AVX512, true, false, "avx512 vnni");
    if (f->avx512bf16)
        check_level(KERN_ISA_AVX512, f->avx512vnni, true, "avx512 bf16");
    if (getenv("MOED_TEST_VERBOSE"))
        fprintf(stderr, "    avx512 (vnni %d bf16 %d): worst |simd - ref| / M = %.3g\n",
                f->avx512vnni, f->avx512bf16, worst);
}

TEST(dot_dispatch_and_fallback)
{
    enum kern_isa best = kern_isa_best(), saved = kern_isa_active();
    for (size_t ti = 0; ti < NTYPES; ti++) {
        uint32_t t = dot_types[ti];
        for (int isa = KERN_ISA_SCALAR; isa <= KERN_ISA_AVX512; isa++) {
            CHECK(kern_vec_dot_get(t, (enum kern_isa)isa) != NULL);
            enum kern_isa lvl = kern_vec_dot_level(t, (enum kern_isa)isa);
            CHECK(lvl <= (enum kern_isa)isa && lvl <= best);
            /* every type has a kernel at every level this CPU has */
            CHECK_EQ(lvl, isa < (int)best ? isa : (int)best);
        }
        /* the scalar level is the reference itself */
        const int64_t n = kern_type_traits(t)->blck == 256 ? 256 : 32;
        float x[256], r, s;
        uint8_t w[1024], a[1024];
        fill_floats(x, n);
        kern_quant_row_ref(t, x, w, n);
        fill_floats(x, n);
        kern_quant_row_ref((uint32_t)kern_vec_dot_type(t), x, a, n);
        kern_vec_dot_get(t, KERN_ISA_SCALAR)(n, &s, w, a);
        kern_vec_dot_ref(t, n, &r, w, a);
        CHECK(memcmp(&r, &s, sizeof r) == 0);
    }
    static const uint32_t none[] = {KT_Q8_1, KT_Q8_K, KT_I8, KT_IQ4_XS, 999};
    for (size_t i = 0; i < sizeof none / sizeof none[0]; i++) {
        CHECK(kern_vec_dot_get(none[i], best) == NULL);
        CHECK(kern_quant_act_get(none[i], best) == NULL || none[i] == KT_Q8_1 || none[i] == KT_Q8_K);
    }
    CHECK(kern_quant_act_get(KT_Q4_K, best) == NULL);
    float x[32] = {0};
    uint8_t y[64];
    CHECK_EQ(kern_quant_act(KT_Q4_K, x, y, 32), MOED_EUNSUPPORTED);
    CHECK_EQ(kern_quant_act(KT_Q8_0, x, y, 31), MOED_EINVAL);
    CHECK_EQ(kern_quant_act(KT_Q8_0, x, y, 32), 0);
    CHECK_EQ(kern_isa_active(), saved);
}

/* ---- activation quantization ------------------------------------------ */

static float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Rows that probe every branch of the reference quantizers. */
static void fill_special(float *x, int64_t n, int kind)
{
    for (int64_t i = 0; i < n; i++) {
        switch (kind) {
        case 0: /* ordinary */
            x[i] = rndf() * ldexpf(1.0f, (int)(rnd() % 20) - 10);
            break;
        case 1: /* ties: the block max is +-127, so x * id = x exactly */
            x[i] = (float)((int)(rnd() % 253) - 126) + (rnd() % 2 ? 0.5f : 0.0f);
            if (i % 32 == 5)
                x[i] = rnd() % 2 ? 127.0f : -127.0f;
            break;
        case 2: /* random bit patterns: NaN, inf, subnormals, huge */
            x[i] = f32_from_bits((uint32_t)rnd());
            break;
        case 3: { /* specials sprinkled over ordinary values */
            static const float sp[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e-40f, -1e-45f,
                                       3e38f, -3e38f, 1.0f, -1.0f};
            x[i] = rnd() % 4 == 0 ? sp[rnd() % (sizeof sp / sizeof sp[0])] : rndf();
            break;
        }
        case 4: /* whole blocks of zeros, of NaN, and of equal magnitudes */
            x[i] = (i / 32) % 4 == 0 ? 0.0f
                   : (i / 32) % 4 == 1 ? NAN
                   : (i / 32) % 4 == 2 ? (rnd() % 2 ? 2.0f : -2.0f)
                                       : rndf();
            break;
        default: /* ties for Q8_K: the first max of a 256 block is +-127 */
            x[i] = (float)((int)(rnd() % 253) - 126) + (rnd() % 2 ? 0.5f : 0.0f);
            if (i % 256 == 0)
                x[i] = rnd() % 2 ? 127.0f : -127.0f;
            break;
        }
    }
}

static int first_diff(const uint8_t *a, const uint8_t *b, size_t n)
{
    size_t i = 0;
    while (i < n && a[i] == b[i])
        i++;
    return (int)i;
}

/* Every quantizer of one level, bit for bit against the reference. */
static void check_quant(enum kern_isa isa)
{
    enum kern_isa saved = kern_isa_active();
    static const uint32_t types[] = {KT_F32, KT_BF16, KT_Q8_0, KT_Q8_1, KT_Q8_K};
    static const int64_t ns[] = {256, 512, 2048, 4352};
    static const int64_t nf[] = {1, 5, 8, 15, 16, 17, 33, 100, 1001};
    enum { NMAX = 4352 };
    float *x = malloc((NMAX + 1) * sizeof(float));
    uint8_t *got = malloc(NMAX * 4 + 64), *ref = malloc(NMAX * 4 + 64);
    REQUIRE(x && got && ref);
    seed_rng();
    REQUIRE(kern_isa_set(isa) == 0);
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        uint32_t t = types[ti];
        bool flt = kern_type_traits(t)->blck == 1;
        size_t cnt = flt ? sizeof nf / sizeof nf[0] : sizeof ns / sizeof ns[0];
        for (size_t ni = 0; ni < cnt; ni++) {
            int64_t n = flt ? nf[ni] : ns[ni];
            size_t bytes = kern_row_size(t, n);
            for (int kind = 0; kind < 6; kind++) {
                for (int rep = 0; rep < 3; rep++) {
                    float *xs = x + 1; /* unaligned source */
                    fill_special(xs, n, kind);
                    /* +4: an unaligned destination for the 2-byte-aligned types;
                     * the 16 bytes after the row must stay untouched */
                    size_t off = t == KT_Q8_K || t == KT_F32 ? 4 : 2;
                    memset(got, 0xA5, bytes + 16);
                    memset(ref, 0xA5, bytes + 16);
                    CHECK_EQ(kern_quant_act(t, xs, got + off, n), 0);
                    CHECK_EQ(kern_quant_row_ref(t, xs, ref + off, n), 0);
                    CHECK_MSG(memcmp(got, ref, bytes + 16) == 0,
                              "%s %s n=%lld data kind %d: differs from the reference at byte %d "
                              "(seed %llu)",
                              kern_isa_name(isa), kern_type_name(t), (long long)n, kind,
                              first_diff(got + off, ref + off, bytes + 16 - off),
                              (unsigned long long)seed_used);
                    if (test_failed_now())
                        goto out;
                }
            }
        }
    }
out:
    kern_isa_set(saved);
    free(x);
    free(got);
    free(ref);
}

TEST(quant_act_avx2_exact)
{
    if (kern_isa_best() < KERN_ISA_AVX2)
        SKIP("CPU has no AVX2");
    check_quant(KERN_ISA_AVX2);
}

TEST(quant_act_avx512_exact)
{
    if (kern_isa_best() < KERN_ISA_AVX512)
        SKIP("CPU has no AVX-512 (the AVX-512 quantizers are built but cannot run here)");
    check_quant(KERN_ISA_AVX512);
}
