/*
 * kern_matmul / kern_matmul_f32 against per-element kern_vec_dot_ref, at
 * every ISA level up to kern_isa_best() (kern_isa_set, restored after):
 * odd row and token counts, thread counts that do not divide the rows,
 * padded strides, every output written exactly once and nothing else
 * touched.  Tolerance as in test_dot.c: 1e-5 * sum |w_i a_i|.  Also the row
 * split, the argument checks, and a real multi-threaded run on sched_pool.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "kernels/cpu/dot.h"
#include "kernels/cpu/quant.h"
#include "sched/pool.h"
#include "tests/unit/harness.h"

#define TOL 1e-5

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1Dull;
}

static float rndf(void) { return (float)((double)(rnd() >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

static void fill(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = rndf() * (i % 7 == 0 ? 4.0f : 1.0f);
}

static const uint32_t types[] = {KT_F32, KT_F16, KT_BF16, KT_Q4_0, KT_Q4_1, KT_Q5_0, KT_Q5_1,
                                 KT_Q8_0, KT_Q2_K, KT_Q3_K, KT_Q4_K, KT_Q5_K, KT_Q6_K};

struct problem {
    uint32_t t;
    int64_t n, rows, ntok;
    size_t ws, as;  /* strides used (padded) */
    int64_t os;
    uint8_t *w, *a; /* a: quantized activations */
    float *x;       /* the f32 activations they came from */
    float *ref;     /* ref[t * rows + r] */
    double *mag;
    float *wf, *af;
};

static bool problem_init(struct problem *p, uint32_t t, int64_t n, int64_t rows, int64_t ntok)
{
    memset(p, 0, sizeof *p);
    uint32_t at = (uint32_t)kern_vec_dot_type(t);
    p->t = t;
    p->n = n;
    p->rows = rows;
    p->ntok = ntok;
    p->ws = kern_row_size(t, n) + 4 * (rnd() % 3);
    p->as = kern_row_size(at, n) + 4 * (rnd() % 3);
    p->os = rows + (int64_t)(rnd() % 5);
    p->w = malloc(p->ws * (size_t)rows + 8);
    p->a = malloc(p->as * (size_t)ntok + 8);
    p->x = malloc(sizeof(float) * (size_t)(n * ntok));
    p->ref = malloc(sizeof(float) * (size_t)(rows * ntok));
    p->mag = malloc(sizeof(double) * (size_t)(rows * ntok));
    p->wf = malloc(sizeof(float) * (size_t)(n * rows));
    p->af = malloc(sizeof(float) * (size_t)(n * ntok));
    float *tmp = malloc(sizeof(float) * (size_t)n);
    if (!p->w || !p->a || !p->x || !p->ref || !p->mag || !p->wf || !p->af || !tmp) {
        free(tmp);
        return false;
    }
    for (int64_t r = 0; r < rows; r++) {
        fill(tmp, n);
        kern_quant_row_ref(t, tmp, p->w + r * p->ws, n);
        kern_dequant_row_ref(t, p->w + r * p->ws, p->wf + r * n, n);
    }
    for (int64_t k = 0; k < ntok; k++) {
        fill(p->x + k * n, n);
        kern_quant_row_ref(at, p->x + k * n, p->a + k * p->as, n);
        kern_dequant_row_ref(at, p->a + k * p->as, p->af + k * n, n);
    }
    for (int64_t k = 0; k < ntok; k++)
        for (int64_t r = 0; r < rows; r++) {
            kern_vec_dot_ref(t, n, &p->ref[k * rows + r], p->w + r * p->ws, p->a + k * p->as);
            double m = 0;
            for (int64_t i = 0; i < n; i++)
                m += fabs((double)p->wf[r * n + i] * p->af[k * n + i]);
            p->mag[k * rows + r] = m;
        }
    free(tmp);
    return true;
}

static void problem_free(struct problem *p)
{
    free(p->w);
    free(p->a);
    free(p->x);
    free(p->ref);
    free(p->mag);
    free(p->wf);
    free(p->af);
}

/* out has ntok * os floats plus a guard; NaN where nothing may be written. */
static void check_out(const struct problem *p, const float *out, const char *what, int nth)
{
    for (int64_t k = 0; k < p->ntok; k++)
        for (int64_t c = 0; c < p->os; c++) {
            float v = out[k * p->os + c];
            if (c >= p->rows) {
                CHECK_MSG(isnan(v), "%s: padding out[%lld][%lld] written", what, (long long)k,
                          (long long)c);
                continue;
            }
            double ref = p->ref[k * p->rows + c], tol = TOL * p->mag[k * p->rows + c] + 1e-30;
            CHECK_MSG(fabs(v - ref) <= tol,
                      "%s %s %s n=%lld rows=%lld ntok=%lld nth=%d: out[%lld][%lld] = %.9g, ref %.9g",
                      what, kern_isa_name(kern_isa_active()), kern_type_name(p->t), (long long)p->n,
                      (long long)p->rows, (long long)p->ntok, nth, (long long)k, (long long)c, v, ref);
            if (test_failed_now())
                return;
        }
    CHECK_MSG(isnan(out[p->ntok * p->os]), "%s: guard after the output written", what);
}

TEST(matmul_vs_ref)
{
    enum kern_isa saved = kern_isa_active();
    static const int64_t rows_l[] = {1, 17, 45};
    static const int64_t ntok_l[] = {1, 2, 3, 5, 9};
    static const int nth_l[] = {1, 2, 3, 7};
    for (int isa = KERN_ISA_SCALAR; isa <= (int)kern_isa_best(); isa++) {
        REQUIRE(kern_isa_set((enum kern_isa)isa) == 0);
        for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
            uint32_t t = types[ti];
            uint32_t blck = kern_type_traits(t)->blck;
            int64_t n = blck == 1 ? 77 : blck == 32 ? 96 : 512;
            for (size_t ri = 0; ri < 3; ri++) {
                for (size_t ki = 0; ki < 5; ki++) {
                    struct problem p;
                    REQUIRE(problem_init(&p, t, n, rows_l[ri], ntok_l[ki]));
                    size_t outn = (size_t)(p.ntok * p.os) + 1;
                    float *out = malloc(outn * sizeof(float));
                    void *scratch = malloc(kern_matmul_scratch_size(t, n, p.ntok) + 64);
                    REQUIRE(out && scratch);
                    for (size_t hi = 0; hi < 4; hi++) {
                        int nth = nth_l[hi];
                        struct kern_matmul mm = {.wtype = t, .n = n, .rows = p.rows, .w = p.w,
                                                 .w_stride = p.ws, .ntok = p.ntok, .act = p.a,
                                                 .a_stride = p.as, .out = out,
                                                 .out_stride = p.os, .prefetch = (int)(hi % 3) - 1};
                        for (size_t i = 0; i < outn; i++)
                            out[i] = NAN;
                        /* threads in reverse order: slices must not depend on order */
                        for (int ith = nth - 1; ith >= 0; ith--)
                            CHECK_EQ(kern_matmul(&mm, ith, nth), 0);
                        check_out(&p, out, "matmul", nth);
                        /* f32 activations, quantized per thread (bit-exact with
                         * the reference quantizer, so the same tolerance) */
                        mm.act = p.x;
                        mm.a_stride = 0;
                        for (size_t i = 0; i < outn; i++)
                            out[i] = NAN;
                        for (int ith = 0; ith < nth; ith++)
                            CHECK_EQ(kern_matmul_f32(&mm, scratch,
                                                     kern_matmul_scratch_size(t, n, p.ntok), ith, nth),
                                     0);
                        check_out(&p, out, "matmul_f32", nth);
                        if (test_failed_now())
                            break;
                    }
                    free(out);
                    free(scratch);
                    problem_free(&p);
                    if (test_failed_now())
                        goto out;
                }
            }
        }
    }
out:
    kern_isa_set(saved);
}

TEST(matmul_slices_cover_rows)
{
    static const int64_t rows_l[] = {0, 1, 15, 16, 17, 100, 768, 14336};
    for (size_t i = 0; i < sizeof rows_l / sizeof rows_l[0]; i++)
        for (int nth = 1; nth <= 20; nth++) {
            int64_t next = 0, maxlen = 0, minlen = rows_l[i];
            for (int ith = 0; ith < nth; ith++) {
                int64_t r0, r1;
                kern_matmul_slice(rows_l[i], ith, nth, &r0, &r1);
                CHECK(r0 == next && r1 >= r0);
                CHECK(r0 % 16 == 0 || r0 == rows_l[i]);
                next = r1;
                maxlen = r1 - r0 > maxlen ? r1 - r0 : maxlen;
                minlen = r1 - r0 < minlen ? r1 - r0 : minlen;
            }
            CHECK_EQ(next, rows_l[i]);
            /* balanced to within one 16-row unit (the tail unit may be short) */
            if (rows_l[i] >= 16 * nth)
                CHECK(maxlen - minlen <= 16);
        }
}

TEST(matmul_bad_arguments)
{
    float out[4], act[32] = {0};
    uint8_t w[64] = {0};
    struct kern_matmul mm = {.wtype = KT_Q8_0, .n = 32, .rows = 1, .w = w, .ntok = 1, .act = w,
                             .out = out};
    CHECK_EQ(kern_matmul(&mm, 0, 1), 0);
    CHECK_EQ(kern_matmul(&mm, 1, 1), MOED_EINVAL);
    CHECK_EQ(kern_matmul(&mm, 0, 0), MOED_EINVAL);
    mm.n = 31;
    CHECK_EQ(kern_matmul(&mm, 0, 1), MOED_EINVAL);
    mm.n = 32;
    mm.w_stride = 10; /* shorter than a row */
    CHECK_EQ(kern_matmul(&mm, 0, 1), MOED_EINVAL);
    mm.w_stride = 0;
    mm.wtype = KT_Q8_K; /* activation-only type */
    CHECK_EQ(kern_matmul(&mm, 0, 1), MOED_EUNSUPPORTED);
    mm.wtype = KT_Q8_0;
    mm.act = act;
    CHECK_EQ(kern_matmul_f32(&mm, w, 10, 0, 1), MOED_EINVAL); /* scratch too small */
    CHECK_EQ(kern_matmul_f32(&mm, w, sizeof w, 0, 1), 0);
    CHECK_EQ(kern_matmul_scratch_size(KT_Q4_K, 512, 3), 3 * kern_row_size(KT_Q8_K, 512));
    CHECK_EQ(kern_matmul_scratch_size(KT_Q8_K, 512, 3), 0);
}

/* A real threaded run: kern_matmul_f32 on the pool, scratch per thread. */
struct pool_job {
    struct kern_matmul mm;
    uint8_t *scratch;
    size_t scratch_each;
    _Atomic int errors;
};

static void pool_job_fn(void *arg, int ith, int nth)
{
    struct pool_job *j = arg;
    if (kern_matmul_f32(&j->mm, j->scratch + (size_t)ith * j->scratch_each, j->scratch_each, ith, nth))
        j->errors++;
}

TEST(matmul_on_pool)
{
    enum kern_isa saved = kern_isa_active();
    struct sched_pool *pool;
    struct sched_pool_opts o = {.nthreads = 3};
    REQUIRE(sched_pool_init(&pool, &o, NULL) == 0);
    static const uint32_t tl[] = {KT_Q4_K, KT_Q8_0, KT_Q6_K};
    for (int isa = KERN_ISA_SCALAR; isa <= (int)kern_isa_best(); isa++) {
        REQUIRE(kern_isa_set((enum kern_isa)isa) == 0);
        for (size_t ti = 0; ti < 3; ti++) {
            for (int64_t ntok = 1; ntok <= 6; ntok += 5) {
                struct problem p;
                REQUIRE(problem_init(&p, tl[ti], 512, 100, ntok));
                size_t outn = (size_t)(p.ntok * p.os) + 1;
                float *out = malloc(outn * sizeof(float));
                struct pool_job j = {.mm = {.wtype = p.t, .n = p.n, .rows = p.rows, .w = p.w,
                                            .w_stride = p.ws, .ntok = p.ntok, .act = p.x,
                                            .out = out, .out_stride = p.os}};
                j.scratch_each = kern_matmul_scratch_size(p.t, p.n, p.ntok);
                j.scratch = malloc(j.scratch_each * 3);
                REQUIRE(out && j.scratch);
                for (size_t i = 0; i < outn; i++)
                    out[i] = NAN;
                sched_pool_run(pool, pool_job_fn, &j);
                CHECK_EQ(j.errors, 0);
                check_out(&p, out, "matmul on pool", 3);
                free(out);
                free(j.scratch);
                problem_free(&p);
            }
        }
    }
    kern_isa_set(saved);
    sched_pool_free(pool);
}
