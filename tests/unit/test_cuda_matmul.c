/*
 * The GPU matrix kernels (kernels/cuda/kc_matmul.cu, kc_moe_ffn.cu) against
 * double-precision host references built from kern_dequant_row_ref, for
 * every weight type the GPU reads: kc_matmul on both paths (matvec for
 * n_tok <= 8 and F32/F16, tensor cores otherwise) with and without bias
 * and accumulation, kc_matmul_multi against kc_rmsnorm + kc_matmul,
 * kc_embed bit for bit, kc_moe_gate_up / kc_moe_down on
 * groupings built here as kc.h specifies (tiles of 8 and of 64), and the
 * argument checks.
 *
 * Tolerances, relative to S = sum_k |w_k x_k| of each output:
 *   matvec, f32 math: 1e-5 * S + 1e-6 (as test_matmul.c).  The weights are
 *     the reference's up to one FMA rounding (d * q - m fused, about 2^-24
 *     of the sub-block's range per element) and the sums run in another
 *     order; both stay orders of magnitude below 1e-5 * S at these widths.
 *   tensor cores: 1.5e-2 * S + 1e-5.  Each weight and activation is
 *     rounded to bf16 (8 significant bits, relative error <= 2^-8), so each
 *     product is off by at most about 2 * 2^-8 = 7.8e-3 of itself and the
 *     sum by at most 7.8e-3 * S (f32 accumulation adds little); 1.5e-2
 *     leaves a factor of 2.
 * The largest measured |error| / S of each path is printed on stderr.
 * MoE: act = silu(g) * u with g, u within the above of their references,
 * so |error| <= 1.1 * dg * (|u| + du) + |silu(g)| * du (|silu'| <= 1.1);
 * y is checked against down_e times the GPU's own act.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "kernels/cpu/quant.h"
#include "kernels/cpu/types.h"
#include "tests/unit/test_cuda.h"

#define MV_REL 1e-5
#define MV_ABS 1e-6
#define TC_REL 1.5e-2
#define TC_ABS 1e-5

static uint64_t rng_s = 0x243F6A8885A308D3ull;

static uint64_t rnd(void) /* splitmix64 */
{
    uint64_t z = (rng_s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float rndf(void)
{
    return (float)((double)(rnd() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static int rndi(int n)
{
    return (int)(rnd() % (uint64_t)n);
}

static const uint32_t all_types[] = {KT_F32,  KT_F16,  KT_BF16, KT_Q4_0, KT_Q4_1,
                                     KT_Q5_0, KT_Q5_1, KT_Q8_0, KT_Q2_K, KT_Q3_K,
                                     KT_Q4_K, KT_Q5_K, KT_Q6_K};
#define N_TYPES (sizeof all_types / sizeof all_types[0])

static bool is_kquant(uint32_t t)
{
    return t == KT_Q2_K || t == KT_Q3_K || t == KT_Q4_K || t == KT_Q5_K || t == KT_Q6_K;
}

static bool is_float(uint32_t t)
{
    return t == KT_F32 || t == KT_F16 || t == KT_BF16;
}

/* Worst |error| / S seen on each path, printed by the tests. */
static double worst_mv, worst_tc;

static void note_ratio(bool tc, double err, double mag)
{
    double r = mag > 0 ? err / mag : 0;
    if (tc && r > worst_tc)
        worst_tc = r;
    if (!tc && r > worst_mv)
        worst_mv = r;
}

/* ---- device helpers ------------------------------------------------------ */

/* Device copy of n bytes of h (h NULL: uninitialised); NULL on failure. */
static void *dev_put(kc_stream s, const void *h, size_t n)
{
    struct moed_err e = {0};
    void *d = NULL;
    if (kc_malloc(&d, n, &e)) {
        test_fail(__FILE__, __LINE__, "kc_malloc(%zu): %s", n, e.msg);
        return NULL;
    }
    if (h && n && kc_h2d(d, h, n, s, &e)) {
        test_fail(__FILE__, __LINE__, "kc_h2d: %s", e.msg);
        kc_free(d);
        return NULL;
    }
    return d;
}

static bool dev_get(kc_stream s, void *h, const void *d, size_t n)
{
    struct moed_err e = {0};
    if (kc_d2h(h, d, n, s, &e) || kc_sync(s, &e)) {
        test_fail(__FILE__, __LINE__, "copy back: %s", e.msg);
        return false;
    }
    return true;
}

static bool dev_sync(kc_stream s, const char *what)
{
    struct moed_err e = {0};
    if (kc_sync(s, &e)) {
        test_fail(__FILE__, __LINE__, "%s: %s", what, e.msg);
        return false;
    }
    return true;
}

/* ---- weights ------------------------------------------------------------- */

/* A random matrix: GGUF bytes q (rows x rs) and their reference values f. */
struct wmat {
    uint32_t type;
    int n, rows;
    size_t rs;
    uint8_t *q;
    float *f;
};

static void wmat_free(struct wmat *m)
{
    free(m->q);
    free(m->f);
    m->q = NULL;
    m->f = NULL;
}

static bool wmat_make(struct wmat *m, uint32_t type, int n, int rows)
{
    memset(m, 0, sizeof *m);
    m->type = type;
    m->n = n;
    m->rows = rows;
    m->rs = kern_row_size(type, n);
    m->q = malloc(m->rs * (size_t)rows + 1);
    m->f = malloc(sizeof(float) * (size_t)n * (size_t)rows + 1);
    float *tmp = malloc(sizeof(float) * (size_t)n);
    bool ok = m->rs && m->q && m->f && tmp;
    for (int r = 0; ok && r < rows; r++) {
        /* an offset per row and a few large elements exercise mins and scales */
        float off = 0.3f * (float)(r % 3 - 1);
        for (int k = 0; k < n; k++)
            tmp[k] = rndf() * (k % 7 == 0 ? 3.0f : 1.0f) + off;
        ok = kern_quant_row_ref(type, tmp, m->q + (size_t)r * m->rs, n) == 0 &&
             kern_dequant_row_ref(type, m->q + (size_t)r * m->rs, m->f + (size_t)r * n, n) == 0;
    }
    free(tmp);
    if (!ok) {
        test_fail(__FILE__, __LINE__, "making a %s matrix of %d x %d", kern_type_name(type), rows, n);
        wmat_free(m);
    }
    return ok;
}

/* Widths for a type: one of 256, one that ends in a partial K step of the
 * tensor-core kernel where the block size allows (32-element blocks: 800;
 * float pseudo-blocks of 8: 776; k-quants: 768). */
static int width2(uint32_t t)
{
    return is_kquant(t) ? 768 : is_float(t) ? 776 : 800;
}

/* ---- kc_matmul ------------------------------------------------------------- */

static void check_matmul(kc_stream s, const struct wmat *m, const void *dw, int n_tok, bool bias_on,
                         bool acc_on)
{
    const int n = m->n, rows = m->rows;
    const size_t nx = (size_t)n_tok * n, no = (size_t)n_tok * rows;
    float *x = malloc(sizeof(float) * nx), *bias = malloc(sizeof(float) * (size_t)rows);
    float *o0 = malloc(sizeof(float) * no), *o = malloc(sizeof(float) * no);
    float *dx = NULL, *db = NULL, *dout = NULL;
    if (!x || !bias || !o0 || !o) {
        test_fail(__FILE__, __LINE__, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nx; i++)
        x[i] = rndf();
    for (int r = 0; r < rows; r++)
        bias[r] = rndf();
    if (acc_on) {
        for (size_t i = 0; i < no; i++)
            o0[i] = rndf();
    } else {
        memset(o0, 0xFF, sizeof(float) * no); /* NaN: must all be overwritten */
    }
    dx = dev_put(s, x, sizeof(float) * nx);
    db = dev_put(s, bias, sizeof(float) * (size_t)rows);
    dout = dev_put(s, o0, sizeof(float) * no);
    if (!dx || !db || !dout)
        goto out;
    struct kc_mat km = {m->type, dw, m->rs, n, rows};
    struct moed_err e = {0};
    int rc = kc_matmul(s, &km, dx, n_tok, dout, bias_on ? db : NULL, acc_on, &e);
    CHECK_MSG(rc == 0, "kc_matmul %s %dx%d n_tok %d: %s", kern_type_name(m->type), rows, n, n_tok,
              e.msg);
    if (rc || !dev_sync(s, "kc_matmul") || !dev_get(s, o, dout, sizeof(float) * no))
        goto out;
    const bool tc = n_tok > 8 && m->type != KT_F32 && m->type != KT_F16;
    const double rel = tc ? TC_REL : MV_REL, abs_tol = tc ? TC_ABS : MV_ABS;
    int bad = 0;
    for (int t = 0; t < n_tok; t++) {
        for (int r = 0; r < rows; r++) {
            const float *w = m->f + (size_t)r * n, *xt = x + (size_t)t * n;
            double sum = 0, mag = 0;
            for (int k = 0; k < n; k++) {
                double p = (double)w[k] * xt[k];
                sum += p;
                mag += fabs(p);
            }
            double extra = (acc_on ? o0[(size_t)t * rows + r] : 0.0) + (bias_on ? bias[r] : 0.0);
            double ref = extra + sum, got = o[(size_t)t * rows + r];
            double err = fabs(got - ref);
            double tol = rel * mag + abs_tol + 1e-6 * (fabs(extra) + fabs(ref));
            note_ratio(tc, err, mag);
            if (!(err <= tol) && bad++ < 5)
                test_fail(__FILE__, __LINE__,
                          "kc_matmul %s %dx%d n_tok %d bias %d acc %d: out[%d][%d] = %.9g, "
                          "expected %.9g (tol %.3g)",
                          kern_type_name(m->type), rows, n, n_tok, bias_on, acc_on, t, r, got, ref,
                          tol);
        }
    }
out:
    kc_free(dx);
    kc_free(db);
    kc_free(dout);
    free(x);
    free(bias);
    free(o0);
    free(o);
}

static void run_matmul(const int *ntoks, int n_ntok)
{
    struct moed_err e = {0};
    kc_stream s = NULL;
    if (kc_stream_new(&s, &e)) {
        test_fail(__FILE__, __LINE__, "kc_stream_new: %s", e.msg);
        return;
    }
    int combo = 0;
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        const uint32_t t = all_types[ti];
        /* (2048, 40): few long rows, spread over 2 or 4 warps per row; 202
         * rows: a last lane group of 4 rows with 2 of them */
        const int shapes[3][2] = {{256, 96}, {width2(t), 202}, {2048, 40}};
        for (int si = 0; si < 3; si++) {
            struct wmat m;
            if (!wmat_make(&m, t, shapes[si][0], shapes[si][1]))
                continue;
            void *dw = dev_put(s, m.q, m.rs * (size_t)m.rows);
            if (dw) {
                for (int k = 0; k < n_ntok; k++, combo++)
                    check_matmul(s, &m, dw, ntoks[k], combo & 1, (combo >> 1) & 1);
                dev_sync(s, "matmul");
            }
            kc_free(dw);
            wmat_free(&m);
        }
    }
    kc_stream_free(s);
}

TEST(cuda_matmul_vec)
{
    GPU_OR_SKIP();
    static const int ntoks[] = {1, 2, 5, 8};
    worst_mv = 0;
    run_matmul(ntoks, 4);
    fprintf(stderr, "    cuda_matmul_vec: max |err| / sum|w x| = %.3g (tolerance %.1g)\n", worst_mv,
            MV_REL);
}

TEST(cuda_matmul_tc)
{
    GPU_OR_SKIP();
    static const int ntoks[] = {9, 33, 130};
    worst_mv = worst_tc = 0;
    run_matmul(ntoks, 3);
    fprintf(stderr,
            "    cuda_matmul_tc: max |err| / sum|w x| = %.3g tensor cores (tolerance %.1g), %.3g "
            "F32/F16 matvec (%.1g)\n",
            worst_tc, TC_REL, worst_mv, MV_REL);
}

/* The matvec kernels (kc_matmul, kc_matmul_multi) at each forced lane
 * group shape: 1, 2 and 4 rows per group of 8, 32 and 128 lanes (the
 * MoE kernels: test cuda_moe_ffn_shapes). */
/* weak: absent in builds without the CUDA kernels, where the tests skip */
__attribute__((weak)) void kc_matmul_tune(int nw, int lg);
__attribute__((weak)) void kc_moe_ffn_tune(int nw, int lg);

static void check_multi(kc_stream s, uint32_t type, int n, int n_tok, bool norm_on);

TEST(cuda_matmul_shapes)
{
    GPU_OR_SKIP();
    REQUIRE(kc_matmul_tune != NULL);
    static const int ntoks[] = {1, 3};
    static const int plans[][2] = {{1, 3}, {2, 5}, {4, 3}, {4, 5}, {4, 7}, {2, 7}};
    worst_mv = 0;
    for (size_t i = 0; i < sizeof plans / sizeof plans[0]; i++) {
        kc_matmul_tune(plans[i][0], plans[i][1]);
        run_matmul(ntoks, 2);
        struct moed_err e = {0};
        kc_stream s = NULL;
        if (kc_stream_new(&s, &e) == 0) {
            check_multi(s, KT_Q8_0, 1024, 1, true);
            check_multi(s, KT_Q4_K, 2048, 3, false);
            kc_stream_free(s);
        }
    }
    kc_matmul_tune(0, 0);
    fprintf(stderr, "    cuda_matmul_shapes: max |err| / sum|w x| = %.3g (tolerance %.1g)\n",
            worst_mv, MV_REL);
}

/* ---- kc_matmul_multi ---------------------------------------------------------- */

/* kc_matmul_multi (with and without the RMSNorm, with biases) against
 * kc_rmsnorm + one kc_matmul per matrix on the GPU: the same f32 math in
 * another launch shape, so within 1e-6 of S = sum |w x'| (+ 1e-7 absolute);
 * norm_out, written where n_tok > 8, must equal kc_rmsnorm's bit for bit. */
static void check_multi(kc_stream s, uint32_t type, int n, int n_tok, bool norm_on)
{
    enum { NM = 3 };
    const int rows[NM] = {200, 40, 72};
    struct wmat m[NM];
    void *dw[NM] = {0};
    float *db[NM] = {0}, *dout[NM] = {0}, *dref[NM] = {0};
    float *bias[NM] = {0}, *o = NULL, *oref = NULL, *xh = NULL, *nw = NULL, *xn = NULL;
    float *dx = NULL, *dnw = NULL, *dxn = NULL, *dno = NULL;
    int made = 0;
    for (; made < NM; made++)
        if (!wmat_make(&m[made], type, n, rows[made]))
            goto out;
    const size_t nx = (size_t)n_tok * n;
    xh = malloc(sizeof(float) * nx);
    nw = malloc(sizeof(float) * (size_t)n);
    xn = malloc(sizeof(float) * nx);
    o = malloc(sizeof(float) * (size_t)n_tok * 200);
    oref = malloc(sizeof(float) * (size_t)n_tok * 200);
    if (!xh || !nw || !xn || !o || !oref) {
        test_fail(__FILE__, __LINE__, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nx; i++)
        xh[i] = 4.0f * rndf();
    for (int k = 0; k < n; k++)
        nw[k] = 0.5f + rndf();
    dx = dev_put(s, xh, sizeof(float) * nx);
    dnw = dev_put(s, nw, sizeof(float) * (size_t)n);
    dxn = dev_put(s, NULL, sizeof(float) * nx);
    dno = dev_put(s, NULL, sizeof(float) * nx);
    if (!dx || !dnw || !dxn || !dno)
        goto out;
    struct kc_mat km[NM];
    struct moed_err e = {0};
    for (int i = 0; i < NM; i++) {
        bias[i] = malloc(sizeof(float) * (size_t)rows[i]);
        if (!bias[i])
            goto out;
        for (int r = 0; r < rows[i]; r++)
            bias[i][r] = rndf();
        dw[i] = dev_put(s, m[i].q, m[i].rs * (size_t)rows[i]);
        db[i] = dev_put(s, bias[i], sizeof(float) * (size_t)rows[i]);
        dout[i] = dev_put(s, NULL, sizeof(float) * (size_t)n_tok * rows[i]);
        dref[i] = dev_put(s, NULL, sizeof(float) * (size_t)n_tok * rows[i]);
        if (!dw[i] || !db[i] || !dout[i] || !dref[i])
            goto out;
        km[i] = (struct kc_mat){type, dw[i], m[i].rs, n, rows[i]};
    }
    /* the reference: the separate kernels */
    const float *xin = dx;
    if (norm_on) {
        CHECK(kc_rmsnorm(s, dx, NULL, n_tok, n, dnw, 1e-6f, dxn, &e) == 0);
        xin = dxn;
    }
    for (int i = 0; i < NM; i++)
        CHECK_MSG(kc_matmul(s, &km[i], xin, n_tok, dref[i], i == 1 ? NULL : db[i], false, &e) == 0,
                  "kc_matmul: %s", e.msg);
    const float *cb[NM] = {db[0], NULL, db[2]};
    float *const co[NM] = {dout[0], dout[1], dout[2]};
    int rc = kc_matmul_multi(s, NM, km, dx, n_tok, co, cb, norm_on ? dnw : NULL, 1e-6f, dno, &e);
    CHECK_MSG(rc == 0, "kc_matmul_multi %s n %d n_tok %d: %s", kern_type_name(type), n, n_tok,
              e.msg);
    if (rc || !dev_sync(s, "kc_matmul_multi"))
        goto out;
    if (!dev_get(s, xn, xin, sizeof(float) * nx))
        goto out;
    if (norm_on && n_tok > 8) {
        float *no = malloc(sizeof(float) * nx);
        if (no && dev_get(s, no, dno, sizeof(float) * nx))
            CHECK_MSG(memcmp(no, xn, sizeof(float) * nx) == 0,
                      "kc_matmul_multi %s n_tok %d: norm_out differs from kc_rmsnorm",
                      kern_type_name(type), n_tok);
        free(no);
    }
    int bad = 0;
    for (int i = 0; i < NM; i++) {
        const size_t no_ = (size_t)n_tok * rows[i];
        if (!dev_get(s, o, dout[i], sizeof(float) * no_) ||
            !dev_get(s, oref, dref[i], sizeof(float) * no_))
            goto out;
        for (int t = 0; t < n_tok; t++)
            for (int r = 0; r < rows[i]; r++) {
                const float *w = m[i].f + (size_t)r * n, *xt = xn + (size_t)t * n;
                double mag = 0;
                for (int k = 0; k < n; k++)
                    mag += fabs((double)w[k] * xt[k]);
                const double got = o[(size_t)t * rows[i] + r], ref = oref[(size_t)t * rows[i] + r];
                const double tol = 1e-6 * (mag + fabs(ref)) + 1e-7;
                if (!(fabs(got - ref) <= tol) && bad++ < 5)
                    test_fail(__FILE__, __LINE__,
                              "kc_matmul_multi %s n %d n_tok %d norm %d: out[%d][%d][%d] = %.9g, "
                              "separate kernels %.9g (tol %.3g)",
                              kern_type_name(type), n, n_tok, norm_on, i, t, r, got, ref, tol);
            }
    }
out:
    for (int i = 0; i < NM; i++) {
        kc_free(dw[i]);
        kc_free(db[i]);
        kc_free(dout[i]);
        kc_free(dref[i]);
        free(bias[i]);
    }
    for (int i = 0; i < made; i++)
        wmat_free(&m[i]);
    kc_free(dx);
    kc_free(dnw);
    kc_free(dxn);
    kc_free(dno);
    free(xh);
    free(nw);
    free(xn);
    free(o);
    free(oref);
}

TEST(cuda_matmul_multi)
{
    GPU_OR_SKIP();
    struct moed_err e = {0};
    kc_stream s = NULL;
    REQUIRE(kc_stream_new(&s, &e) == 0);
    static const int ntoks[] = {1, 3, 8, 20};
    for (int k = 0; k < 4; k++) {
        check_multi(s, KT_Q8_0, 1024, ntoks[k], true);
        check_multi(s, KT_F32, 1024, ntoks[k], true);
        check_multi(s, KT_Q8_0, 1024, ntoks[k], false);
    }
    /* wider than 4096 (one launch): kc_rmsnorm's 1024-thread order; a k-quant */
    check_multi(s, KT_Q8_0, 4608, 1, true);
    check_multi(s, KT_Q4_K, 2048, 1, true);
    /* refused: mixed widths */
    struct kc_mat bad[2] = {{KT_F32, (const void *)(uintptr_t)4096, 4 * 256, 256, 4},
                            {KT_F32, (const void *)(uintptr_t)4096, 4 * 512, 512, 4}};
    float *ff = (float *)(uintptr_t)8192;
    float *const outs[2] = {ff, ff};
    CHECK_EQ(kc_matmul_multi(s, 2, bad, ff, 1, outs, NULL, NULL, 1e-6f, NULL, &e), MOED_EINVAL);
    CHECK_EQ(kc_matmul_multi(s, 5, bad, ff, 1, outs, NULL, NULL, 1e-6f, NULL, &e), MOED_EINVAL);
    kc_stream_free(s);
}

/* ---- kc_embed -------------------------------------------------------------- */

TEST(cuda_embed)
{
    GPU_OR_SKIP();
    struct moed_err e = {0};
    kc_stream s = NULL;
    REQUIRE(kc_stream_new(&s, &e) == 0);
    enum { ROWS = 37, NTOK = 9 };
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        const uint32_t t = all_types[ti];
        const int n = ti % 2 ? 256 : width2(t);
        struct wmat m;
        if (!wmat_make(&m, t, n, ROWS))
            continue;
        int32_t tok[NTOK];
        for (int i = 0; i < NTOK; i++)
            tok[i] = i == 3 ? tok[1] : i == NTOK - 1 ? ROWS - 1 : rndi(ROWS);
        float *o = malloc(sizeof(float) * NTOK * (size_t)n);
        void *dw = dev_put(s, m.q, m.rs * ROWS), *dt = dev_put(s, tok, sizeof tok);
        float *dout = dev_put(s, NULL, sizeof(float) * NTOK * (size_t)n);
        if (o && dw && dt && dout) {
            struct kc_mat km = {t, dw, m.rs, n, ROWS};
            int rc = kc_embed(s, &km, dt, NTOK, dout, &e);
            CHECK_MSG(rc == 0, "kc_embed %s: %s", kern_type_name(t), e.msg);
            if (rc == 0 && dev_sync(s, "kc_embed") &&
                dev_get(s, o, dout, sizeof(float) * NTOK * (size_t)n)) {
                for (int i = 0; i < NTOK; i++) {
                    const float *ref = m.f + (size_t)tok[i] * n, *got = o + (size_t)i * n;
                    int k = 0;
                    while (k < n && memcmp(&ref[k], &got[k], sizeof(float)) == 0)
                        k++;
                    CHECK_MSG(k == n, "kc_embed %s row %d: element %d is %.9g, expected %.9g",
                              kern_type_name(t), tok[i], k, k < n ? got[k] : 0.0,
                              k < n ? ref[k] : 0.0);
                }
            }
        }
        kc_free(dw);
        kc_free(dt);
        kc_free(dout);
        free(o);
        wmat_free(&m);
    }
    kc_stream_free(s);
}

/* ---- MoE FFN ---------------------------------------------------------------- */

struct moe_case {
    uint32_t tg, td; /* gate = up type, down type */
    int n_expert, n_embd, n_ff, k;
};

/* One configuration of experts, run at each n_tok with the given tile. */
static void check_moe(kc_stream s, const struct moe_case *mc, int tile, const int *ntoks, int n_ntok)
{
    const int ne = mc->n_expert, d = mc->n_embd, ff = mc->n_ff, k = mc->k;
    struct wmat *gate = calloc((size_t)ne, sizeof *gate), *upm = calloc((size_t)ne, sizeof *upm);
    struct wmat *dn = calloc((size_t)ne, sizeof *dn);
    void **dg = calloc((size_t)ne, sizeof *dg), **du = calloc((size_t)ne, sizeof *du);
    void **dd = calloc((size_t)ne, sizeof *dd);
    void *tg = NULL, *tu = NULL, *td = NULL;
    bool ok = gate && upm && dn && dg && du && dd;
    for (int x = 0; ok && x < ne; x++) {
        ok = wmat_make(&gate[x], mc->tg, d, ff) && wmat_make(&upm[x], mc->tg, d, ff) &&
             wmat_make(&dn[x], mc->td, ff, d);
        if (ok) {
            dg[x] = dev_put(s, gate[x].q, gate[x].rs * (size_t)ff);
            du[x] = dev_put(s, upm[x].q, upm[x].rs * (size_t)ff);
            dd[x] = dev_put(s, dn[x].q, dn[x].rs * (size_t)d);
            ok = dg[x] && du[x] && dd[x];
        }
    }
    if (ok) {
        tg = dev_put(s, dg, sizeof(void *) * (size_t)ne);
        tu = dev_put(s, du, sizeof(void *) * (size_t)ne);
        td = dev_put(s, dd, sizeof(void *) * (size_t)ne);
        ok = tg && tu && td && dev_sync(s, "expert upload");
    }
    const bool tc_gu = tile == 64 && mc->tg != KT_F32 && mc->tg != KT_F16;
    const bool tc_dn = tile == 64 && mc->td != KT_F32 && mc->td != KT_F16;
    for (int ci = 0; ok && ci < n_ntok; ci++) {
        const int n_tok = ntoks[ci];
        int32_t *ids = malloc(sizeof(int32_t) * (size_t)n_tok * k);
        float *x = malloc(sizeof(float) * (size_t)n_tok * d);
        struct grouping g = {0};
        float *act = NULL, *y = NULL, *dx = NULL, *dact = NULL, *dy = NULL;
        void *ws = NULL;
        if (!ids || !x)
            goto next;
        for (int t = 0; t < n_tok; t++)
            for (int j = 0; j < k; j++) {
                int ex, dup;
                do {
                    ex = rndi(ne);
                    dup = 0;
                    for (int jj = 0; jj < j; jj++)
                        dup |= ids[t * k + jj] == ex;
                } while (dup);
                ids[t * k + j] = ex;
            }
        for (size_t i = 0; i < (size_t)n_tok * d; i++)
            x[i] = rndf();
        if (!grouping_make(&g, ids, n_tok, k, ne, tile)) {
            test_fail(__FILE__, __LINE__, "grouping");
            goto next;
        }
        const int np = g.n_pairs;
        act = malloc(sizeof(float) * (size_t)np * ff);
        y = malloc(sizeof(float) * (size_t)np * d);
        struct kc_moe_groups dgr;
        struct moed_err e = {0};
        if (kc_malloc(&ws, kc_moe_groups_size(n_tok, k, ne, tile), &e)) {
            test_fail(__FILE__, __LINE__, "kc_malloc: %s", e.msg);
            goto next;
        }
        kc_moe_groups_at(&dgr, ws, n_tok, k, ne, tile);
        if (kc_h2d(dgr.pair_tok, g.pair_tok, sizeof(int32_t) * (size_t)np, s, &e) ||
            kc_h2d(dgr.pair_of, g.pair_of, sizeof(int32_t) * (size_t)np, s, &e) ||
            kc_h2d(dgr.tiles, g.tiles, sizeof(int32_t) * 3 * (size_t)g.max_tiles, s, &e) ||
            kc_h2d(dgr.n_tiles, &g.n_tiles, sizeof(int32_t), s, &e)) {
            test_fail(__FILE__, __LINE__, "grouping upload: %s", e.msg);
            goto next;
        }
        dx = dev_put(s, x, sizeof(float) * (size_t)n_tok * d);
        dact = dev_put(s, NULL, sizeof(float) * (size_t)np * ff);
        dy = dev_put(s, NULL, sizeof(float) * (size_t)np * d);
        if (!act || !y || !dx || !dact || !dy)
            goto next;
        if (kc_memset(dact, 0xFF, sizeof(float) * (size_t)np * ff, s, &e) ||
            kc_memset(dy, 0xFF, sizeof(float) * (size_t)np * d, s, &e)) {
            test_fail(__FILE__, __LINE__, "kc_memset: %s", e.msg);
            goto next;
        }
        struct kc_experts ex = {mc->tg, mc->tg, mc->td, gate[0].rs, upm[0].rs, dn[0].rs,
                                (const void *const *)tg, (const void *const *)tu,
                                (const void *const *)td, ne, d, ff};
        int rc = kc_moe_gate_up(s, &ex, dx, &dgr, tile, g.max_tiles, dact, &e);
        CHECK_MSG(rc == 0, "kc_moe_gate_up %s tile %d: %s", kern_type_name(mc->tg), tile, e.msg);
        if (rc == 0) {
            rc = kc_moe_down(s, &ex, dact, &dgr, tile, g.max_tiles, dy, &e);
            CHECK_MSG(rc == 0, "kc_moe_down %s tile %d: %s", kern_type_name(mc->td), tile, e.msg);
        }
        if (rc || !dev_sync(s, "moe") || !dev_get(s, act, dact, sizeof(float) * (size_t)np * ff) ||
            !dev_get(s, y, dy, sizeof(float) * (size_t)np * d))
            goto next;
        int bad = 0;
        const double rg = tc_gu ? TC_REL : MV_REL, ag = tc_gu ? TC_ABS : MV_ABS;
        for (int i = 0; i < np; i++) {
            const int t = g.pair_tok[i], xe = g.pair_exp[i];
            const float *xt = x + (size_t)t * d;
            for (int r = 0; r < ff; r++) {
                const float *gw = gate[xe].f + (size_t)r * d, *uw = upm[xe].f + (size_t)r * d;
                double gs = 0, gm = 0, us = 0, um = 0;
                for (int c = 0; c < d; c++) {
                    double pg = (double)gw[c] * xt[c], pu = (double)uw[c] * xt[c];
                    gs += pg;
                    gm += fabs(pg);
                    us += pu;
                    um += fabs(pu);
                }
                double sg = gs / (1.0 + exp(-gs)), ref = sg * us, got = act[(size_t)i * ff + r];
                double dgv = rg * gm + ag, duv = rg * um + ag;
                double tol = 1.1 * dgv * (fabs(us) + duv) + fabs(sg) * duv + 1e-6 * fabs(ref);
                double err = fabs(got - ref);
                /* as a ratio comparable to the matmul ones */
                note_ratio(tc_gu, err * rg, tol - 1e-6 * fabs(ref));
                if (!(err <= tol) && bad++ < 5)
                    test_fail(__FILE__, __LINE__,
                              "kc_moe_gate_up %s tile %d n_tok %d: act[%d][%d] (token %d, expert "
                              "%d) = %.9g, expected %.9g (tol %.3g)",
                              kern_type_name(mc->tg), tile, n_tok, i, r, t, xe, got, ref, tol);
            }
        }
        const double rd = tc_dn ? TC_REL : MV_REL, ad = tc_dn ? TC_ABS : MV_ABS;
        for (int i = 0; i < np; i++) {
            const int xe = g.pair_exp[i];
            const float *a = act + (size_t)i * ff;
            for (int r = 0; r < d; r++) {
                const float *w = dn[xe].f + (size_t)r * ff;
                double sum = 0, mag = 0;
                for (int c = 0; c < ff; c++) {
                    double p = (double)w[c] * a[c];
                    sum += p;
                    mag += fabs(p);
                }
                double got = y[(size_t)i * d + r], err = fabs(got - sum), tol = rd * mag + ad;
                note_ratio(tc_dn, err, mag);
                if (!(err <= tol) && bad++ < 5)
                    test_fail(__FILE__, __LINE__,
                              "kc_moe_down %s tile %d n_tok %d: y[%d][%d] (expert %d) = %.9g, "
                              "expected %.9g (tol %.3g)",
                              kern_type_name(mc->td), tile, n_tok, i, r, xe, got, sum, tol);
            }
        }
    next:
        dev_sync(s, "moe case");
        kc_free(ws);
        kc_free(dx);
        kc_free(dact);
        kc_free(dy);
        free(ids);
        free(x);
        free(act);
        free(y);
        grouping_free(&g);
    }
    kc_free(tg);
    kc_free(tu);
    kc_free(td);
    for (int x = 0; x < ne; x++) {
        if (dg)
            kc_free(dg[x]);
        if (du)
            kc_free(du[x]);
        if (dd)
            kc_free(dd[x]);
        if (gate)
            wmat_free(&gate[x]);
        if (upm)
            wmat_free(&upm[x]);
        if (dn)
            wmat_free(&dn[x]);
    }
    free(gate);
    free(upm);
    free(dn);
    free(dg);
    free(du);
    free(dd);
}

static void run_moe(int tile, const int *ntoks, int n_ntok)
{
    struct moed_err e = {0};
    kc_stream s = NULL;
    if (kc_stream_new(&s, &e)) {
        test_fail(__FILE__, __LINE__, "kc_stream_new: %s", e.msg);
        return;
    }
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        const uint32_t t = all_types[ti];
        struct moe_case mc = {t, t, 8 + rndi(9), 256, is_kquant(t) ? 256 : 128, 4};
        check_moe(s, &mc, tile, ntoks, n_ntok);
    }
    /* the reference shape's mix: Q4_K gate/up, Q6_K down, n_ff 768 */
    struct moe_case mix = {KT_Q4_K, KT_Q6_K, 16, 256, 768, 8};
    check_moe(s, &mix, tile, ntoks, n_ntok);
    dev_sync(s, "moe");
    kc_stream_free(s);
}

TEST(cuda_moe_ffn_vec)
{
    GPU_OR_SKIP();
    static const int ntoks[] = {1, 3, 12}; /* 12: some tiles of 5..8 pairs */
    worst_mv = 0;
    run_moe(8, ntoks, 3);
    fprintf(stderr, "    cuda_moe_ffn_vec: max |err| / bound-scale = %.3g (tolerance %.1g)\n",
            worst_mv, MV_REL);
}

TEST(cuda_moe_ffn_shapes)
{
    GPU_OR_SKIP();
    REQUIRE(kc_moe_ffn_tune != NULL);
    static const int ntoks[] = {1, 3};
    static const int plans[][2] = {{1, 3}, {2, 4}, {4, 3}, {4, 5}};
    worst_mv = 0;
    for (size_t i = 0; i < sizeof plans / sizeof plans[0]; i++) {
        kc_moe_ffn_tune(plans[i][0], plans[i][1]);
        run_moe(8, ntoks, 2);
    }
    kc_moe_ffn_tune(0, 0);
    fprintf(stderr, "    cuda_moe_ffn_shapes: max |err| / bound-scale = %.3g (tolerance %.1g)\n",
            worst_mv, MV_REL);
}

TEST(cuda_moe_ffn_tc)
{
    GPU_OR_SKIP();
    static const int ntoks[] = {40, 200};
    worst_mv = worst_tc = 0;
    run_moe(64, ntoks, 2);
    fprintf(stderr,
            "    cuda_moe_ffn_tc: max |err| / bound-scale = %.3g tensor cores (tolerance %.1g), "
            "%.3g F32/F16 matvec (%.1g)\n",
            worst_tc, TC_REL, worst_mv, MV_REL);
}

/* ---- argument checks ---------------------------------------------------------- */

TEST(cuda_matmul_args)
{
    GPU_OR_SKIP();
    struct moed_err e = {0};
    /* never dereferenced: every call below is refused before launching */
    const void *fake = (const void *)(uintptr_t)4096;
    float *ff = (float *)(uintptr_t)8192;
    struct kc_mat m = {KT_Q8_1, fake, kern_row_size(KT_Q8_1, 256), 256, 4};
    CHECK_EQ(kc_matmul(NULL, &m, ff, 1, ff, NULL, false, &e), MOED_EUNSUPPORTED);
    CHECK(strstr(e.msg, "Q8_1") != NULL);
    m = (struct kc_mat){KT_Q4_0, fake, kern_row_size(KT_Q4_0, 256) + 2, 256, 4};
    CHECK_EQ(kc_matmul(NULL, &m, ff, 1, ff, NULL, false, &e), MOED_EINVAL);
    m = (struct kc_mat){KT_F32, fake, kern_row_size(KT_F32, 12), 12, 4};
    CHECK_EQ(kc_matmul(NULL, &m, ff, 1, ff, NULL, false, &e), MOED_EUNSUPPORTED);
    m = (struct kc_mat){KT_Q8_0, (const void *)(uintptr_t)4098, kern_row_size(KT_Q8_0, 64), 64, 4};
    CHECK_EQ(kc_matmul(NULL, &m, ff, 1, ff, NULL, false, &e), MOED_EINVAL);
    CHECK_EQ(kc_embed(NULL, &m, (const int32_t *)fake, 1, ff, &e), MOED_EINVAL);

    const void *const *tab = (const void *const *)fake;
    struct kc_experts ex = {KT_Q4_K, KT_Q4_K, KT_Q6_K, kern_row_size(KT_Q4_K, 256),
                            kern_row_size(KT_Q4_K, 256), kern_row_size(KT_Q6_K, 256),
                            tab, tab, tab, 8, 256, 256};
    struct kc_moe_groups g = {(int32_t *)ff, (int32_t *)ff, (int32_t *)ff, (int32_t *)ff};
    CHECK_EQ(kc_moe_gate_up(NULL, &ex, ff, &g, 16, 4, ff, &e), MOED_EINVAL);
    CHECK_EQ(kc_moe_down(NULL, &ex, ff, &g, 0, 4, ff, &e), MOED_EINVAL);
    ex.type_up = KT_Q5_K;
    ex.row_up = kern_row_size(KT_Q5_K, 256);
    CHECK_EQ(kc_moe_gate_up(NULL, &ex, ff, &g, 8, 4, ff, &e), MOED_EUNSUPPORTED);
    ex.type_down = KT_IQ2_XXS;
    CHECK_EQ(kc_moe_down(NULL, &ex, ff, &g, 8, 4, ff, &e), MOED_EUNSUPPORTED);
}
