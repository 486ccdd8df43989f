/*
 * kernels/cpu/attn.h: every ISA level against the scalar reference, and the
 * reference against a plain two-pass softmax in double precision.
 *
 * Shapes: head_dim 20, 32, 64, 72, 128 (tails of every width included),
 * GQA ratios 1, 4 and 8, F32 and F16 caches with a stride wider than a
 * head, positions 0..40 one by one then every 13th up to 300 (the tiles
 * of KERN_ATTN_TILE positions and their partial last tile).  Queries are
 * scaled up so the scores spread over several units and the running
 * maximum moves often.
 *
 * Tolerance: the outputs are convex combinations of values in [-1, 1];
 * the levels differ only in the summation order of the dots and of the V
 * accumulation (and FMA), so |level - ref| <= ATTN_TOL = 5e-6 absolute (worst seen on AVX2: 6e-7).
 * The reference against double precision: ATTN_TOL_EXACT = 1e-5 (worst seen 4e-7).
 * MOED_TEST_VERBOSE=1 prints the worst differences seen.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/attn.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/types.h"
#include "tests/unit/harness.h"

#define ATTN_TOL 5e-6
#define ATTN_TOL_EXACT 1e-5
#define NPOS 301
#define NKV 2 /* KV heads in the cache; the tests use head 1 */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static float rndf(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (float)((double)((rng * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

struct fixture {
    int hd, nq;
    uint32_t type;
    size_t stride; /* elements between positions */
    void *k, *v;   /* NPOS positions */
    float *q;      /* nq rows of hd */
};

static void fixture_init(struct fixture *f, int hd, int nq, uint32_t type)
{
    f->hd = hd;
    f->nq = nq;
    f->type = type;
    f->stride = (size_t)NKV * hd + 3; /* not a multiple of the vector width */
    size_t n = f->stride * NPOS, es = type == KT_F16 ? 2 : 4;
    f->k = malloc(n * es);
    f->v = malloc(n * es);
    f->q = malloc(sizeof(float) * (size_t)nq * hd);
    for (size_t i = 0; i < n; i++) {
        float a = rndf(), b = rndf();
        if (type == KT_F16) {
            ((kern_f16 *)f->k)[i] = kern_f32_to_f16(a);
            ((kern_f16 *)f->v)[i] = kern_f32_to_f16(b);
        } else {
            ((float *)f->k)[i] = a;
            ((float *)f->v)[i] = b;
        }
    }
    for (int i = 0; i < nq * hd; i++)
        f->q[i] = 4.0f * rndf();
}

static void fixture_free(struct fixture *f)
{
    free(f->k);
    free(f->v);
    free(f->q);
}

static struct kern_attn_group group_of(const struct fixture *f, float *out, int32_t n_pos)
{
    size_t es = f->type == KT_F16 ? 2 : 4, off = (size_t)f->hd * es; /* KV head 1 */
    return (struct kern_attn_group){.out = out,
                                    .q = f->q,
                                    .k = (const char *)f->k + off,
                                    .v = (const char *)f->v + off,
                                    .q_stride = (size_t)f->hd,
                                    .out_stride = (size_t)f->hd,
                                    .kv_stride = f->stride,
                                    .kv_type = f->type,
                                    .n_pos = n_pos,
                                    .n_q = f->nq,
                                    .head_dim = f->hd,
                                    .scale = 1.0f / sqrtf((float)f->hd)};
}

static double kv_at(const struct fixture *f, const void *base, int32_t p, int d)
{
    size_t i = (size_t)p * f->stride + (size_t)f->hd + (size_t)d;
    return f->type == KT_F16 ? kern_f16_to_f32(((const kern_f16 *)base)[i]) : ((const float *)base)[i];
}

/* Two-pass softmax in double for query head i. */
static void attn_double(const struct fixture *f, int i, int32_t n_pos, double *out)
{
    double *s = malloc(sizeof(double) * (size_t)(n_pos ? n_pos : 1)), mx = -INFINITY, sum = 0;
    for (int32_t p = 0; p < n_pos; p++) {
        double a = 0;
        for (int d = 0; d < f->hd; d++)
            a += (double)f->q[(size_t)i * f->hd + d] * kv_at(f, f->k, p, d);
        s[p] = a / sqrt((double)f->hd);
        mx = s[p] > mx ? s[p] : mx;
    }
    for (int32_t p = 0; p < n_pos; p++)
        sum += s[p] = exp(s[p] - mx);
    for (int d = 0; d < f->hd; d++) {
        double a = 0;
        for (int32_t p = 0; p < n_pos; p++)
            a += s[p] * kv_at(f, f->v, p, d);
        out[d] = n_pos ? a / sum : 0;
    }
    free(s);
}

static const int hds[] = {20, 32, 64, 72, 128};
static const int ratios[] = {1, 4, 8};

static int32_t next_pos(int32_t p) { return p < 40 ? p + 1 : p >= NPOS ? NPOS + 1 : p + 13 > NPOS ? NPOS : p + 13; }

/* Worst |level - ref| over every shape; fails above ATTN_TOL. */
static void check_level(enum kern_isa isa)
{
    kern_attn_fn fn = kern_attn_get(isa);
    REQUIRE(kern_attn_level(isa) == isa);
    double worst = 0;
    for (int ti = 0; ti < 2; ti++)
        for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi++)
            for (size_t ri = 0; ri < sizeof ratios / sizeof ratios[0]; ri++) {
                struct fixture f;
                fixture_init(&f, hds[hi], ratios[ri], ti ? KT_F16 : KT_F32);
                size_t n = (size_t)f.nq * f.hd;
                float *ref = malloc(sizeof(float) * n), *got = malloc(sizeof(float) * n);
                for (int32_t np = 0; np <= NPOS; np = next_pos(np)) {
                    struct kern_attn_group g = group_of(&f, ref, np);
                    kern_attn_group_ref(&g);
                    g.out = got;
                    fn(&g);
                    double w = 0;
                    for (size_t i = 0; i < n; i++) {
                        double dd = fabs((double)got[i] - ref[i]);
                        w = dd > w || isnan(dd) ? dd : w;
                    }
                    CHECK_MSG(w <= ATTN_TOL, "%s %s hd %d ratio %d n_pos %d: |diff| %g > %g",
                              kern_isa_name(isa), ti ? "f16" : "f32", f.hd, f.nq, np, w, ATTN_TOL);
                    worst = w > worst ? w : worst;
                }
                free(ref);
                free(got);
                fixture_free(&f);
            }
    if (getenv("MOED_TEST_VERBOSE"))
        fprintf(stderr, "attn %s vs ref: worst |diff| %.3g (tol %g)\n", kern_isa_name(isa), worst,
                ATTN_TOL);
}

TEST(attn_ref_vs_double)
{
    double worst = 0;
    for (int ti = 0; ti < 2; ti++)
        for (size_t hi = 0; hi < sizeof hds / sizeof hds[0]; hi += 2) {
            struct fixture f;
            fixture_init(&f, hds[hi], 4, ti ? KT_F16 : KT_F32);
            float *out = malloc(sizeof(float) * (size_t)f.nq * f.hd);
            double *want = malloc(sizeof(double) * (size_t)f.hd);
            for (int32_t np = 0; np <= NPOS; np += 37) {
                struct kern_attn_group g = group_of(&f, out, np);
                kern_attn_group_ref(&g);
                for (int i = 0; i < f.nq; i++) {
                    attn_double(&f, i, np, want);
                    for (int d = 0; d < f.hd; d++) {
                        double dd = fabs(out[(size_t)i * f.hd + d] - want[d]);
                        worst = dd > worst ? dd : worst;
                        if (!(dd <= ATTN_TOL_EXACT)) {
                            test_fail(__FILE__, __LINE__, "hd %d n_pos %d head %d dim %d: %.9g vs %.9g",
                                      f.hd, np, i, d, out[(size_t)i * f.hd + d], want[d]);
                            np = NPOS + 1, i = f.nq;
                            break;
                        }
                    }
                }
            }
            free(out);
            free(want);
            fixture_free(&f);
        }
    if (getenv("MOED_TEST_VERBOSE"))
        fprintf(stderr, "attn ref vs double: worst |diff| %.3g (tol %g)\n", worst, ATTN_TOL_EXACT);
}

TEST(attn_avx2_vs_ref)
{
    if (kern_isa_best() < KERN_ISA_AVX2)
        SKIP("CPU has no AVX2+FMA+F16C");
    check_level(KERN_ISA_AVX2);
}

TEST(attn_avx512_vs_ref)
{
    if (kern_isa_best() < KERN_ISA_AVX512)
        SKIP("CPU has no AVX-512: attn_avx512.c is compiled but cannot run here");
    check_level(KERN_ISA_AVX512);
}

/* Groups larger than KERN_ATTN_MAX_Q run in chunks; each head's result is
 * the same as alone (n_q = 1) at the active level. */
TEST(attn_run_chunks_heads)
{
    struct fixture f;
    fixture_init(&f, 64, KERN_ATTN_MAX_Q + 5, KT_F32);
    size_t n = (size_t)f.nq * f.hd;
    float *all = malloc(sizeof(float) * n), *one = malloc(sizeof(float) * (size_t)f.hd);
    struct kern_attn_group g = group_of(&f, all, 123);
    kern_attn_run(&g);
    for (int i = 0; i < f.nq; i++) {
        struct kern_attn_group h = g;
        h.n_q = 1;
        h.q = f.q + (size_t)i * f.hd;
        h.out = one;
        kern_attn_run(&h);
        CHECK_MSG(memcmp(one, all + (size_t)i * f.hd, sizeof(float) * (size_t)f.hd) == 0,
                  "head %d differs alone and in its group", i);
    }
    free(all);
    free(one);
    fixture_free(&f);
}
