/*
 * Causal GQA attention over a KV cache, one query row group at a time.
 *
 * A work item is (token, KV head): the n_q query heads that share one KV
 * head, for one token whose position is n_pos - 1, attend over the cached
 * positions 0..n_pos-1:
 *
 *     out_i = sum_p softmax_p(scale * q_i . k_p) v_p        i < n_q
 *
 * k_p = k + p * kv_stride elements (v likewise), head_dim values each, of
 * type KT_F32 or KT_F16.  One pass over the keys and values with the online
 * softmax (Milakov & Gimelshein 2018, "Online normalizer calculation for
 * softmax"), in tiles of KERN_ATTN_TILE positions: each K and V row is
 * read (and, for F16, converted) once for the whole group, the n_q scores
 * of a tile are computed, each head's running maximum and sum are updated
 * once per tile (one rescale of its output row), then the tile's V rows
 * are accumulated.  No score buffer beyond the tile, nothing allocated, no
 * thread created: the caller splits the items over its threads.
 *
 * Every level (scalar reference, AVX2+FMA+F16C, AVX-512) runs the same
 * tile loop (attn_impl.h) with the same scalar expf; they differ only in
 * the order of the sums inside the dot products and the V accumulation,
 * so results agree to a few ulp of the scores (tests/unit/test_attn.c).
 */
#ifndef MOED_KERNELS_ATTN_H
#define MOED_KERNELS_ATTN_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/cpu/isa.h"

#define KERN_ATTN_MAX_HD 1024 /* head_dim limit */
#define KERN_ATTN_MAX_Q 16    /* query heads per call (larger groups: split by the caller) */
#define KERN_ATTN_TILE 32     /* positions per softmax update */

struct kern_attn_group {
    float *out;         /* n_q rows of head_dim, out_stride floats apart */
    const float *q;     /* n_q rows of head_dim, q_stride floats apart */
    const void *k, *v;  /* position 0 of this KV head */
    size_t q_stride, out_stride;
    size_t kv_stride;   /* elements (of kv_type) between positions */
    uint32_t kv_type;   /* KT_F32 or KT_F16 */
    int32_t n_pos;      /* positions 0..n_pos-1 (>= 0; 0 gives zeros) */
    int n_q;            /* 1..KERN_ATTN_MAX_Q */
    int head_dim;       /* 1..KERN_ATTN_MAX_HD */
    float scale;
};

typedef void (*kern_attn_fn)(const struct kern_attn_group *g);

/* Scalar reference. */
void kern_attn_group_ref(const struct kern_attn_group *g);
/* Kernel at level isa (clamped to kern_isa_best(), falling back to lower levels). */
kern_attn_fn kern_attn_get(enum kern_isa isa);
/* The level whose kernel kern_attn_get(isa) returns. */
enum kern_isa kern_attn_level(enum kern_isa isa);
/* One item at the active level (n_q > KERN_ATTN_MAX_Q is run in chunks). */
void kern_attn_run(const struct kern_attn_group *g);

/* The levels' entry points (attn_avx2.c, attn_avx512.c). */
void kern_attn_group_avx2(const struct kern_attn_group *g);
void kern_attn_group_avx512(const struct kern_attn_group *g);

#endif
