/*
 * The small operations of the forward pass that have no kernel in
 * kernels/cpu yet: RMSNorm, RoPE, softmax, SwiGLU, top-k; attention over a
 * KV cache (a thin wrapper of kernels/cpu/attn.h), and helpers that run the big matrix products
 * (kernels/cpu/dot.h) on the thread pool.  Plain C, written to be checked
 * against the formulas; the matmuls stay on kern_matmul.
 */
#ifndef MOED_MODEL_OPS_H
#define MOED_MODEL_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/attn.h"
#include "kernels/cpu/dot.h"
#include "sched/pool.h"

/* out = x / sqrt(mean(x^2) + eps) * w  over n elements (out may be x). */
void ops_rmsnorm(float *out, const float *x, const float *w, int64_t n, float eps);

/*
 * Rotary position embedding of n_head heads of head_dim values at x (in
 * place), rotating the first n_rot dims of each head by the angles
 * pos / scale * base^(-2i / n_rot), i < n_rot / 2 (computed in float as
 * transformers does).  neox: pairs (i, i + n_rot/2); otherwise adjacent
 * pairs (2i, 2i + 1).
 */
void ops_rope(float *x, int n_head, int head_dim, int n_rot, int32_t pos, float base, float scale,
              bool neox);

/* x = exp(x - max) / sum, in place. */
void ops_softmax(float *x, int64_t n);

/* h = silu(g) * u = g / (1 + exp(-g)) * u, elementwise (h may be g or u). */
void ops_swiglu(float *h, const float *g, const float *u, int64_t n);

/* The k largest of x[0..n) in descending order (ties: lower index first). */
void ops_topk(const float *x, int n, int k, int32_t *idx, float *val);

/*
 * Attention of one query head over n_pos cached positions:
 *     out = sum_p softmax_p(scale * q . k_p) v_p
 * k_p = k + p * stride elements (same for v), head_dim <= ATTN_MAX_HD values
 * each, of type kv_type (KT_F32 or KT_F16).  ops_attn_group with n_q = 1.
 */
#define ATTN_MAX_HD KERN_ATTN_MAX_HD
void ops_attn_head(float *out, const float *q, const void *k, const void *v, uint32_t kv_type,
                   size_t stride, int32_t n_pos, int head_dim, float scale);

/*
 * Attention of the n_q query heads that share one KV head (GQA), query i at
 * q + i * head_dim, its output at out + i * head_dim, over the same
 * positions: one pass over the keys and values with the online softmax
 * (kern_attn_run, kernels/cpu/attn.h, at the active ISA level), each K and
 * V row read once for the whole group.
 */
void ops_attn_group(float *out, const float *q, int n_q, const void *k, const void *v,
                    uint32_t kv_type, size_t stride, int32_t n_pos, int head_dim, float scale);

/* fn(arg, ith, nth) on every thread of pool, or fn(arg, 0, 1) when pool is NULL. */
void ops_par(struct sched_pool *pool, sched_pool_fn fn, void *arg);

/*
 * n matrix products in one pool run: every thread computes its slice of
 * rows of each (kern_matmul's (ith, nth) split).  Returns the first
 * kern_matmul error (0 normally: the callers check shapes beforehand).
 */
int ops_matmuls(struct sched_pool *pool, const struct kern_matmul *mm, int n);

/* Quantize rows f32 rows of n elements (x_stride bytes apart) to atype rows
 * (y_stride bytes apart), threads taking contiguous row ranges. */
void ops_quant_rows(struct sched_pool *pool, uint32_t atype, const float *x, size_t x_stride,
                    void *y, size_t y_stride, int64_t n, int64_t rows);

#endif
