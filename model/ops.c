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

void ops_attn_group(float *out, const float *q, int n_q, const void *k, const void *v,
                    uint32_t kv_type, size_t stride, int32_t n_pos, int head_dim, float scale)
{
    assert(head_dim <= ATTN_MAX_HD);
    struct kern_attn_group g = {.out = out,
                                .q = q,
                                .k = k,
                                .v = v,
                                .q_stride = (size_t)head_dim,
                                .out_stride = (size_t)head_dim,
                                .kv_stride = stride,
                                .kv_type = kv_type,
                                .n_pos = n_pos,
                                .n_q = n_q,
                                .head_dim = head_dim,
                                .scale = scale};
    kern_attn_run(&g);
}

void ops_attn_head(float *out, const float *q, const void *k, const void *v, uint32_t kv_type,
                   size_t stride, int32_t n_pos, int head_dim, float scale)
{
    ops_attn_group(out, q, 1, k, v, kv_type, stride, n_pos, head_dim, scale);
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
