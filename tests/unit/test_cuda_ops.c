/*
 * The GPU kernels of kernels/cuda/kc_ops.cu, kc_attn.cu and kc_moe.cu
 * against the CPU code they mirror (model/ops.c, model/forward.c,
 * kernels/cpu/attn.c) and, for attention, a naive double-precision
 * reference.  Inputs are fresh random numbers of a seeded generator.
 * Each test prints its largest measured error to stderr.
 *
 * Tolerances (each is also stated where it is checked):
 *   - rmsnorm, qk-norm + RoPE, combine: the same float operations in the
 *     same order as the CPU; only the double sums of squares, expf/cos/sin
 *     (a few ulp) may differ: 1e-5 relative.
 *   - F16 cache entries: within one f16 ulp of the CPU's kern_f32_to_f16 of
 *     its own f32 value (the f32 values may differ by an ulp); V exactly.
 *   - attention: f32 against double, outputs are convex combinations of V
 *     in [-1, 1]: 1e-5 absolute (as tests/unit/test_attn.c); different
 *     n_split (and the tiled kernel against the split one): 1e-5 relative
 *     to the largest output.
 *   - routing: the same expert ids exactly (ties included), weights 1e-5
 *     relative; grouping: every invariant exactly.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/quant.h"
#include "kernels/cpu/types.h"
#include "model/ops.h"
#include "tests/unit/test_cuda.h"

/* ---- helpers ---------------------------------------------------------------- */

static uint64_t rng = 0x243f6a8885a308d3ull;

static void seed(uint64_t s)
{
    rng = s * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;
}

static uint64_t next_u64(void)
{
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return rng * 0x2545F4914F6CDD1Dull;
}

/* uniform in [-1, 1) */
static float rndf(void)
{
    return (float)((double)(next_u64() >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static float rnd_in(float lo, float hi)
{
    return lo + (hi - lo) * (rndf() + 1.0f) * 0.5f;
}

static uint32_t rndu(uint32_t n)
{
    return (uint32_t)((next_u64() >> 33) % n);
}

/* Device and host buffers of one test, all freed by gpu_done (or back to
 * a mark by gpu_release). */
#define GPU_MAX_BUF 256
struct gpu {
    kc_stream s;
    void *dev[GPU_MAX_BUF];
    int n_dev;
    void *host[GPU_MAX_BUF];
    int n_host;
    struct moed_err e;
};

static bool gpu_init(struct gpu *g)
{
    memset(g, 0, sizeof *g);
    return kc_stream_new(&g->s, &g->e) == 0;
}

static void gpu_release(struct gpu *g, int dev_mark, int host_mark)
{
    while (g->n_dev > dev_mark)
        kc_free(g->dev[--g->n_dev]);
    while (g->n_host > host_mark)
        free(g->host[--g->n_host]);
}

static void gpu_done(struct gpu *g)
{
    if (g->s)
        kc_sync(g->s, &g->e);
    gpu_release(g, 0, 0);
    kc_stream_free(g->s);
    g->s = NULL;
}

static void *halloc(struct gpu *g, size_t n)
{
    if (g->n_host == GPU_MAX_BUF)
        return NULL;
    void *p = calloc(1, n ? n : 1);
    if (p)
        g->host[g->n_host++] = p;
    return p;
}

static void *dalloc(struct gpu *g, size_t n)
{
    void *p = NULL;
    if (g->n_dev == GPU_MAX_BUF || kc_malloc(&p, n, &g->e))
        return NULL;
    g->dev[g->n_dev++] = p;
    return p;
}

static void *dup_to_dev(struct gpu *g, const void *h, size_t n)
{
    void *p = dalloc(g, n);
    if (!p || kc_h2d(p, h, n, g->s, &g->e) || kc_sync(g->s, &g->e))
        return NULL;
    return p;
}

static bool to_host(struct gpu *g, void *h, const void *d, size_t n)
{
    return kc_d2h(h, d, n, g->s, &g->e) == 0 && kc_sync(g->s, &g->e) == 0;
}

static float *rnd_vec(struct gpu *g, size_t n, float lo, float hi)
{
    float *p = halloc(g, n * sizeof(float));
    if (p)
        for (size_t i = 0; i < n; i++)
            p[i] = rnd_in(lo, hi);
    return p;
}

/* max |a - b| / max(|b|, floor), elementwise */
static double max_rel(const float *a, const float *b, size_t n, double floor)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]), r = fabs((double)b[i]);
        d /= r > floor ? r : floor;
        if (!(d <= m)) /* NaN wins */
            m = d;
    }
    return m;
}

/* max |a - b| / max |b|: the error relative to the vector's scale */
static double scaled_err(const float *a, const float *b, size_t n)
{
    double m = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m))
            m = d;
        s = fabs((double)b[i]) > s ? fabs((double)b[i]) : s;
    }
    return s > 0 ? m / s : m;
}

#define TOL_REL 1e-5  /* same math, relative (see the top) */
#define TOL_ATTN 1e-5 /* attention against double, absolute */

/* ---- rmsnorm, swiglu, add ------------------------------------------------------ */

TEST(cuda_rmsnorm)
{
    GPU_OR_SKIP();
    struct gpu g;
    REQUIRE(gpu_init(&g));
    seed(1);
    const int widths[] = {100, 2048, 16384}; /* 16384: the 1024-thread variant */
    const int32_t rows[] = {3, 0, 4, 4, 1};
    const int nt = 5;
    const float eps = 1e-6f;
    double worst = 0;
    for (int wi = 0; wi < 3; wi++) {
        const int n = widths[wi];
        size_t sz = (size_t)nt * n * sizeof(float);
        float *x = rnd_vec(&g, (size_t)nt * n, -2, 2), *w = rnd_vec(&g, (size_t)n, 0.5f, 1.5f);
        float *ref = halloc(&g, sz), *got = halloc(&g, sz);
        REQUIRE(x && w && ref && got);
        float *dx = dup_to_dev(&g, x, sz), *dw = dup_to_dev(&g, w, (size_t)n * 4);
        float *dout = dalloc(&g, sz);
        int32_t *drows = dup_to_dev(&g, rows, sizeof rows);
        if (!dx || !dw || !dout || !drows) {
            CHECK_MSG(0, "device buffers: %s", g.e.msg);
            break;
        }
        /* 1: row i of x, separate output; relative per element (TOL_REL) */
        CHECK_EQ(kc_rmsnorm(g.s, dx, NULL, nt, n, dw, eps, dout, &g.e), 0);
        CHECK(to_host(&g, got, dout, sz));
        for (int t = 0; t < nt; t++)
            ops_rmsnorm(ref + (size_t)t * n, x + (size_t)t * n, w, n, eps);
        double err = max_rel(got, ref, (size_t)nt * n, 1e-30);
        CHECK_MSG(err <= TOL_REL, "rmsnorm n=%d: rel err %g", n, err);
        worst = err > worst ? err : worst;
        /* 2: rows picked by index */
        CHECK_EQ(kc_rmsnorm(g.s, dx, drows, nt, n, dw, eps, dout, &g.e), 0);
        CHECK(to_host(&g, got, dout, sz));
        for (int t = 0; t < nt; t++)
            ops_rmsnorm(ref + (size_t)t * n, x + (size_t)rows[t] * n, w, n, eps);
        err = max_rel(got, ref, (size_t)nt * n, 1e-30);
        CHECK_MSG(err <= TOL_REL, "rmsnorm rows n=%d: rel err %g", n, err);
        worst = err > worst ? err : worst;
        /* 3: in place */
        CHECK_EQ(kc_rmsnorm(g.s, dx, NULL, nt, n, dw, eps, dx, &g.e), 0);
        CHECK(to_host(&g, got, dx, sz));
        for (int t = 0; t < nt; t++)
            ops_rmsnorm(ref + (size_t)t * n, x + (size_t)t * n, w, n, eps);
        err = max_rel(got, ref, (size_t)nt * n, 1e-30);
        CHECK_MSG(err <= TOL_REL, "rmsnorm in place n=%d: rel err %g", n, err);
        worst = err > worst ? err : worst;
    }
    fprintf(stderr, "cuda_rmsnorm: max rel err %.3g (tol %g)\n", worst, TOL_REL);
    gpu_done(&g);
}

TEST(cuda_swiglu_add)
{
    GPU_OR_SKIP();
    struct gpu g;
    REQUIRE(gpu_init(&g));
    seed(2);
    const int64_t n = 100003;
    size_t sz = (size_t)n * sizeof(float);
    float *a = rnd_vec(&g, (size_t)n, -6, 6), *b = rnd_vec(&g, (size_t)n, -2, 2);
    float *ref = halloc(&g, sz), *got = halloc(&g, sz);
    float *da = a ? dup_to_dev(&g, a, sz) : NULL, *db = b ? dup_to_dev(&g, b, sz) : NULL;
    if (!a || !b || !ref || !got || !da || !db) {
        CHECK_MSG(0, "buffers: %s", g.e.msg);
        gpu_done(&g);
        return;
    }
    /* swiglu: expf may differ by an ulp or two: relative per element, floor 1e-6 */
    CHECK_EQ(kc_swiglu(g.s, da, db, n, &g.e), 0);
    CHECK(to_host(&g, got, da, sz));
    ops_swiglu(ref, a, b, n);
    double e1 = max_rel(got, ref, (size_t)n, 1e-6);
    CHECK_MSG(e1 <= TOL_REL, "swiglu: rel err %g", e1);
    /* add: x = the CPU's swiglu result, x += b; exactly the CPU's float sums */
    double e2 = 0;
    float *dsw = dup_to_dev(&g, ref, sz);
    REQUIRE(dsw);
    CHECK_EQ(kc_add(g.s, dsw, db, n, &g.e), 0);
    CHECK_EQ(kc_swiglu(g.s, dsw, db, 0, &g.e), 0); /* n = 0: nothing */
    CHECK(to_host(&g, got, dsw, sz));
    for (int64_t i = 0; i < n; i++) {
        float want = ref[i] + b[i];
        double d = fabs((double)got[i] - (double)want);
        e2 = d > e2 || d != d ? d : e2;
    }
    CHECK_MSG(e2 == 0, "add: err %g", e2);
    fprintf(stderr, "cuda_swiglu_add: swiglu max rel err %.3g (tol %g), add max err %.3g (exact)\n",
            e1, TOL_REL, e2);
    gpu_done(&g);
}

/* ---- QK-norm, RoPE and the cache store ------------------------------------------ */

struct rope_cfg {
    int hd, n_head, n_kv, n_rot, qk;
    bool neox;
    float base, scale;
};

#define R_LAYERS 2
#define R_LAYER 1
#define R_CTX 4100
#define R_TOK 6

/* The CPU side of one token, as forward.c's attention(). */
static void cpu_qk_rope(const struct rope_cfg *c, float *q, float *k, const float *qn,
                        const float *kn, int32_t pos, float eps)
{
    int hd = c->hd;
    if (c->qk == KC_QK_HEAD) {
        for (int h = 0; h < c->n_head; h++)
            ops_rmsnorm(q + (size_t)h * hd, q + (size_t)h * hd, qn, hd, eps);
        for (int h = 0; h < c->n_kv; h++)
            ops_rmsnorm(k + (size_t)h * hd, k + (size_t)h * hd, kn, hd, eps);
    } else if (c->qk == KC_QK_FULL) {
        ops_rmsnorm(q, q, qn, (int64_t)c->n_head * hd, eps);
        ops_rmsnorm(k, k, kn, (int64_t)c->n_kv * hd, eps);
    }
    ops_rope(q, c->n_head, hd, c->n_rot, pos, c->base, c->scale, c->neox);
    ops_rope(k, c->n_kv, hd, c->n_rot, pos, c->base, c->scale, c->neox);
}

TEST(cuda_qk_rope_store)
{
    GPU_OR_SKIP();
    static const struct rope_cfg cfgs[] = {
        {128, 8, 2, 128, KC_QK_HEAD, true, 1e6f, 1.0f},     /* qwen3moe-like */
        {64, 4, 4, 32, KC_QK_FULL, true, 10000.0f, 4.0f},   /* olmoe-like, n_rot < hd, scaled */
        {32, 4, 2, 24, KC_QK_NONE, false, 10000.0f, 1.0f},  /* llama-like, adjacent pairs */
        {128, 4, 1, 64, KC_QK_HEAD, false, 5e5f, 2.5f},
    };
    const int seq[R_TOK] = {0, 1, 0, 1, 0, 1};
    const int32_t pos[R_TOK] = {0, 1, 5, 300, 4095, 4099};
    const float eps = 1e-6f;
    struct gpu g;
    REQUIRE(gpu_init(&g));
    seed(3);
    double worst_q = 0, worst_k = 0;
    long f16_off = 0, f16_total = 0;
    for (size_t ci = 0; ci < sizeof cfgs / sizeof cfgs[0]; ci++) {
        for (int ti = 0; ti < 2; ti++) {
            const struct rope_cfg *c = &cfgs[ci];
            const uint32_t type = ti ? KT_F16 : KT_F32;
            const size_t es = ti ? 2 : 4;
            const int dm = g.n_dev, hm = g.n_host;
            const int hd = c->hd;
            const size_t qd = (size_t)c->n_head * hd, kvd = (size_t)c->n_kv * hd;
            const size_t cache_el = (size_t)R_LAYERS * R_CTX * kvd;
            float *q = rnd_vec(&g, R_TOK * qd, -2, 2), *k = rnd_vec(&g, R_TOK * kvd, -2, 2);
            float *v = rnd_vec(&g, R_TOK * kvd, -2, 2);
            size_t nqn = c->qk == KC_QK_FULL ? qd : (size_t)hd;
            size_t nkn = c->qk == KC_QK_FULL ? kvd : (size_t)hd;
            float *qn = rnd_vec(&g, nqn, 0.5f, 1.5f), *kn = rnd_vec(&g, nkn, 0.5f, 1.5f);
            float *gq = halloc(&g, R_TOK * qd * 4);
            unsigned char *gk[2] = {halloc(&g, cache_el * es), halloc(&g, cache_el * es)};
            unsigned char *gv[2] = {halloc(&g, cache_el * es), halloc(&g, cache_el * es)};
            struct kc_tok tok[R_TOK];
            void *dk[2], *dv[2];
            bool ok = q && k && v && qn && kn && gq && gk[0] && gk[1] && gv[0] && gv[1];
            for (int sI = 0; ok && sI < 2; sI++) {
                dk[sI] = dalloc(&g, cache_el * es);
                dv[sI] = dalloc(&g, cache_el * es);
                ok = dk[sI] && dv[sI] && !kc_memset(dk[sI], 0, cache_el * es, g.s, &g.e) &&
                     !kc_memset(dv[sI], 0, cache_el * es, g.s, &g.e);
            }
            float *dq = NULL, *dkk = NULL, *dvv = NULL, *dqn = NULL, *dkn = NULL;
            struct kc_tok *dtok = NULL;
            if (ok) {
                for (int t = 0; t < R_TOK; t++)
                    tok[t] = (struct kc_tok){.pos = pos[t], .n_ctx = R_CTX, .k = dk[seq[t]],
                                             .v = dv[seq[t]]};
                dq = dup_to_dev(&g, q, R_TOK * qd * 4);
                dkk = dup_to_dev(&g, k, R_TOK * kvd * 4);
                dvv = dup_to_dev(&g, v, R_TOK * kvd * 4);
                dqn = dup_to_dev(&g, qn, nqn * 4);
                dkn = dup_to_dev(&g, kn, nkn * 4);
                dtok = dup_to_dev(&g, tok, sizeof tok);
                ok = dq && dkk && dvv && dqn && dkn && dtok;
            }
            if (!ok) {
                CHECK_MSG(0, "buffers: %s", g.e.msg);
                gpu_release(&g, dm, hm);
                continue;
            }
            struct kc_attn_shape sh = {.n_head = c->n_head, .n_head_kv = c->n_kv, .head_dim = hd,
                                       .n_rot = c->n_rot, .rope_base = c->base,
                                       .rope_scale = c->scale, .rope_neox = c->neox,
                                       .qk_norm = c->qk, .eps = eps, .kv_type = type,
                                       .layer = R_LAYER};
            int rc = kc_qk_rope_store(g.s, &sh, dq, dkk, dvv, c->qk ? dqn : NULL,
                                      c->qk ? dkn : NULL, dtok, R_TOK, &g.e);
            CHECK_MSG(rc == 0, "kc_qk_rope_store: %s", g.e.msg);
            ok = rc == 0 && to_host(&g, gq, dq, R_TOK * qd * 4);
            for (int sI = 0; ok && sI < 2; sI++)
                ok = to_host(&g, gk[sI], dk[sI], cache_el * es) &&
                     to_host(&g, gv[sI], dv[sI], cache_el * es);
            CHECK(ok);
            if (!ok) {
                gpu_release(&g, dm, hm);
                continue;
            }
            /* the CPU's q and k per token: TOL_REL relative to each vector's scale */
            for (int t = 0; t < R_TOK; t++) {
                float *rq = q + t * qd, *rk = k + t * kvd; /* in place */
                cpu_qk_rope(c, rq, rk, qn, kn, pos[t], eps);
                double eq = scaled_err(gq + t * qd, rq, qd);
                CHECK_MSG(eq <= TOL_REL, "cfg %zu type %u token %d: q err %g", ci, type, t, eq);
                worst_q = eq > worst_q ? eq : worst_q;
            }
            /* the caches: the tokens' rows hold k (rotated) and v, the rest is untouched */
            for (int sI = 0; sI < 2; sI++) {
                for (int L = 0; L < R_LAYERS; L++) {
                    for (int p = 0; p < R_CTX; p++) {
                        int t = -1;
                        for (int u = 0; u < R_TOK; u++)
                            if (L == R_LAYER && seq[u] == sI && pos[u] == p)
                                t = u;
                        size_t off = ((size_t)L * R_CTX + p) * kvd * es;
                        const unsigned char *ck = gk[sI] + off, *cv = gv[sI] + off;
                        if (t < 0) {
                            bool zero = true;
                            for (size_t b = 0; b < kvd * es; b++)
                                zero &= ck[b] == 0 && cv[b] == 0;
                            CHECK_MSG(zero, "cfg %zu type %u: cache %d layer %d pos %d written",
                                      ci, type, sI, L, p);
                            continue;
                        }
                        const float *rk = k + t * kvd, *rv = v + t * kvd;
                        if (type == KT_F32) {
                            double ek = scaled_err((const float *)ck, rk, kvd);
                            CHECK_MSG(ek <= TOL_REL, "cfg %zu token %d: cached k err %g", ci, t,
                                      ek);
                            worst_k = ek > worst_k ? ek : worst_k;
                            CHECK_MSG(memcmp(cv, rv, kvd * 4) == 0, "cfg %zu token %d: cached v",
                                      ci, t);
                        } else {
                            const kern_f16 *hk = (const kern_f16 *)ck, *hv = (const kern_f16 *)cv;
                            for (size_t i = 0; i < kvd; i++) {
                                /* within one f16 ulp (<= |x| / 1024, or 2^-24 for subnormals) */
                                float want = kern_f16_to_f32(kern_f32_to_f16(rk[i]));
                                float have = kern_f16_to_f32(hk[i]);
                                double d = fabs((double)have - (double)want);
                                f16_total++;
                                if (d > 0)
                                    f16_off++;
                                CHECK_MSG(d <= fabs((double)want) / 1024.0 + 6e-8,
                                          "cfg %zu token %d: cached f16 k[%zu] %g vs %g", ci, t,
                                          i, have, want);
                                CHECK_MSG(hv[i] == kern_f32_to_f16(rv[i]),
                                          "cfg %zu token %d: cached f16 v[%zu]", ci, t, i);
                            }
                        }
                    }
                }
            }
            gpu_release(&g, dm, hm);
        }
    }
    fprintf(stderr,
            "cuda_qk_rope_store: max err q %.3g, f32 cached k %.3g (tol %g, relative to the "
            "vector); f16 cached k off by one ulp: %ld of %ld\n",
            worst_q, worst_k, TOL_REL, f16_off, f16_total);
    gpu_done(&g);
}

/* ---- attention --------------------------------------------------------------------- */

struct attn_cfg {
    int hd, n_head, n_kv;
};

#define A_LAYERS 2
#define A_LAYER 1
#define A_CTX 512

/* One sequence's cache: f32 values on the host (already rounded through
 * f16 for an F16 cache) and the device copy in the cache's type. */
struct kvc {
    float *hk, *hv;
    void *dk, *dv;
};

static bool kvc_make(struct gpu *g, struct kvc *c, size_t n_kv, uint32_t type)
{
    size_t n = (size_t)A_LAYERS * A_CTX * n_kv, es = type == KT_F16 ? 2 : 4;
    c->hk = halloc(g, n * 4);
    c->hv = halloc(g, n * 4);
    void *tk = halloc(g, n * es), *tv = halloc(g, n * es);
    if (!c->hk || !c->hv || !tk || !tv)
        return false;
    for (size_t i = 0; i < n; i++) {
        float a = rndf(), b = rndf();
        if (type == KT_F16) {
            kern_f16 ha = kern_f32_to_f16(a), hb = kern_f32_to_f16(b);
            ((kern_f16 *)tk)[i] = ha;
            ((kern_f16 *)tv)[i] = hb;
            c->hk[i] = kern_f16_to_f32(ha);
            c->hv[i] = kern_f16_to_f32(hb);
        } else {
            ((float *)tk)[i] = a;
            ((float *)tv)[i] = b;
            c->hk[i] = a;
            c->hv[i] = b;
        }
    }
    c->dk = dup_to_dev(g, tk, n * es);
    c->dv = dup_to_dev(g, tv, n * es);
    return c->dk && c->dv;
}

/* Naive attention of one token in double: out[n_head * hd]. */
static void ref_attn(const struct attn_cfg *c, const float *q, const struct kvc *kv, int32_t pos,
                     double *out, double *sc)
{
    const int G = c->n_head / c->n_kv, hd = c->hd;
    const size_t n_kv = (size_t)c->n_kv * hd;
    for (int h = 0; h < c->n_head; h++) {
        const int g = h / G;
        const float *qh = q + (size_t)h * hd;
        double mx = -INFINITY;
        for (int p = 0; p <= pos; p++) {
            const float *kr = kv->hk + ((size_t)A_LAYER * A_CTX + p) * n_kv + (size_t)g * hd;
            double s = 0;
            for (int d = 0; d < hd; d++)
                s += (double)qh[d] * (double)kr[d];
            sc[p] = s / sqrt((double)hd);
            mx = sc[p] > mx ? sc[p] : mx;
        }
        double sum = 0;
        for (int p = 0; p <= pos; p++) {
            sc[p] = exp(sc[p] - mx);
            sum += sc[p];
        }
        for (int d = 0; d < hd; d++) {
            double o = 0;
            for (int p = 0; p <= pos; p++)
                o += sc[p] * (double)kv->hv[((size_t)A_LAYER * A_CTX + p) * n_kv +
                                            (size_t)g * hd + d];
            out[(size_t)h * hd + d] = o / sum;
        }
    }
}

/* Runs kc_attention on the step (seq[t], pos[t]) with queries q and returns
 * the largest absolute error against ref_attn (-1 when it could not run);
 * the output is left in got. */
static double attn_case(struct gpu *g, const struct attn_cfg *c, uint32_t type,
                        const struct kvc *seqs, const int *seq, const int32_t *pos, int n_tok,
                        int n_split, const float *q, float *got)
{
    const int dm = g->n_dev, hm = g->n_host;
    const size_t qd = (size_t)c->n_head * c->hd;
    struct kc_attn_shape sh = {.n_head = c->n_head, .n_head_kv = c->n_kv, .head_dim = c->hd,
                               .n_rot = c->hd, .rope_base = 10000.0f, .rope_scale = 1.0f,
                               .rope_neox = true, .qk_norm = KC_QK_NONE, .eps = 1e-6f,
                               .kv_type = type, .layer = A_LAYER};
    struct kc_tok *tok = halloc(g, sizeof(struct kc_tok) * (size_t)n_tok);
    double *ref = halloc(g, qd * sizeof(double)), *sc = halloc(g, A_CTX * sizeof(double));
    if (!tok || !ref || !sc)
        return -1;
    for (int t = 0; t < n_tok; t++)
        tok[t] = (struct kc_tok){.pos = pos[t], .n_ctx = A_CTX, .k = seqs[seq[t]].dk,
                                 .v = seqs[seq[t]].dv};
    float *dq = dup_to_dev(g, q, (size_t)n_tok * qd * 4);
    struct kc_tok *dtok = dup_to_dev(g, tok, sizeof(struct kc_tok) * (size_t)n_tok);
    float *dout = dalloc(g, (size_t)n_tok * qd * 4);
    void *ws = dalloc(g, kc_attention_ws_size(&sh, n_tok, n_split));
    double err = -1;
    if (dq && dtok && dout && ws) {
        int rc = kc_attention(g->s, &sh, dq, dtok, n_tok, n_split, ws, dout, &g->e);
        CHECK_MSG(rc == 0, "kc_attention: %s", g->e.msg);
        if (rc == 0 && to_host(g, got, dout, (size_t)n_tok * qd * 4)) {
            err = 0;
            for (int t = 0; t < n_tok; t++) {
                ref_attn(c, q + (size_t)t * qd, &seqs[seq[t]], pos[t], ref, sc);
                for (size_t i = 0; i < qd; i++) {
                    double d = fabs((double)got[(size_t)t * qd + i] - ref[i]);
                    if (!(d <= err))
                        err = d;
                }
            }
        }
    }
    gpu_release(g, dm, hm);
    return err;
}

TEST(cuda_attention)
{
    GPU_OR_SKIP();
    static const struct attn_cfg cfgs[] = {
        {128, 32, 4}, /* the reference model: group 8 */
        {32, 4, 2},   /* group 2 */
        {64, 16, 1},  /* group 16 */
        {16, 2, 2},   /* no grouping */
        {256, 8, 2},  /* the widest head */
    };
    struct gpu g;
    REQUIRE(gpu_init(&g));
    seed(4);
    double worst = 0, worst_split = 0;
    for (size_t ci = 0; ci < sizeof cfgs / sizeof cfgs[0]; ci++) {
        for (int ti = 0; ti < 2; ti++) {
            const struct attn_cfg *c = &cfgs[ci];
            const uint32_t type = ti ? KT_F16 : KT_F32;
            const int dm = g.n_dev, hm = g.n_host;
            const size_t qd = (size_t)c->n_head * c->hd;
            struct kvc seqs[2];
            bool ok = kvc_make(&g, &seqs[0], (size_t)c->n_kv * c->hd, type) &&
                      kvc_make(&g, &seqs[1], (size_t)c->n_kv * c->hd, type);
            const int max_tok = 100;
            /* queries spread the scores over several units */
            float *q = ok ? rnd_vec(&g, (size_t)max_tok * qd, -3, 3) : NULL;
            float *o1 = halloc(&g, (size_t)max_tok * qd * 4);
            float *o2 = halloc(&g, (size_t)max_tok * qd * 4);
            int seq[100];
            int32_t pos[100];
            if (!ok || !q || !o1 || !o2) {
                CHECK_MSG(0, "buffers: %s", g.e.msg);
                gpu_release(&g, dm, hm);
                continue;
            }
#define RUN(name, n_tok, n_split, out)                                                         \
    do {                                                                                      \
        double e_ = attn_case(&g, c, type, seqs, seq, pos, (n_tok), (n_split), q, (out));     \
        CHECK_MSG(e_ >= 0 && e_ <= TOL_ATTN, "hd %d heads %d/%d type %u, %s (split %d): err %g", \
                  c->hd, c->n_head, c->n_kv, type, name, (n_split), e_);                      \
        worst = e_ > worst ? e_ : worst;                                                      \
    } while (0)
#define SAME(name, n_tok)                                                                      \
    do {                                                                                      \
        double e_ = scaled_err(o2, o1, (size_t)(n_tok) * qd);                                 \
        CHECK_MSG(e_ <= TOL_REL, "hd %d type %u, %s: splits differ by %g", c->hd, type, name,  \
                  e_);                                                                        \
        worst_split = e_ > worst_split ? e_ : worst_split;                                    \
    } while (0)
            /* decode: one token at 300, one split and eight */
            seq[0] = 0;
            pos[0] = 300;
            RUN("decode", 1, 1, o1);
            RUN("decode", 1, 8, o2);
            SAME("decode", 1);
            /* short decode: position 0 and 31, splits beyond the positions stay empty */
            pos[0] = 0;
            RUN("decode at 0", 1, 4, o1);
            pos[0] = 31;
            RUN("decode at 31", 1, 16, o1);
            /* a decode batch of two sequences, interleaved */
            for (int t = 0; t < 6; t++) {
                seq[t] = t % 2;
                pos[t] = t % 2 ? 200 + t / 2 : 10 + t / 2;
            }
            RUN("batch of two sequences", 6, 1, o1);
            RUN("batch of two sequences", 6, 4, o2);
            SAME("batch of two sequences", 6);
            /* prefill of one sequence at 0..39: the tiled kernel (n_split 1), then split */
            for (int t = 0; t < 40; t++) {
                seq[t] = 0;
                pos[t] = t;
            }
            RUN("prefill 40", 40, 1, o1);
            RUN("prefill 40", 40, 2, o2);
            SAME("prefill 40 tiled vs split", 40);
            /* tiled kernel, two sequences interleaved in every CTA */
            for (int t = 0; t < 40; t++) {
                seq[t] = t % 2;
                pos[t] = t % 2 ? 300 + t / 2 : t / 2;
            }
            RUN("prefill of two sequences", 40, 1, o1);
            RUN("prefill of two sequences", 40, 3, o2);
            SAME("prefill of two sequences tiled vs split", 40);
            /* tiled kernel, a chunk of a longer prompt: 100 tokens at 400..499 */
            for (int t = 0; t < 100; t++) {
                seq[t] = 1;
                pos[t] = 400 + t;
            }
            RUN("prefill 400..499", 100, 1, o1);
#undef RUN
#undef SAME
            gpu_release(&g, dm, hm);
        }
    }
    fprintf(stderr,
            "cuda_attention: max abs err vs double %.3g (tol %g); tiled/split vs split max rel "
            "diff %.3g (tol %g)\n",
            worst, TOL_ATTN, worst_split, TOL_REL);
    gpu_done(&g);
}

/* Split attention over a reused workspace: whatever it held before (zeros,
 * 0xff, another split count's partials), and launch after launch on it,
 * the results are the same (to the bit: the merge order is fixed) and right. */
TEST(cuda_attention_ws_reuse)
{
    GPU_OR_SKIP();
    const struct attn_cfg c = {128, 32, 4};
    const int qd = c.n_head * c.hd;
    struct gpu g;
    REQUIRE(gpu_init(&g));
    seed(9);
    struct kvc kv;
    REQUIRE(kvc_make(&g, &kv, (size_t)c.n_kv * c.hd, KT_F16));
    enum { NT = 3 };
    struct kc_attn_shape sh = {.n_head = c.n_head, .n_head_kv = c.n_kv, .head_dim = c.hd,
                               .n_rot = c.hd, .rope_base = 10000.0f, .rope_scale = 1.0f,
                               .rope_neox = true, .qk_norm = KC_QK_NONE, .eps = 1e-6f,
                               .kv_type = KT_F16, .layer = A_LAYER};
    const int32_t pos[NT] = {100, 511, 64};
    struct kc_tok tok[NT];
    for (int t = 0; t < NT; t++)
        tok[t] = (struct kc_tok){.pos = pos[t], .n_ctx = A_CTX, .k = kv.dk, .v = kv.dv};
    float *q = rnd_vec(&g, (size_t)NT * qd, -3, 3);
    float *o1 = halloc(&g, (size_t)NT * qd * 4), *o2 = halloc(&g, (size_t)NT * qd * 4);
    double *ref = halloc(&g, (size_t)qd * sizeof(double)), *sc = halloc(&g, A_CTX * sizeof(double));
    REQUIRE(q && o1 && o2 && ref && sc);
    size_t wsb = kc_attention_ws_size(&sh, NT, 32);
    float *dq = dup_to_dev(&g, q, (size_t)NT * qd * 4), *dout = dalloc(&g, (size_t)NT * qd * 4);
    struct kc_tok *dtok = dup_to_dev(&g, tok, sizeof tok);
    void *ws = dalloc(&g, wsb);
    REQUIRE(dq && dout && dtok && ws);
    static const int splits[] = {3, 32, 5, 32, 8, 2};
    static const int fill[] = {0x00, 0xff, 0x7f, -1, -1, 0xa5};
    double worst = 0;
    int runs = 0;
    for (size_t si = 0; si < sizeof splits / sizeof splits[0]; si++) {
        if (fill[si] >= 0)
            CHECK(kc_memset(ws, fill[si], wsb, g.s, &g.e) == 0);
        for (int rep = 0; rep < 3; rep++) {
            int rc = kc_attention(g.s, &sh, dq, dtok, NT, splits[si], ws, dout, &g.e);
            CHECK_MSG(rc == 0, "kc_attention: %s", g.e.msg);
            float *got = rep ? o2 : o1;
            if (rc || !to_host(&g, got, dout, (size_t)NT * qd * 4)) {
                CHECK(0);
                continue;
            }
            runs++;
            if (rep)
                CHECK_MSG(memcmp(o1, o2, (size_t)NT * qd * 4) == 0,
                          "splits %d fill %d: launch %d differs from the first", splits[si],
                          fill[si], rep);
            for (int t = 0; t < NT; t++) {
                ref_attn(&c, q + (size_t)t * qd, &kv, pos[t], ref, sc);
                for (int i = 0; i < qd; i++) {
                    double d = fabs((double)got[(size_t)t * qd + i] - ref[i]);
                    if (!(d <= worst))
                        worst = d;
                }
            }
        }
    }
    CHECK_MSG(worst <= TOL_ATTN, "max abs err %g", worst);
    fprintf(stderr, "cuda_attention_ws_reuse: %d launches, max abs err vs double %.3g (tol %g)\n",
            runs, worst, TOL_ATTN);
    gpu_done(&g);
}

/* kc_qk_rope_store then kc_attention on a 40-token prefill, against the
 * CPU's own path (ops_rmsnorm, ops_rope, ops_attn_group). */
TEST(cuda_attention_prefill_e2e)
{
    GPU_OR_SKIP();
    const struct rope_cfg rc_ = {128, 16, 2, 128, KC_QK_HEAD, true, 1e6f, 1.0f};
    const struct rope_cfg *c = &rc_;
    enum { NT = 40, CTX = 64 };
    const float eps = 1e-6f;
    struct gpu g;
    REQUIRE(gpu_init(&g));
    seed(5);
    const int hd = c->hd, G = c->n_head / c->n_kv;
    const size_t qd = (size_t)c->n_head * hd, kvd = (size_t)c->n_kv * hd;
    float *q = rnd_vec(&g, NT * qd, -2, 2), *k = rnd_vec(&g, NT * kvd, -2, 2);
    float *v = rnd_vec(&g, NT * kvd, -1, 1);
    float *qn = rnd_vec(&g, (size_t)hd, 0.5f, 1.5f), *kn = rnd_vec(&g, (size_t)hd, 0.5f, 1.5f);
    float *ref = halloc(&g, NT * qd * 4), *got = halloc(&g, NT * qd * 4);
    float *got2 = halloc(&g, NT * qd * 4);
    float *hk = halloc(&g, CTX * kvd * 4), *hv = halloc(&g, CTX * kvd * 4);
    struct kc_tok tok[NT];
    void *dk = dalloc(&g, CTX * kvd * 4), *dv = dalloc(&g, CTX * kvd * 4);
    REQUIRE(q && k && v && qn && kn && ref && got && got2 && hk && hv && dk && dv);
    for (int t = 0; t < NT; t++)
        tok[t] = (struct kc_tok){.pos = t, .n_ctx = CTX, .k = dk, .v = dv};
    float *dq = dup_to_dev(&g, q, NT * qd * 4), *dkk = dup_to_dev(&g, k, NT * kvd * 4);
    float *dvv = dup_to_dev(&g, v, NT * kvd * 4), *dqn = dup_to_dev(&g, qn, (size_t)hd * 4);
    float *dkn = dup_to_dev(&g, kn, (size_t)hd * 4), *dout = dalloc(&g, NT * qd * 4);
    struct kc_tok *dtok = dup_to_dev(&g, tok, sizeof tok);
    struct kc_attn_shape sh = {.n_head = c->n_head, .n_head_kv = c->n_kv, .head_dim = hd,
                               .n_rot = c->n_rot, .rope_base = c->base, .rope_scale = c->scale,
                               .rope_neox = c->neox, .qk_norm = c->qk, .eps = eps,
                               .kv_type = KT_F32, .layer = 0};
    void *ws = dalloc(&g, kc_attention_ws_size(&sh, NT, 3));
    if (!dq || !dkk || !dvv || !dqn || !dkn || !dout || !dtok || !ws) {
        CHECK_MSG(0, "buffers: %s", g.e.msg);
        gpu_done(&g);
        return;
    }
    int rc = kc_qk_rope_store(g.s, &sh, dq, dkk, dvv, dqn, dkn, dtok, NT, &g.e);
    CHECK_MSG(rc == 0, "kc_qk_rope_store: %s", g.e.msg);
    rc = rc ? rc : kc_attention(g.s, &sh, dq, dtok, NT, 1, ws, dout, &g.e);
    CHECK_MSG(rc == 0, "kc_attention: %s", g.e.msg);
    bool ok = rc == 0 && to_host(&g, got, dout, NT * qd * 4);
    rc = ok ? kc_attention(g.s, &sh, dq, dtok, NT, 3, ws, dout, &g.e) : -1;
    ok = ok && rc == 0 && to_host(&g, got2, dout, NT * qd * 4);
    CHECK(ok);
    /* the CPU: forward.c's loop, then ops_attn_group per (token, KV head) */
    const float scale = 1.0f / sqrtf((float)hd);
    for (int t = 0; t < NT; t++) {
        cpu_qk_rope(c, q + t * qd, k + t * kvd, qn, kn, t, eps);
        memcpy(hk + t * kvd, k + t * kvd, kvd * 4);
        memcpy(hv + t * kvd, v + t * kvd, kvd * 4);
    }
    for (int t = 0; t < NT; t++)
        for (int gI = 0; gI < c->n_kv; gI++) {
            size_t qo = ((size_t)t * c->n_head + (size_t)gI * G) * hd;
            ops_attn_group(ref + qo, q + qo, G, hk + (size_t)gI * hd, hv + (size_t)gI * hd, KT_F32,
                           kvd, t + 1, hd, scale);
        }
    double e1 = 0, e2 = 0;
    if (ok) {
        /* absolute: convex combinations of V in [-1, 1] (TOL_ATTN) */
        for (size_t i = 0; i < NT * qd; i++) {
            double d1 = fabs((double)got[i] - ref[i]), d2 = fabs((double)got2[i] - ref[i]);
            e1 = d1 > e1 || d1 != d1 ? d1 : e1;
            e2 = d2 > e2 || d2 != d2 ? d2 : e2;
        }
        CHECK_MSG(e1 <= TOL_ATTN, "tiled: err %g against the CPU", e1);
        CHECK_MSG(e2 <= TOL_ATTN, "split: err %g against the CPU", e2);
    }
    fprintf(stderr,
            "cuda_attention_prefill_e2e: max abs err vs the CPU path: tiled %.3g, split %.3g "
            "(tol %g)\n",
            e1, e2, TOL_ATTN);
    gpu_done(&g);
}

/* ---- routing ------------------------------------------------------------------------ */

/* forward.c's routing of one token. */
static void cpu_route(const float *logits, int n_expert, int k, bool norm, float *p, int32_t *ids,
                      float *w)
{
    memcpy(p, logits, (size_t)n_expert * sizeof(float));
    ops_softmax(p, n_expert);
    ops_topk(p, n_expert, k, ids, w);
    if (norm) {
        float sum = 0;
        for (int j = 0; j < k; j++)
            sum += w[j];
        for (int j = 0; j < k; j++)
            w[j] /= sum;
    }
}

TEST(cuda_moe_route)
{
    GPU_OR_SKIP();
    static const int cfgs[][2] = {{128, 8}, {60, 4}, {1024, 32}, {8, 8}, {64, 1}};
    const int nt = 37;
    struct gpu g;
    REQUIRE(gpu_init(&g));
    seed(6);
    double worst = 0;
    for (size_t ci = 0; ci < sizeof cfgs / sizeof cfgs[0]; ci++) {
        for (int norm = 0; norm < 2; norm++) {
            const int E = cfgs[ci][0], K = cfgs[ci][1];
            const int dm = g.n_dev, hm = g.n_host;
            float *lg = halloc(&g, (size_t)nt * E * 4), *p = halloc(&g, (size_t)E * 4);
            int32_t *ids = halloc(&g, (size_t)nt * K * 4), *rid = halloc(&g, (size_t)K * 4);
            float *w = halloc(&g, (size_t)nt * K * 4), *rw = halloc(&g, (size_t)K * 4);
            REQUIRE(lg && p && ids && rid && w && rw);
            for (int t = 0; t < nt; t++)
                for (int i = 0; i < E; i++) {
                    float x;
                    if (t % 3 == 0)
                        x = (float)rndu(4) * 0.75f; /* a few levels: many ties */
                    else if (t % 3 == 1)
                        x = t % 2 ? 0.5f : (i % 7 == 3 ? 1.0f : 0.25f); /* all or most equal */
                    else
                        x = rnd_in(-4, 4);
                    lg[(size_t)t * E + i] = x;
                }
            float *dl = dup_to_dev(&g, lg, (size_t)nt * E * 4);
            int32_t *dids = dalloc(&g, (size_t)nt * K * 4);
            float *dw = dalloc(&g, (size_t)nt * K * 4);
            REQUIRE(dl && dids && dw);
            int rc = kc_moe_route(g.s, dl, nt, E, K, norm, dids, dw, &g.e);
            CHECK_MSG(rc == 0, "kc_moe_route: %s", g.e.msg);
            if (rc == 0 && to_host(&g, ids, dids, (size_t)nt * K * 4) &&
                to_host(&g, w, dw, (size_t)nt * K * 4)) {
                for (int t = 0; t < nt; t++) {
                    cpu_route(lg + (size_t)t * E, E, K, norm, p, rid, rw);
                    for (int j = 0; j < K; j++) {
                        CHECK_MSG(ids[t * K + j] == rid[j],
                                  "E %d k %d norm %d token %d slot %d: expert %d, CPU %d", E, K,
                                  norm, t, j, ids[t * K + j], rid[j]);
                        /* weights: relative (TOL_REL) */
                        double d = fabs((double)w[t * K + j] - rw[j]) / fabs((double)rw[j]);
                        CHECK_MSG(d <= TOL_REL, "E %d k %d token %d slot %d: weight %g vs %g", E,
                                  K, t, j, w[t * K + j], rw[j]);
                        worst = d > worst ? d : worst;
                    }
                }
            } else {
                CHECK(0);
            }
            gpu_release(&g, dm, hm);
        }
    }
    fprintf(stderr, "cuda_moe_route: ids equal; max rel weight err %.3g (tol %g)\n", worst,
            TOL_REL);
    gpu_done(&g);
}

/* ---- grouping ----------------------------------------------------------------------- */

/* Checks every promise of struct kc_moe_groups; returns the violations. */
static int check_groups(const int32_t *ids, int n_tok, int k, int E, int tile,
                        const int32_t *pair_tok, const int32_t *pair_of, const int32_t *tiles,
                        int32_t n_tiles, int32_t max_tiles)
{
    const int P = n_tok * k;
    int bad = 0;
    int32_t *inv = malloc(sizeof(int32_t) * (size_t)(P ? P : 1));
    int32_t *cnt = calloc((size_t)E, sizeof(int32_t));
    if (!inv || !cnt) {
        free(inv);
        free(cnt);
        return 1;
    }
    for (int i = 0; i < P; i++)
        inv[i] = -1;
    for (int qI = 0; qI < P; qI++) { /* pair_of: a permutation */
        int i = pair_of[qI];
        if (i < 0 || i >= P || inv[i] != -1) {
            if (bad++ < 5)
                CHECK_MSG(0, "pair_of[%d] = %d: out of range or repeated", qI, i);
            continue;
        }
        inv[i] = qI;
        cnt[ids[qI]]++;
    }
    for (int i = 0; i < P && !bad; i++) {
        if (pair_tok[i] != inv[i] / k && bad++ < 5)
            CHECK_MSG(0, "pair_tok[%d] = %d, want %d", i, pair_tok[i], inv[i] / k);
        if (i > 0) { /* by expert, then token, then slot (= pair index q) */
            int e0 = ids[inv[i - 1]], e1 = ids[inv[i]];
            if (!(e0 < e1 || (e0 == e1 && inv[i - 1] < inv[i])) && bad++ < 5)
                CHECK_MSG(0, "pairs %d, %d out of order (experts %d, %d; q %d, %d)", i - 1, i, e0,
                          e1, inv[i - 1], inv[i]);
        }
    }
    int32_t want_tiles = 0;
    for (int e = 0; e < E; e++)
        want_tiles += (cnt[e] + tile - 1) / tile;
    if (n_tiles != want_tiles || n_tiles > max_tiles) {
        bad++;
        CHECK_MSG(0, "%d tiles, want %d (max %d)", n_tiles, want_tiles, max_tiles);
    }
    int next = 0, prev_e = -1;
    for (int ti = 0; ti < n_tiles && ti < max_tiles && !bad; ti++) {
        int e = tiles[3 * ti], f = tiles[3 * ti + 1], c = tiles[3 * ti + 2];
        if (e < prev_e || e >= E || f != next || c < 1 || c > tile || f + c > P) {
            bad++;
            CHECK_MSG(0, "tile %d: expert %d first %d count %d (expected first %d, tile %d)", ti,
                      e, f, c, next, tile);
            break;
        }
        for (int i = f; i < f + c; i++)
            if (ids[inv[i]] != e && bad++ < 5)
                CHECK_MSG(0, "tile %d (expert %d) holds pair %d of expert %d", ti, e, i,
                          ids[inv[i]]);
        next += c;
        prev_e = e;
    }
    if (!bad && next != P) {
        bad++;
        CHECK_MSG(0, "tiles cover %d of %d pairs", next, P);
    }
    free(inv);
    free(cnt);
    return bad;
}

TEST(cuda_moe_group)
{
    GPU_OR_SKIP();
    static const int toks[] = {1, 7, 600, 8192};
    static const int tiles_[] = {8, 64};
    static const int experts[] = {128, 60};
    const int K = 8;
    struct gpu g;
    REQUIRE(gpu_init(&g));
    seed(7);
    int cases = 0, failures = 0;
    for (int ni = 0; ni < 4; ni++)
        for (int ti = 0; ti < 2; ti++)
            for (int ei = 0; ei < 2; ei++) {
                const int n_tok = toks[ni], tile = tiles_[ti], E = experts[ei];
                const int P = n_tok * K;
                const int dm = g.n_dev, hm = g.n_host;
                const int32_t max_tiles = kc_moe_max_tiles(n_tok, K, E, tile);
                int32_t *ids = halloc(&g, (size_t)P * 4);
                int32_t *ptok = halloc(&g, (size_t)P * 4), *pof = halloc(&g, (size_t)P * 4);
                int32_t *tl = halloc(&g, (size_t)max_tiles * 12);
                REQUIRE(ids && ptok && pof && tl);
                for (int t = 0; t < n_tok; t++) {
                    if (t % 2) { /* distinct experts, as routing gives */
                        for (int j = 0; j < K; j++) {
                            int e, dupI;
                            do {
                                e = (int)rndu((uint32_t)E);
                                dupI = 0;
                                for (int i = 0; i < j; i++)
                                    dupI |= ids[t * K + i] == e;
                            } while (dupI);
                            ids[t * K + j] = e;
                        }
                    } else { /* skewed, repeats allowed: long runs of a few experts */
                        for (int j = 0; j < K; j++)
                            ids[t * K + j] = (int)rndu(5) * 3;
                    }
                }
                size_t gsz = kc_moe_groups_size(n_tok, K, E, tile);
                void *ws = dalloc(&g, gsz);
                int32_t *dids = dup_to_dev(&g, ids, (size_t)P * 4);
                REQUIRE(ws && dids);
                struct kc_moe_groups grp;
                kc_moe_groups_at(&grp, ws, n_tok, K, E, tile);
                int32_t nt_ = -1;
                int rc = kc_moe_group(g.s, dids, n_tok, K, E, tile, &grp, &g.e);
                CHECK_MSG(rc == 0, "kc_moe_group: %s", g.e.msg);
                bool ok = rc == 0 && to_host(&g, ptok, grp.pair_tok, (size_t)P * 4) &&
                          to_host(&g, pof, grp.pair_of, (size_t)P * 4) &&
                          to_host(&g, &nt_, grp.n_tiles, 4);
                ok = ok && nt_ >= 0 && nt_ <= max_tiles &&
                     to_host(&g, tl, grp.tiles, (size_t)(nt_ ? nt_ : 1) * 12);
                CHECK_MSG(ok, "n_tok %d tile %d E %d: n_tiles %d", n_tok, tile, E, nt_);
                cases++;
                if (ok) {
                    int b = check_groups(ids, n_tok, K, E, tile, ptok, pof, tl, nt_, max_tiles);
                    CHECK_MSG(b == 0, "n_tok %d tile %d E %d: %d violations", n_tok, tile, E, b);
                    failures += b != 0;
                } else {
                    failures++;
                }
                gpu_release(&g, dm, hm);
            }
    fprintf(stderr, "cuda_moe_group: %d cases, %d with violations (exact invariants)\n", cases,
            failures);
    gpu_done(&g);
}

/* kc_moe_route_group against kc_moe_route then kc_moe_group: the same bits. */
TEST(cuda_moe_route_group)
{
    GPU_OR_SKIP();
    static const int toks[] = {1, 4, 64, 600, 0};
    static const int tiles_[] = {8, 64};
    static const int cfgs[][2] = {{128, 8}, {60, 4}, {1024, 32}};
    struct gpu g;
    REQUIRE(gpu_init(&g));
    seed(10);
    int cases = 0;
    for (size_t ci = 0; ci < sizeof cfgs / sizeof cfgs[0]; ci++)
        for (int ni = 0; ni < 5; ni++)
            for (int ti = 0; ti < 2; ti++) {
                const int E = cfgs[ci][0], K = cfgs[ci][1], n_tok = toks[ni], tile = tiles_[ti];
                const bool norm = (ni + ti) % 2 == 0;
                const int P = n_tok * K, nt1 = n_tok ? n_tok : 1;
                const int dm = g.n_dev, hm = g.n_host;
                const int32_t max_tiles = kc_moe_max_tiles(n_tok, K, E, tile);
                float *lg = halloc(&g, (size_t)nt1 * E * 4);
                REQUIRE(lg);
                for (int i = 0; i < n_tok * E; i++) /* some ties */
                    lg[i] = i % 5 == 0 ? (float)rndu(3) : rnd_in(-4, 4);
                float *dl = dup_to_dev(&g, lg, (size_t)nt1 * E * 4);
                size_t gsz = kc_moe_groups_size(nt1, K, E, tile);
                void *ws[2] = {dalloc(&g, gsz), dalloc(&g, gsz)};
                int32_t *dids[2] = {dalloc(&g, (size_t)nt1 * K * 4), dalloc(&g, (size_t)nt1 * K * 4)};
                float *dw[2] = {dalloc(&g, (size_t)nt1 * K * 4), dalloc(&g, (size_t)nt1 * K * 4)};
                REQUIRE(dl && ws[0] && ws[1] && dids[0] && dids[1] && dw[0] && dw[1]);
                struct kc_moe_groups grp[2];
                int32_t *h[2][5];
                int32_t ntl[2] = {-1, -2};
                bool ok = true;
                for (int v = 0; v < 2; v++) {
                    kc_moe_groups_at(&grp[v], ws[v], nt1, K, E, tile);
                    CHECK(kc_memset(ws[v], v ? 0x55 : 0xaa, gsz, g.s, &g.e) == 0);
                    int rc = v ? kc_moe_route_group(g.s, dl, n_tok, E, K, norm, dids[v], dw[v], tile,
                                                    &grp[v], &g.e)
                               : kc_moe_route(g.s, dl, n_tok, E, K, norm, dids[v], dw[v], &g.e);
                    if (!v && !rc)
                        rc = kc_moe_group(g.s, dids[v], n_tok, K, E, tile, &grp[v], &g.e);
                    CHECK_MSG(rc == 0, "route%s: %s", v ? "_group" : " + group", g.e.msg);
                    for (int j = 0; j < 5; j++)
                        h[v][j] = halloc(&g, (size_t)(P > max_tiles * 3 ? P : max_tiles * 3) * 4 + 4);
                    ok = ok && rc == 0 && h[v][4] &&
                         to_host(&g, h[v][0], dids[v], (size_t)P * 4) &&
                         to_host(&g, h[v][1], dw[v], (size_t)P * 4) &&
                         to_host(&g, h[v][2], grp[v].pair_tok, (size_t)P * 4) &&
                         to_host(&g, h[v][3], grp[v].pair_of, (size_t)P * 4) &&
                         to_host(&g, &ntl[v], grp[v].n_tiles, 4) && ntl[v] >= 0 &&
                         ntl[v] <= max_tiles &&
                         to_host(&g, h[v][4], grp[v].tiles, (size_t)ntl[v] * 12);
                }
                CHECK_MSG(ok, "E %d k %d n_tok %d tile %d: runs", E, K, n_tok, tile);
                if (ok) {
                    CHECK_MSG(ntl[0] == ntl[1], "E %d k %d n_tok %d tile %d: %d tiles vs %d", E, K,
                              n_tok, tile, ntl[1], ntl[0]);
                    static const char *what[] = {"ids", "wts", "pair_tok", "pair_of", "tiles"};
                    for (int j = 0; j < 5 && ntl[0] == ntl[1]; j++) {
                        size_t nb = (size_t)(j == 4 ? ntl[0] * 3 : P) * 4;
                        CHECK_MSG(memcmp(h[0][j], h[1][j], nb) == 0,
                                  "E %d k %d n_tok %d tile %d: %s differ", E, K, n_tok, tile,
                                  what[j]);
                    }
                }
                cases++;
                gpu_release(&g, dm, hm);
            }
    fprintf(stderr, "cuda_moe_route_group: %d cases, bitwise equal to route + group\n", cases);
    gpu_done(&g);
}

/* ---- combine ------------------------------------------------------------------------ */

TEST(cuda_moe_combine)
{
    GPU_OR_SKIP();
    const int nt = 9, K = 8, D = 300, P = nt * K;
    struct gpu g;
    REQUIRE(gpu_init(&g));
    seed(8);
    double worst = 0;
    for (int shared = 0; shared < 2; shared++) {
        const int dm = g.n_dev, hm = g.n_host;
        float *x = rnd_vec(&g, (size_t)nt * D, -1, 1), *y = rnd_vec(&g, (size_t)P * D, -1, 1);
        float *w = rnd_vec(&g, (size_t)P, 0, 1), *shl = rnd_vec(&g, (size_t)nt, -3, 3);
        float *shy = rnd_vec(&g, (size_t)nt * D, -1, 1);
        float *ref = halloc(&g, (size_t)nt * D * 4), *got = halloc(&g, (size_t)nt * D * 4);
        int32_t *pof = halloc(&g, (size_t)P * 4);
        REQUIRE(x && y && w && shl && shy && ref && got && pof);
        for (int i = 0; i < P; i++) /* a random permutation */
            pof[i] = i;
        for (int i = P - 1; i > 0; i--) {
            int j = (int)rndu((uint32_t)i + 1), tmp = pof[i];
            pof[i] = pof[j];
            pof[j] = tmp;
        }
        float *dx = dup_to_dev(&g, x, (size_t)nt * D * 4), *dy = dup_to_dev(&g, y, (size_t)P * D * 4);
        float *dw = dup_to_dev(&g, w, (size_t)P * 4), *dshl = dup_to_dev(&g, shl, (size_t)nt * 4);
        float *dshy = dup_to_dev(&g, shy, (size_t)nt * D * 4);
        int32_t *dpof = dup_to_dev(&g, pof, (size_t)P * 4);
        REQUIRE(dx && dy && dw && dshl && dshy && dpof);
        int rc = kc_moe_combine(g.s, dx, dy, dpof, dw, nt, K, D, shared ? dshl : NULL,
                                shared ? dshy : NULL, &g.e);
        CHECK_MSG(rc == 0, "kc_moe_combine: %s", g.e.msg);
        CHECK(rc == 0 && to_host(&g, got, dx, (size_t)nt * D * 4));
        /* the CPU: moe_cpu.c's combine (from 0, slot order), forward.c's shared term, x += y */
        for (int t = 0; t < nt; t++) {
            float gate = shared ? 1.0f / (1.0f + expf(-shl[t])) : 0.0f;
            for (int i = 0; i < D; i++) {
                float o = 0;
                for (int j = 0; j < K; j++)
                    o += w[t * K + j] * y[(size_t)pof[t * K + j] * D + i];
                if (shared)
                    o += gate * shy[(size_t)t * D + i];
                ref[(size_t)t * D + i] = x[(size_t)t * D + i] + o;
            }
        }
        /* relative to the output's scale (x + y may cancel elementwise): TOL_REL */
        double err = scaled_err(got, ref, (size_t)nt * D);
        CHECK_MSG(err <= TOL_REL, "combine (shared %d): err %g", shared, err);
        worst = err > worst ? err : worst;
        gpu_release(&g, dm, hm);
    }
    fprintf(stderr, "cuda_moe_combine: max err %.3g relative to the output scale (tol %g)\n",
            worst, TOL_REL);
    gpu_done(&g);
}

/* ---- refused arguments ---------------------------------------------------------------- */

TEST(cuda_ops_errors)
{
    GPU_OR_SKIP();
    struct moed_err e = {0};
    struct kc_attn_shape sh = {.n_head = 8, .n_head_kv = 2, .head_dim = 128, .n_rot = 128,
                               .rope_base = 10000.0f, .rope_scale = 1.0f, .rope_neox = true,
                               .qk_norm = KC_QK_NONE, .eps = 1e-6f, .kv_type = KT_Q8_0,
                               .layer = 0};
    float dummy = 0;
    struct kc_tok tok = {0};
    CHECK_EQ(kc_attention(NULL, &sh, &dummy, &tok, 1, 1, NULL, &dummy, &e), MOED_EUNSUPPORTED);
    sh.kv_type = KT_F16;
    sh.head_dim = 264;
    CHECK_EQ(kc_attention(NULL, &sh, &dummy, &tok, 1, 1, NULL, &dummy, &e), MOED_EUNSUPPORTED);
    sh.head_dim = 12;
    CHECK_EQ(kc_attention(NULL, &sh, &dummy, &tok, 1, 1, NULL, &dummy, &e), MOED_EUNSUPPORTED);
    sh.head_dim = 128;
    sh.n_head = 64;
    sh.n_head_kv = 2; /* group of 32 */
    CHECK_EQ(kc_attention(NULL, &sh, &dummy, &tok, 1, 1, NULL, &dummy, &e), MOED_EUNSUPPORTED);
    sh.n_head = 8;
    CHECK_EQ(kc_attention(NULL, &sh, &dummy, &tok, 1, 4, NULL, &dummy, &e), MOED_EINVAL);
    sh.n_rot = 127;
    CHECK_EQ(kc_qk_rope_store(NULL, &sh, &dummy, &dummy, &dummy, NULL, NULL, &tok, 1, &e),
             MOED_EINVAL);
    sh.n_rot = 128;
    sh.qk_norm = KC_QK_HEAD; /* without weights */
    CHECK_EQ(kc_qk_rope_store(NULL, &sh, &dummy, &dummy, &dummy, NULL, NULL, &tok, 1, &e),
             MOED_EINVAL);
    int32_t id = 0;
    CHECK_EQ(kc_moe_route(NULL, &dummy, 1, 2000, 8, true, &id, &dummy, &e), MOED_EUNSUPPORTED);
    CHECK_EQ(kc_moe_route(NULL, &dummy, 1, 128, 40, true, &id, &dummy, &e), MOED_EUNSUPPORTED);
    struct kc_moe_groups grp = {0};
    CHECK_EQ(kc_moe_group(NULL, &id, 1, 8, 1025, 8, &grp, &e), MOED_EUNSUPPORTED);
    CHECK_EQ(kc_moe_route_group(NULL, &dummy, 1, 2000, 8, true, &id, &dummy, 8, &grp, &e),
             MOED_EUNSUPPORTED);
    CHECK_EQ(kc_moe_route_group(NULL, &dummy, 1, 128, 40, true, &id, &dummy, 8, &grp, &e),
             MOED_EUNSUPPORTED);
    CHECK_EQ(kc_moe_combine(NULL, &dummy, &dummy, &id, &dummy, 1, 33, 16, NULL, NULL, &e),
             MOED_EUNSUPPORTED);
    fprintf(stderr, "cuda_ops_errors: refusals as expected\n");
}
