/* Forward-pass operations (ops.h). */
#include "model/ops.h"

#include <assert.h>
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#include "kernels/cpu/quant.h"

void ops_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps)
{
    double ss = 0;
    for (int64_t i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    float r = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
    for (int64_t i = 0; i < n; i++)
        out[i] = x[i] * r * w[i];
}

void ops_rope(float *x, int n_head, int head_dim, int n_rot, int32_t pos, float base, float scale,
              bool neox)
{
    int half = n_rot / 2;
    float p = (float)pos / scale;
    for (int i = 0; i < half; i++) {
        /* transformers: inv_freq = 1 / base^(2i / dim) in float32, angle = pos * inv_freq */
        float inv_freq = 1.0f / powf(base, (float)(2 * i) / (float)n_rot);
        float a = p * inv_freq;
        float c = cosf(a), s = sinf(a);
        for (int h = 0; h < n_head; h++) {
            float *xh = x + (size_t)h * head_dim;
            int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
            float x0 = xh[i0], x1 = xh[i1];
            xh[i0] = x0 * c - x1 * s;
            xh[i1] = x1 * c + x0 * s;
        }
    }
}

void ops_softmax(float *x, int64_t n)
{
    float mx = -INFINITY;
    for (int64_t i = 0; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    float inv = (float)(1.0 / sum);
    for (int64_t i = 0; i < n; i++)
        x[i] *= inv;
}

void ops_swiglu(float *h, const float *g, const float *u, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        h[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void ops_topk(const float *x, int n, int k, int32_t *idx, float *val)
{
    assert(k >= 1 && k <= n);
    /* insertion into a sorted list of the best k so far: O(n) when most
     * values lose to the k-th; strict > keeps the lower index on ties, and
     * NaN ranks below everything */
    int have = 0;
    for (int i = 0; i < n; i++) {
        float v = isnan(x[i]) ? -INFINITY : x[i];
        if (have == k && !(v > val[k - 1]))
            continue;
        int j = have < k ? have++ : k - 1;
        for (; j > 0 && v > val[j - 1]; j--) {
            val[j] = val[j - 1];
            idx[j] = idx[j - 1];
        }
        val[j] = v;
        idx[j] = i;
    }
}

/* f16 -> f32: normal numbers inline (rebias the exponent 15 -> 127, shift
 * the mantissa), zeros, subnormals, inf and NaN through kern_f16_to_f32. */
static inline float f16_to_f32(kern_f16 h)
{
    uint32_t e = (h >> 10) & 0x1fu;
    if (e == 0 || e == 0x1f)
        return kern_f16_to_f32(h);
    uint32_t u = ((uint32_t)(h & 0x8000u) << 16) | ((((uint32_t)h & 0x7fffu) << 13) + (112u << 23));
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/*
 * Four floats at a time with GCC's generic vectors (one SSE register on the
 * baseline ISA): the attention loops below would otherwise stay scalar at
 * -O2.  Loads and stores through memcpy: no alignment assumed.
 */
typedef float f32x4 __attribute__((vector_size(16)));

static inline f32x4 load4(const float *p)
{
    f32x4 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void store4(float *p, f32x4 v)
{
    memcpy(p, &v, sizeof v);
}

/* sum a[i] b[i]: eight lanes in two registers, added pairwise, then the tail. */
static inline float dot_f32(const float *a, const float *b, int n)
{
    f32x4 s0 = {0}, s1 = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        s0 += load4(a + i) * load4(b + i);
        s1 += load4(a + i + 4) * load4(b + i + 4);
    }
    f32x4 s4 = s0 + s1;
    float s = (s4[0] + s4[2]) + (s4[1] + s4[3]);
    for (; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* y = a y + b x. */
static inline void axpby_f32(float *y, float a, float b, const float *x, int n)
{
    int i = 0;
    for (; i + 4 <= n; i += 4)
        store4(y + i, a * load4(y + i) + b * load4(x + i));
    for (; i < n; i++)
        y[i] = a * y[i] + b * x[i];
}

/* One cached row (head_dim values of type kv_type) as f32: the row itself,
 * or its conversion in buf (head_dim <= ATTN_MAX_HD). */
static const float *kv_row(const void *base, uint32_t type, size_t off, int head_dim, float *buf)
{
    if (type != KT_F16)
        return (const float *)base + off;
    const kern_f16 *h = (const kern_f16 *)base + off;
    for (int d = 0; d < head_dim; d++)
        buf[d] = f16_to_f32(h[d]);
    return buf;
}

void ops_attn_head(float *out, const float *q, const void *k, const void *v, uint32_t kv_type,
                   size_t stride, int32_t n_pos, int head_dim, float scale)
{
    assert(head_dim <= ATTN_MAX_HD);
    float kbuf[ATTN_MAX_HD], vbuf[ATTN_MAX_HD];
    /* Running max m, running sum l = sum exp(s_p - m), out = sum exp(s_p - m) v_p;
     * a new maximum rescales both by exp(m_old - m_new). */
    float m = -INFINITY, l = 0;
    for (int d = 0; d < head_dim; d++)
        out[d] = 0;
    for (int32_t p = 0; p < n_pos; p++) {
        size_t off = (size_t)p * stride;
        float s = scale * dot_f32(q, kv_row(k, kv_type, off, head_dim, kbuf), head_dim);
        float r = 1.0f; /* exp(m_old - m_new): 0 at the first position (m = -inf) */
        if (s > m) {
            r = expf(m - s);
            l *= r;
            m = s;
        }
        float e = expf(s - m);
        l += e;
        axpby_f32(out, r, e, kv_row(v, kv_type, off, head_dim, vbuf), head_dim);
    }
    float inv = l > 0 ? 1.0f / l : 0.0f;
    for (int d = 0; d < head_dim; d++)
        out[d] *= inv;
}

void ops_par(struct sched_pool *pool, sched_pool_fn fn, void *arg)
{
    if (pool)
        sched_pool_run(pool, fn, arg);
    else
        fn(arg, 0, 1);
}

struct matmuls_job {
    const struct kern_matmul *mm;
    int n;
    _Atomic int rc;
};

static void matmuls_fn(void *arg, int ith, int nth)
{
    struct matmuls_job *j = arg;
    for (int i = 0; i < j->n; i++) {
        int rc = kern_matmul(&j->mm[i], ith, nth);
        if (rc) {
            int zero = 0;
            atomic_compare_exchange_strong(&j->rc, &zero, rc);
        }
    }
}

int ops_matmuls(struct sched_pool *pool, const struct kern_matmul *mm, int n)
{
    struct matmuls_job j = {.mm = mm, .n = n};
    atomic_init(&j.rc, 0);
    ops_par(pool, matmuls_fn, &j);
    return atomic_load(&j.rc);
}

struct quant_job {
    kern_quant_row_fn q;
    const float *x;
    size_t xs, ys;
    void *y;
    int64_t n, rows;
};

static void quant_fn(void *arg, int ith, int nth)
{
    struct quant_job *j = arg;
    int64_t r0 = j->rows * ith / nth, r1 = j->rows * (ith + 1) / nth;
    for (int64_t r = r0; r < r1; r++)
        j->q((const float *)((const char *)j->x + (size_t)r * j->xs),
             (char *)j->y + (size_t)r * j->ys, j->n);
}

void ops_quant_rows(struct sched_pool *pool, uint32_t atype, const float *x, size_t x_stride,
                    void *y, size_t y_stride, int64_t n, int64_t rows)
{
    struct quant_job j = {
        kern_quant_act_get(atype, kern_isa_active()), x, x_stride, y_stride, y, n, rows};
    assert(j.q);
    if (rows < 4 || !pool) /* not worth waking the workers */
        quant_fn(&j, 0, 1);
    else
        ops_par(pool, quant_fn, &j);
}
