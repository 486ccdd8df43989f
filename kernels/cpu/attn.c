/*
 * Attention of one query row group (attn.h): the scalar reference and the
 * dispatch.  The reference is attn_impl.h's tile loop with plain loops:
 * sums in index order, no fused multiply-add (C11 mode: no contraction).
 */
#include "kernels/cpu/attn.h"

#include <assert.h>
#include <string.h>

#include "kernels/cpu/quant.h"

static inline const float *attn_row(const void *base, uint32_t type, size_t off, int hd,
                                    float *buf)
{
    if (type != KT_F16)
        return (const float *)base + off;
    const kern_f16 *h = (const kern_f16 *)base + off;
    for (int d = 0; d < hd; d++) {
        /* normal numbers inline (rebias the exponent 15 -> 127); zeros,
         * subnormals, inf and NaN through kern_f16_to_f32 */
        uint32_t e = (h[d] >> 10) & 0x1fu;
        if (e == 0 || e == 0x1f) {
            buf[d] = kern_f16_to_f32(h[d]);
            continue;
        }
        uint32_t u = ((uint32_t)(h[d] & 0x8000u) << 16) |
                     ((((uint32_t)h[d] & 0x7fffu) << 13) + (112u << 23));
        memcpy(&buf[d], &u, sizeof u);
    }
    return buf;
}

static inline float attn_dot(const float *a, const float *b, int n)
{
    float s = 0;
    for (int d = 0; d < n; d++)
        s += a[d] * b[d];
    return s;
}

static inline void attn_vacc(float *out, float r, const float *const *rows, const float *e,
                             int nt, int n)
{
    for (int d = 0; d < n; d++) {
        float acc = r * out[d];
        for (int j = 0; j < nt; j++)
            acc += e[j] * rows[j][d];
        out[d] = acc;
    }
}

static inline void attn_scale(float *out, float a, int n)
{
    for (int d = 0; d < n; d++)
        out[d] *= a;
}

#define ATTN_FN kern_attn_group_ref
#include "kernels/cpu/attn_impl.h"

static enum kern_isa clamp_isa(enum kern_isa isa)
{
    enum kern_isa best = kern_isa_best();
    return isa > best ? best : isa;
}

enum kern_isa kern_attn_level(enum kern_isa isa)
{
    return clamp_isa(isa);
}

kern_attn_fn kern_attn_get(enum kern_isa isa)
{
    switch (clamp_isa(isa)) {
    case KERN_ISA_AVX512:
        return kern_attn_group_avx512;
    case KERN_ISA_AVX2:
        return kern_attn_group_avx2;
    default:
        return kern_attn_group_ref;
    }
}

void kern_attn_run(const struct kern_attn_group *g)
{
    assert(g->head_dim >= 1 && g->head_dim <= KERN_ATTN_MAX_HD && g->n_q >= 1);
    assert(g->kv_type == KT_F32 || g->kv_type == KT_F16);
    kern_attn_fn fn = kern_attn_get(kern_isa_active());
    struct kern_attn_group c = *g;
    for (int i0 = 0; i0 < g->n_q; i0 += KERN_ATTN_MAX_Q) {
        c.n_q = g->n_q - i0 < KERN_ATTN_MAX_Q ? g->n_q - i0 : KERN_ATTN_MAX_Q;
        c.q = g->q + (size_t)i0 * g->q_stride;
        c.out = g->out + (size_t)i0 * g->out_stride;
        fn(&c);
    }
}
