/*
 * Scalar reference dot products, weight row . activation row, following
 * each format's integer structure the way the SIMD kernels do:
 *
 *   32-element blocks:  sum_b  d_w * d_a * sum_j q_w[j] * q_a[j]
 *     (+ m_w * s_a for Q4_1/Q5_1, where s_a = d_a * sum_j q_a[j])
 *   k-quants:           sum_b  d_w * d_a * sum_s sc[s] * sum_j q_w * q_a
 *                             - dmin_w * d_a * sum_s m[s] * bsum_a[s]
 *     (Q2_K/Q4_K/Q5_K; bsums make the min term cost one product per
 *     sub-block instead of one per element)
 *
 * The integer sums are exact in int32 (the largest, Q6_K, is below
 * 16 * 128 * 16 * 32 * 128 < 2^28 per block); each block's scale product
 * and the running sum are float, as in ggml.  The plain float types
 * accumulate in double: their reference should be the exact sum rounded
 * once, so SIMD tolerances measure the SIMD error alone.
 */
#include "common/err.h"
#include "kernels/cpu/dot.h"
#include "kernels/cpu/quant.h"

#define QK 32

static float dot_f32(int64_t n, const float *w, const float *a)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++)
        s += (double)w[i] * (double)a[i];
    return (float)s;
}

static float dot_f16(int64_t n, const kern_f16 *w, const float *a)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++)
        s += (double)kern_f16_to_f32(w[i]) * (double)a[i];
    return (float)s;
}

static float dot_bf16(int64_t n, const kern_bf16 *w, const kern_bf16 *a)
{
    double s = 0.0;
    for (int64_t i = 0; i < n; i++)
        s += (double)kern_bf16_to_f32(w[i]) * (double)kern_bf16_to_f32(a[i]);
    return (float)s;
}

/* Signed 4-bit code of element j of a 32-block, nibble layout of Q4_0. */
static int nib(const uint8_t *qs, int j)
{
    return j < QK / 2 ? (qs[j] & 0xF) : (qs[j - QK / 2] >> 4);
}

static uint32_t load_qh(const uint8_t qh[4])
{
    return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
}

static float dot_q4_0(int64_t nb, const block_q4_0 *w, const block_q8_0 *a)
{
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int32_t isum = 0;
        for (int j = 0; j < QK; j++)
            isum += (nib(w[i].qs, j) - 8) * a[i].qs[j];
        s += kern_f16_to_f32(w[i].d) * kern_f16_to_f32(a[i].d) * (float)isum;
    }
    return s;
}

/* sum (d q + m) * a = d d_a sum(q q_a) + m s_a */
static float dot_q4_1(int64_t nb, const block_q4_1 *w, const block_q8_1 *a)
{
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int32_t isum = 0;
        for (int j = 0; j < QK; j++)
            isum += nib(w[i].qs, j) * a[i].qs[j];
        s += kern_f16_to_f32(w[i].d) * kern_f16_to_f32(a[i].d) * (float)isum +
             kern_f16_to_f32(w[i].m) * kern_f16_to_f32(a[i].s);
    }
    return s;
}

static float dot_q5_0(int64_t nb, const block_q5_0 *w, const block_q8_0 *a)
{
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        uint32_t qh = load_qh(w[i].qh);
        int32_t isum = 0;
        for (int j = 0; j < QK; j++)
            isum += ((nib(w[i].qs, j) | (int)(qh >> j & 1u) << 4) - 16) * a[i].qs[j];
        s += kern_f16_to_f32(w[i].d) * kern_f16_to_f32(a[i].d) * (float)isum;
    }
    return s;
}

static float dot_q5_1(int64_t nb, const block_q5_1 *w, const block_q8_1 *a)
{
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        uint32_t qh = load_qh(w[i].qh);
        int32_t isum = 0;
        for (int j = 0; j < QK; j++)
            isum += (nib(w[i].qs, j) | (int)(qh >> j & 1u) << 4) * a[i].qs[j];
        s += kern_f16_to_f32(w[i].d) * kern_f16_to_f32(a[i].d) * (float)isum +
             kern_f16_to_f32(w[i].m) * kern_f16_to_f32(a[i].s);
    }
    return s;
}

static float dot_q8_0(int64_t nb, const block_q8_0 *w, const block_q8_0 *a)
{
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int32_t isum = 0;
        for (int j = 0; j < QK; j++)
            isum += w[i].qs[j] * a[i].qs[j];
        s += kern_f16_to_f32(w[i].d) * kern_f16_to_f32(a[i].d) * (float)isum;
    }
    return s;
}

/* Sum over the 16-element sub-blocks s of sc[s] * sum(q_w q_a), and of
 * m[s] * bsums[s]; q_w[e] is given in codes[] (already offset). */
static float k_block(const int *codes, const int *sc, const int *mn, int sub, float d, float dmin,
                     const block_q8_K *a)
{
    int32_t isum = 0, msum = 0;
    for (int s = 0; s < QK_K / sub; s++) {
        int32_t part = 0, bsum = 0;
        for (int l = 0; l < sub; l++)
            part += codes[sub * s + l] * a->qs[sub * s + l];
        for (int b = 0; b < sub / 16; b++)
            bsum += a->bsums[sub / 16 * s + b];
        isum += sc[s] * part;
        msum += mn[s] * bsum;
    }
    return d * a->d * (float)isum - dmin * a->d * (float)msum;
}

static float dot_q2_K(int64_t nb, const block_q2_K *w, const block_q8_K *a)
{
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int codes[QK_K], sc[16], mn[16];
        for (int e = 0; e < QK_K; e++)
            codes[e] = w[i].qs[32 * (e / 128) + e % 32] >> (2 * (e % 128 / 32)) & 3;
        for (int j = 0; j < 16; j++) {
            sc[j] = w[i].scales[j] & 0xF;
            mn[j] = w[i].scales[j] >> 4;
        }
        s += k_block(codes, sc, mn, 16, kern_f16_to_f32(w[i].d), kern_f16_to_f32(w[i].dmin), &a[i]);
    }
    return s;
}

static float dot_q3_K(int64_t nb, const block_q3_K *w, const block_q8_K *a)
{
    static const int zero[16];
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int codes[QK_K], sc[16];
        for (int e = 0; e < QK_K; e++) {
            codes[e] = w[i].qs[32 * (e / 128) + e % 32] >> (2 * (e % 128 / 32)) & 3;
            if (!(w[i].hmask[e % 32] >> (e / 32) & 1))
                codes[e] -= 4;
        }
        for (int j = 0; j < 16; j++)
            sc[j] = kern_q3_K_scale(j, w[i].scales);
        s += k_block(codes, sc, zero, 16, kern_f16_to_f32(w[i].d), 0.0f, &a[i]);
    }
    return s;
}

static void k4_scales(const uint8_t q[12], int sc[8], int mn[8])
{
    for (int j = 0; j < 8; j++) {
        uint8_t s, m;
        kern_q4_K_scale_min(j, q, &s, &m);
        sc[j] = s;
        mn[j] = m;
    }
}

static float dot_q4_K(int64_t nb, const block_q4_K *w, const block_q8_K *a)
{
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int codes[QK_K], sc[8], mn[8];
        for (int e = 0; e < QK_K; e++)
            codes[e] = w[i].qs[32 * (e / 64) + e % 32] >> (4 * (e % 64 / 32)) & 0xF;
        k4_scales(w[i].scales, sc, mn);
        s += k_block(codes, sc, mn, 32, kern_f16_to_f32(w[i].d), kern_f16_to_f32(w[i].dmin), &a[i]);
    }
    return s;
}

static float dot_q5_K(int64_t nb, const block_q5_K *w, const block_q8_K *a)
{
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int codes[QK_K], sc[8], mn[8];
        for (int e = 0; e < QK_K; e++) {
            int chunk = e / 64, hi = e % 64 / 32;
            codes[e] = (w[i].qs[32 * chunk + e % 32] >> (4 * hi) & 0xF) |
                       (w[i].qh[e % 32] >> (2 * chunk + hi) & 1) << 4;
        }
        k4_scales(w[i].scales, sc, mn);
        s += k_block(codes, sc, mn, 32, kern_f16_to_f32(w[i].d), kern_f16_to_f32(w[i].dmin), &a[i]);
    }
    return s;
}

static float dot_q6_K(int64_t nb, const block_q6_K *w, const block_q8_K *a)
{
    static const int zero[16];
    float s = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int codes[QK_K], sc[16];
        for (int e = 0; e < QK_K; e++) {
            int half = e / 128, k = e % 128 / 32, l = e % 32;
            int lo = w[i].ql[64 * half + 32 * (k & 1) + l] >> (4 * (k >> 1)) & 0xF;
            int hi = w[i].qh[32 * half + l] >> (2 * k) & 3;
            codes[e] = (lo | hi << 4) - 32;
        }
        for (int j = 0; j < 16; j++)
            sc[j] = w[i].scales[j];
        s += k_block(codes, sc, zero, 16, kern_f16_to_f32(w[i].d), 0.0f, &a[i]);
    }
    return s;
}

int kern_vec_dot_ref(uint32_t wtype, int64_t n, float *s, const void *w, const void *a)
{
    if (kern_vec_dot_type(wtype) < 0)
        return MOED_EUNSUPPORTED;
    int64_t blck = kern_type_traits(wtype)->blck;
    if (n < 0 || n % blck != 0)
        return MOED_EINVAL;
    int64_t nb = n / blck;
    switch (wtype) {
    case KT_F32: *s = dot_f32(n, w, a); break;
    case KT_F16: *s = dot_f16(n, w, a); break;
    case KT_BF16: *s = dot_bf16(n, w, a); break;
    case KT_Q4_0: *s = dot_q4_0(nb, w, a); break;
    case KT_Q4_1: *s = dot_q4_1(nb, w, a); break;
    case KT_Q5_0: *s = dot_q5_0(nb, w, a); break;
    case KT_Q5_1: *s = dot_q5_1(nb, w, a); break;
    case KT_Q8_0: *s = dot_q8_0(nb, w, a); break;
    case KT_Q2_K: *s = dot_q2_K(nb, w, a); break;
    case KT_Q3_K: *s = dot_q3_K(nb, w, a); break;
    case KT_Q4_K: *s = dot_q4_K(nb, w, a); break;
    case KT_Q5_K: *s = dot_q5_K(nb, w, a); break;
    case KT_Q6_K: *s = dot_q6_K(nb, w, a); break;
    default: return MOED_EUNSUPPORTED;
    }
    return 0;
}
